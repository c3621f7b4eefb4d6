"""The generic training loop with ICBPL (and a dummy method): toy convergence, exact resume, forms, protocol."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn

from imgclust.augment import BatchAugment
from imgclust.errors import ImgclustError
from imgclust.methods.icbpl import ICBPL, ICBPLConfig, ICBPLModel, fit_icbpl
from imgclust.methods.base import FitContext
from imgclust.metrics import cluster_accuracy
from imgclust.train import (
    Batch,
    EpochBatchSampler,
    MethodBase,
    SplitEncoder,
    TrainConfig,
    TrainInputs,
    draw_for_rows,
    fit,
    load_checkpoint,
    unwrap,
)


pytestmark = pytest.mark.usefixtures("single_thread")


def blobs(k: int = 3, per: int = 40, dim: int = 16, n_views: int = 2, seed: int = 0
          ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """K well-separated Gaussian blobs as "features", plus noisy copies as cached augmented views."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim)) * 3
    x = np.concatenate([centers[i] + rng.normal(size=(per, dim)) for i in range(k)]).astype(np.float32)
    views = [x + 0.3 * rng.normal(size=x.shape).astype(np.float32) for _ in range(n_views)]
    return x, views, np.repeat(np.arange(k), per)


def small_icbpl(k: int = 3, **kw: Any) -> ICBPL:
    args = dict(n_clusters=k, latent_dim=16, hidden_dim=32, n_neighbors=5)
    args.update(kw)
    return ICBPL(ICBPLConfig(**args))


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- convergence ---------------------------------------------------------------------------------------------

def test_head_mode_on_blobs_lowers_loss_and_finds_clusters(tmp_path: Path) -> None:
    x, views, y = blobs()
    inputs = TrainInputs.from_features(x, views=views, labels=y)
    result = fit(small_icbpl(), inputs, TrainConfig(epochs=10, batch_size=30, lr=1e-2, seed=0), run_dir=tmp_path)
    losses = [r["loss"] for r in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert cluster_accuracy(y, result.labels) > 0.97
    assert result.history[-1]["acc"] > 0.97  # logged from labels, for reporting only
    assert result.confidence.shape == (len(y),) and (result.confidence > 1 / 3).all()
    lines = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert len(lines) == 10
    first = json.loads(lines[0])
    for key in ("epoch", "loss", "mmd", "aug", "knn", "min", "lr", "selection_score", "neighbor_purity", "time_s"):
        assert key in first
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert saved["epochs_done"] == 10 and saved["method"] == "icbpl"
    assert (tmp_path / "checkpoints" / "best.pt").exists()


def test_labels_are_never_needed() -> None:
    x, views, y = blobs()
    a = fit(small_icbpl(), TrainInputs.from_features(x, views=views, labels=y), TrainConfig(epochs=2, batch_size=30))
    b = fit(small_icbpl(), TrainInputs.from_features(x, views=views), TrainConfig(epochs=2, batch_size=30))
    assert state_equal(a.model, b.model)
    assert "acc" not in b.history[-1] and "neighbor_purity" not in b.history[-1]


class DtypeSpy(ICBPL):
    """ICBPL that records the dtype its head computes in during training steps."""

    def training_step(self, model: nn.Module, batch: Batch, ctx: Any) -> dict[str, torch.Tensor]:
        linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
        self.step_dtype = linear(batch.views[0][:, :linear.in_features]).dtype
        return super().training_step(model, batch, ctx)


@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("auto", torch.float32)])
def test_cpu_autocast_only_when_bf16_is_asked_for(amp: str, dtype: torch.dtype) -> None:
    x, views, y = blobs()
    method = DtypeSpy(ICBPLConfig(n_clusters=3, latent_dim=16, hidden_dim=32, n_neighbors=5))
    result = fit(method, TrainInputs.from_features(x, views=views, labels=y),
                 TrainConfig(epochs=10, batch_size=30, lr=1e-2, seed=0, amp=amp))
    assert method.step_dtype == dtype
    assert cluster_accuracy(y, result.labels) > 0.97          # bfloat16 steps still train the head


# -- exact resume --------------------------------------------------------------------------------------------

class Killed(Exception):
    pass


class KillAt(ICBPL):
    """ICBPL that dies in the middle of an epoch (simulates a killed process)."""

    def __init__(self, config: ICBPLConfig, epoch: int, step: int):
        super().__init__(config)
        self.kill = (epoch, step)

    def training_step(self, model: nn.Module, batch: Batch, ctx: Any) -> dict[str, torch.Tensor]:
        if (batch.epoch, batch.step) == self.kill:
            raise Killed
        return super().training_step(model, batch, ctx)


