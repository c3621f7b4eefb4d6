"""TURTLE (Gadetsky, Jiang & Brbić, "Let Go of Your Labels with Unsupervised Transfer", ICML 2024).

Among all labelings of the data, TURTLE looks for the one that a linear classifier on the frozen features
learns best. Per outer step, on a batch of ``min(batch_size, N)`` rows of M representation spaces z_m::

    tau(x)  = mean_m softmax(theta_m z_m(x))              # task encoder: weight-normalised Linear per space
    W_m     = fresh Linear(d_m, K) per space (cold start; warm_start keeps W and its Adam state)
    10 x    Adam step on  sum_m CE(W_m z_m, stopgrad(tau))                       # inner loop
    L       = sum_m CE(stopgrad(W_m z_m), tau) - gamma * sum_m H(mean_batch softmax(theta_m z_m))
    Adam step on theta (through the project's training loop)
    labels  = argmax tau(x)                                                        # inductive readout

as in the authors' ``run_turtle.py`` (mlbio-epfl/turtle). What was measured and chosen here (preprocessing of
each space, number of outer steps, the label-free stopping rule) is in ``docs/methods/turtle.md``.

The training loop (:func:`imgclust.train.loop.fit`) runs the outer steps: one loop step is one outer step, the
loop's optimiser (Adam, constant lr) updates theta, checkpoints and resume are the loop's. The inner
classifiers are drawn from ``batch.generator`` so a step depends only on (seed, epoch, step) and the state.
Under ``torchrun`` every process gathers the whole global batch and computes the same outer loss: the inner
fit needs all rows of the batch, and a one-process run of that batch computes the same thing.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed as dist
from ..errors import ImgclustError
from ..train.loop import TrainConfig, fit
from ..train.protocol import Batch, InputSpec, MethodBase, TrainInputs, unwrap
from .base import Assignment, ClusterModel, FitContext, FitResult
from .kmeans import mean_directions
from .options import Option, OptionSet
from .registry import register_method

__all__ = [
    "PREPROCESSING",
    "TurtleConfig",
    "Turtle",
    "TurtleNet",
    "TurtleModel",
    "SpacePreprocessor",
    "fit_preprocessors",
    "fit_turtle",
    "task_distribution",
    "inner_loss",
    "turtle_loss",
    "turtle_objective",
    "objective_rows",
    "normalize_spaces",
]

PREPROCESSING = ("raw", "center", "l2", "whiten")
#: Row norm of ``l2`` preprocessing: about the offline backbones' own (EfficientNet-Lite0 17.3, Lite2 15.1 on
#: CIFAR-10), the scale the authors' settings (10 inner Adam steps at lr 1e-3) were measured at here.
DEFAULT_ROW_NORM = 16.0
# Whitening: eigenvalues below this fraction of the largest are floored (near-null directions of the
# covariance would otherwise be blown up to unit variance).
_WHITEN_FLOOR = 1e-4
# Mixed into the seed of the inner classifiers that judge a task encoder (:func:`turtle_objective`).
_JUDGE = 0x7475


# -------------------------------------------------------------------------------------------------------------
# Losses: pure functions of tensors
# -------------------------------------------------------------------------------------------------------------

def task_distribution(logits_per_space: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(tau, probabilities per space)``: tau (B, K) is the mean over spaces of softmax(logits_m)."""
    probs = [F.softmax(logits.float(), dim=1) for logits in logits_per_space]
    return torch.stack(probs).mean(0), probs


def inner_loss(inner_logits_per_space: Sequence[torch.Tensor], tau: torch.Tensor) -> torch.Tensor:
    """Sum over spaces of the soft cross-entropy of the inner classifiers against the (detached) labeling."""
    target = tau.detach()
    return sum(F.cross_entropy(logits.float(), target) for logits in inner_logits_per_space)


def turtle_loss(inner_logits_per_space: Sequence[torch.Tensor], tau: torch.Tensor,
                probs_per_space: Sequence[torch.Tensor], gamma: float) -> dict[str, torch.Tensor]:
    """The outer objective (Eq. 12 of the paper): the inner classifiers' error on the labeling ``tau``
    (gradient through ``tau`` only) minus ``gamma`` times the entropy of each space's mean cluster distribution.

    Returns ``{"loss", "pred_error", "entropy"}``.
    """
    pred_error = sum(F.cross_entropy(logits.detach().float(), tau) for logits in inner_logits_per_space)
    entropy = sum(torch.special.entr(p.mean(0)).sum() for p in probs_per_space)
    return {"loss": pred_error - gamma * entropy, "pred_error": pred_error, "entropy": entropy}


