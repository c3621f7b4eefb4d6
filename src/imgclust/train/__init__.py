"""The training stage: one generic loop (:func:`fit`) for every trainable clustering method.

A method implements :class:`TrainableMethod` (subclass :class:`MethodBase` for the optional hooks); the
samples come as :class:`TrainInputs` (cached views, or images augmented per step), which
:func:`prepare_inputs` (:mod:`imgclust.train.inputs`) wraps around the arrays a feature source computes. See
:mod:`imgclust.train.protocol` for the protocol and :mod:`imgclust.train.loop` for what the loop guarantees
(device-agnostic, AMP on CUDA, seeded, exact resume, one JSON line per epoch, label-free selection).
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .inputs import check_view_count, prepare_inputs
from .loop import TrainConfig, TrainContext, TrainResult, fit
from .protocol import (
    Batch,
    EpochBatchSampler,
    Frozen,
    InputSpec,
    MethodBase,
    SplitEncoder,
    TrainableMethod,
    TrainInputs,
    draw_for_rows,
    split_decay,
    unwrap,
)

__all__ = [
    "fit",
    "TrainConfig",
    "TrainContext",
    "TrainResult",
    "TrainInputs",
    "InputSpec",
    "Batch",
    "EpochBatchSampler",
    "draw_for_rows",
    "TrainableMethod",
    "MethodBase",
    "Frozen",
    "SplitEncoder",
    "unwrap",
    "split_decay",
    "prepare_inputs",
    "check_view_count",
    "save_checkpoint",
    "load_checkpoint",
]