@pytest.mark.parametrize("remine_every", [0, 1])
def test_killed_and_resumed_run_matches_uninterrupted(tmp_path: Path, remine_every: int) -> None:
    x, views, y = blobs(n_views=3)
    config = TrainConfig(epochs=4, batch_size=24, lr=5e-3, seed=3, warmup_epochs=1)
    icbpl = ICBPLConfig(n_clusters=3, latent_dim=16, hidden_dim=32, n_neighbors=5, remine_every=remine_every)

    straight = fit(ICBPL(icbpl), TrainInputs.from_features(x, views=views, labels=y), config,
                   run_dir=tmp_path / "straight")
    with pytest.raises(Killed):
        fit(KillAt(icbpl, epoch=2, step=1), TrainInputs.from_features(x, views=views, labels=y), config,
            run_dir=tmp_path / "killed")
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["epochs_done"] == 2
    torch.manual_seed(999)  # the resumed process starts with other global RNG states
    np.random.seed(999)
    resumed = fit(ICBPL(icbpl), TrainInputs.from_features(x, views=views, labels=y), config,
                  run_dir=tmp_path / "killed", resume=True)

    assert resumed.resumed_from == 2 and resumed.epochs_done == 4
    assert state_equal(straight.model, resumed.model)
    for name, p in straight.model.named_parameters():
        assert torch.equal(p, dict(resumed.model.named_parameters())[name])
    assert np.array_equal(straight.labels, resumed.labels)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    assert torch.equal(a["method_state"]["neighbors"], b["method_state"]["neighbors"])
    log_a = [json.loads(line) for line in (tmp_path / "straight" / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(line) for line in (tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log_b] == [0, 1, 2, 3]
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]


def test_resume_refuses_changed_settings_and_other_methods(tmp_path: Path) -> None:
    x, views, _ = blobs()
    fit(small_icbpl(), TrainInputs.from_features(x, views=views), TrainConfig(epochs=1, batch_size=30),
        run_dir=tmp_path)
    with pytest.raises(ImgclustError, match="lr"):
        fit(small_icbpl(), TrainInputs.from_features(x, views=views), TrainConfig(epochs=2, batch_size=30, lr=0.5),
            run_dir=tmp_path, resume=True)
    with pytest.raises(ImgclustError, match="method"):
        fit(Recorder(), TrainInputs.from_features(x, views=views), TrainConfig(epochs=2, batch_size=30),
            run_dir=tmp_path, resume=True)
    # More epochs is allowed (extends the run).
    result = fit(small_icbpl(), TrainInputs.from_features(x, views=views), TrainConfig(epochs=2, batch_size=30),
                 run_dir=tmp_path, resume=True)
    assert result.resumed_from == 1 and len(result.history) == 2


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    x, views, _ = blobs()
    result = fit(small_icbpl(), TrainInputs.from_features(x, views=views), TrainConfig(epochs=1, batch_size=30),
                 run_dir=tmp_path, resume=True)
    assert result.resumed_from == 0 and result.epochs_done == 1


# -- the two other input forms (fine-tuning) -------------------------------------------------------------------

class TinyBackbone(nn.Module):
    """trunk: conv + BN (frozen); tail: conv + pool (trainable); 8-d features."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.tail = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def tiny_images(n: int = 24, size: int = 8) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(0)
    labels = np.repeat(np.arange(3), n // 3)
    base = torch.tensor([[230, 30, 30], [30, 230, 30], [30, 30, 230]], dtype=torch.float32)[labels]
    x = base[:, :, None, None] + 20 * torch.randn(n, 3, size, size, generator=g)
    return x.clamp(0, 255).to(torch.uint8), labels


def test_cached_trunk_finetune_trains_tail_only(tmp_path: Path) -> None:
    bb = TinyBackbone()
    images, labels = tiny_images()
    aug = BatchAugment("simclr")
    from imgclust.augment import make_generator

    with torch.no_grad():
        bb.trunk.eval()
        views = [bb.trunk(aug(images.float() / 255, make_generator(0, v))).numpy() for v in range(2)]
        clean = bb.trunk(images.float() / 255).numpy()
        reference = bb.tail(torch.from_numpy(clean)).numpy()
    tail_before = {k: v.clone() for k, v in bb.tail.state_dict().items()}
    inputs = TrainInputs(views=views, clean=clean, encoder=SplitEncoder(None, bb.tail), feature_dim=8,
                         labels=labels, reference_features=reference)
    assert inputs.spec().item_shape == (4, 8, 8)
    result = fit(small_icbpl(n_neighbors=3), inputs, TrainConfig(epochs=2, batch_size=12), run_dir=tmp_path)
    assert np.isfinite(result.history[-1]["loss"])
    assert any(not torch.equal(tail_before[k], v) for k, v in bb.tail.state_dict().items())
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert any(k.startswith("encoder.tail.") for k in saved["model"])
    # The tail got the scaled-down learning rate.
    lrs = {g["name"]: g["lr"] for g in saved["optimizer"]["param_groups"]}
    assert lrs["encoder"] == pytest.approx(0.1 * lrs["head"])


def test_images_form_augments_per_step_and_keeps_trunk_frozen(tmp_path: Path) -> None:
    bb = TinyBackbone()
    trunk_before = {k: v.clone() for k, v in bb.trunk.state_dict().items()}
    images, labels = tiny_images()

    def make_inputs() -> TrainInputs:
        return TrainInputs(images=images, augment=BatchAugment("simclr"), normalize=lambda t: (t - 0.5) / 0.25,
                           encoder=SplitEncoder(bb.trunk, bb.tail), feature_dim=8, labels=labels)

    inputs = make_inputs()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    v1, v2 = inputs.load_views(np.arange(4), 2, g1, torch.device("cpu")), inputs.load_views(
        np.arange(4), 2, g2, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(v1, v2)) and not torch.equal(v1[0], v1[1])
    result = fit(small_icbpl(n_neighbors=3), inputs, TrainConfig(epochs=2, batch_size=12), run_dir=tmp_path)
    assert np.isfinite(result.history[-1]["loss"])
    for k, v in bb.trunk.state_dict().items():  # weights and BN running statistics untouched
        assert torch.equal(trunk_before[k], v), k
    # The exported ClusterModel consumes trunk activations (the trunk is left out of it).
    model = ICBPLModel(result.model, small_icbpl().config, 8, None, trainable_blocks=1)
    assert model.input_encoder == "trunk-1"
    assert not any(k.startswith("encoder.trunk") for k in model.state_tensors())


# -- the protocol, as another method (SeCu) will use it ---------------------------------------------------------

class Recorder(MethodBase):
    """A minimal method: a linear map, per-instance memory in its state, records what it is given."""

    name = "recorder"
    n_views = 2

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []
        self.epoch_starts: list[int] = []
        self.memory: torch.Tensor | None = None

    def build_model(self, spec: Any) -> nn.Module:
        self.memory = torch.full((spec.n_samples,), -1, dtype=torch.int64)
        return nn.Linear(spec.feature_dim, 2)

    def on_epoch_start(self, model: nn.Module, epoch: int, ctx: Any) -> None:
        assert not unwrap(model).training  # hooks see eval mode
        self.epoch_starts.append(epoch)

    def training_step(self, model: nn.Module, batch: Batch, ctx: Any) -> dict[str, torch.Tensor]:
        assert len(batch.views) == 2 and batch.views[0].shape == batch.views[1].shape
        assert batch.views[0].shape[0] == len(batch)
        self.seen.append(batch.indices.numpy().copy())
        assert self.memory is not None
        self.memory[batch.indices] = batch.epoch
        out = model(batch.views[0]) - model(batch.views[1])
        return {"loss": (out ** 2).mean(), "n": torch.tensor(float(len(batch)))}

    def predict(self, model: nn.Module, inputs: Any, ctx: Any) -> tuple[np.ndarray, np.ndarray]:
        z = ctx.embed(model)
        return z.argmax(1).numpy(), torch.softmax(z, 1).max(1).values.numpy()

    def selection_score(self, model: nn.Module, inputs: Any, ctx: Any) -> float:
        return float(ctx.embed(model).pow(2).mean())

    def state_dict(self) -> dict[str, Any]:
        return {"memory": self.memory}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory = state["memory"]


def test_protocol_indices_views_hooks_and_state(tmp_path: Path) -> None:
    x, views, _ = blobs(per=10)
    method = Recorder()
    result = fit(method, TrainInputs.from_features(x, views=views),
                 TrainConfig(epochs=3, batch_size=8, drop_last=False, seed=1), run_dir=tmp_path)
    assert method.epoch_starts == [0, 1, 2]
    per_epoch = np.split(np.concatenate(method.seen), 3)
    for seen in per_epoch:  # every instance exactly once per epoch, with its index
        assert np.array_equal(np.sort(seen), np.arange(30))
    assert not np.array_equal(per_epoch[0], per_epoch[1])
    assert np.array_equal(per_epoch[0], EpochBatchSampler(30, 8, seed=1, drop_last=False).permutation(0))
    assert result.history[-1]["n"] == pytest.approx(30 / 4)
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert torch.equal(saved["method_state"]["memory"], torch.full((30,), 2))


def test_cached_views_are_distinct_per_sample_or_grouped() -> None:
    x = np.zeros((6, 1), np.float32)
    views = [x + v for v in range(3)]
    inputs = TrainInputs.from_features(x, views=views)
    a, b = inputs.load_views(np.arange(6), 2, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert (a != b).all()
    grouped = TrainInputs(views=views, clean=x, view_groups=[[0], [1, 2]])
    a, b = grouped.load_views(np.arange(6), 2, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert (a == 0).all() and ((b == 1) | (b == 2)).all()


def test_sampler_is_a_function_of_seed_and_epoch() -> None:
    s = EpochBatchSampler(10, 4, seed=0)
    assert len(s) == 2 and all(len(b) == 4 for b in s.batches(0))
    assert all(np.array_equal(p, q) for p, q in zip(s.batches(3), EpochBatchSampler(10, 4, seed=0).batches(3)))
    assert len(EpochBatchSampler(10, 4, seed=0, drop_last=False)) == 3
    assert len(EpochBatchSampler(3, 8, seed=0)) == 1  # a single short batch is kept
    halves = [EpochBatchSampler(10, 4, seed=0, rank=r, world_size=2).batches(0) for r in range(2)]
    for i, full in enumerate(s.batches(0)):
        assert np.array_equal(np.concatenate([halves[0][i], halves[1][i]]), full)


def test_per_sample_draws_do_not_depend_on_the_number_of_processes() -> None:
    # 3 processes holding parts of a global batch of 11 draw what one process draws for the same samples.
    whole = EpochBatchSampler(11, 11, seed=0).batches_with_parts(0)[0]
    parts = [EpochBatchSampler(11, 11, seed=0, rank=r, world_size=3).batches_with_parts(0)[0] for r in range(3)]
    assert whole[1] == (0, 11) and [p[1] for p in parts] == [(0, 11), (4, 11), (8, 11)]

    def draws(indices: np.ndarray, part: tuple[int, int]) -> torch.Tensor:
        generator = torch.Generator().manual_seed(7)
        return draw_for_rows(lambda m: torch.rand(m, generator=generator), len(indices), part)

    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole[0])
    torch.testing.assert_close(torch.cat([draws(*p) for p in parts]), draws(*whole), rtol=0, atol=0)
    assert not torch.equal(draws(parts[1][0], None), draws(*parts[1]))  # without the part: another draw


# -- safety --------------------------------------------------------------------------------------------------

def test_non_finite_loss_stops_with_a_fix() -> None:
    class Diverges(Recorder):
        def training_step(self, model: nn.Module, batch: Batch, ctx: Any) -> dict[str, torch.Tensor]:
            return {"loss": model(batch.views[0]).sum() * float("nan")}

    x, views, _ = blobs(per=5)
    with pytest.raises(ImgclustError, match="learning rate"):
        fit(Diverges(), TrainInputs.from_features(x, views=views), TrainConfig(epochs=1, batch_size=5))


def test_bad_settings_are_reported() -> None:
    with pytest.raises(ImgclustError, match="optimizer"):
        TrainConfig(optimizer="lion")
    with pytest.raises(ImgclustError, match="w_mmd"):
        ICBPLConfig(w_mmd=-1)
    with pytest.raises(ValueError, match="rows"):
        TrainInputs.from_features(np.zeros((5, 2), np.float32), labels=np.zeros(4))


def test_select_best_returns_the_best_scoring_epoch(tmp_path: Path) -> None:
    x, views, _ = blobs()
    result = fit(small_icbpl(), TrainInputs.from_features(x, views=views),
                 TrainConfig(epochs=4, batch_size=30, select="best"), run_dir=tmp_path)
    scores = [r["selection_score"] for r in result.history]
    assert result.best_epoch == int(np.argmin(scores))
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["epoch"] == result.best_epoch
    assert all(torch.equal(v, result.model.state_dict()[k]) for k, v in best["model"].items())


# -- the registry entry point ------------------------------------------------------------------------------

def test_fit_icbpl_on_embeddings_and_model_roundtrip(tmp_path: Path) -> None:
    x, _, y = blobs()
    # 8 epochs were enough on one CPU model and left two blobs merged on another (float summation order):
    # 20 converged for seeds 0-3 on the second.
    context = FitContext(features=x, n_clusters=3, seed=0, labels=y, run_dir=tmp_path,
                         options={"epochs": 20, "batch_size": 30, "lr": 1e-2, "latent_dim": 16, "hidden_dim": 32,
                                  "n_neighbors": 5})
    result = fit_icbpl(context)
    assert cluster_accuracy(y, result.assignment.labels) > 0.9
    model = result.model
    again = ICBPLModel.from_state(model.state_tensors(), json.loads(json.dumps(model.config())))
    a, b = model.assign(x), again.assign(x)
    assert np.array_equal(a.labels, b.labels) and np.allclose(a.confidence, b.confidence)
    assert np.array_equal(a.labels, result.assignment.labels)
    assert np.allclose(a.distance, result.assignment.distance, atol=1e-6)
    with pytest.raises(ImgclustError, match="unknown ICBPL option"):
        fit_icbpl(FitContext(features=x, n_clusters=3, options={"epoch": 3}))


# -- prepare_inputs through the real feature cache, with a tiny backbone ---------------------------------------

class TinyConvBackbone(__import__("imgclust.backbones.base", fromlist=["Backbone"]).Backbone):
    """A 2-block conv net obeying the Backbone contract (8x8 inputs, 6-d features)."""

    def __init__(self) -> None:
        from imgclust.backbones.base import Preprocess

        super().__init__("tiny", 6, Preprocess(8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear"), "test:tiny")
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()),
                                     nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    @property
    def num_blocks(self) -> int:
        return 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.pool(x)

    def _split(self, n: int) -> tuple[nn.Module, nn.Module]:
        cut = 2 - n
        return (nn.Sequential(self.stem, *self.blocks[:cut]), nn.Sequential(*self.blocks[cut:], self.pool))


@pytest.mark.parametrize("blocks,on_the_fly", [(0, False), (1, False), (1, True)])
def test_prepare_inputs_and_fit_icbpl_on_images(tmp_path: Path, blocks: int, on_the_fly: bool) -> None:
    from imgclust.data.arrays import ArrayImageDataset
    from imgclust.features import FeatureSource, extract_features
    from imgclust.train import prepare_inputs

    images, labels = tiny_images(n=24, size=8)
    dataset = ArrayImageDataset(images.permute(0, 2, 3, 1).numpy(), labels=labels)
    backbone = TinyConvBackbone().eval()
    pristine = {k: v.clone() for k, v in backbone.state_dict().items()}
    features = np.asarray(extract_features(dataset, backbone, cache_dir=tmp_path / "cache", num_workers=0,
                                           progress=False).features)
    source = FeatureSource.from_backbone(backbone, cache_dir=tmp_path / "cache", num_workers=0, progress=False)
    inputs = prepare_inputs(dataset, source, n_trainable_blocks=blocks, n_views=2, on_the_fly=on_the_fly,
                            labels=labels)
    if blocks == 0:
        assert inputs.spec().item_shape == (6,) and np.allclose(np.asarray(inputs.clean), features)
    elif not on_the_fly:
        assert inputs.spec().item_shape == (4, 8, 8) and inputs.n_views == 2
        with torch.no_grad():  # the cached clean trunk activations reproduce the backbone through the tail
            out = inputs.encoder(torch.from_numpy(np.array(inputs.clean)))
        assert np.allclose(out.numpy(), features, atol=1e-5)
    else:
        assert inputs.images is not None and inputs.images.dtype == torch.uint8
    context = FitContext(features=features, n_clusters=3, seed=0, dataset=dataset, source=source, labels=labels,
                         run_dir=tmp_path / "run", options={"epochs": 2, "batch_size": 12, "trainable_blocks": blocks,
                                                            "n_views": 2, "on_the_fly": on_the_fly, "n_neighbors": 3,
                                                            "latent_dim": 8, "hidden_dim": 16})
    result = fit_icbpl(context)
    assert result.assignment.labels.shape == (24,)
    assert result.model.input_encoder == ("backbone" if blocks == 0 else f"trunk-{blocks}")
    for k, v in backbone.state_dict().items():  # training never touches the shared backbone
        assert torch.equal(pristine[k], v), k
    # The returned model assigns its kind of inputs (features / trunk activations) as during training.
    if not on_the_fly:
        encoder_inputs = features if blocks == 0 else np.array(inputs.clean)
        assert np.array_equal(result.model.assign(encoder_inputs).labels, result.assignment.labels)
    if blocks == 0:
        again = ICBPLModel.from_state(result.model.state_tensors(), result.model.config())
        assert np.array_equal(again.assign(features).labels, result.assignment.labels)


def test_min_loss_warmup_is_a_function_of_the_step() -> None:
    method = ICBPL(ICBPLConfig(w_min=0.5, min_warmup_epochs=2))
    assert method.min_weight(0, 10) == pytest.approx(0.025)
    assert method.min_weight(9, 10) == pytest.approx(0.25)
    assert method.min_weight(19, 10) == method.min_weight(500, 10) == pytest.approx(0.5)
    assert ICBPL(ICBPLConfig(w_min=0.5)).min_weight(0, 10) == 0.5


@pytest.mark.parametrize("clean_view", [False, True])
def test_clean_view_makes_the_first_step_view_the_clean_input(clean_view: bool) -> None:
    """``clean_view``: x1 is the clean input and x2 an augmented view; by default both are augmented."""
    x, views, _ = blobs(per=8)
    method = small_icbpl(clean_view=clean_view)
    assert method.n_views == (1 if clean_view else 2)
    inputs = TrainInputs.from_features(x, views=views)
    model = method.build_model(inputs.spec())
    seen: list[torch.Tensor] = []
    forward = model.forward
    model.forward = lambda batch_input: (seen.append(batch_input), forward(batch_input))[1]

    class Context:
        def load(self, indices, generator, n_views=1, part=None):
            return inputs.load_views(np.asarray(indices), n_views, generator, torch.device("cpu"), part)

        def load_clean(self, indices):
            return inputs.load_clean(np.asarray(indices), torch.device("cpu"))

    indices = np.arange(6)
    generator = torch.Generator().manual_seed(0)
    batch = Batch(indices=torch.as_tensor(indices), views=inputs.load_views(indices, method.n_views, generator,
                                                                            torch.device("cpu")),
                  epoch=0, step=0, global_step=0, generator=generator)
    method.neighbors = torch.zeros((len(x), 1), dtype=torch.int64)
    out = method.training_step(model, batch, Context())
    assert torch.isfinite(out["loss"])
    x1, x2 = seen[0][:6], seen[0][6:]
    assert torch.equal(x1, torch.as_tensor(x[indices])) == clean_view
    assert not torch.equal(x2, torch.as_tensor(x[indices]))


@pytest.mark.parametrize("method", ["icbpl", "secu"])
def test_head_mode_without_views_runs_no_extra_backbone_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             method: str) -> None:
    """n_views=0: the head trains on the clean features alone; no augmented view is ever extracted."""
    import imgclust.features as features_module
    from imgclust.data.arrays import ArrayImageDataset
    from imgclust.methods.secu import fit_secu

    fit_method = {"icbpl": fit_icbpl, "secu": fit_secu}[method]

    images, labels = tiny_images(n=24, size=8)
    dataset = ArrayImageDataset(images.permute(0, 2, 3, 1).numpy(), labels=labels)
    backbone = TinyConvBackbone().eval()
    features = np.asarray(features_module.extract_features(dataset, backbone, cache_dir=tmp_path / "cache",
                                                           num_workers=0, progress=False).features)

    def no_extraction(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("n_views=0 must not extract augmented views")

    monkeypatch.setattr(features_module, "extract_features", no_extraction)
    monkeypatch.setattr(features_module.FeatureSource, "extract", no_extraction)
    options = {"epochs": 2, "batch_size": 12, "n_views": 0, "hidden_dim": 16}
    options.update({"n_neighbors": 3, "latent_dim": 8} if method == "icbpl" else {"ks": [3]})
    source = features_module.FeatureSource.from_backbone(backbone, cache_dir=tmp_path / "cache", num_workers=0,
                                                         progress=False)
    context = FitContext(features=features, n_clusters=3, seed=0, dataset=dataset, source=source,
                         labels=labels, options=options)
    result = fit_method(context)
    assert result.assignment.labels.shape == (24,)
    if method == "icbpl":
        assert all(abs(epoch["aug"]) < 1e-6 for epoch in result.info["history"])  # two identical views
    with pytest.raises(ImgclustError, match="n_views"):
        fit_method(FitContext(features=features, n_clusters=3, dataset=dataset, source=source,
                              options={**options, "trainable_blocks": 1}))
