"""The ICBPL network: (optional) backbone tail -> MLP projection -> L2-normalised latent; fixed PEDCC centroids."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ProjectionHead", "ICBPLNet"]


class ProjectionHead(nn.Module):
    """``Linear(D, hidden) -> [BatchNorm] -> ReLU -> Linear(hidden, d)`` (the authors' ``fc`` + ``Linear_down``).

    ``hidden_dim=0`` gives a single linear map ``D -> d``.
    """

    def __init__(self, in_dim: int, hidden_dim: int, latent_dim: int, batch_norm: bool = True):
        super().__init__()
        if hidden_dim > 0:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, latent_dim)]
        else:
            layers = [nn.Linear(in_dim, latent_dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ICBPLNet(nn.Module):
    """``z = normalise(head(encoder(x)))``; clusters = the fixed PEDCC centroids.

    Args:
        encoder: maps inputs (B, ...) to (B, in_dim): a backbone tail (fine-tuning), a
            :class:`~imgclust.train.protocol.SplitEncoder`, or ``None`` (the inputs are features).
        in_dim: D.
        centroids: (K, d) unit PEDCC centroids; stored as a buffer (saved, never trained).
        hidden_dim: width of the projection MLP (0: linear).
        batch_norm: batch norm in the MLP.
        temperature: softmax temperature of :meth:`confidence` over the cosines to the centroids.

    Shapes: ``forward(x)`` -> (B, d) unit latents; ``cosines(z)`` -> (B, K).
    """

    def __init__(self, encoder: nn.Module | None, in_dim: int, centroids: torch.Tensor, hidden_dim: int = 512,
                 batch_norm: bool = True, temperature: float = 0.1):
        super().__init__()
        self.encoder = encoder if encoder is not None else nn.Identity()
        latent_dim = int(centroids.shape[1])
        self.head = ProjectionHead(int(in_dim), int(hidden_dim), latent_dim, batch_norm)
        self.register_buffer("centroids", centroids.detach().float().clone())
        self.temperature = float(temperature)

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        if features.dim() > 2:
            features = features.flatten(1)
        return F.normalize(self.head(features).float(), dim=1)

    def cosines(self, z: torch.Tensor) -> torch.Tensor:
        return z.float() @ self.centroids.float().T

    def assign(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(labels (B,), confidence (B,), cosine distance 1 − cos (B,)) of unit latents ``z``."""
        cos = self.cosines(z)
        top, labels = cos.max(dim=1)
        confidence = torch.softmax(cos / self.temperature, dim=1).gather(1, labels[:, None])[:, 0]
        return labels, confidence, (1.0 - top).clamp(0.0, 2.0)
