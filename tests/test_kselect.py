"""Estimating K without labels (imgclust.kselect)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import cifar10_subset_paths
from imgclust.errors import ImgclustError
from imgclust.kselect import (CRITERIA, DEFAULT_CRITERION, DEFAULT_N_NEIGHBORS, DEFAULT_RESOLUTION, KSelection,
                              UMAP_MIN_ROWS, UMAP_RESOLUTION, default_k_range, estimate_k, graph_neighbors, modularity, modularity_terms,
                              neighbouring_levels, parse_k_range, resolution_profile, steps_in_view)
from imgclust.run import write_k_selection as write_run_k_selection
from imgclust.runfolder import RunFolder
from imgclust.terminal import format_curve


def write_k_selection(folder: Path, selection: KSelection, plot: bool = True) -> dict[str, Path]:
    """k_selection.json and .png as a run writes them (moved from kselect, which no longer writes files)."""
    return write_run_k_selection(RunFolder(folder), selection)


def _blobs(k: int, n_per: int = 40, dim: int = 32, spread: float = 0.15, seed: int = 0
           ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), n_per)
    x = centers[labels] + spread * rng.normal(size=(k * n_per, dim)) / np.sqrt(dim)
    return x.astype(np.float32), labels


@pytest.mark.parametrize("criterion", ["modularity", "silhouette", "eigengap"])
@pytest.mark.parametrize("true_k", [3, 7])
def test_criteria_find_well_separated_blobs(criterion: str, true_k: int) -> None:
    x, _ = _blobs(true_k)
    # n_init=3: each k-means run keeps the best of 3 random starts, so no criterion is judged on a bad optimum
    sel = estimate_k(x, k_range=(2, 12), criterion=criterion, stability_pairs=2, n_runs=2, n_init=3)
    assert sel.k == true_k, (criterion, sel.k_values, sel.scores)


def test_umap_partitions_find_blobs_and_fall_back_where_unmeasured() -> None:
    """partitions="umap" scores k-means partitions of one UMAP layout with its own γ, copies of a row sharing its
    cluster; below UMAP_MIN_ROWS distinct rows the k-means partitions (and their γ) are used, and the settings say
    which."""
    x, _ = _blobs(5, n_per=UMAP_MIN_ROWS // 5 + 20)
    sel = estimate_k(x, k_range=(2, 10), partitions="umap")
    assert sel.k == 5, (sel.k_values, sel.scores)
    assert sel.settings["partitions"] == "umap" and sel.settings["resolution"] == UMAP_RESOLUTION
    assert "UMAP layout" in sel.to_dict()["description"]
    copies = estimate_k(np.concatenate([x, x[:30]]), k_range=(2, 10), partitions="umap")
    assert copies.settings["partitions"] == "umap" and copies.k == 5
    few = x[::2]  # 300 distinct rows of the 5 blobs, each twice
    assert len(few) < UMAP_MIN_ROWS <= 2 * len(few)
    small = estimate_k(np.concatenate([few, few]), k_range=(2, 10), partitions="umap")
    assert small.settings["partitions"] == "kmeans" and small.settings["resolution"] == DEFAULT_RESOLUTION
    with pytest.raises(ImgclustError, match="unknown K partitions"):
        estimate_k(x, partitions="tsne")


@pytest.mark.parametrize("criterion", ["stability", "calinski_harabasz", "davies_bouldin"])
def test_other_criteria_give_a_finite_curve(criterion: str) -> None:
    """Stability ties at K=2 when two blobs merge cleanly, and CH/DB drift on high-dimensional blobs: they are
    kept for comparison (benchmarks/k_estimation.py), not as defaults, so only their mechanics are checked."""
    x, _ = _blobs(3)
    sel = estimate_k(x, k_range=(2, 8), criterion=criterion, stability_pairs=2, n_runs=1)
    assert np.isfinite(sel.scores).all() and sel.k in sel.k_values


def _two_level_blobs(seed: int = 0) -> np.ndarray:
    """2 well-separated groups, each made of 3 overlapping sub-groups of 40 points (a two-level hierarchy)."""
    rng = np.random.default_rng(seed)
    dim = 32
    groups = rng.normal(size=(2, dim))
    groups /= np.linalg.norm(groups, axis=1, keepdims=True)
    subgroups = np.concatenate([g + 0.15 * rng.normal(size=(3, dim)) / np.sqrt(dim) for g in groups])
    labels = np.repeat(np.arange(6), 40)
    return (subgroups[labels] + 0.3 * rng.normal(size=(240, dim)) / np.sqrt(dim)).astype(np.float32)


def test_resolution_chooses_the_level_of_a_hierarchy() -> None:
    """γ is the knob the default was tuned with: low γ keeps the 2 groups, high γ finds the 6 sub-groups."""
    x = _two_level_blobs()
    coarse = estimate_k(x, k_range=(2, 10), n_neighbors=10, resolution=0.3, n_runs=2, n_init=3)
    fine = estimate_k(x, k_range=(2, 10), n_neighbors=10, resolution=1.5, n_runs=2, n_init=3)
    assert (coarse.k, fine.k) == (2, 6), (coarse.scores, fine.scores)
    assert fine.settings == {"partitions": "kmeans", "n_runs": 2, "n_init": 3, "n_neighbors": 10, "resolution": 1.5}


def test_resolution_profile_shows_both_levels_of_a_hierarchy() -> None:
    """One estimate gives the whole profile: the 2 groups at low γ, the 6 sub-groups at high γ, and at the
    estimate's own γ the profile's K is the chosen K."""
    x = _two_level_blobs()
    sel = estimate_k(x, k_range=(2, 10), n_neighbors=10, resolution=0.3, n_runs=2, n_init=3)
    ks = [step.k for step in sel.profile]
    assert ks[0] == 2 and 6 in ks and ks == sorted(ks), sel.profile
    assert sel.profile[0].resolution_from == 0 and sel.profile[-1].resolution_to == float("inf")
    at = [step.k for step in sel.profile if step.resolution_from <= 0.3 < step.resolution_to]
    assert at == [sel.k] == [2]
    at_fine = [step.k for step in sel.profile if step.resolution_from <= 1.5 < step.resolution_to]
    assert at_fine == [6]
    intra, expected = np.array(sel.curves["modularity_intra"]), np.array(sel.curves["modularity_expected"])
    assert np.allclose(sel.curves["modularity"], intra - 0.3 * expected)
    assert neighbouring_levels(sel) == (None, ks[1])  # 2 is the coarsest level: nothing coarser
    saved = sel.to_dict()["resolution_profile"]
    assert saved[-1]["resolution_to"] is None and [s["k"] for s in saved] == ks
    assert json.loads(json.dumps(saved)) == saved


def test_resolution_profile_is_the_exact_upper_envelope() -> None:
    """At every γ, the profile's K is the argmax of intra − γ·expected over all K (random curves, dense γ)."""
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(2, 25))
        ks = list(range(2, 2 + n))
        intra = np.sort(rng.uniform(0.2, 1.0, n))[::-1] + rng.normal(0, 0.02, n)  # coarse K keep more edges
        expected = np.sort(rng.uniform(0.01, 0.6, n))[::-1]
        if trial % 5 == 0:
            intra[rng.integers(n)] = np.nan  # a K whose runs could not be scored is left out
        steps = resolution_profile(ks, intra, expected)
        assert steps[0].resolution_from == 0 and steps[-1].resolution_to == float("inf")
        assert all(a.resolution_to == b.resolution_from for a, b in zip(steps, steps[1:]))
        assert all(step.resolution_to > step.resolution_from for step in steps)
        finite = np.isfinite(intra)
        for gamma in np.exp(rng.uniform(np.log(1e-3), np.log(50), 200)):
            score = np.where(finite, intra - gamma * expected, -np.inf)
            best = int(np.argmax(score))
            if np.sort(score)[-2] > score[best] - 1e-9:
                continue  # a tie at this γ: either K is right
            (step,) = [s for s in steps if s.resolution_from <= gamma < s.resolution_to]
            assert step.k == ks[best], (trial, gamma)
    assert resolution_profile([2, 3], [np.nan, np.nan], [0.5, 0.3]) == []


