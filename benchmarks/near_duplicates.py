"""Near-duplicate detection on CIFAR-10 with planted copies: precision and recall of the near-duplicate list.

Each split's set is the first 300 images per class (features cached by ``_kfeatures.py``) plus one edited copy
of the first ``--copies-per-class`` images of every class, written to a temporary folder: re-encoded (JPEG
quality 50), resized (to 24×24 px), cropped (3 px off two sides) or brightened (×1.3), the kinds in turn.

A true pair is (original, its copy). The near-duplicate list's pairs are all pairs inside each reported group;
a pair of two originals counts as a false positive (CIFAR-10 has a few near-identical photos of its own, so
precision is if anything underestimated; such pairs are counted apart as ``false_pairs_between_originals``).

Two rules are measured (:func:`imgclust.duplicates.near_duplicates`):

- features only (no hashes): cosine >= threshold; threshold calibrated on CIFAR-10 *train*, the value with the
  highest F1 on a grid (ties: the higher value); library default ``DEFAULT_NEAR_DUPLICATE_COSINE``.
- features + difference hashes (the default when the images are at hand): cosine >= c, or cosine >= c_hash and
  Hamming distance <= t; (c, c_hash, t) chosen on CIFAR-10 *train* with the highest F1 on a grid (ties: the
  stricter setting); library defaults ``DEFAULT_COMBINED_COSINE``, ``DEFAULT_HASH_COSINE``,
  ``DEFAULT_HASH_DISTANCE``.

CIFAR-10 *test* is scored once at the library defaults. Target: precision and recall both >= 0.95. The cost of
the hashes (``perceptual_hashes`` reading the 3,000 original JPEGs back with ``dataset.load``) is timed.

Usage: python benchmarks/near_duplicates.py [--copies-per-class 20]
Writes benchmarks/results/near_duplicates.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from itertools import combinations, product
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

import _kfeatures as kf
from _common import print_table, require_cifar10, save_result

from imgclust.backbones import create_backbone
from imgclust.data import PathListDataset
from imgclust.duplicates import (DEFAULT_COMBINED_COSINE, DEFAULT_HASH_COSINE, DEFAULT_HASH_DISTANCE,
                                 DEFAULT_NEAR_DUPLICATE_COSINE, DEFAULT_NEAR_DUPLICATE_K,
                                 near_duplicates_from_neighbors, perceptual_hashes)
from imgclust.features import extract_features
from imgclust.neighbors import nearest_neighbors

GRID = tuple(round(x, 3) for x in np.arange(0.80, 0.991, 0.01))
COMBINED_GRID = tuple(product((round(x, 3) for x in np.arange(0.85, 0.951, 0.01)), (0.5, 0.6, 0.7, 0.8),
                              range(21)))


def reencode(img: Image.Image, path: Path) -> None:
    img.save(path.with_suffix(".jpg"), "JPEG", quality=50)


def resize(img: Image.Image, path: Path) -> None:
    img.resize((24, 24), Image.Resampling.BICUBIC).save(path.with_suffix(".png"))


def crop(img: Image.Image, path: Path) -> None:
    img.crop((3, 3, img.width, img.height)).save(path.with_suffix(".png"))


def brighten(img: Image.Image, path: Path) -> None:
    ImageEnhance.Brightness(img).enhance(1.3).save(path.with_suffix(".png"))


EDITS = {"reencode": reencode, "resize": resize, "crop": crop, "brighten": brighten}


class PlantedSet:
    """Originals + copies of one split: features, hashes, the original row of each copy, each copy's edit."""

    def __init__(self, split: str, copies_per_class: int, folder: Path):
        root = require_cifar10()
        x, _ = kf.cifar10(kf.PER_CLASS, split=split)
        originals = [f for name in kf.CIFAR_CLASSES for f in sorted((root / split / name).glob("*.jpg"))[:kf.PER_CLASS]]
        sources, kinds, copies = [], [], []
        folder.mkdir(parents=True)
        for c, name in enumerate(kf.CIFAR_CLASSES):
            for i, f in enumerate(originals[c * kf.PER_CLASS:][:copies_per_class]):
                kind = list(EDITS)[(c * copies_per_class + i) % len(EDITS)]
                out = folder / f"{name}-{f.stem}-{kind}"
                EDITS[kind](Image.open(f).convert("RGB"), out)
                copies.append(next(folder.glob(f"{out.name}.*")))
                sources.append(c * kf.PER_CLASS + i)
                kinds.append(kind)
        start = time.perf_counter()
        original_hashes = perceptual_hashes(PathListDataset(originals))
        self.hash_seconds_per_1000 = (time.perf_counter() - start) / len(originals) * 1000
        self.hashes = original_hashes + perceptual_hashes(PathListDataset(copies))
        self.features = np.concatenate([x, self._copy_features(split, copies_per_class, copies)])
        self.sources, self.kinds, self.n_originals = np.asarray(sources), kinds, len(originals)
        self.neighbors = nearest_neighbors(self.features, DEFAULT_NEAR_DUPLICATE_K)

    @staticmethod
    def _copy_features(split: str, copies_per_class: int, copies: list[Path]) -> np.ndarray:
        saved = kf.CACHE.parent / "near_duplicates" / f"{kf.BACKBONE}-{split}-{copies_per_class}.npz"
        if saved.exists():
            return np.load(saved)["copies"]
        backbone = create_backbone(kf.BACKBONE)
        fs = extract_features(PathListDataset(copies, draft_size=backbone.preprocess.input_size), backbone,
                              use_cache=False, batch_size=64, progress=True)
        assert len(fs.valid_indices) == len(copies), fs.skipped
        saved.parent.mkdir(parents=True, exist_ok=True)
        features = np.asarray(fs.features, np.float32)
        np.savez(saved, copies=features)
        return features

    def evaluate(self, threshold: float, with_hashes: bool, hash_cosine: float = DEFAULT_HASH_COSINE,
                 hash_distance: int = DEFAULT_HASH_DISTANCE) -> dict:
        n0, sources, kinds = self.n_originals, self.sources, self.kinds
        truth = {(int(s), n0 + j) for j, s in enumerate(sources)}
        found = set()
        for g in near_duplicates_from_neighbors(self.neighbors, threshold, hashes=self.hashes if with_hashes else None,
                                                hash_distance=hash_distance, hash_cosine=hash_cosine):
            found |= set(combinations(g.items, 2))
        hits = found & truth
        per_kind = {k: round(sum((int(sources[j]), n0 + j) in hits for j in range(len(kinds)) if kinds[j] == k)
                             / kinds.count(k), 4) for k in EDITS}
        rule = {"threshold": threshold}
        if with_hashes:
            rule |= {"hash_cosine": hash_cosine, "hash_distance": hash_distance}
        return {**rule, "precision": round(len(hits) / max(len(found), 1), 4),
                "recall": round(len(hits) / len(truth), 4), "pairs_found": len(found), "true_pairs": len(truth),
                "false_pairs_between_originals": sum(b < n0 for _, b in found - truth),
                "false_pairs": sorted(found - truth)[:20], "recall_by_edit": per_kind}


