"""SeCu state (methods/secu/state.py): size-constraint duals, entropy constraint, memory, persistence."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from imgclust.methods.secu.state import (
    SeCuState,
    assign_entropy,
    assign_size,
    dual_step,
    entropy_increments,
)


pytestmark = pytest.mark.usefixtures("single_thread")


def entropy(sizes: torch.Tensor) -> float:
    p = sizes.double() / sizes.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def unbalanced_similarity(n: int = 2000, k: int = 4, major: float = 0.85, seed: int = 0
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) cosine similarities of unit points to K fixed unit centres; ``major`` of the points lie
    near centre 0, the rest spread evenly over the others. Returns (similarity, true cluster)."""
    g = torch.Generator().manual_seed(seed)
    dim = 16
    centres = F.normalize(torch.randn(k, dim, generator=g), dim=1)
    n_major = int(major * n)
    truth = torch.cat([torch.zeros(n_major, dtype=torch.long),
                       1 + torch.arange(n - n_major) % (k - 1)])
    points = F.normalize(centres[truth] + 0.6 * torch.randn(n, dim, generator=g) / dim ** 0.5, dim=1)
    return points @ centres.T, truth


def run_epochs(state: SeCuState, similarity: torch.Tensor, epochs: int, batch: int, seed: int = 0) -> None:
    """Replay the method's per-step protocol with fixed similarities (centres frozen)."""
    g = torch.Generator().manual_seed(seed)
    n = similarity.shape[0]
    for epoch in range(epochs):
        order = torch.randperm(n, generator=g)
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            labels = state.assign(0, similarity[idx], idx, first_epoch=epoch == 0)
            state.commit(0, labels, idx, first_epoch=epoch == 0)
        if epoch < epochs - 1:
            state.end_epoch()


# ------------------------------------------------------------------------------------- size constraint
def test_assign_size_adds_duals() -> None:
    sim = torch.tensor([[0.9, 0.5], [0.2, 0.1]])
    assert assign_size(sim, torch.zeros(2)).tolist() == [0, 0]
    assert assign_size(sim, torch.tensor([0.0, 0.3])).tolist() == [0, 1]


def test_dual_step_hand_computed() -> None:
    # K = 2, B = 4, three in cluster 0: ρ0 = max(0, 0 − 0.1·0.75 + 0.1·0.45) = 0,
    # ρ1 = 0 − 0.1·0.25 + 0.045 = 0.02
    new = dual_step(torch.zeros(2, dtype=torch.float64), torch.tensor([0, 0, 0, 1]), lr=0.1, lower_ratio=0.9)
    torch.testing.assert_close(new, torch.tensor([0.0, 0.02], dtype=torch.float64))
    # no clipping when γ ≥ 1
    new = dual_step(torch.zeros(2, dtype=torch.float64), torch.tensor([0, 0, 0, 1]), lr=0.1, lower_ratio=1.0)
    torch.testing.assert_close(new, torch.tensor([-0.025, 0.025], dtype=torch.float64))


def test_dual_update_lifts_smallest_cluster_above_lower_bound() -> None:
    k, gamma = 4, 0.9
    sim, _ = unbalanced_similarity(k=k)
    plain = torch.bincount(sim.argmax(dim=1), minlength=k)
    assert plain.min() / plain.sum() < 0.1          # deliberately unbalanced: smallest ≈ 5 %
    state = SeCuState(sim.shape[0], [k], constraint="size", lower_ratio=gamma, dual_lr=0.1)
    run_epochs(state, sim, epochs=10, batch=125)
    counts = state.heads[0].counts                    # this epoch's assignment counts
    sizes = state.cluster_sizes(0)
    assert sizes.sum() == sim.shape[0]
    # stochastic dual ascent holds the constrained clusters at γ/K on average over the steps, so the
    # last epoch's sizes sit at the bound up to the per-step noise (a few %), far above the 5 % start
    assert float(counts.min() / counts.sum()) >= 0.95 * gamma / k
    assert float(sizes.min() / sizes.sum()) >= 0.95 * gamma / k
    # the clusters held up by an active dual sit at the bound on average: Σ_steps (γ/K − n_k/B) = Δρ_k / η
    active = state.heads[0].duals > 0
    assert active.sum() >= 1 and not active[0]
    assert float(counts[active].mean() / counts.sum()) >= gamma / k - 0.005
    assert (state.heads[0].duals >= 0).all()
    stats = state.stats()["k4"]
    assert stats["nonempty"] == k and stats["sizes_min"] == int(sizes.min())


