"""What the one training loop (:func:`imgclust.train.loop.fit`) consumes: inputs, batches, and methods.

The pieces
==========

:class:`TrainInputs`
    The N training samples, in one of two forms:

    * **cached views** (head mode, and fine-tuning on a CPU): ``views`` is a list of V arrays of shape
      ``(N, ...)``, one per augmented view, computed once by the feature cache; ``clean`` is the same for the
      un-augmented images. The rows are whatever the model's encoder consumes: backbone features (N, D) in
      head mode, a backbone trunk's activations (N, C, H, W) when the last blocks are fine-tuned. Arrays
      may be numpy memmaps (read row by row, never loaded whole) or torch tensors.
    * **images** (fine-tuning on a GPU): ``images`` is a uint8 ``(N, 3, S, S)`` tensor/array and ``augment``
      one :class:`~imgclust.augment.BatchAugment` (or one per step-view); every step augments its batch on
      the device, then ``normalize`` maps [0, 1] pixels to the backbone's input.

    Plus ``labels`` (logging only, never for fitting), ``reference_features`` (clean backbone features,
    used e.g. to mine the initial neighbours) and optional precomputed ``neighbors``.

:class:`EpochBatchSampler`
    Index batches of an epoch: a permutation drawn from ``(seed, epoch)`` only, so a resumed run replays
    the same order. Under ``torchrun`` each process gets its slice of every global batch.

:class:`Batch`
    What ``training_step`` receives: the per-instance ``indices`` (B,) of the samples (for a method's
    per-instance memory), ``views`` (a list of ``method.n_views`` tensors (B, ...) on the device, each a
    different augmented view of the same B samples), ``epoch``, ``step``, ``global_step``, a CPU
    ``generator`` seeded from (seed, epoch, step) for any further randomness of the method, and ``part``:
    under ``torchrun``, this process's rows ``(offset, global_size)`` of the global batch.

:func:`draw_for_rows`
    Per-sample random numbers drawn for the whole global batch and sliced to this process's rows, so every
    process (and a one-process run of the same global batch) gives each sample the same draw.

:class:`TrainContext`
    The loop's services for a method: ``device``, ``config``, ``inputs``, ``epoch``, ``autocast()``,
    ``load(indices, generator)`` (inputs of extra samples, e.g. neighbours), ``embed(fn)`` (``fn`` over all
    clean inputs, batched, eval mode, no grad), ``log(**scalars)`` (extra numbers for this epoch's JSON line).

:class:`TrainableMethod` (the protocol) and :class:`MethodBase` (no-op defaults for the optional hooks)
    The order of calls in :func:`~imgclust.train.loop.fit`::

        model = method.build_model(inputs.spec())            # global RNGs seeded from config.seed first
        groups = method.param_groups(model, config)          # -> optimiser; a group may carry "lr_scale"
                                                             #    (x base lr), "weight_decay", "fixed_lr"
                                                             #    (True: never scheduled), "name"
        [resume: model, optimiser, scheduler, scaler, method.load_state_dict(...), RNG states restored]
        for epoch in range(start, config.epochs):
            model.eval();  method.on_epoch_start(model, epoch, ctx)   # re-mine neighbours, snapshot centres
            model.train()
            for step, indices in enumerate(sampler.batches(epoch)):
                batch = Batch(indices, views=<method.n_views views>, generator=<seeded (seed, epoch, step)>)
                with ctx.autocast():
                    out = method.training_step(model, batch, ctx)    # {"loss": scalar, other scalars...}
                out["loss"].backward(); [clip]; optimiser.step(); scheduler.step()
                method.on_step_end(model, batch, ctx)        # e.g. re-normalise centres, update duals
            model.eval();  extra = method.on_epoch_end(model, epoch, ctx)   # numbers for the log, or None
            every eval_every epochs and at the last:
                score = method.selection_score(model, inputs, ctx)    # label-free, lower = better
                labels, confidence = method.predict(model, inputs, ctx)  # cluster sizes (+ ACC with labels)
            one JSON line -> train_log.jsonl; checkpoint -> checkpoints/last.pt (+ best.pt on a new best)

    Rules for a method:

    * ``training_step`` gets the model as the loop holds it (wrapped in DistributedDataParallel under
      ``torchrun``): call ``model(x)`` for every forward pass that needs gradients and :func:`unwrap` for
      attributes (centres, buffers). It runs under ``ctx.autocast()``: compute losses in float32.
    * Draw randomness from ``batch.generator`` (not the global RNGs), so a step depends only on
      (seed, epoch, step) and the state; draw per-sample numbers with :func:`draw_for_rows` and
      ``batch.part``, so that ``torchrun`` with N processes computes what one process computes.
    * Everything kept between steps (neighbours, assignment memory, dual variables, counters) must come
      back from ``state_dict()`` as tensors / numbers / strings / lists / dicts (checkpoints load with
      ``weights_only=True``). A resume restarts at an epoch boundary and calls ``on_epoch_start`` for that
      epoch again on the restored weights, so per-epoch snapshots taken there need not be saved.
    * Labels (``inputs.labels``) are for ``ctx.log`` only; ``selection_score`` must never read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
import torch.nn as nn

from ..augment import BatchAugment, derive_seed

__all__ = [
    "ArrayLike",
    "TrainInputs",
    "InputSpec",
    "Batch",
    "EpochBatchSampler",
    "draw_for_rows",
    "TrainContextProtocol",
    "TrainableMethod",
    "MethodBase",
    "Frozen",
    "SplitEncoder",
    "unwrap",
    "split_decay",
]

ArrayLike = Any  # np.ndarray (incl. memmap) or torch.Tensor, indexed by rows


def _rows(array: ArrayLike, indices: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array[indices]`` as a float32 tensor on ``device`` (a uint8 array keeps its dtype)."""
    if isinstance(array, torch.Tensor):
        out = array[torch.as_tensor(indices, device=array.device)]
    else:
        order = np.argsort(indices, kind="stable")
        picked = np.asarray(array[indices[order]])  # memmaps read fastest in increasing row order
        restored = np.empty_like(picked)
        restored[order] = picked
        out = torch.from_numpy(restored)
    out = out.to(device, non_blocking=True)
    return out if out.dtype == torch.uint8 else out.float()


