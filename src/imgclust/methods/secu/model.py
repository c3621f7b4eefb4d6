"""SeCu network: an encoder, the projection MLP, and one set of trainable unit centres per head.

The module only computes features: ``forward(*views)`` returns the L2-normalised projection of each view.
Losses (:mod:`.losses`) and the assignment state (:mod:`.state`) live outside it, unlike the authors'
``SeCu.forward`` which also computed the loss and updated labels and duals.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SeCuModel", "projection_mlp", "L2Normalize", "Normalize", "NORMALIZATIONS", "ENCODERS"]


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear(in, hidden) → BN → ReLU → Linear(hidden, out), as the authors' CIFAR/STL projector."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


class SeCuModel(nn.Module):
    """Encoder + projection MLP + K_h unit centres for every head h.

    Args:
        encoder: maps an input batch to (B, encoder_dim) features: a small ResNet trained from scratch,
            a (partly) trainable registry backbone, or ``nn.Identity()`` for cached features.
        encoder_dim: width of the encoder output.
        ks: K of every head, e.g. ``[10, 20, …, 100]``.
        dim: projection (and centre) dimension (128).
        hidden_dim: width of the projector's hidden layer (default ``encoder_dim``, as the authors).
        input_transform: applied to the input before the encoder (e.g. mean/std normalisation of images);
            ``None`` for identity.

    Attributes:
        centres: ``ParameterList`` of raw (K_h, dim) centre weights. They are initialised as random unit
            vectors and re-normalised every time they are used (:meth:`normalized_centres`); weight decay
            applies to the raw weights, as in the original.
    """

    def __init__(self, encoder: nn.Module, encoder_dim: int, ks: Sequence[int], dim: int = 128,
                 hidden_dim: int | None = None, input_transform: nn.Module | None = None):
        super().__init__()
        if not ks:
            raise ValueError("SeCu needs at least one cluster head")
        self.ks = [int(k) for k in ks]
        self.dim = int(dim)
        self.input_transform = input_transform if input_transform is not None else nn.Identity()
        self.encoder = encoder
        self.projector = projection_mlp(encoder_dim, hidden_dim or encoder_dim, dim)
        self.centres = nn.ParameterList(
            [nn.Parameter(F.normalize(torch.randn(k, dim), dim=1)) for k in self.ks]
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim) unit projection of one input batch."""
        h = self.encoder(self.input_transform(x))
        return F.normalize(self.projector(h).float(), dim=1)

    def forward(self, *views: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Unit projections of each view, each (B, dim); every view goes through the network separately
        (batch-norm statistics per view, as the original's two encoder calls)."""
        return tuple(self.embed(v) for v in views)

    def normalized_centres(self) -> list[torch.Tensor]:
        """Unit centres of every head, (K_h, dim), differentiable w.r.t. the raw weights."""
        return [F.normalize(c, dim=1) for c in self.centres]

    @torch.no_grad()
    def snapshot(self) -> list[torch.Tensor]:
        """Frozen copy of the unit centres (taken at the start of each epoch for the representation loss)."""
        return [F.normalize(c.detach().clone().float(), dim=1) for c in self.centres]

    def head_for(self, k: int) -> int:
        """Index of the first head with K = ``k``."""
        if k not in self.ks:
            raise ValueError(f"no SeCu head with K={k}; heads: {self.ks}")
        return self.ks.index(k)

    def centre_parameters(self) -> list[nn.Parameter]:
        return list(self.centres)

    def encoder_parameters(self) -> list[nn.Parameter]:
        centre_ids = {id(p) for p in self.centres}
        return [p for p in self.parameters() if id(p) not in centre_ids and p.requires_grad]


# Mean/std of the authors' scripts (CIFAR-10, CIFAR-100; STL-10 uses ImageNet's).
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# encoder -> (input size, default normalisation); "backbone" takes both from the registry backbone.
ENCODERS: dict[str, tuple[int, str]] = {"resnet18_cifar": (32, "cifar10"), "resnet18_stl": (96, "imagenet")}


class L2Normalize(nn.Module):
    """Rows scaled to unit length (head mode: backbone features enter the projector L2-normalised)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=1)


class Normalize(nn.Module):
    """``(x − mean) / std`` per channel for float images in [0, 1] (uint8 inputs are scaled first)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