def test_modularity_terms_match_modularity() -> None:
    rng = np.random.default_rng(1)
    neighbors = rng.integers(0, 50, size=(50, 6))
    labels = rng.integers(0, 4, size=50)
    intra, expected = modularity_terms(neighbors, labels)
    assert modularity(neighbors, labels, 0.7) == pytest.approx(intra - 0.7 * expected)
    assert 0 < expected < 1 and 0 <= intra <= 1


def test_modularity_resolution_and_known_values() -> None:
    # Two 4-cliques joined by nothing: each node's 3 neighbours are the rest of its clique.
    neighbors = np.array([[j for j in range(4 * (i // 4), 4 * (i // 4) + 4) if j != i] for i in range(8)])
    labels = np.repeat([0, 1], 4)
    assert modularity(neighbors, labels) == pytest.approx(0.5)        # 1 − (½² + ½²)
    assert modularity(neighbors, labels, resolution=0.0) == pytest.approx(1.0)  # intra-cluster edge fraction
    assert modularity(neighbors, labels, resolution=2.0) == pytest.approx(0.0)
    assert modularity(neighbors, np.zeros(8, dtype=np.int64)) == pytest.approx(0.0)


def test_graph_neighbors_are_capped_for_small_sets() -> None:
    assert graph_neighbors(DEFAULT_N_NEIGHBORS, 5000) == DEFAULT_N_NEIGHBORS
    assert graph_neighbors(60, 600) == 60      # the smallest development set: uncapped
    assert graph_neighbors(60, 120) == 12      # a tenth of the rows
    assert graph_neighbors(60, 30) == 5 and graph_neighbors(60, 4) == 3
    x, _ = _blobs(3)  # 120 rows: the default 60 neighbours would join the 40-point blobs
    assert estimate_k(x, k_range=(2, 8), n_init=3).settings["n_neighbors"] == 12


def test_selection_is_complete_and_serialisable(tmp_path: Path) -> None:
    x, _ = _blobs(4, n_per=30)
    sel = estimate_k(x * 7.0, k_range="2:9", extra_criteria="all", stability_pairs=2, n_init=3)  # any scale
    assert isinstance(sel, KSelection) and sel.criterion == DEFAULT_CRITERION and sel.k == 4
    assert sel.k_values == list(range(2, 10)) and len(sel.scores) == 8
    assert set(CRITERIA) <= set(sel.curves) and "inertia" in sel.curves
    assert all(sel.choice(c) == 4 for c in ("modularity", "silhouette", "eigengap"))
    paths = write_k_selection(tmp_path, sel, plot=True)
    saved = json.loads(paths["json"].read_text())
    assert saved["k"] == 4 and saved["k_values"][0] == 2 and saved["choices"]["eigengap"] == 4
    assert saved["settings"]["resolution"] == DEFAULT_RESOLUTION
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = format_curve(sel)
    assert "K estimated: 4" in text and "← chosen" in text
    shown = steps_in_view(saved["resolution_profile"])
    assert shown and "modularity by resolution γ" in text
    assert all(f"K={step['k']} for γ" in text.replace("\u00a0", " ") for step in shown)


def test_deterministic() -> None:
    x, _ = _blobs(5, n_per=20, spread=0.6)
    a = estimate_k(x, k_range=(2, 10), seed=3)
    b = estimate_k(x, k_range=(2, 10), seed=3)
    assert a.k == b.k and a.scores == b.scores


def test_range_parsing_and_capping() -> None:
    assert parse_k_range(None) == (2, 30)
    assert parse_k_range("5:50") == (5, 50)
    assert parse_k_range((3, 4)) == (3, 4)
    for bad in ("1:10", "8:4", "x", "2:3:4"):
        with pytest.raises(ImgclustError) as err:
            parse_k_range(bad)
        assert err.value.fix
    x, _ = _blobs(2, n_per=6)  # 12 rows: at most 12 // 3 = 4 clusters are tried
    assert estimate_k(x, k_range=(2, 30)).k_values == [2, 3, 4]
    with pytest.raises(ImgclustError, match="too few"):
        estimate_k(x[:5], k_range=(2, 30))
    with pytest.raises(ImgclustError, match="criterion"):
        estimate_k(x, criterion="nope")
    with pytest.raises(ImgclustError, match="resolution"):
        estimate_k(x, resolution=-1.0)


def test_subsampling_caps_rows() -> None:
    x, _ = _blobs(3, n_per=100)
    sel = estimate_k(x, k_range=(2, 6), max_samples=120)
    assert sel.n_samples == 120 and sel.n_total == 300 and sel.k == 3


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_features_three_cifar_classes(cifar10_dir: Path, tmp_path: Path) -> None:
    """Default-backbone features of 100 CIFAR-10 test images of each of airplane, automobile and bird.

    Measured (after the default was chosen on the development sets; BENCHMARKS.md "Estimating K"): the default
    (modularity, 30 neighbours here — a tenth of the 300 rows — γ = 0.85) says 3 with seeds 0-2 and so does the
    eigengap; silhouette says 2 (the vehicles/animals split). The bands pin that behaviour so a regression shows.
    """
    from imgclust.backbones import create_backbone
    from imgclust.data import PathListDataset
    from imgclust.features import extract_features

    paths, _, _ = cifar10_subset_paths(cifar10_dir, "test", 100, ["airplane", "automobile", "bird"])
    backbone = create_backbone("efficientnet_lite0")
    dataset = PathListDataset(paths, draft_size=backbone.preprocess.input_size)
    feats = extract_features(dataset, backbone, cache_dir=tmp_path / "cache", progress=False).features
    sel = estimate_k(feats, k_range=(2, 15), extra_criteria=["eigengap", "silhouette"])
    assert sel.criterion == DEFAULT_CRITERION
    assert 3 <= sel.k <= 4, format_curve(sel)
    assert sel.choice("eigengap") in (3, 4)
    assert sel.choice("silhouette") in (2, 3)  # the coarse split: why silhouette is not the default
    # The UMAP-layout partitions (what a whitened run scores, here on the raw rows), the row floor lowered to 300.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("imgclust.kselect.UMAP_MIN_ROWS", 100)
        layout = estimate_k(feats, k_range=(2, 15), partitions="umap")
    assert layout.settings["partitions"] == "umap" and 3 <= layout.k <= 4, format_curve(layout)


@pytest.mark.shared_data
def test_cli_summary_names_the_neighbouring_levels(cifar10_small_folder: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """`cluster` without -k tells the user which -k to try next: the steps on each side of the chosen K."""
    from imgclust.cli import main

    out = tmp_path / "run"
    assert main(["cluster", str(cifar10_small_folder), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "-q"]) == 0
    text = capsys.readouterr().out
    saved = json.loads((out / "k_selection.json").read_text())
    ks = [step["k"] for step in saved["resolution_profile"]]
    i = ks.index(saved["k"])
    expected = ([f"{ks[i - 1]} (coarser)"] if i > 0 else []) + ([f"{ks[i + 1]} (finer)"] if i + 1 < len(ks) else [])
    assert f"  next levels of structure: -k {' or -k '.join(expected)}" in text, text


def test_default_k_range_grows_with_the_data() -> None:
    """A fixed 2..30 could never find 50 classes in 2,500 images: the top grows with N (clipped to 30..200), and
    above DENSE_UP_TO the K tried form a grid of about ±5 %."""
    assert default_k_range(300) == (2, 30) and default_k_range(2500) == (2, 62) and default_k_range(10**6) == (2, 200)
    assert parse_k_range(None, n=2500) == (2, 62) and parse_k_range(None) == (2, 30)
    x, _ = _blobs(3, n_per=900, dim=8)  # 2,700 rows: the default range reaches past 60
    sel = estimate_k(x, n_runs=1, max_samples=2700)
    assert sel.k_values[:39] == list(range(2, 41)) and sel.k_values[-1] == 67
    steps = np.diff(sel.k_values[38:]) / np.asarray(sel.k_values[38:-1])
    assert np.all(steps <= 0.06) and np.all(np.diff(sel.k_values) >= 1)