# -------------------------------------------------------------------------------------------------------------
# Spaces and their preprocessing
# -------------------------------------------------------------------------------------------------------------

def normalize_spaces(spaces: Sequence[Any] | None, n_columns: int) -> list[tuple[int, int]]:
    """Column ranges ``[(start, stop), ...]`` of the representation spaces, from ranges or widths.

    ``None``: the features are one space. Widths ``[1280, 1408]`` or ranges ``[(0, 1280), (1280, 2688)]``
    must tile the ``n_columns`` columns in order.
    """
    if spaces is None or len(spaces) == 0:
        return [(0, int(n_columns))]
    if all(isinstance(s, (int, np.integer)) for s in spaces):
        bounds = np.concatenate([[0], np.cumsum([int(s) for s in spaces])])
        ranges = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    else:
        ranges = [(int(s[0]), int(s[1])) for s in spaces]
    position = 0
    for start, stop in ranges:
        if start != position or stop <= start:
            break
        position = stop
    else:
        if position == n_columns:
            return ranges
    raise ImgclustError(f"TURTLE spaces {list(spaces)} do not tile the {n_columns} feature columns",
                        "give the width of each space (e.g. spaces=[1280,1280]) summing to the feature size")


@dataclass
class SpacePreprocessor:
    """What is done to one space's columns before TURTLE sees them: ``kind`` in :data:`PREPROCESSING`.

    ``raw``: as given. ``center``: minus the training mean. ``l2``: each row scaled to norm ``row_norm`` (the
    inner classifiers' 10 Adam steps at a fixed learning rate fit as much as the features' scale allows, so the
    scale is set here rather than left to the backbone; several backbones reach TURTLE already L2-normalised).
    ``whiten``: minus the mean, then projected on the covariance's eigenvectors scaled to unit variance.
    """

    kind: str
    mean: np.ndarray | None = None        # (d,) float32
    projection: np.ndarray | None = None  # (d, d) float32 (whiten)
    row_norm: float = 1.0                 # l2

    @classmethod
    def fit(cls, x: np.ndarray, kind: str, row_norm: float = 1.0) -> "SpacePreprocessor":
        if kind not in PREPROCESSING:
            raise ImgclustError(f"unknown TURTLE preprocessing {kind!r}", f"choose one of {', '.join(PREPROCESSING)}")
        if kind == "raw":
            return cls(kind)
        if kind == "l2":
            return cls(kind, row_norm=float(row_norm))
        x64 = np.asarray(x, dtype=np.float64)
        mean = x64.mean(0)
        if kind == "center":
            return cls(kind, mean.astype(np.float32))
        centred = x64 - mean
        cov = centred.T @ centred / max(1, len(x64) - 1)
        eigenvalues, eigenvectors = np.linalg.eigh(cov)
        eigenvalues = np.maximum(eigenvalues, _WHITEN_FLOOR * max(float(eigenvalues[-1]), 1e-12))
        projection = eigenvectors / np.sqrt(eigenvalues)
        return cls(kind, mean.astype(np.float32), projection.astype(np.float32))

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.kind == "l2":
            return x * (self.row_norm / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))
        if self.mean is not None:
            x = x - self.mean
        if self.projection is not None:
            x = x @ self.projection
        return np.ascontiguousarray(x, dtype=np.float32)


def fit_preprocessors(x: np.ndarray, spaces: Sequence[tuple[int, int]], preprocess: str = "auto",
                      row_norm: float = DEFAULT_ROW_NORM) -> list[SpacePreprocessor]:
    """One fitted :class:`SpacePreprocessor` per space; ``auto`` = ``raw`` for one space, ``l2`` for several."""
    kind = preprocess if preprocess != "auto" else "raw" if len(spaces) == 1 else "l2"
    return [SpacePreprocessor.fit(x[:, a:b], kind, row_norm) for a, b in spaces]


def _preprocess(x: np.ndarray, spaces: list[tuple[int, int]], preprocessors: list[SpacePreprocessor]) -> np.ndarray:
    return np.concatenate([p.apply(x[:, a:b]) for p, (a, b) in zip(preprocessors, spaces)], axis=1)


