"""Inference engines: ONNX exports give PyTorch's float32 features, are cached and checked, and fall back to torch."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from imgclust.backbones import create_backbone
from imgclust.data import PathListDataset
from imgclust.errors import ImgclustError
from imgclust.features import engines, extract_features
from imgclust.features.engines import OnnxExport, TorchEngine, min_cosine, open_engine

from conftest import cifar10_subset_paths

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("efficientnet_lite0")


@pytest.fixture(scope="module")
def images(cifar10_dir: Path) -> PathListDataset:
    paths, _, _ = cifar10_subset_paths(cifar10_dir, "test", 2)
    return PathListDataset([str(p) for p in paths])


@pytest.fixture(scope="module")
def sample(images, backbone) -> torch.Tensor:
    """The 20 images normalised, as the extraction hands them to the engine."""
    raw = torch.stack([backbone.preprocess.to_uint8_tensor(images.load(i)) for i in range(len(images))])
    return backbone.normalize(raw)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, backbone, sample) -> Path:
    """A feature-cache root holding the checked export of the backbone (exported once for the module)."""
    root = tmp_path_factory.mktemp("export-root")
    engine = open_engine("onnxruntime", backbone, backbone=backbone, encoder_id="backbone", device="cpu",
                         precision="float32", export_root=root, sample=sample, n_images=len(sample))
    assert engine.name == "onnxruntime"
    return root


@pytest.fixture(scope="module")
def small_encoder() -> torch.nn.Module:
    """A small convolutional encoder (exports in a second) for the tests of the export's caching."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 5, stride=4), torch.nn.BatchNorm2d(16), torch.nn.ReLU6(),
                               torch.nn.Conv2d(16, 32, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten()).eval()


@pytest.fixture(scope="module")
def small_export(tmp_path_factory, backbone, small_encoder, sample) -> Path:
    root = tmp_path_factory.mktemp("small-export-root")
    assert _open(root, backbone, sample, encoder=small_encoder).name == "onnxruntime"
    return root


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(engines, "_warned", set())


def _open(root: Path, backbone, sample, name: str = "onnxruntime", encoder=None, encoder_id: str = "small"):
    return open_engine(name, encoder if encoder is not None else backbone, backbone=backbone,
                       encoder_id=encoder_id, device="cpu", precision="float32", export_root=root, sample=sample,
                       n_images=10_000)