def f1(r: dict) -> float:
    return 2 * r["precision"] * r["recall"] / max(r["precision"] + r["recall"], 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies-per-class", type=int, default=20)
    parser.add_argument("--calibrate-only", action="store_true", help="stop after the train calibration")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        train = PlantedSet("train", args.copies_per_class, Path(tmp) / "train")
        test = None if args.calibrate_only else PlantedSet("test", args.copies_per_class, Path(tmp) / "test")
    columns = ["threshold", "precision", "recall", "pairs_found"]
    grid = [train.evaluate(t, with_hashes=False) for t in GRID]
    print("calibration on CIFAR-10 train, features only")
    print_table(grid, columns)
    best = max(grid, key=lambda r: (f1(r), r["threshold"]))["threshold"]
    combined = [train.evaluate(c, True, c_hash, t) for c, c_hash, t in COMBINED_GRID]
    best_combined = max(combined, key=lambda r: (round(f1(r), 6), r["threshold"], r["hash_cosine"],
                                                 -r["hash_distance"]))
    combined_columns = ["threshold", "hash_cosine", "hash_distance", "precision", "recall", "pairs_found"]
    print("\ncalibration on CIFAR-10 train, features + difference hash: the 10 best F1 of", len(combined))
    print_table(sorted(combined, key=lambda r: -f1(r))[:10], combined_columns)
    choice = (best_combined["threshold"], best_combined["hash_cosine"], best_combined["hash_distance"])
    defaults = (DEFAULT_COMBINED_COSINE, DEFAULT_HASH_COSINE, DEFAULT_HASH_DISTANCE)
    for name, chosen, default in [("features only", best, DEFAULT_NEAR_DUPLICATE_COSINE),
                                  ("combined", choice, defaults)]:
        if chosen != default:
            print(f"NOTE: the train choice {chosen} ({name}) differs from the library default {default}")
    print(f"hashes: {train.hash_seconds_per_1000:.2f} s per 1,000 CIFAR-10 JPEGs (dataset.load + dhash)")
    if test is None:
        return
    results = [{"rule": "features + hash (default)", **test.evaluate(DEFAULT_COMBINED_COSINE, True)},
               {"rule": "features only", **test.evaluate(DEFAULT_NEAR_DUPLICATE_COSINE, False)}]
    print(f"\nCIFAR-10 test at the library defaults (k={DEFAULT_NEAR_DUPLICATE_K}):")
    table = print_table([{**r, **r["recall_by_edit"]} for r in results],
                        ["rule", *combined_columns, "true_pairs", *EDITS])
    save_result("near_duplicates", {
        "backbone": kf.BACKBONE, "per_class": kf.PER_CLASS, "copies_per_class": args.copies_per_class,
        "edits": list(EDITS), "k": DEFAULT_NEAR_DUPLICATE_K, "hash": "dhash 8x8 (imagehash)",
        "hash_seconds_per_1000_images": round(test.hash_seconds_per_1000, 3),
        "train_choice": best, "train_choice_combined": dict(zip(["threshold", "hash_cosine", "hash_distance"],
                                                                choice)),
        "train_grid": [{k: v for k, v in r.items() if k != "false_pairs"} for r in grid],
        "train_grid_combined_best10": [{k: v for k, v in r.items() if k != "false_pairs"}
                                       for r in sorted(combined, key=lambda r: -f1(r))[:10]],
        "test": results[0], "test_features_only": results[1], "table": table})


if __name__ == "__main__":
    main()
