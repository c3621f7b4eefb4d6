"""What every network method (ICBPL, SeCu, ...) shares: declared options, inputs, latents, the fitted model.

* :func:`train_options` / :func:`input_options`: the ``train.*`` (the loop's :class:`TrainConfig`) and ``input.*``
  (how training inputs are built) namespaces, with per-method defaults;
* :func:`build_train_inputs`: the :class:`~imgclust.train.protocol.TrainInputs` of a :class:`FitContext`;
* :class:`LatentCache`: clean-input latents memoised until the weights change;
* :class:`NetworkClusterModel`: a trained network as a :class:`ClusterModel` (batched ``assign``, state
  save/load with checks, the frozen trunk left out).
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..augment import BatchAugment
from ..backbones import create_backbone
from ..errors import ImgclustError
from ..train.inputs import prepare_inputs
from ..train.loop import TrainConfig
from ..train.protocol import SplitEncoder, TrainInputs, unwrap
from .base import Assignment, ClusterModel, FitContext
from .options import Option, options_from_dataclass

__all__ = ["train_options", "input_options", "build_train_inputs", "backbone_name", "LatentCache",
           "NetworkClusterModel"]

# ``input.*`` options every network method takes (a method adds its own).
_INPUT_OPTIONS: tuple[tuple[str, Any, Any, str], ...] = (
    ("trainable_blocks", 0, int, "backbone blocks fine-tuned (0 = head mode on frozen features)"),
    ("n_views", 4, int, "augmented views cached (cached forms); 0 in head mode: the clean features only"),
    ("on_the_fly", None, bool | None, "images form: augment per step on the device (default: on CUDA when "
                                      "fine-tuning)"),
    ("cache_dtype", "float32", str, "stored dtype of cached trunk activations"),
)


def train_options(**defaults: Any) -> list[Option]:
    """``train.*``: every :class:`TrainConfig` field but the seed (the run's), with the method's defaults."""
    return options_from_dataclass("train", TrainConfig, exclude=("seed",), defaults=defaults)


def input_options(**defaults: Any) -> list[Option]:
    """``input.*``: trainable_blocks, n_views, on_the_fly, cache_dtype, with the method's defaults."""
    return [Option("input", name, defaults.get(name, default), kind, help)
            for name, default, kind, help in _INPUT_OPTIONS]


def build_train_inputs(context: FitContext, inputs: Mapping[str, Any],
                       augment: BatchAugment | Sequence[BatchAugment]) -> TrainInputs:
    """Training inputs for ``context`` and the resolved ``input`` namespace.

    Bring-your-own embeddings (no images): the clean features alone, head mode only. Images: the views the
    feature source computes (see :func:`~imgclust.train.inputs.prepare_inputs`).
    """
    blocks = int(inputs["trainable_blocks"])
    features = np.asarray(context.features, dtype=np.float32)
    if context.dataset is None or context.source is None:
        if blocks > 0:
            raise ImgclustError("fine-tuning (trainable_blocks > 0) needs images, but the input is embeddings",
                                "use trainable_blocks=0 with embeddings")
        return TrainInputs.from_features(features, labels=context.labels)
    return prepare_inputs(context.dataset, context.source, n_trainable_blocks=blocks, n_views=int(inputs["n_views"]),
                          augment=augment, device=context.device, on_the_fly=inputs["on_the_fly"], seed=context.seed,
                          labels=context.labels, reference_features=features,
                          cache_dtype=str(inputs["cache_dtype"]))


def backbone_name(context: FitContext) -> str | None:
    """Registry name of the (first) backbone, recorded in a model's config to rebuild a fine-tuned tail."""
    return context.source.backbones[0].name if context.source is not None else None


class LatentCache:
    """Clean-input latents ``ctx.embed(embed_fn(net))`` in eval mode, memoised until the weights change
    (the loop bumps ``ctx.model_version`` at every step)."""

    def __init__(self, embed_fn: Callable[[nn.Module], Callable[[torch.Tensor], torch.Tensor]]):
        self._embed_fn = embed_fn
        self._memo: tuple[Any, torch.Tensor] | None = None

    def __call__(self, model: nn.Module, ctx: Any) -> torch.Tensor:
        net = unwrap(model)
        key = (getattr(ctx, "model_version", None), ctx.epoch, id(net))
        if self._memo is not None and self._memo[0] == key and key[0] is not None:
            return self._memo[1]
        was_training = net.training
        net.eval()
        z = ctx.embed(self._embed_fn(net))
        net.train(was_training)
        self._memo = (key, z)
        return z

    def clear(self) -> None:
        self._memo = None


class NetworkClusterModel(ClusterModel):
    """A trained network as a :class:`ClusterModel`.

    Subclasses implement :meth:`assign_batch` (labels, confidence, cosine distance of a batch of inputs).
    ``input_encoder`` is ``"backbone"`` (head mode), ``"trunk-n"`` (n fine-tuned blocks: the inputs are the
    backbone trunk's activations, the network holds the fine-tuned tail), or another kind a subclass sets.

    Args:
        net: the trained network; a frozen trunk in front of its ``encoder`` (images form) is taken out:
            prediction consumes trunk activations, like the cached form. It is kept aside until
            :meth:`assign_training_inputs` has run on the images, and never saved.
        in_dim: width of the network's input features.
        backbone: registry name of the backbone (to rebuild a fine-tuned tail), or ``None``.
        trainable_blocks: backbone blocks fine-tuned.
    """

    def __init__(self, net: nn.Module, in_dim: int, backbone: str | None = None, trainable_blocks: int = 0):
        encoder = getattr(net, "encoder", None)
        self._trunk: nn.Module | None = None
        if isinstance(encoder, SplitEncoder) and encoder.trunk is not None:
            self._trunk = encoder.trunk
            net.encoder = SplitEncoder(None, encoder.tail)
        self.net = net.cpu().eval()
        self.in_dim = int(in_dim)
        self.backbone = backbone
        self.trainable_blocks = int(trainable_blocks)
        self.input_encoder = "backbone" if self.trainable_blocks == 0 else f"trunk-{self.trainable_blocks}"

    assign_batch_size = 1024

    @abc.abstractmethod
    def assign_batch(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(labels, confidence, cosine distance) of a batch of inputs ``x`` on ``net``'s device."""

    @staticmethod
    def _batch(chunk: Any, device: torch.device) -> torch.Tensor:
        x = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.array(chunk))  # a writable copy
        x = x.to(device)
        return x if x.dtype == torch.uint8 else x.float()

    @torch.no_grad()
    def assign(self, inputs: np.ndarray, device: torch.device | str = "cpu", batch_size: int | None = None
               ) -> Assignment:
        """Assign (N, ...) inputs of the kind named by ``input_encoder``, ``batch_size`` rows at a time."""
        device = torch.device(device)
        net = self.net.to(device).eval()
        size = batch_size or self.assign_batch_size
        parts = [self.assign_batch(net, self._batch(inputs[s:s + size], device)) for s in range(0, len(inputs), size)]
        self.net.cpu()
        return _assignment(parts)

    @torch.no_grad()
    def assign_training_inputs(self, inputs: TrainInputs, device: torch.device, batch_size: int) -> Assignment:
        """Assign every clean training input (images go through the trunk first, which is then released)."""
        net = self.net.to(device).eval()
        trunk = self._trunk.to(device) if self._trunk is not None else None
        parts = []
        for _, x in inputs.iter_clean(batch_size, device):
            parts.append(self.assign_batch(net, trunk(x) if trunk is not None else x))
        self.net.cpu()
        self._trunk = None
        return _assignment(parts)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every learned tensor of the network; a frozen trunk (images form) is left out."""
        return {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()
                if not k.startswith("encoder.trunk.")}

    @staticmethod
    def tail_encoder(config: Mapping[str, Any]) -> SplitEncoder | None:
        """The fine-tuned tail's module (weights loaded later), for ``trainable_blocks > 0``; else ``None``."""
        blocks = int(config.get("trainable_blocks", 0))
        if blocks <= 0:
            return None
        _, tail = create_backbone(config["backbone"]).split(blocks)
        return SplitEncoder(None, tail)

    @staticmethod
    def load_net(net: nn.Module, tensors: Mapping[str, torch.Tensor], what: str) -> nn.Module:
        """Load ``tensors`` into ``net``; ImgclustError when they do not match its config."""
        missing, unexpected = net.load_state_dict(dict(tensors), strict=False)
        missing = [k for k in missing if not k.startswith("encoder.trunk.")]
        if missing or unexpected:
            raise ImgclustError(f"saved {what} model does not match its config (missing {missing[:5]}, "
                                f"unexpected {unexpected[:5]})",
                                "re-run the clustering; the model files were modified or mixed up")
        return net


def _assignment(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> Assignment:
    if not parts:
        return Assignment(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32))
    labels, confidence, distance = (torch.cat([p[i].cpu() for p in parts]).numpy() for i in range(3))
    return Assignment(labels.astype(np.int64), confidence.astype(np.float32), distance.astype(np.float32))