def _n_rows(array: ArrayLike) -> int:
    return int(array.shape[0])


@dataclass
class TrainInputs:
    """The training samples for :func:`~imgclust.train.loop.fit` (see the module docstring).

    Attributes:
        views: V arrays (N, ...) of cached augmented views; may be empty in the images form.
        clean: (N, ...) un-augmented model inputs (prediction, re-mining, selection); defaults to
            ``views[0]`` when absent (cached form).
        images: uint8 (N, 3, S, S) images (images form), or ``None``.
        augment: augmentation(s) for the images form; step-view j uses ``augment[j % len(augment)]``.
        normalize: maps float [0, 1] images (B, 3, S, S) to model inputs (images form).
        encoder: module mapping input rows (B, ...) to (B, feature_dim), or ``None`` (identity: the rows are
            already features). Its trainable parameters are trained; wrap frozen parts in :class:`Frozen`.
        feature_dim: size of the encoder's output (= the row size when ``encoder`` is ``None``).
        labels: (N,) int64 true classes (-1 unknown), for the log only.
        reference_features: (N, D) clean backbone features (initial neighbours), or ``None``.
        neighbors: (N, k) int64 precomputed neighbours (self excluded), or ``None``.
        view_groups: for cached views, the view ids step-view j may draw from (``view_groups[j]``);
            ``None``: every step-view draws from all V views, different views for one sample when V allows.
        valid_indices: dataset rows the N samples come from (bookkeeping only).
    """

    views: list[ArrayLike] = field(default_factory=list)
    clean: ArrayLike | None = None
    images: ArrayLike | None = None
    augment: BatchAugment | Sequence[BatchAugment] | None = None
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None
    encoder: nn.Module | None = None
    feature_dim: int | None = None
    labels: np.ndarray | None = None
    reference_features: ArrayLike | None = None
    neighbors: np.ndarray | None = None
    view_groups: list[list[int]] | None = None
    valid_indices: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.views = list(self.views) if self.views is not None else []
        if self.images is None and not self.views and self.clean is None:
            raise ValueError("TrainInputs needs cached views, clean inputs, or images")
        if self.images is not None:
            if tuple(self.images.shape[1:2]) != (3,) or len(self.images.shape) != 4:
                raise ValueError(f"images must be (N, 3, S, S), got {tuple(self.images.shape)}")
            if self.augment is None:
                raise ValueError("the images form needs an augment (BatchAugment)")
        if self.clean is None and self.images is None:
            self.clean = self.views[0]
        sizes = {_n_rows(v) for v in self.views}
        for other in (self.clean, self.images, self.reference_features):
            if other is not None:
                sizes.add(_n_rows(other))
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            sizes.add(len(self.labels))
        if self.neighbors is not None:
            self.neighbors = np.asarray(self.neighbors, dtype=np.int64)
            sizes.add(len(self.neighbors))
        if len(sizes) != 1:
            raise ValueError(f"all training arrays must have the same number of rows, got sizes {sorted(sizes)}")
        shapes = {tuple(v.shape[1:]) for v in self.views}
        if self.clean is not None and self.images is None:
            shapes.add(tuple(self.clean.shape[1:]))
        if len(shapes) > 1:
            raise ValueError(f"cached views and clean inputs must have one row shape, got {sorted(shapes)}")
        if self.feature_dim is None:
            if self.encoder is not None:
                raise ValueError("give feature_dim (the encoder's output size)")
            row = self.clean.shape[1:] if self.clean is not None else self.views[0].shape[1:]
            if len(row) != 1:
                raise ValueError(f"without an encoder the rows must be feature vectors, got row shape {tuple(row)}")
            self.feature_dim = int(row[0])
        if self.view_groups is not None:
            for group in self.view_groups:
                if not group or any(not 0 <= v < len(self.views) for v in group):
                    raise ValueError(f"view_groups {self.view_groups} must name views 0..{len(self.views) - 1}")

    # -- construction helpers ----------------------------------------------------------------------------
    @classmethod
    def from_features(cls, features: ArrayLike, views: Sequence[ArrayLike] | None = None,
                      labels: np.ndarray | None = None, neighbors: np.ndarray | None = None) -> "TrainInputs":
        """Head mode on feature vectors: ``features`` (N, D) are the clean inputs (and the reference
        features); ``views`` are cached augmented views (default: only the clean features)."""
        return cls(views=list(views) if views else [features], clean=features, labels=labels,
                   reference_features=features, neighbors=neighbors)

    # -- sizes -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        if self.images is not None:
            return _n_rows(self.images)
        return _n_rows(self.clean)

    @property
    def n_views(self) -> int:
        """Cached views available (0 in the images form: views are made on the fly)."""
        return len(self.views) if self.images is None else 0

    @property
    def mode(self) -> str:
        return "images" if self.images is not None else "cached"

    def spec(self) -> "InputSpec":
        if self.images is not None:
            item_shape = tuple(int(s) for s in self.images.shape[1:])
        else:
            item_shape = tuple(int(s) for s in self.clean.shape[1:])
        return InputSpec(n_samples=len(self), feature_dim=int(self.feature_dim), item_shape=item_shape,
                         encoder=self.encoder, n_cached_views=self.n_views, has_labels=self.labels is not None)

    # -- loading -----------------------------------------------------------------------------------------
    def _augments(self) -> list[BatchAugment]:
        if self.augment is None:
            return []
        return [self.augment] if isinstance(self.augment, BatchAugment) else list(self.augment)

    def _images(self, indices: np.ndarray, device: torch.device) -> torch.Tensor:
        x = _rows(self.images, indices, device)
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(x) if self.normalize is not None else x

    def load_views(self, indices: np.ndarray, n_views: int, generator: torch.Generator,
                   device: torch.device, part: tuple[int, int] | None = None) -> list[torch.Tensor]:
        """``n_views`` augmented views of the samples ``indices``, as model inputs on ``device``.

        Cached form: for each sample, step-view j is a cached view drawn with ``generator`` (from
        ``view_groups[j]`` when given; otherwise distinct views per sample while V >= n_views), for the whole
        global batch when ``part`` (see :func:`draw_for_rows`) is given. Images form: view j is
        ``augment[j % len(augment)]`` of the images with ``generator``, then ``normalize`` (drawn per
        process: under torchrun the augmentations differ from a one-process run's).
        """
        indices = np.asarray(indices, dtype=np.int64)
        if self.images is not None:
            base = self._images(indices, device)
            augments = self._augments()
            return [self._finish(augments[j % len(augments)](base, generator)) for j in range(n_views)]
        b, v = len(indices), len(self.views)
        if v == 1:
            x = _rows(self.views[0], indices, device)
            return [x] + [x.clone() for _ in range(n_views - 1)]
        if self.view_groups is not None:
            choice = np.empty((b, n_views), dtype=np.int64)
            for j in range(n_views):
                group = torch.as_tensor(self.view_groups[j % len(self.view_groups)])
                pick = draw_for_rows(lambda m: torch.randint(len(group), (m,), generator=generator), b, part)
                choice[:, j] = group[pick].numpy()
        else:
            keys = draw_for_rows(lambda m: torch.rand((m, v), generator=generator), b, part)
            order = keys.argsort(dim=1).numpy()
            choice = order[:, [j % v for j in range(n_views)]]
        return [self._gather_views(indices, choice[:, j], device) for j in range(n_views)]

    def _gather_views(self, indices: np.ndarray, view_of: np.ndarray, device: torch.device) -> torch.Tensor:
        """Row ``indices[i]`` of view ``view_of[i]`` for every i."""
        out: torch.Tensor | None = None
        for v in np.unique(view_of):
            where = np.nonzero(view_of == v)[0]
            rows = _rows(self.views[int(v)], indices[where], device)
            if out is None:
                out = rows.new_empty((len(indices), *rows.shape[1:]))
            out[torch.as_tensor(where, device=device)] = rows
        assert out is not None
        return out

    def load_clean(self, indices: np.ndarray, device: torch.device) -> torch.Tensor:
        """Un-augmented model inputs of the samples ``indices``."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.images is not None:
            return self._finish(self._images(indices, device))
        return _rows(self.clean, indices, device)

    def iter_clean(self, batch_size: int, device: torch.device) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """``(indices, clean inputs)`` over all N samples in order, ``batch_size`` at a time."""
        n = len(self)
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(n, start + batch_size), dtype=np.int64)
            yield idx, self.load_clean(idx, device)


@dataclass(frozen=True)
class InputSpec:
    """What :meth:`TrainableMethod.build_model` needs to know about the inputs.

    Attributes:
        n_samples: N (e.g. for per-instance memories).
        feature_dim: size of the encoder's output, i.e. of the head's input.
        item_shape: shape of one input row.
        encoder: the module to put in front of the head (``None``: identity).
        n_cached_views: V (0 in the images form).
        has_labels: whether labels exist (for logging; never for fitting).
    """

    n_samples: int
    feature_dim: int
    item_shape: tuple[int, ...]
    encoder: nn.Module | None
    n_cached_views: int
    has_labels: bool


@dataclass
class Batch:
    """One training step's data (see the module docstring)."""

    indices: torch.Tensor
    views: list[torch.Tensor]
    epoch: int
    step: int
    global_step: int
    generator: torch.Generator
    part: tuple[int, int] | None = None

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def draw_for_rows(draw: Callable[[int], torch.Tensor], n_rows: int, part: tuple[int, int] | None
                  ) -> torch.Tensor:
    """Per-sample random numbers for this process's ``n_rows`` rows of a global batch.

    ``draw(m)`` must return m rows of random numbers from the step's generator. With ``part = (offset,
    global_size)`` it is called for the whole global batch and rows ``offset:offset + n_rows`` are kept, so each
    sample gets the same numbers on every process and in a one-process run (and the generators of all
    processes stay in step). ``part=None``: this process holds the whole batch.
    """
    if part is None:
        return draw(n_rows)
    offset, global_size = part
    return draw(global_size)[offset:offset + n_rows]


