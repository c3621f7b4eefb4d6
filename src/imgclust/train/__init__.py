"""The training stage: one generic loop (:func:`fit`) for every trainable clustering method.

A method implements :class:`TrainableMethod` (subclass :class:`MethodBase` for the optional hooks); the
samples come as :class:`TrainInputs` (cached views, or images augmented per step). See
:mod:`imgclust.train.protocol` for the protocol and :mod:`imgclust.train.loop` for what the loop guarantees
(device-agnostic, AMP on CUDA, seeded, exact resume, one JSON line per epoch, label-free selection).
"""

from .checkpoint import load_checkpoint, save_checkpoint
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
    prepare_inputs,
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
    "save_checkpoint",
    "load_checkpoint",
]