# -------------------------------------------------------------------------------------------------------------
# The task encoder
# -------------------------------------------------------------------------------------------------------------

class WeightNormLinear(nn.Module):
    """``Linear(d, K)`` with weight = scale · direction / ||direction|| per output row (``weight_norm`` with
    dim 0, as the authors' ``nn.utils.weight_norm``), initialised like ``nn.Linear``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        linear = nn.Linear(in_dim, out_dim)  # draws from the global RNG, seeded by the loop
        self.direction = nn.Parameter(linear.weight.detach().clone())
        self.scale = nn.Parameter(linear.weight.detach().norm(dim=1, keepdim=True))
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def weight(self) -> torch.Tensor:
        return self.scale * self.direction / self.direction.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)


class TurtleNet(nn.Module):
    """One weight-normalised linear head per space; ``forward`` maps (B, D) to a list of (B, K) logits."""

    def __init__(self, spaces: Sequence[tuple[int, int]], n_clusters: int):
        super().__init__()
        self.spaces = [tuple(s) for s in spaces]
        self.heads = nn.ModuleList(WeightNormLinear(b - a, n_clusters) for a, b in self.spaces)

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x[:, a:b] for a, b in self.spaces]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [head(z) for head, z in zip(self.heads, self.split(x))]

    @torch.no_grad()
    def tau(self, x: torch.Tensor) -> torch.Tensor:
        return task_distribution(self(x))[0]


# -------------------------------------------------------------------------------------------------------------
# TURTLE for the training loop
# -------------------------------------------------------------------------------------------------------------

@dataclass
class TurtleConfig:
    """TURTLE's own settings (the outer optimiser's are the loop's: Adam, ``train.lr``, constant).

    Attributes:
        n_clusters: K.
        gamma: weight of the entropy of the mean cluster distribution (the authors' 10).
        inner_steps: Adam steps of the inner linear classifiers per outer step (the authors' M = 10).
        inner_lr: their learning rate (the authors' 1e-3).
        warm_start: keep the inner classifiers and their Adam state from one outer step to the next
            (the authors' ``--warm_start``); default: fresh ones every step (cold start).
        preprocess: what is done to each space first, one of :data:`PREPROCESSING`, or ``auto``: ``raw`` for
            one space (the authors' choice), ``l2`` for several (the run hands several spaces over
            L2-normalised, which leaves the inner classifiers too little to fit; see docs/methods/turtle.md).
        row_norm: the norm of every row after ``l2`` preprocessing.
        spaces: widths of the representation spaces in the feature columns (``None``: one space, or the
            spaces the run gives).
        outer_steps: most outer steps.
        check_every: outer steps between two checks of the stopping rule (and evaluations).
        stop_change: stop once less than this fraction of the rows changed cluster since the previous check
            (0: run all ``outer_steps``).
    """

    n_clusters: int = 10
    gamma: float = 10.0
    inner_steps: int = 10
    inner_lr: float = 1e-3
    warm_start: bool = False
    preprocess: str = "auto"
    row_norm: float = DEFAULT_ROW_NORM
    spaces: list[int] | None = None
    outer_steps: int = 1000
    check_every: int = 100
    stop_change: float = 0.01

    def __post_init__(self) -> None:
        problems = []
        if self.n_clusters < 2:
            problems.append(f"n_clusters must be >= 2, got {self.n_clusters}")
        if self.gamma < 0 or self.inner_lr <= 0 or self.row_norm <= 0:
            problems.append(f"need gamma >= 0, inner_lr > 0 and row_norm > 0, got {self.gamma}, {self.inner_lr}, "
                            f"{self.row_norm}")
        if self.inner_steps < 1 or self.outer_steps < 1 or self.check_every < 1:
            problems.append(f"need inner_steps, outer_steps, check_every >= 1, got {self.inner_steps}, "
                            f"{self.outer_steps}, {self.check_every}")
        if self.preprocess not in ("auto", *PREPROCESSING):
            problems.append(f"preprocess must be auto or one of {', '.join(PREPROCESSING)}, got {self.preprocess!r}")
        if not 0 <= self.stop_change < 1:
            problems.append(f"stop_change must be in [0, 1), got {self.stop_change}")
        if problems:
            raise ImgclustError("invalid TURTLE settings: " + "; ".join(problems), "fix the listed TURTLE options")


def _fresh_inner(spaces: Sequence[tuple[int, int]], n_clusters: int, generator: torch.Generator,
                 device: torch.device) -> list[torch.Tensor]:
    """Weights and biases of fresh ``Linear(d_m, K)`` s, drawn like ``nn.Linear`` (U(±1/sqrt(d))) from ``generator``."""
    params = []
    for a, b in spaces:
        bound = 1.0 / math.sqrt(b - a)
        for shape in ((n_clusters, b - a), (n_clusters,)):
            p = (torch.rand(shape, generator=generator) * 2 - 1) * bound
            params.append(p.to(device).requires_grad_(True))
    return params


def _inner_logits(params: Sequence[torch.Tensor], zs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [F.linear(z, params[2 * m], params[2 * m + 1]) for m, z in enumerate(zs)]


def fit_inner(zs: Sequence[torch.Tensor], tau: torch.Tensor, params: list[torch.Tensor], steps: int, lr: float,
              optimizer_state: dict[str, Any] | None = None) -> tuple[list[torch.Tensor], torch.optim.Adam]:
    """``steps`` Adam steps of the inner classifiers ``params`` on the labeling ``tau`` (detached)."""
    optimizer = torch.optim.Adam(params, lr=lr)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    target = tau.detach()
    with torch.enable_grad():
        for _ in range(steps):
            loss = inner_loss(_inner_logits(params, zs), target)
            grads = torch.autograd.grad(loss, params)
            for p, g in zip(params, grads):
                p.grad = g
            optimizer.step()
    return params, optimizer


def objective_rows(n: int, batch_size: int | None, seed: int) -> np.ndarray:
    """The rows the objective is measured on: a seeded sample of ``min(batch_size, n)`` rows, sorted."""
    size = n if batch_size is None else min(n, int(batch_size))
    return np.sort(np.random.default_rng(seed).permutation(n)[:size])


def turtle_objective(net: TurtleNet, x: torch.Tensor, config: TurtleConfig, seed: int, draws: int = 5) -> float:
    """The TURTLE objective of the task encoder ``net`` on the preprocessed rows ``x``: inner classifiers drawn
    from ``seed`` and fitted to the labeling as in training, then the outer loss (lower = better), averaged over
    ``draws`` inner draws (one draw's loss varies with the draw)."""
    with torch.no_grad():
        tau, probs = task_distribution(net(x))
    zs = net.split(x)
    # Not ``seed`` itself: a run with that seed drew its task encoder's initial heads from the same stream, and
    # inner classifiers drawn alike start aligned with them, which favours that run when runs of several seeds
    # are compared (seen on a short run: a markedly lower objective under its own seed than under others).
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), _JUDGE]).generate_state(1)[0]))
    losses = []
    for _ in range(draws):
        params, _ = fit_inner(zs, tau, _fresh_inner(net.spaces, config.n_clusters, generator, x.device),
                              config.inner_steps, config.inner_lr)
        with torch.no_grad():
            losses.append(float(turtle_loss(_inner_logits(params, zs), tau, probs, config.gamma)["loss"]))
    return float(np.mean(losses))


