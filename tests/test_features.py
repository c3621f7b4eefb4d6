"""Feature cache: reuse only on a matching manifest, atomic shards, resume after SIGKILL, skipped files listed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from imgclust.data import PathListDataset
from imgclust.errors import ImgclustError
from imgclust.features import extract_features

from conftest import cifar10_subset_paths

TINY_BACKBONE_SOURCE = textwrap.dedent('''
    import torch
    from imgclust.backbones.base import Preprocess

    class TinyBackbone(torch.nn.Module):
        """A fixed random conv net: cheap stand-in with the Backbone interface."""
        name = "tiny-test"
        feature_dim = 8
        preprocess = Preprocess(input_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

        def __init__(self, weights_id="seed0"):
            super().__init__()
            self.weights_id = weights_id
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return self.conv(x).mean((2, 3))
''')


def _tiny_backbone(weights_id: str = "seed0") -> torch.nn.Module:
    namespace: dict = {}
    exec(TINY_BACKBONE_SOURCE, namespace)  # the same class is used by the killed subprocess below
    return namespace["TinyBackbone"](weights_id)


@pytest.fixture
def cifar_paths(cifar10_dir: Path) -> list[str]:
    paths, _, _ = cifar10_subset_paths(cifar10_dir, "test", 12)
    return [str(p) for p in paths]


def test_cache_reused_only_when_manifest_matches(tmp_path: Path, cifar_paths: list[str]) -> None:
    dataset = PathListDataset(cifar_paths)
    first = extract_features(dataset, _tiny_backbone(), cache_dir=tmp_path, num_workers=0, progress=False)
    assert first.features.shape == (120, 8)
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["identity"]["backbone"] == "tiny-test"
    assert manifest["items"] == cifar_paths
    again = extract_features(dataset, _tiny_backbone(), cache_dir=tmp_path, num_workers=0, progress=False)
    assert again.path == first.path and isinstance(again.features, np.memmap)
    np.testing.assert_array_equal(np.asarray(again.features), np.asarray(first.features))
    other_weights = extract_features(dataset, _tiny_backbone("seed1"), cache_dir=tmp_path, num_workers=0,
                                     progress=False)
    assert other_weights.path != first.path
    fewer = extract_features(PathListDataset(cifar_paths[:-1]), _tiny_backbone(), cache_dir=tmp_path,
                             num_workers=0, progress=False)
    assert fewer.path != first.path and len(fewer.features) == 119


def test_bfloat16_precision_is_its_own_entry_and_close_to_float32(tmp_path: Path, cifar_paths: list[str]) -> None:
    dataset = PathListDataset(cifar_paths[:30])
    exact = extract_features(dataset, _tiny_backbone(), cache_dir=tmp_path, num_workers=0, progress=False)
    assert json.loads((exact.path / "manifest.json").read_text())["identity"]["precision"] == "float32"
    fast = extract_features(dataset, _tiny_backbone(), cache_dir=tmp_path, precision="bfloat16", num_workers=0,
                            progress=False)
    assert fast.path != exact.path          # never served from (or into) the float32 entry
    difference = np.abs(np.asarray(fast.features) - np.asarray(exact.features)).max()
    assert 0 < difference < 0.05 * np.abs(np.asarray(exact.features)).max()
    with pytest.raises(ImgclustError, match="unknown precision 'half'") as info:
        extract_features(dataset, _tiny_backbone(), cache_dir=tmp_path, precision="half", progress=False)
    assert "bfloat16" in info.value.fix


def test_bad_files_skipped_and_listed(tmp_path: Path, cifar_paths: list[str]) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    paths = cifar_paths[:5] + [str(broken)] + cifar_paths[5:10] + [str(empty)]
    result = extract_features(PathListDataset(paths), _tiny_backbone(), cache_dir=tmp_path / "cache",
                              num_workers=1, progress=False, shard_size=4)
    assert sorted(s["item"] for s in result.skipped) == sorted([str(broken), str(empty)])
    assert all(s["reason"] for s in result.skipped)
    assert result.valid_indices.tolist() == [i for i in range(12) if i not in (5, 11)]
    assert result.features.shape == (10, 8)


def test_cpu_default_decodes_in_threads_with_the_same_result_as_processes(tmp_path: Path, cifar_paths: list[str]
                                                                          ) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    dataset = PathListDataset(cifar_paths[:7] + [str(broken)] + cifar_paths[7:])
    threads = extract_features(dataset, _tiny_backbone(), cache_dir=tmp_path / "threads", progress=False,
                               batch_size=5, shard_size=8)
    processes = extract_features(dataset, _tiny_backbone(), cache_dir=tmp_path / "processes", num_workers=1,
                                 progress=False, batch_size=5, shard_size=8)
    assert threads.manifest["decode_threads"] == torch.get_num_threads() and "num_workers" not in threads.manifest
    assert processes.manifest["num_workers"] == 1 and "decode_threads" not in processes.manifest
    assert threads.valid_indices.tolist() == processes.valid_indices.tolist() == [i for i in range(len(dataset)) if i != 7]
    assert [s["item"] for s in threads.skipped] == [s["item"] for s in processes.skipped] == [str(broken)]
    np.testing.assert_array_equal(np.asarray(threads.features), np.asarray(processes.features))


def test_augmented_views_are_separate_deterministic_entries(tmp_path: Path, cifar_paths: list[str]) -> None:
    dataset = PathListDataset(cifar_paths[:20])

    def flip_some(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)

    views = [extract_features(dataset, _tiny_backbone(), cache_dir=tmp_path, augment=flip_some,
                              augment_id="flip", view=v, num_workers=0, progress=False) for v in (1, 2)]
    clean = extract_features(dataset, _tiny_backbone(), cache_dir=tmp_path, num_workers=0, progress=False)
    assert len({v.path for v in views} | {clean.path}) == 3
    assert not np.allclose(views[0].features, views[1].features)
    repeat = extract_features(dataset, _tiny_backbone(), augment=flip_some, augment_id="flip", view=1,
                              use_cache=False, num_workers=0, progress=False)
    np.testing.assert_array_equal(repeat.features, np.asarray(views[0].features))


def test_killed_extraction_resumes_from_finished_shards(tmp_path: Path, cifar_paths: list[str]) -> None:
    cache = tmp_path / "cache"
    list_file = tmp_path / "paths.json"
    list_file.write_text(json.dumps(cifar_paths))
    script = tmp_path / "extract_slowly.py"
    script.write_text(TINY_BACKBONE_SOURCE + textwrap.dedent(f'''
        import json, time
        from imgclust.data import PathListDataset
        from imgclust.features import extract_features

        class SlowDataset(PathListDataset):
            def load(self, index):
                time.sleep(0.02)
                return super().load(index)

        paths = json.load(open({str(list_file)!r}))
        extract_features(SlowDataset(paths), TinyBackbone(), cache_dir={str(cache)!r}, num_workers=0,
                         progress=False, shard_size=10, batch_size=5)
    '''))
    process = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": "src"})
    deadline = time.time() + 60
    while time.time() < deadline and len(list(cache.glob("*/shards/*.json"))) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list(cache.glob("*/shards/*.json")))
    assert 3 <= finished < 12, "the kill must land mid-extraction"
    assert not list(cache.glob("*/features.npy")), "a killed run must not leave a merged array"

    loads: list[int] = []

    class CountingDataset(PathListDataset):
        def load(self, index: int):  # type: ignore[override]
            loads.append(index)
            return super().load(index)

    resumed = extract_features(CountingDataset(cifar_paths), _tiny_backbone(), cache_dir=cache, num_workers=0,
                               progress=False, shard_size=10, batch_size=5)
    assert min(loads) == 10 * finished and len(loads) == 120 - 10 * finished
    straight = extract_features(PathListDataset(cifar_paths), _tiny_backbone(), use_cache=False,
                                num_workers=0, progress=False, shard_size=10, batch_size=5)
    np.testing.assert_allclose(np.asarray(resumed.features), straight.features, rtol=1e-6, atol=1e-6)
    assert not list(cache.glob("*/shards")), "shards are removed once merged"


def test_a_second_extraction_of_the_same_entry_waits_then_reuses_it(tmp_path: Path, cifar_paths: list[str],
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    # Two runs on the same images share a cache entry: while the first fills it, the second must wait (not
    # start its own shards, whose merge would delete the first one's), then reuse the finished entry.
    import threading

    from imgclust.features.cache import FeatureCache

    dataset = PathListDataset(cifar_paths)
    reference = extract_features(dataset, _tiny_backbone(), cache_dir=tmp_path / "ref", num_workers=0,
                                 progress=False)
    entry = FeatureCache(tmp_path / "shared", {}, [])
    entry.path = tmp_path / "shared" / reference.path.name  # the key extract_features computes for this data
    results: list = []
    caplog.set_level("INFO")
    with entry.exclusive():
        second = threading.Thread(target=lambda: results.append(extract_features(
            dataset, _tiny_backbone(), cache_dir=tmp_path / "shared", num_workers=0, progress=False)))
        second.start()
        second.join(timeout=3)
        assert second.is_alive() and not results  # blocked on the lock held here
        # Meanwhile "the first run" finishes the entry.
        first = extract_features(dataset, _tiny_backbone(), cache_dir=tmp_path / "other", num_workers=0,
                                 progress=False)
        os.replace(first.path, entry.path)
    second.join(timeout=60)
    assert results and np.array_equal(np.asarray(results[0].features), np.asarray(reference.features))
    assert "waiting for another process" in caplog.text and "reusing cached features" in caplog.text