def test_size_counts_reset_each_epoch_duals_persist() -> None:
    sim, _ = unbalanced_similarity(n=256)
    state = SeCuState(256, [4], constraint="size")
    run_epochs(state, sim, epochs=1, batch=64)
    duals = state.heads[0].duals.clone()
    assert state.heads[0].counts.sum() == 256
    state.end_epoch()
    assert state.heads[0].counts.sum() == 0
    torch.testing.assert_close(state.heads[0].duals, duals)


# ---------------------------------------------------------------------------------- entropy constraint
def _sum_g(counts: torch.Tensor, denom: float) -> float:
    p = counts.double() / denom
    p = p[p > 0]
    return float((p * p.log()).sum())


def test_entropy_increments_are_exact_changes() -> None:
    counts = torch.tensor([5.0, 0.0, 3.0, 12.0], dtype=torch.float64)
    n = float(counts.sum())
    # later epochs: move one instance from its previous cluster o to k, N fixed
    prev = torch.tensor([0, 2, 3])
    delta = entropy_increments(counts, prev)
    for i, o in enumerate(prev.tolist()):
        for k in range(4):
            moved = counts.clone()
            if k != o:
                moved[o] -= 1
                moved[k] += 1
            want = _sum_g(moved, n) - _sum_g(counts, n)
            assert delta[i, k].item() == pytest.approx(want, abs=1e-12)
    # first epoch: add one instance to k, p = n / (N' + 1)
    first = entropy_increments(counts, None)
    for k in range(4):
        added = counts.clone()
        added[k] += 1
        assert first[0, k].item() == pytest.approx(_sum_g(added, n + 1) - _sum_g(counts, n + 1), abs=1e-12)
    assert entropy_increments(torch.zeros(4, dtype=torch.float64), None) is None


def test_assign_entropy_prefers_small_clusters_when_alpha_large() -> None:
    sim = torch.tensor([[0.9, 0.8]])
    counts = torch.tensor([90.0, 10.0], dtype=torch.float64)
    assert assign_entropy(sim, counts, None, alpha=0.0).tolist() == [0]
    assert assign_entropy(sim, counts, None, alpha=100.0).tolist() == [1]
    # no counts yet: plain argmax
    assert assign_entropy(sim, torch.zeros(2, dtype=torch.float64), None, alpha=100.0).tolist() == [0]


def test_entropy_constraint_raises_entropy() -> None:
    k = 4
    sim, _ = unbalanced_similarity(k=k)
    n = sim.shape[0]
    plain = torch.bincount(sim.argmax(dim=1), minlength=k)
    # α enters as α·Δ with Δ ≈ log(p_k / p_o) / N: α = N trades one unit of similarity for one unit of
    # log-ratio (the authors' CIFAR-10 α = 6000 for N = 50 000 is 0.12 N, tuned for their features)
    state = SeCuState(n, [k], constraint="entropy", alpha=float(n))
    run_epochs(state, sim, epochs=3, batch=128)
    sizes = state.cluster_sizes(0)
    assert sizes.sum() == n
    assert entropy(sizes) > entropy(plain) + 0.5
    weak = SeCuState(n, [k], constraint="entropy", alpha=0.1 * n)
    run_epochs(weak, sim, epochs=3, batch=128)
    assert entropy(plain) < entropy(weak.cluster_sizes(0)) < entropy(sizes)
    # in entropy mode the counts are the global sizes and persist across epochs
    torch.testing.assert_close(state.heads[0].counts, sizes.double())
    state.end_epoch()
    torch.testing.assert_close(state.heads[0].counts, sizes.double())


# ------------------------------------------------------------------------------------ memory semantics
def test_commit_stores_labels_and_previous_labels_are_read_before() -> None:
    state = SeCuState(6, [3], constraint="entropy", alpha=0.0)
    idx = torch.tensor([4, 1, 0])
    assert state.previous_labels(0, idx).tolist() == [-1, -1, -1]
    state.commit(0, torch.tensor([2, 2, 1]), idx, first_epoch=True)
    assert state.previous_labels(0, idx).tolist() == [2, 2, 1]
    assert state.heads[0].counts.tolist() == [0, 1, 2]
    # later epoch: instance 4 moves 2 → 0; counts follow the move
    state.commit(0, torch.tensor([0]), torch.tensor([4]), first_epoch=False)
    assert state.heads[0].counts.tolist() == [1, 1, 1]
    assert state.heads[0].assignments.tolist() == [1, 2, -1, -1, 0, -1]