class Turtle(MethodBase):
    """TURTLE for :func:`imgclust.train.loop.fit`. State: the last checked assignment, the step the stopping
    rule fired at, and (warm start) the inner classifiers with their Adam state."""

    name = "turtle"
    n_views = 1

    def __init__(self, config: TurtleConfig, spaces: Sequence[tuple[int, int]], steps_per_epoch: int = 1):
        self.config = config
        self.spaces = [tuple(s) for s in spaces]
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.epochs = math.ceil(config.outer_steps / self.steps_per_epoch)
        self.check_epochs = max(1, config.check_every // self.steps_per_epoch)
        self.checked_labels: torch.Tensor | None = None  # (N,) int64 at the last check
        self.stopped_at = -1  # outer steps done when the stopping rule fired (-1: not yet)
        self.inner: list[torch.Tensor] | None = None
        self.inner_optimizer: dict[str, Any] | None = None

    def build_model(self, spec: InputSpec) -> nn.Module:
        return TurtleNet(self.spaces, self.config.n_clusters)

    def param_groups(self, model: nn.Module, config: Any) -> list[dict[str, Any]]:
        return [{"params": list(unwrap(model).parameters()), "name": "task_encoder", "weight_decay": 0.0}]

    def training_step(self, model: nn.Module, batch: Batch, ctx: Any) -> dict[str, torch.Tensor]:
        x = dist.all_gather(batch.views[0].float())  # the whole global batch on every process
        logits = model(x)
        tau, probs = task_distribution(logits)
        zs = unwrap(model).split(x)
        cfg = self.config
        if cfg.warm_start and self.inner is not None:
            params = [p.detach().to(x.device).requires_grad_(True) for p in self.inner]
            state = self.inner_optimizer
        else:
            params = _fresh_inner(self.spaces, cfg.n_clusters, batch.generator, x.device)
            state = None
        params, optimizer = fit_inner(zs, tau, params, cfg.inner_steps, cfg.inner_lr, state)
        if cfg.warm_start:
            self.inner = [p.detach().clone() for p in params]
            self.inner_optimizer = optimizer.state_dict()
        with torch.no_grad():
            inner_logits = _inner_logits(params, zs)
        return turtle_loss(inner_logits, tau, probs, cfg.gamma)

    # -- evaluation (label-free) ---------------------------------------------------------------------------
    def _labels(self, model: nn.Module, ctx: Any) -> tuple[torch.Tensor, torch.Tensor]:
        net = unwrap(model)
        tau = ctx.embed(net.tau)
        confidence, labels = tau.max(dim=1)
        return labels.cpu(), confidence.cpu()

    def predict(self, model: nn.Module, inputs: TrainInputs, ctx: Any) -> tuple[np.ndarray, np.ndarray]:
        labels, confidence = self._labels(model, ctx)
        return labels.numpy().astype(np.int64), confidence.numpy().astype(np.float32)

    def selection_score(self, model: nn.Module, inputs: TrainInputs, ctx: Any) -> float:
        """The TURTLE objective (:func:`turtle_objective`) on a fixed seeded batch of the clean inputs (lower =
        better; no label is used). One inner draw: this follows one run in its log, where the draw is the same at
        every check; averaging draws is for comparing fits (:meth:`TurtleModel.objective`)."""
        x = inputs.load_clean(objective_rows(len(inputs), getattr(ctx.config, "batch_size", None), ctx.seed),
                              ctx.device).float()
        return turtle_objective(unwrap(model), x, self.config, ctx.seed, draws=1)

    def on_epoch_end(self, model: nn.Module, epoch: int, ctx: Any) -> dict[str, float] | None:
        """Every ``check_every`` outer steps: the fraction of rows whose cluster changed since the last check;
        the stopping rule fires when it falls below ``stop_change``."""
        if (epoch + 1) % self.check_epochs and epoch + 1 < self.epochs:
            return None
        steps_done = (epoch + 1) * self.steps_per_epoch
        labels, _ = self._labels(model, ctx)
        out: dict[str, float] = {}
        if self.checked_labels is not None:
            change = float((labels != self.checked_labels).float().mean())
            out["assignment_change"] = change
            if self.stopped_at < 0 and change < self.config.stop_change:
                self.stopped_at = steps_done
        self.checked_labels = labels
        return out

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"checked_labels": self.checked_labels, "stopped_at": int(self.stopped_at),
                "inner": self.inner, "inner_optimizer": self.inner_optimizer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        labels = state.get("checked_labels")
        self.checked_labels = None if labels is None else torch.as_tensor(labels, dtype=torch.int64).cpu()
        self.stopped_at = int(state.get("stopped_at", -1))
        self.inner = state.get("inner")
        self.inner_optimizer = state.get("inner_optimizer")


# -------------------------------------------------------------------------------------------------------------
# The fitted model
# -------------------------------------------------------------------------------------------------------------

def _unit_concat(x: np.ndarray, spaces: Sequence[tuple[int, int]]) -> np.ndarray:
    """Each space L2-normalised, concatenated, scaled to unit norm (the geometry of the reported distance)."""
    parts = [x[:, a:b] / np.maximum(np.linalg.norm(x[:, a:b], axis=1, keepdims=True), 1e-12) for a, b in spaces]
    return np.concatenate(parts, axis=1) / math.sqrt(len(spaces))


class TurtleModel(ClusterModel):
    """A fitted TURTLE task encoder: assigns backbone features (all spaces, concatenated) by argmax tau.

    ``confidence`` is tau of the assigned cluster; ``distance`` is the cosine distance to the assigned
    cluster's mean direction in the concatenation of the L2-normalised spaces (the centres are the means of
    the training rows of each cluster there).
    """

    method = "turtle"

    def __init__(self, net: TurtleNet, preprocessors: list[SpacePreprocessor], centres: np.ndarray,
                 config: TurtleConfig):
        self.net = net.cpu().eval()
        self.preprocessors = preprocessors
        self.centres = np.asarray(centres, dtype=np.float32)
        self.turtle_config = config

    @property
    def spaces(self) -> list[tuple[int, int]]:
        return list(self.net.spaces)

    @torch.no_grad()
    def assign(self, inputs: np.ndarray, device: torch.device | str = "cpu", batch_size: int = 8192) -> Assignment:
        n_columns = self.spaces[-1][1]
        if inputs.ndim != 2 or inputs.shape[1] != n_columns:
            raise ImgclustError(f"TURTLE model expects (N, {n_columns}) features, got {tuple(inputs.shape)}",
                                "predict with the backbone(s) the model was fitted on")
        net = self.net.to(device)
        labels, confidence, distance = [], [], []
        for start in range(0, len(inputs), batch_size):
            raw = np.asarray(inputs[start:start + batch_size], dtype=np.float32)
            x = torch.from_numpy(_preprocess(raw, self.spaces, self.preprocessors)).to(device)
            conf, lab = net.tau(x).max(dim=1)
            lab = lab.cpu().numpy().astype(np.int64)
            cos = np.einsum("nd,nd->n", _unit_concat(raw, self.spaces), self.centres[lab])
            labels.append(lab)
            confidence.append(conf.cpu().numpy().astype(np.float32))
            distance.append(np.clip(1.0 - cos, 0.0, 2.0).astype(np.float32))
        self.net.cpu()
        if not labels:
            return Assignment(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32))
        return Assignment(np.concatenate(labels), np.concatenate(confidence), np.concatenate(distance))

    def objective(self, features: np.ndarray, seed: int = 0, batch_size: int | None = 10000) -> float:
        """The TURTLE objective of this task encoder on ``features`` (the backbone features, all spaces): on a
        sample of ``batch_size`` rows and inner draws fixed by ``seed``, so fits of the same features (other seeds
        or settings) compare; lower = better, no label is used."""
        rows = objective_rows(len(features), batch_size, seed)
        x = _preprocess(np.asarray(features[rows], dtype=np.float32), self.spaces, self.preprocessors)
        return turtle_objective(self.net, torch.from_numpy(x), self.turtle_config, seed)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        for m, p in enumerate(self.preprocessors):
            if p.mean is not None:
                tensors[f"preprocess.{m}.mean"] = torch.from_numpy(p.mean)
            if p.projection is not None:
                tensors[f"preprocess.{m}.projection"] = torch.from_numpy(p.projection)
        tensors["centres"] = torch.from_numpy(self.centres)
        return tensors

    def config(self) -> dict[str, Any]:
        return {"turtle": dataclasses.asdict(self.turtle_config), "spaces": [list(s) for s in self.spaces],
                "preprocess": [p.kind for p in self.preprocessors]}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> "TurtleModel":
        turtle_config = TurtleConfig(**config["turtle"])
        spaces = [(int(a), int(b)) for a, b in config["spaces"]]
        net = TurtleNet(spaces, turtle_config.n_clusters)
        state = {k[len("net."):]: v for k, v in tensors.items() if k.startswith("net.")}
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise ImgclustError(f"saved TURTLE model does not match its config: {err}",
                                "re-run the clustering; the model files were modified or mixed up") from None

        def array(key: str) -> np.ndarray | None:
            return tensors[key].float().numpy() if key in tensors else None

        preprocessors = [SpacePreprocessor(kind, array(f"preprocess.{m}.mean"), array(f"preprocess.{m}.projection"),
                                           turtle_config.row_norm)
                         for m, kind in enumerate(config["preprocess"])]
        return cls(net, preprocessors, tensors["centres"].float().numpy(), turtle_config)