def _count_exports(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = torch.onnx.export

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", counting)
    return calls


def test_onnxruntime_extraction_matches_torch_float32(tmp_path, images, backbone, exported):
    """Full extractions by both engines agree; the engine is not part of the cache identity."""
    reference = extract_features(images, backbone, cache_dir=tmp_path / "torch", engine="torch", num_workers=0,
                                 progress=False)
    cache = tmp_path / "ort"
    shutil.copytree(exported / "onnx", cache / "onnx")
    fast = extract_features(images, backbone, cache_dir=cache, engine="onnxruntime", num_workers=0,
                            progress=False)
    assert fast.manifest["engine"] == "onnxruntime" and reference.manifest["engine"] == "torch"
    assert np.array_equal(fast.valid_indices, reference.valid_indices)
    assert min_cosine(np.asarray(fast.features), np.asarray(reference.features)) >= engines.MIN_COSINE
    assert fast.path.name == reference.path.name  # same cache key: one entry serves every float32 engine


def test_pooling_is_part_of_the_feature_and_export_identities(tmp_path, images, backbone):
    """Average-pooled features (imgclust's before GeM) get their own cache entry and ONNX export, never GeM's."""
    average = create_backbone("efficientnet_lite0", pooling="avg")
    gem = extract_features(images, backbone, cache_dir=tmp_path, engine="onnxruntime", num_workers=0,
                           progress=False)
    avg = extract_features(images, average, cache_dir=tmp_path, engine="onnxruntime", num_workers=0,
                           progress=False)
    assert (gem.manifest["identity"]["pooling"], avg.manifest["identity"]["pooling"]) == ("gem", "avg")
    assert gem.path != avg.path and avg.manifest["engine"] == "onnxruntime"
    assert len([p for p in (tmp_path / "onnx").iterdir() if p.is_dir()]) == 2  # two exports (and their locks)
    reference = TorchEngine(average, "cpu")(average.normalize(torch.stack(
        [average.preprocess.to_uint8_tensor(images.load(i)) for i in range(len(images))])))
    assert min_cosine(np.asarray(avg.features), reference) >= engines.MIN_COSINE
    assert min_cosine(np.asarray(gem.features), reference) < 0.999


def test_trunk_export_matches_torch(tmp_path, backbone, sample):
    trunk = backbone.split(3)[0]  # what ICBPL/SeCu fine-tuning of 3 blocks caches
    engine = _open(tmp_path, backbone, sample, encoder=trunk, encoder_id="trunk-3")
    assert engine.name == "onnxruntime"
    out = engine(sample)
    reference = TorchEngine(trunk, "cpu")(sample)
    assert out.shape == reference.shape and out.ndim == 4
    assert min_cosine(out, reference) >= engines.MIN_COSINE


def test_export_is_cached_and_reused(tmp_path, backbone, sample, small_encoder, small_export, monkeypatch):
    root = tmp_path / "root"
    shutil.copytree(small_export, root)
    calls = _count_exports(monkeypatch)
    engine = _open(root, backbone, sample, encoder=small_encoder)
    assert engine.name == "onnxruntime" and calls == []
    manifest = json.loads(OnnxExport(small_encoder, backbone, "small", root).manifest_path.read_text())
    assert manifest["identity"]["opset"] == engines.ONNX_OPSET
    assert manifest["identity"]["weights_id"] == backbone.weights_id
    checks = manifest["checks"][engines.machine_key()]
    assert checks["onnxruntime"]["min_cosine"] >= engines.MIN_COSINE


@pytest.mark.parametrize("damage", ["corrupt", "foreign", "model-file"])
def test_bad_export_is_rebuilt(tmp_path, backbone, sample, small_encoder, small_export, monkeypatch, damage):
    root = tmp_path / "root"
    shutil.copytree(small_export, root)
    export = OnnxExport(small_encoder, backbone, "small", root)
    if damage == "corrupt":
        export.manifest_path.write_text('{"identity": {"backbone": "efficientnet_lite0", ')
    elif damage == "foreign":
        manifest = json.loads(export.manifest_path.read_text())
        manifest["identity"]["weights_hash"] = "sha256:0000000000000000"
        export.manifest_path.write_text(json.dumps(manifest))
    else:
        with open(export.model_path, "r+b") as fh:
            fh.seek(1000)
            fh.write(b"\0" * 64)
    calls = _count_exports(monkeypatch)
    engine = _open(root, backbone, sample, encoder=small_encoder)
    assert calls == [1]
    assert engine.name == "onnxruntime"
    assert export.manifest() is not None
    assert min_cosine(engine(sample), TorchEngine(small_encoder, "cpu")(sample)) >= engines.MIN_COSINE


def test_missing_onnxruntime_falls_back_to_torch_with_one_warning(tmp_path, images, backbone, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    caplog.set_level(logging.WARNING, logger="imgclust.features.engines")
    result = extract_features(images, backbone, cache_dir=tmp_path, engine="onnxruntime", batch_size=8,
                              num_workers=0, progress=False)
    again = extract_features(images, backbone, cache_dir=tmp_path / "again", engine="onnxruntime",
                             batch_size=8, num_workers=0, progress=False)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.endswith("engines")]
    assert len(warnings) == 1 and "onnxruntime" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    assert result.manifest["engine"] == "torch" and again.manifest["engine"] == "torch"
    reference = extract_features(images, backbone, cache_dir=tmp_path / "torch", engine="torch", num_workers=0,
                                 progress=False)
    np.testing.assert_allclose(np.asarray(result.features), np.asarray(reference.features), rtol=1e-4, atol=1e-4)


def test_refused_model_falls_back_to_torch(tmp_path, backbone, sample, small_encoder, monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::foo' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    caplog.set_level(logging.WARNING, logger="imgclust.features.engines")
    engine = _open(tmp_path, backbone, sample, encoder=small_encoder)
    assert engine.name == "torch"
    assert any("aten::foo" in r.getMessage() for r in caplog.records)


def test_auto_picks_a_checked_engine_on_cpu_and_torch_elsewhere(tmp_path, backbone, sample, exported, monkeypatch):
    root = tmp_path / "root"
    shutil.copytree(exported, root)
    engine = _open(root, backbone, sample, name="auto", encoder_id="backbone")
    assert engine.name in engines.installed_engines()
    if engine.name != "torch":
        assert min_cosine(engine(sample), TorchEngine(backbone, "cpu")(sample)) >= engines.MIN_COSINE
    checks = json.loads(OnnxExport(backbone, backbone, "backbone", root).manifest_path.read_text())["checks"]
    assert set(engines.installed_engines()) <= set(checks[engines.machine_key()])

    def auto(root: Path, n_images: int, precision: str = "float32"):
        return open_engine("auto", backbone, backbone=backbone, encoder_id="backbone", device="cpu",
                           precision=precision, export_root=root, sample=sample, n_images=n_images).name

    # A small extraction uses the export checked here, but exports nothing (it would cost more than it saves);
    # other precisions are PyTorch's alone.
    assert auto(root, 10) == engine.name
    assert auto(tmp_path / "fresh", 10) == "torch" and not (tmp_path / "fresh" / "onnx").exists()
    assert auto(root, 10_000, "bfloat16") == "torch"


def test_unknown_engine_is_refused():
    with pytest.raises(ImgclustError, match="tensorrt"):
        engines.check_engine("tensorrt")


_RACER = """
import sys, torch
from imgclust.backbones import create_backbone
from imgclust.features.engines import open_engine
exports = []
real = torch.onnx.export
torch.onnx.export = lambda *a, **k: (exports.append(1), real(*a, **k))[1]
torch.manual_seed(0)
encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
backbone = create_backbone("efficientnet_lite0", weights="random")
sample = torch.randn(4, 3, 224, 224)
engine = open_engine("onnxruntime", encoder.eval(), backbone=backbone, encoder_id="race", device="cpu",
                     precision="float32", export_root=sys.argv[1], sample=sample, n_images=10_000)
print(engine.name, len(exports))
"""


def test_processes_racing_for_one_export_export_it_once(tmp_path):
    """Under torchrun every process opens the engine at once: one exports, the others reuse its export."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(tmp_path)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [r.communicate(timeout=600) for r in racers]
    assert all(r.returncode == 0 for r in racers), [err[-2000:] for _, err in results]
    lines = sorted(out.strip().splitlines()[-1] for out, _ in results)
    assert lines == ["onnxruntime 0", "onnxruntime 1"]
    assert len(list((tmp_path / "onnx").glob("*/model.onnx"))) == 1


def test_resume_by_another_engine_keeps_finished_shards(tmp_path, images, backbone, sample, exported, monkeypatch):
    """The engine is not part of the cache identity: a run killed after one shard resumes with another engine."""
    from imgclust.features.cache import FeatureCache

    cache = tmp_path / "cache"
    shutil.copytree(exported / "onnx", cache / "onnx")
    write_shard = FeatureCache.write_shard

    def killed_after_first_shard(self, shard, *args, **kwargs):
        write_shard(self, shard, *args, **kwargs)
        raise RuntimeError("killed")

    monkeypatch.setattr(FeatureCache, "write_shard", killed_after_first_shard)
    with pytest.raises(RuntimeError, match="killed"):
        extract_features(images, backbone, cache_dir=cache, engine="torch", shard_size=8, num_workers=0,
                         progress=False)
    monkeypatch.setattr(FeatureCache, "write_shard", write_shard)
    encoded: list[int] = []
    run = engines.OnnxRuntimeEngine.__call__

    def counting(self, x):
        encoded.append(len(x))
        return run(self, x)

    monkeypatch.setattr(engines.OnnxRuntimeEngine, "__call__", counting)
    result = extract_features(images, backbone, cache_dir=cache, engine="onnxruntime", shard_size=8,
                              num_workers=0, progress=False)
    assert result.manifest["engine"] == "onnxruntime"
    assert sum(encoded) == len(images) - 8  # the shard by torch is kept (the export was checked here before)
    assert min_cosine(np.asarray(result.features), TorchEngine(backbone, "cpu")(sample)) >= engines.MIN_COSINE
