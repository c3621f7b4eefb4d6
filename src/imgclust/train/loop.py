"""The one training loop of imgclust: :func:`fit` trains any :class:`~imgclust.train.protocol.TrainableMethod`.

What it guarantees, whatever the method:

* **device as a parameter**: nothing here says ``.cuda()``; AMP (autocast, and a GradScaler for fp16) on CUDA,
  and bfloat16 autocast on a CPU only when asked for (``amp="bf16"``);
* **determinism**: global RNGs seeded from ``config.seed`` before the model is built; the data order of
  epoch e is a permutation drawn from (seed, e) only; every step gets a generator seeded from
  (seed, epoch, step) for its views and the method's own sampling;
* **exact resume**: after every epoch ``run_dir/checkpoints/last.pt`` is written atomically with model,
  optimiser, scheduler, scaler, method state, RNG states, epoch and history; ``resume=True`` continues from
  it and ends with the same weights as an uninterrupted run;
* **logging**: one JSON line per epoch in ``run_dir/train_log.jsonl`` (mean of every value the method's
  ``training_step`` returned, learning rate, time, label-free selection score, cluster-size summary, and
  ACC/NMI/ARI when labels exist; labels are never used for anything else);
* **label-free model selection**: ``best.pt`` keeps the epoch with the lowest ``method.selection_score``;
  ``config.select="best"`` returns that model, ``"last"`` the final one;
* a non-finite loss stops the run with an error that says what to change;
* under ``torchrun`` (see :mod:`imgclust.distributed`) each process trains on its slice of every global
  batch through DistributedDataParallel, batch norms use global statistics, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .. import distributed as dist
from .._io import write_text
from ..augment import make_generator
from ..errors import ImgclustError
from ..metrics import evaluate
from .checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from .protocol import Batch, EpochBatchSampler, TrainableMethod, TrainInputs, unwrap

_logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "TrainContext", "TrainResult", "fit", "OPTIMIZERS", "SCHEDULES"]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
AMP_MODES = ("auto", "bf16", "fp16", "off")

# Settings that may differ between a run and its resumption (they do not change the trajectory, or
# change only what is evaluated/returned). ``epochs`` may grow, which stretches the cosine schedule.
_RESUMABLE_CHANGES = {"epochs", "eval_every", "eval_batch_size", "select", "log_metrics", "progress"}


@dataclass
class TrainConfig:
    """Settings of :func:`fit` shared by every method (method-specific ones live in the method).

    Attributes:
        epochs: passes over the N samples.
        batch_size: global batch size (split over processes under torchrun).
        lr: base learning rate (a parameter group may scale it with ``"lr_scale"``).
        weight_decay: default weight decay (a group may set its own ``"weight_decay"``).
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (momentum ``momentum``).
        momentum: SGD momentum.
        schedule: ``"cosine"`` (per step, to ``min_lr_ratio``·lr) or ``"constant"``; groups with
            ``"fixed_lr": True`` are never scheduled.
        warmup_epochs: linear warm-up length (per step), before the schedule.
        min_lr_ratio: final lr of the cosine schedule, relative to the base.
        grad_clip: max global gradient norm, or ``None``.
        seed: seeds everything (model init, data order, views, method sampling).
        amp: ``"auto"`` (bf16 where supported, else fp16) / ``"bf16"`` / ``"fp16"`` / ``"off"`` on CUDA. On a
            CPU only ``"bf16"`` turns autocast on (opt-in: 1.7× faster steps on CPUs with AMX, measured on
            EfficientNet-Lite0's last block; without AMX it is slower), the others mean off.
        drop_last: drop each epoch's last incomplete batch.
        eval_every: compute the selection score (+ metrics) every this many epochs, and at the last.
        eval_batch_size: batch size of evaluation passes over the clean inputs.
        select: ``"last"`` or ``"best"`` (lowest label-free selection score) model returned.
        log_metrics: with labels, add ACC/NMI/ARI to the log (for reporting only).
        progress: show a progress bar per epoch.
        hold_epochs: epochs at lr 0 at the very start (scheduled groups only), before the warm-up, which
            then ramps from 0 over the steps ``[hold, warmup)`` (SeCu's epoch 0, in which only the
            fixed-lr centres move).
    """

    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    amp: str = "auto"
    drop_last: bool = True
    eval_every: int = 1
    eval_batch_size: int = 1024
    select: str = "last"
    log_metrics: bool = True
    progress: bool = False
    hold_epochs: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.hold_epochs < 0:
            problems.append(f"hold_epochs must be >= 0, got {self.hold_epochs}")
        if self.epochs < 0:
            problems.append(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.amp not in AMP_MODES:
            problems.append(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.select not in ("last", "best"):
            problems.append(f"select must be 'last' or 'best', got {self.select!r}")
        if self.eval_every < 1:
            problems.append(f"eval_every must be >= 1, got {self.eval_every}")
        if problems:
            raise ImgclustError("invalid training settings: " + "; ".join(problems),
                                "fix the listed training options")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """What :func:`fit` returns.

    Attributes:
        model: the trained model (unwrapped, on the training device, eval mode); the best-scoring epoch's
            weights when ``config.select == "best"``.
        labels: (N,) int64 predicted cluster of each training sample (from ``method.predict``).
        confidence: (N,) float32.
        history: one dict per epoch (the lines of ``train_log.jsonl``).
        epochs_done: epochs trained in total (including those before a resume).
        best_epoch: epoch with the lowest selection score (-1 if none was evaluated).
        best_score: that score (``inf`` if none).
        resumed_from: epochs already done when this call started (0 for a fresh run).
    """

    model: nn.Module
    labels: np.ndarray
    confidence: np.ndarray
    history: list[dict[str, Any]] = field(default_factory=list)
    epochs_done: int = 0
    best_epoch: int = -1
    best_score: float = math.inf
    resumed_from: int = 0

    def summary(self) -> dict[str, Any]:
        """What a method's fit reports about its training (epochs, selection, resume, the per-epoch log)."""
        return {"epochs": self.epochs_done, "best_epoch": self.best_epoch, "best_score": self.best_score,
                "resumed_from": self.resumed_from, "history": self.history}


class TrainContext:
    """The loop's services for a method (see :class:`~imgclust.train.protocol.TrainContextProtocol`)."""

    def __init__(self, inputs: TrainInputs, config: TrainConfig, device: torch.device, run_dir: Path | None):
        self.inputs = inputs
        self.config = config
        self.device = device
        self.run_dir = run_dir
        self.seed = int(config.seed)
        self.epoch = 0
        self.global_step = 0
        self.steps_per_epoch = 0
        # Bumped whenever the weights change (each step, and when the best epoch's weights are loaded):
        # a method may memoise its clean-input embedding on (model_version, epoch).
        self.model_version = 0
        self._logged: dict[str, float] = {}
        self.amp_dtype: torch.dtype | None = None
        if device.type == "cuda" and config.amp != "off":
            if config.amp == "fp16" or (config.amp == "auto" and not torch.cuda.is_bf16_supported()):
                self.amp_dtype = torch.float16
            else:
                self.amp_dtype = torch.bfloat16
        elif device.type == "cpu" and config.amp == "bf16":
            self.amp_dtype = torch.bfloat16

    def autocast(self) -> Any:
        """Mixed precision per ``config.amp`` (see :class:`TrainConfig`); a no-op context when it is off."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def load(self, indices: np.ndarray | torch.Tensor, generator: torch.Generator, n_views: int = 1,
             part: tuple[int, int] | None = None) -> list[torch.Tensor]:
        """Augmented views of any samples (e.g. mined neighbours), as for a batch (``part``: the batch's)."""
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        return self.inputs.load_views(np.asarray(indices, dtype=np.int64), n_views, generator, self.device, part)

    def load_clean(self, indices: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Un-augmented inputs of any samples."""
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        return self.inputs.load_clean(np.asarray(indices, dtype=np.int64), self.device)

    @torch.no_grad()
    def embed(self, fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int | None = None) -> torch.Tensor:
        """``fn`` over every clean input, in order, without gradients; (N, ...) float32 on the device.

        The caller chooses the mode (the loop calls the hooks, ``predict`` and ``selection_score`` with the
        model in eval mode).
        """
        parts = []
        for _, x in self.inputs.iter_clean(batch_size or self.config.eval_batch_size, self.device):
            with self.autocast():
                parts.append(fn(x).float())
        return torch.cat(parts, dim=0)

    def log(self, **scalars: float) -> None:
        """Add numbers to this epoch's JSON log line."""
        for key, value in scalars.items():
            self._logged[key] = float(value)

    def _take_logged(self) -> dict[str, float]:
        logged, self._logged = self._logged, {}
        return logged


def _lr_lambda(config: TrainConfig, steps_per_epoch: int, fixed: bool) -> Callable[[int], float]:
    total = max(1, config.epochs * steps_per_epoch)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    hold = int(round(config.hold_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if fixed:
            return 1.0
        if step < hold:
            return 0.0
        if step < warmup:
            return (step - hold + 1) / (warmup - hold)
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _make_optimizer(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
    prepared = []
    for group in groups:
        group = dict(group)
        group["params"] = [p for p in group["params"] if p.requires_grad]
        if not group["params"]:
            continue
        group.setdefault("lr", config.lr * float(group.get("lr_scale", 1.0)))
        group.setdefault("weight_decay", config.weight_decay)
        group.setdefault("fixed_lr", False)
        group.setdefault("name", f"group{len(prepared)}")
        prepared.append(group)
    if not prepared:
        raise ImgclustError("the model has no trainable parameters", "this method needs a trainable head")
    if config.optimizer == "adam":
        return torch.optim.Adam(prepared, lr=config.lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(prepared, lr=config.lr)
    return torch.optim.SGD(prepared, lr=config.lr, momentum=config.momentum)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _scalar_dict(out: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v.detach().float() for k, v in out.items()
            if isinstance(v, torch.Tensor) and v.dim() == 0}


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _label_metrics(labels: np.ndarray | None, predicted: np.ndarray) -> dict[str, float]:
    if labels is None or not (labels >= 0).any():
        return {}
    result = evaluate(labels, predicted)
    return {k: float(result[k]) for k in ("acc", "nmi", "ari") if k in result}


def _cluster_summary(predicted: np.ndarray) -> dict[str, float]:
    counts = np.bincount(predicted[predicted >= 0]) if predicted.size else np.zeros(1)
    used = int((counts > 0).sum())
    return {"clusters_used": used, "largest_cluster_frac": float(counts.max() / max(1, predicted.size))}


def _check_resumable(saved: dict[str, Any], config: TrainConfig, method: TrainableMethod, path: Path) -> None:
    if saved.get("method") != method.name:
        raise ImgclustError(f"{path} belongs to a run of method {saved.get('method')!r}, not {method.name!r}",
                            "use another run folder, or start without --resume")
    old = saved.get("config", {})
    new = config.to_dict()
    changed = sorted(k for k in new if k not in _RESUMABLE_CHANGES and old.get(k) != new[k])
    if changed:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
        raise ImgclustError(f"cannot resume {path}: training settings changed ({details})",
                            "resume with the original settings, or start a new run folder")


def fit(method: TrainableMethod, inputs: TrainInputs, config: TrainConfig | None = None,
        device: str | torch.device = "cpu", run_dir: str | Path | None = None, resume: bool = False,
        ) -> TrainResult:
    """Train ``method`` on ``inputs``: the only training loop in imgclust (see the module docstring).

    Args:
        method: a :class:`~imgclust.train.protocol.TrainableMethod`.
        inputs: the training samples (:class:`~imgclust.train.protocol.TrainInputs`).
        config: loop settings (default :class:`TrainConfig`).
        device: where the model trains.
        run_dir: folder for ``checkpoints/`` and ``train_log.jsonl`` (``None``: nothing written; no resume).
        resume: continue from ``run_dir/checkpoints/last.pt`` when it exists (a fresh run otherwise).

    Returns:
        :class:`TrainResult` (model, predictions on the training samples, history, selection).

    Raises:
        ImgclustError: invalid settings, a checkpoint of another run, or a non-finite loss.
    """
    config = config or TrainConfig()
    run_dir = Path(run_dir) if run_dir is not None else None
    if resume and run_dir is None:
        raise ImgclustError("resume=True needs a run folder", "pass run_dir (--run-dir) of the run to continue")
    run = _build(method, inputs, config, torch.device(device), _RunFiles.of(run_dir))
    if resume:
        _resume(run)
    run.files.write_log(run.history)  # drops lines of an epoch whose checkpoint was never written
    _wrap_distributed(run)
    for epoch in range(run.start_epoch, config.epochs):
        started = time.perf_counter()
        record = _run_epoch(run, epoch)
        record.update(_evaluate(run, epoch))
        record.update(run.ctx._take_logged())
        record["time_s"] = round(time.perf_counter() - started, 3)
        run.history.append({k: _jsonable(v) for k, v in record.items()})
        _logger.info("%s epoch %d: %s", method.name, epoch, json.dumps(run.history[-1]))
        _checkpoint(run, epoch)
        dist.barrier()
    return _finish(run)


@dataclass
class _RunFiles:
    """Where a run writes (every path ``None`` without a run folder); only the main process writes."""

    run_dir: Path | None
    last: Path | None
    best: Path | None
    log: Path | None

    @classmethod
    def of(cls, run_dir: Path | None) -> "_RunFiles":
        if run_dir is None:
            return cls(None, None, None, None)
        return cls(run_dir, run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt",
                   run_dir / "train_log.jsonl")

    def write_log(self, history: list[dict[str, Any]]) -> None:
        if dist.is_main_process() and self.log is not None:
            write_text(self.log, "".join(json.dumps(r) + "\n" for r in history))


@dataclass
class _Run:
    """One call of :func:`fit`: what it built, and how far it got."""

    method: TrainableMethod
    inputs: TrainInputs
    config: TrainConfig
    device: torch.device
    files: _RunFiles
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: Any
    sampler: EpochBatchSampler
    ctx: TrainContext
    train_model: nn.Module | None = None  # the model as trained (DistributedDataParallel under torchrun)
    start_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"score": math.inf, "epoch": -1})
    best_state: dict[str, torch.Tensor] | None = None  # the best weights, kept in memory without a run folder

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]


def _build(method: TrainableMethod, inputs: TrainInputs, config: TrainConfig, device: torch.device,
           files: _RunFiles) -> _Run:
    """Seed, then build the model, optimiser, per-step schedule, batch sampler, context and grad scaler."""
    _seed_everything(int(config.seed))
    model = method.build_model(inputs.spec()).to(device)
    optimizer = _make_optimizer(method.param_groups(model, config), config)
    sampler = EpochBatchSampler(len(inputs), config.batch_size, config.seed, config.drop_last,
                                dist.rank(), dist.world_size())
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [_lr_lambda(config, len(sampler), bool(g.get("fixed_lr"))) for g in optimizer.param_groups])
    ctx = TrainContext(inputs, config, device, files.run_dir)
    ctx.steps_per_epoch = len(sampler)
    scaler = torch.amp.GradScaler("cuda") if ctx.amp_dtype == torch.float16 else None
    return _Run(method, inputs, config, device, files, model, optimizer, scheduler, scaler, sampler, ctx)


def _resume(run: _Run) -> None:
    """Restore everything from ``last.pt`` when it exists (checked to belong to this run's settings)."""
    path = run.files.last
    if path is None or not path.exists():
        _logger.info("no checkpoint in %s: starting a fresh run", run.files.run_dir)
        return
    saved = load_checkpoint(path)
    _check_resumable(saved, run.config, run.method, path)
    run.model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    if run.scaler is not None and saved.get("scaler"):
        run.scaler.load_state_dict(saved["scaler"])
    run.method.load_state_dict(saved["method_state"])
    set_rng_state(saved["rng"])
    run.start_epoch, run.global_step = int(saved["epochs_done"]), int(saved["global_step"])
    run.history = list(saved.get("history", []))
    run.best = dict(saved.get("best", run.best))
    _logger.info("resuming %s from %s after epoch %d", run.method.name, path, run.start_epoch)


def _wrap_distributed(run: _Run) -> None:
    """The model to train: under torchrun, with synchronised batch norms inside DistributedDataParallel."""
    run.train_model = run.model
    if dist.is_distributed():
        run.model = dist.convert_sync_batchnorm(run.model, run.device)
        run.train_model = nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)


def _run_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """The method's epoch-start hook, every step, the epoch-end hook; the epoch's mean losses and lr."""
    method, ctx, config = run.method, run.ctx, run.config
    assert run.train_model is not None
    ctx.epoch = epoch
    ctx.global_step = run.global_step
    run.model.eval()
    method.on_epoch_start(run.train_model, epoch, ctx)
    run.train_model.train()
    sums: dict[str, torch.Tensor] = {}
    batches = run.sampler.batches_with_parts(epoch)
    show = config.progress and dist.is_main_process()
    for step, (idx, part) in enumerate(_progress(batches, show, f"epoch {epoch}")):
        generator = make_generator(config.seed, epoch, step)
        views = run.inputs.load_views(idx, method.n_views, generator, run.device, part)
        batch = Batch(indices=torch.as_tensor(idx, device=run.device), views=views, epoch=epoch, step=step,
                      global_step=run.global_step, generator=generator, part=part)
        for key, value in _train_step(run, batch).items():
            sums[key] = sums.get(key, torch.zeros((), device=value.device)) + value
    run.model.eval()
    extra = method.on_epoch_end(run.train_model, epoch, ctx) or {}
    record: dict[str, Any] = {"epoch": epoch, "global_step": run.global_step}
    if dist.is_distributed() and sums:  # log the mean over all processes, not rank 0's share
        keys = sorted(sums)
        total = dist.all_reduce_sum(torch.stack([sums[k] for k in keys])) / dist.world_size()
        sums = dict(zip(keys, total.unbind(0)))
    record.update({k: float(v) / max(1, len(batches)) for k, v in sums.items()})
    record["lr"] = float(run.optimizer.param_groups[0]["lr"])
    record.update({k: float(v) for k, v in extra.items()})
    return record


def _train_step(run: _Run, batch: Batch) -> dict[str, torch.Tensor]:
    """One optimiser step on ``batch``; the scalars the method returned (detached)."""
    ctx, config, optimizer = run.ctx, run.config, run.optimizer
    ctx.global_step = run.global_step
    with ctx.autocast():
        out = run.method.training_step(run.train_model, batch, ctx)
    if "loss" not in out:
        raise ValueError(f"{type(run.method).__name__}.training_step must return a dict with 'loss'")
    loss = out["loss"]
    if not bool(torch.isfinite(loss.detach())):
        raise ImgclustError(
            f"training diverged: the loss became {float(loss.detach())} in epoch {batch.epoch}, step {batch.step}",
            "lower the learning rate (--lr), or enable gradient clipping (grad_clip)")
    optimizer.zero_grad(set_to_none=True)
    scaler = run.scaler
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if config.grad_clip is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(run.params, config.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    run.scheduler.step()
    run.global_step += 1
    ctx.global_step = run.global_step
    ctx.model_version += 1
    run.method.on_step_end(run.train_model, batch, ctx)
    return _scalar_dict(out)


def _evaluate(run: _Run, epoch: int) -> dict[str, Any]:
    """Every ``eval_every`` epochs and at the last: selection score, cluster sizes, metrics; keep the best."""
    config = run.config
    if (epoch + 1) % config.eval_every != 0 and epoch != config.epochs - 1:
        return {}
    score = float(run.method.selection_score(run.model, run.inputs, run.ctx))
    predicted = np.asarray(run.method.predict(run.model, run.inputs, run.ctx)[0])
    record: dict[str, Any] = {"selection_score": score, **_cluster_summary(predicted)}
    if config.log_metrics:
        record.update(_label_metrics(run.inputs.labels, predicted))
    if score < run.best["score"]:
        run.best = {"score": score, "epoch": epoch}
        if run.files.best is None:
            run.best_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        elif dist.is_main_process():
            save_checkpoint(run.files.best, {"method": run.method.name, "epoch": epoch, "score": score,
                                             "model": run.model.state_dict()})
    return record


def _checkpoint(run: _Run, epoch: int) -> None:
    """The log so far and ``last.pt`` (everything :func:`_resume` restores), from the main process."""
    run.files.write_log(run.history)
    if not dist.is_main_process() or run.files.last is None:
        return
    save_checkpoint(run.files.last, {
        "method": run.method.name, "epochs_done": epoch + 1, "global_step": run.global_step,
        "config": run.config.to_dict(), "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "method_state": run.method.state_dict(), "rng": get_rng_state(), "best": run.best, "history": run.history,
    })


def _finish(run: _Run) -> TrainResult:
    """The selected weights (``select="best"``: the best epoch's) and their predictions."""
    config, model = run.config, run.model
    if config.select == "best" and run.best["epoch"] >= 0:
        if run.files.best is not None and run.files.best.exists():
            model.load_state_dict(load_checkpoint(run.files.best)["model"])
        elif run.best_state is not None:
            model.load_state_dict(run.best_state)
        run.ctx.model_version += 1
    model.eval()
    run.ctx.epoch = max(run.ctx.epoch, config.epochs - 1)
    labels, confidence = run.method.predict(model, run.inputs, run.ctx)
    return TrainResult(model=unwrap(model), labels=np.asarray(labels, dtype=np.int64),
                       confidence=np.asarray(confidence, dtype=np.float32), history=run.history,
                       epochs_done=max(run.start_epoch, config.epochs), best_epoch=int(run.best["epoch"]),
                       best_score=float(run.best["score"]), resumed_from=run.start_epoch)


def _progress(batches: list[np.ndarray], show: bool, desc: str) -> Iterator[np.ndarray]:
    if not show:
        yield from batches
        return
    yield from tqdm(batches, desc=desc, unit="step", leave=False)