# -------------------------------------------------------------------------------------------------------------
# Registry entry point
# -------------------------------------------------------------------------------------------------------------

TURTLE_OPTIONS = OptionSet("turtle", [
    Option("method", "gamma", 10.0, float, "entropy weight of the mean cluster distribution"),
    Option("method", "inner_steps", 10, int, "Adam steps of the inner linear classifiers per outer step"),
    Option("method", "inner_lr", 1e-3, float, "learning rate of the inner classifiers"),
    Option("method", "warm_start", False, bool, "keep the inner classifiers between outer steps"),
    Option("method", "preprocess", "auto", str,
           f"per-space preprocessing: {', '.join(PREPROCESSING)}, or auto (raw for one space, l2 for several)"),
    Option("method", "row_norm", DEFAULT_ROW_NORM, float, "norm of every row after l2 preprocessing"),
    Option("method", "spaces", None, list[int] | None, "widths of the representation spaces (default: the run's)"),
    Option("method", "outer_steps", 1000, int, "most outer steps"),
    Option("method", "check_every", 100, int, "outer steps between checks of the stopping rule"),
    Option("method", "stop_change", 0.01, float, "stop when fewer rows than this fraction changed cluster"),
    Option("train", "lr", 1e-3, float, "learning rate of the task encoder (Adam)"),
    Option("train", "batch_size", 10000, int, "rows per outer step (at most N)"),
])