class EpochBatchSampler:
    """Index batches of each epoch from a permutation seeded by ``(seed, epoch)`` only.

    Args:
        n: number of samples.
        batch_size: global batch size (over all processes).
        seed: run seed.
        drop_last: drop the last incomplete batch (kept when it is the only batch).
        rank, world_size: this process's slice of every global batch (contiguous, nearly equal parts).
    """

    def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool = True, rank: int = 0,
                 world_size: int = 1):
        if n < 1 or batch_size < 1:
            raise ValueError(f"need n >= 1 and batch_size >= 1, got {n}, {batch_size}")
        self.n, self.batch_size, self.seed, self.drop_last = int(n), int(batch_size), int(seed), drop_last
        self.rank, self.world_size = int(rank), int(world_size)

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        if full == 0:
            return 1
        return full if (self.drop_last or rest == 0) else full + 1

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(derive_seed(self.seed, 0x5A3F, int(epoch))).permutation(self.n)

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This process's indices of every batch of ``epoch``."""
        return [indices for indices, _ in self.batches_with_parts(epoch)]

    def batches_with_parts(self, epoch: int) -> list[tuple[np.ndarray, tuple[int, int]]]:
        """This process's indices of every batch, each with ``(offset, global_size)``: where they lie in the
        global batch (see :func:`draw_for_rows`)."""
        order = self.permutation(epoch)
        out = []
        for i in range(len(self)):
            whole = order[i * self.batch_size:(i + 1) * self.batch_size]
            pieces = np.array_split(whole, self.world_size)
            offset = sum(len(p) for p in pieces[:self.rank])
            out.append((pieces[self.rank], (offset, len(whole))))
        return out