def test_state_dict_roundtrip_weights_only() -> None:
    sim, _ = unbalanced_similarity(n=200)
    state = SeCuState(200, [4, 6], constraint="size")
    for h in range(2):
        s = sim if h == 0 else torch.cat([sim, sim[:, :2]], dim=1)
        labels = state.assign(h, s[:50], torch.arange(50), True)
        state.commit(h, labels, torch.arange(50), True)
    buf = io.BytesIO()
    torch.save(state.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    other = SeCuState(200, [4, 6], constraint="size")
    other.load_state_dict(loaded)
    for a, b in zip(state.heads, other.heads):
        assert torch.equal(a.assignments, b.assignments)
        assert torch.equal(a.counts, b.counts) and torch.equal(a.duals, b.duals)
    with pytest.raises(ValueError, match="mismatch"):
        SeCuState(200, [4], constraint="size").load_state_dict(loaded)


def test_bad_settings_raise() -> None:
    with pytest.raises(ValueError, match="constraint"):
        SeCuState(10, [2], constraint="balanced")
    with pytest.raises(ValueError, match="K >= 2"):
        SeCuState(10, [1])
    state = SeCuState(10, [3])
    with pytest.raises(ValueError, match="K=3"):
        state.assign(0, torch.zeros(2, 4), torch.arange(2), True)


# ------------------------------------------------------------------------- network and views (small units)
def test_resnet_variants_shapes() -> None:
    from imgclust.methods.secu.resnet import resnet18_cifar, resnet18_stl

    cifar = resnet18_cifar().eval()
    assert isinstance(cifar.maxpool, torch.nn.Identity) and cifar.conv1.stride == (1, 1)
    assert cifar.conv1.kernel_size == (3, 3)
    assert cifar(torch.zeros(2, 3, 32, 32)).shape == (2, 512)
    stl = resnet18_stl().eval()
    assert isinstance(stl.maxpool, torch.nn.MaxPool2d) and isinstance(stl.avgpool, torch.nn.AvgPool2d)
    assert stl(torch.zeros(1, 3, 96, 96)).shape == (1, 512)


def test_model_features_are_unit_and_centres_normalised() -> None:
    from imgclust.methods.secu.model import SeCuModel

    model = SeCuModel(torch.nn.Identity(), 12, [3, 5], dim=8, hidden_dim=16)
    z_a, z_b = model(torch.randn(4, 12), torch.randn(4, 12))
    torch.testing.assert_close(z_a.norm(dim=1), torch.ones(4))
    assert [c.shape for c in model.normalized_centres()] == [(3, 8), (5, 8)]
    torch.testing.assert_close(model.snapshot()[1].norm(dim=1), torch.ones(5))
    assert model.head_for(5) == 1
    assert {id(p) for p in model.centre_parameters()}.isdisjoint({id(p) for p in model.encoder_parameters()})


def test_secu_views_are_deterministic_and_asymmetric() -> None:
    from imgclust.augment import make_generator
    from imgclust.augment import SeCuAugment, secu_views

    view1, view2 = secu_views(0.3)
    assert view1.blur_p == 1.0 and view1.solarize_p == 0.0
    assert view2.blur_p == 0.1 and view2.solarize_p == 0.2
    assert view1.augment_id != view2.augment_id
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    a = view1(images, make_generator(0, 1))
    b = view1(images, make_generator(0, 1))
    assert a.dtype == torch.uint8 and a.shape == images.shape and torch.equal(a, b)
    # blur alone smooths (less pixel-to-pixel variation); solarize alone inverts the bright pixels
    x = torch.rand(4, 3, 32, 32)
    blur = SeCuAugment("none", blur_p=1.0)
    blurred = blur(x, make_generator(1))
    assert (blurred.diff(dim=-1).abs().mean() < 0.8 * x.diff(dim=-1).abs().mean())
    solar = SeCuAugment("none", solarize_p=1.0)(x, make_generator(2))
    torch.testing.assert_close(solar, torch.where(x >= 128 / 255, 1 - x, x))