def _resolve_spaces(context: FitContext, widths: list[int] | None, n_columns: int) -> list[tuple[int, int]]:
    if widths:
        return normalize_spaces(widths, n_columns)
    return normalize_spaces(getattr(context, "spaces", None), n_columns)


@register_method("turtle", model=TurtleModel, options=TURTLE_OPTIONS, whitening="optional",
                 summary="TURTLE: the labeling a linear classifier learns best, one or several backbones")
def fit_turtle(context: FitContext) -> FitResult:
    """Registry entry point: TURTLE on ``context.features`` (each space of ``context.spaces`` separately)."""
    opts = TURTLE_OPTIONS.resolve(context.options)
    method_options = dict(opts["method"])
    features = np.asarray(context.features, dtype=np.float32)
    n = len(features)
    if n < context.n_clusters:
        raise ImgclustError(f"TURTLE needs at least K={context.n_clusters} rows, got {n}", "give more images or a smaller K")
    spaces = _resolve_spaces(context, method_options.pop("spaces"), features.shape[1])
    config = TurtleConfig(n_clusters=context.n_clusters, spaces=[b - a for a, b in spaces], **method_options)
    preprocessors = fit_preprocessors(features, spaces, config.preprocess, config.row_norm)
    inputs = TrainInputs.from_features(_preprocess(features, spaces, preprocessors), labels=context.labels)
    batch_size = min(int(opts["train"]["batch_size"]), n)
    method = Turtle(config, spaces, steps_per_epoch=n // batch_size)
    epochs, check_epochs, steps_per_epoch = method.epochs, method.check_epochs, method.steps_per_epoch
    train_config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=float(opts["train"]["lr"]), optimizer="adam",
                               schedule="constant", seed=context.seed, eval_every=check_epochs, select="last",
                               progress=False)
    with tempfile.TemporaryDirectory(prefix="imgclust-turtle-") as scratch:
        run_dir = context.run_dir
        if config.stop_change > 0 and run_dir is None:
            # The stopping rule runs the loop in chunks resumed from checkpoints: under torchrun every process
            # must resume from the files rank 0 writes, so all use rank 0's scratch folder.
            run_dir = Path(dist.broadcast_object(scratch))
        if config.stop_change > 0:
            # One loop call per check: each resumes the previous one's checkpoint; a resumed run replays the
            # chunks already done from the checkpoint and stops where the uninterrupted run stopped.
            resume = context.resume or context.run_dir is None
            for target in list(range(check_epochs, epochs, check_epochs)) + [epochs]:
                result = fit(method, inputs, dataclasses.replace(train_config, epochs=target), device=context.device,
                             run_dir=run_dir, resume=resume)
                resume = True
                if method.stopped_at >= 0:
                    break
        else:
            result = fit(method, inputs, train_config, device=context.device, run_dir=run_dir, resume=context.resume)
        dist.barrier()  # rank 0 removes the scratch folder only once every process is done with it
    labels = result.labels
    centres = mean_directions(_unit_concat(features, spaces), labels, config.n_clusters)
    model = TurtleModel(result.model, preprocessors, centres, config)
    assignment = model.assign(features, device="cpu")
    steps_done = result.epochs_done * steps_per_epoch if method.stopped_at < 0 else method.stopped_at
    info = {"config": dataclasses.asdict(config), "train_config": train_config.to_dict(),
            "spaces": [list(s) for s in spaces], "outer_steps_done": int(steps_done),
            "stopped_early": method.stopped_at >= 0, "resumed_from": result.resumed_from, "history": result.history}
    return FitResult(model=model, assignment=assignment, info=info)