class TrainContextProtocol(Protocol):
    """The services the loop offers a method (implemented by :class:`imgclust.train.loop.TrainContext`)."""

    device: torch.device
    inputs: TrainInputs
    config: Any
    epoch: int
    global_step: int
    seed: int
    run_dir: Path | None

    def autocast(self) -> Any: ...

    def load(self, indices: np.ndarray | torch.Tensor, generator: torch.Generator, n_views: int = 1,
             part: tuple[int, int] | None = None) -> list[torch.Tensor]: ...

    def embed(self, fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int | None = None) -> torch.Tensor: ...

    def log(self, **scalars: float) -> None: ...


@runtime_checkable
class TrainableMethod(Protocol):
    """A clustering method trained by :func:`imgclust.train.loop.fit` (see the module docstring).

    Attributes:
        name: method name (checkpoints refuse to resume another method's run).
        n_views: augmented views of each sample per step (``len(batch.views)``).
    """

    name: str
    n_views: int

    def build_model(self, spec: InputSpec) -> nn.Module: ...

    def param_groups(self, model: nn.Module, config: Any) -> list[dict[str, Any]]: ...

    def on_epoch_start(self, model: nn.Module, epoch: int, ctx: TrainContextProtocol) -> None: ...

    def training_step(self, model: nn.Module, batch: Batch, ctx: TrainContextProtocol) -> dict[str, torch.Tensor]: ...

    def on_step_end(self, model: nn.Module, batch: Batch, ctx: TrainContextProtocol) -> None: ...

    def on_epoch_end(self, model: nn.Module, epoch: int, ctx: TrainContextProtocol) -> dict[str, float] | None: ...

    def predict(self, model: nn.Module, inputs: TrainInputs, ctx: TrainContextProtocol
                ) -> tuple[np.ndarray, np.ndarray]: ...

    def selection_score(self, model: nn.Module, inputs: TrainInputs, ctx: TrainContextProtocol) -> float: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def split_decay(named_params: Sequence[tuple[str, nn.Parameter]]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights that get weight decay, 1-D parameters (norms, biases) that do not); frozen ones dropped."""
    decay, no_decay = [], []
    for _, p in named_params:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return decay, no_decay


class MethodBase:
    """Defaults for the optional parts of :class:`TrainableMethod` (subclass and override)."""

    name = "method"
    n_views = 2

    def param_groups(self, model: nn.Module, config: Any) -> list[dict[str, Any]]:
        """All trainable parameters at the base lr; no weight decay on 1-D parameters."""
        decay, no_decay = split_decay(list(unwrap(model).named_parameters()))
        groups = [{"params": decay, "name": "decay"}, {"params": no_decay, "name": "no_decay", "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def on_epoch_start(self, model: nn.Module, epoch: int, ctx: TrainContextProtocol) -> None:
        return None

    def on_step_end(self, model: nn.Module, batch: Batch, ctx: TrainContextProtocol) -> None:
        return None

    def on_epoch_end(self, model: nn.Module, epoch: int, ctx: TrainContextProtocol) -> dict[str, float] | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


class Frozen(nn.Module):
    """A module that never trains: parameters frozen, always in eval mode, run without autograd.

    Used for a backbone trunk in front of a trainable tail (images form), so that ``model.train()`` does
    not update the trunk's batch-norm statistics.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.module.eval()

    def train(self, mode: bool = True) -> "Frozen":
        super().train(mode)
        self.module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module(x)


class SplitEncoder(nn.Module):
    """``tail(trunk(x))`` with a frozen trunk (optional) and a trainable tail (optional).

    ``trunk=None`` is the cached form (the inputs already are trunk activations); ``tail=None`` or an
    ``nn.Identity`` tail is head mode. ``state_dict`` keys: ``trunk.module.*`` and ``tail.*``.
    """

    def __init__(self, trunk: nn.Module | None = None, tail: nn.Module | None = None):
        super().__init__()
        self.trunk = Frozen(trunk) if trunk is not None and not isinstance(trunk, Frozen) else trunk
        self.tail = tail if tail is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.trunk is not None:
            x = self.trunk(x)
        return self.tail(x)
