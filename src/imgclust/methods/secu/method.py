"""SeCu as a :class:`~imgclust.train.protocol.TrainableMethod`, its :class:`ClusterModel`, and the registry entry.

Per step, for two asymmetric augmented views ``x_a, x_b`` of B instances with ids ``i`` (Qian, ICCV 2023;
every formula and default as the authors' ``secu/builder.py`` and ``main.py``)::

    z_a, z_b = model(x_a, x_b)                               # unit projections (B, 128)
    for every head h (K_h centres c, epoch-start snapshot C̄):
        s̄   = (sg(z_a)·c + sg(z_b)·c) / 2                    # assignment similarity, no gradient
        ỹ   = memory[i]                                      # previous epoch's labels (read first)
        y   = argmax s̄ + ρ   |   argmin −s̄ + α·Δ(counts)     # size / entropy constraint (local batch)
        gather (y, i) over processes; update ρ or counts; memory[i_global] ← y_global
        L_c += CE(ŝ_a/τ_w, y) + CE(ŝ_b/τ_w, y)               # only c_y has a gradient (weight 1 − P)
        L_x += CE(z_a·C̄/τ_x, (1−τ)·sg(q_b) + τ·onehot(ỹ)) + (a ↔ b)
    loss = (L_x + L_c) / 2H

Prediction: the head with K = the requested K, ``argmax_k z·c_k``; confidence ``softmax(z·c/τ_x)`` of it.
Label-free selection score: ``H(Y|X) − H(Y)`` of ``softmax(z·c/τ_x)`` on the clean inputs (minus the
mutual information between instance and cluster: collapsed or diffuse clusterings score high).

Three encoder settings (option ``encoder``):

* ``"resnet18_cifar"`` / ``"resnet18_stl"``: the authors' setting, a ResNet-18 trained from scratch on
  the images (decoded once at 32 / 96 px), both views augmented per step on the device;
* ``"backbone"`` (default): the registry backbone in front of the projector. ``trainable_blocks=0`` is
  head mode on cached features of augmented views (like-for-like with ICBPL); ``trainable_blocks>0``
  fine-tunes the last blocks.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import distributed as dist
from ...augment import BatchAugment
from ...errors import ImgclustError
from ...train.protocol import (Batch, InputSpec, MethodBase, SplitEncoder, TrainInputs, check_view_count,
                               unwrap)
from ..base import Assignment, ClusterModel, FitContext, FitResult
from .losses import centre_loss, mean_similarity, representation_loss
from .model import SeCuModel
from .resnet import RESNETS
from .state import CONSTRAINTS, SeCuState

_logger = logging.getLogger(__name__)

__all__ = [
    "SeCuConfig",
    "SeCu",
    "SeCuClusterModel",
    "SeCuAugment",
    "secu_views",
    "fit_secu",
    "build_secu_net",
    "NORMALIZATIONS",
    "ENCODERS",
]

# Mean/std of the authors' scripts (CIFAR-10, CIFAR-100; STL-10 uses ImageNet's).
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# encoder -> (input size, default normalisation); "backbone" takes both from the registry backbone.
ENCODERS: dict[str, tuple[int, str]] = {"resnet18_cifar": (32, "cifar10"), "resnet18_stl": (96, "imagenet")}


# ---------------------------------------------------------------------------------------------------------
# Augmentation: the authors' two asymmetric views (BYOL style), batched on the device
# ---------------------------------------------------------------------------------------------------------

class SeCuAugment(BatchAugment):
    """:class:`~imgclust.augment.BatchAugment` plus Gaussian blur and solarisation, batched.

    Args:
        blur_p: probability of a Gaussian blur with σ ~ U(blur_sigma) pixels (MoCo v3's ``GaussianBlur``).
        blur_sigma: (min, max) σ in pixels.
        solarize_p: probability of inverting the pixels ≥ 128/255 (``ImageOps.solarize``).
        **kwargs: passed to :class:`BatchAugment`.

    Blur and solarisation come after BatchAugment's crop/flip/jitter/grayscale (the authors blur after
    grayscale and flip last; flipping commutes with both). Their random numbers are one extra (N, 3) draw
    from the same generator, after BatchAugment's.
    """

    def __init__(self, recipe: str = "simclr", *, blur_p: float = 0.0, blur_sigma: tuple[float, float] = (0.1, 2.0),
                 solarize_p: float = 0.0, **kwargs: Any):
        super().__init__(recipe, **kwargs)
        self.blur_p = float(blur_p)
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.solarize_p = float(solarize_p)
        if not (0.0 <= self.blur_p <= 1.0 and 0.0 <= self.solarize_p <= 1.0):
            raise ValueError(f"blur_p and solarize_p must be probabilities, got {blur_p}, {solarize_p}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must satisfy 0 < min <= max, got {blur_sigma}")

    def spec(self) -> dict[str, Any]:
        out = super().spec()
        out.update({"blur_p": self.blur_p, "blur_sigma": list(self.blur_sigma), "solarize_p": self.solarize_p})
        return out

    @property
    def is_identity(self) -> bool:
        return super().is_identity and self.blur_p == 0 and self.solarize_p == 0

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        out = super().__call__(images, generator)
        n = out.shape[0]
        if n == 0 or (self.blur_p == 0 and self.solarize_p == 0):
            return out
        u = torch.rand((n, 3), generator=generator, device=generator.device, dtype=torch.float64).to(out.device)
        dtype = out.dtype
        x = out.float() / 255.0 if dtype == torch.uint8 else out.float()
        blur = u[:, 0] < self.blur_p
        if bool(blur.any()):
            lo, hi = self.blur_sigma
            sigma = (lo + (hi - lo) * u[:, 1]).float()
            rows = torch.nonzero(blur).squeeze(1)
            x = x.clone()
            x[rows] = gaussian_blur(x[rows], sigma[rows], hi)
        solar = (u[:, 2] < self.solarize_p).view(n, 1, 1, 1)
        if bool(solar.any()):
            x = torch.where(solar & (x >= 128.0 / 255.0), 1.0 - x, x)
        if dtype == torch.uint8:
            return x.clamp_(0, 1).mul_(255.0).round_().to(torch.uint8)
        return x.to(dtype)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with one σ per image (reflect padding).

    Args:
        x: (N, C, H, W) float images.
        sigma: (N,) standard deviations in pixels.
        max_sigma: the largest σ that may occur; sets the kernel radius ``ceil(3·max_sigma)``.

    Returns:
        (N, C, H, W) blurred images.
    """
    n, c, h, w = x.shape
    radius = max(1, min(int(math.ceil(3 * max_sigma)), h - 1, w - 1))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(t[None, :] ** 2) / (2 * sigma.to(x.dtype)[:, None] ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N·C, 2r+1)
    size = 2 * radius + 1
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel.view(n * c, 1, 1, size), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel.view(n * c, 1, size, 1), groups=n * c)
    return y.view(n, c, h, w)


def secu_views(min_crop: float = 0.3, size: int | None = None) -> list[SeCuAugment]:
    """The authors' two asymmetric views.

    View 1: RandomResizedCrop(scale=(min_crop, 1)), ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2,
    Gaussian blur σ∈[0.1, 2] **p 1.0**, horizontal flip. View 2: the same with blur **p 0.1** and
    **solarize p 0.2**.
    """
    common = dict(size=size, crop_scale=(float(min_crop), 1.0), crop_ratio=(3 / 4, 4 / 3), flip_p=0.5,
                  jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, grayscale_p=0.2)
    return [SeCuAugment("simclr", blur_p=1.0, solarize_p=0.0, **common),
            SeCuAugment("simclr", blur_p=0.1, solarize_p=0.2, **common)]


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


# ---------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------

@dataclass
class SeCuConfig:
    """SeCu's own settings (the loop's are in :class:`~imgclust.train.loop.TrainConfig`).

    Names of the authors' flags in brackets.

    Attributes:
        n_clusters: K requested; the head with this K is evaluated (added to ``ks`` if missing).
        ks: K of every head [``--secu-k``]; default ``[K, 2K, …, 10K]`` (10, 20, …, 100 for CIFAR-10).
        dim: projection / centre dimension [``--secu-dim``, 128].
        hidden_dim: projector hidden width (default: the encoder's output width, 512 for ResNet-18).
        rep_temperature: τ_x of the representation loss [``--secu-tx``, 0.05].
        centre_temperature: τ_w of the centre loss [``--secu-tw``, 0.05; 1.0 in the STL-10 script].
        label_mix: τ, weight of the previous label's one-hot in the target [``--secu-tau``, 0.2].
        constraint: ``"size"`` (lower bound on cluster sizes) or ``"entropy"`` [``--secu-cst``].
        lower_ratio: γ: every cluster keeps ≥ γ/K of the data [``--secu-lratio``, 0.9].
        dual_lr: η of the dual update [``--secu-dual-lr``, 0.1].
        entropy_weight: α of the entropy constraint [``--secu-alpha``]; default ``0.12·N`` (= the
            authors' 6000 for N = 50 000).
        centre_lr: constant learning rate of the centres [``--clr``, 1.2 for CIFAR-10].
        encoder_lr_scale: encoder lr relative to the base lr (default 1 for the from-scratch ResNets,
            0.1 for a pretrained backbone's fine-tuned blocks).

    The authors' epoch 0, in which the encoder's lr is 0 (only the centres move and the memory
    initialises), is the loop's ``TrainConfig.hold_epochs = 1`` (a default of :func:`fit_secu`).
    """

    n_clusters: int = 10
    ks: list[int] | None = None
    dim: int = 128
    hidden_dim: int | None = None
    rep_temperature: float = 0.05
    centre_temperature: float = 0.05
    label_mix: float = 0.2
    constraint: str = "size"
    lower_ratio: float = 0.9
    dual_lr: float = 0.1
    entropy_weight: float | None = None
    centre_lr: float = 1.2
    encoder_lr_scale: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.n_clusters < 2:
            problems.append(f"n_clusters must be >= 2, got {self.n_clusters}")
        if self.ks is None:
            self.ks = [self.n_clusters * i for i in range(1, 11)]
        self.ks = [int(k) for k in self.ks]
        if self.n_clusters not in self.ks:
            self.ks = [self.n_clusters] + self.ks
        if any(k < 2 for k in self.ks):
            problems.append(f"every head needs K >= 2, got ks={self.ks}")
        if self.dim < 1 or (self.hidden_dim is not None and self.hidden_dim < 1):
            problems.append(f"dim and hidden_dim must be >= 1, got {self.dim}, {self.hidden_dim}")
        for name in ("rep_temperature", "centre_temperature", "centre_lr", "dual_lr"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.label_mix <= 1.0:
            problems.append(f"label_mix must lie in [0, 1], got {self.label_mix}")
        if self.constraint not in CONSTRAINTS:
            problems.append(f"constraint must be one of {CONSTRAINTS}, got {self.constraint!r}")
        if not 0.0 <= self.lower_ratio:
            problems.append(f"lower_ratio must be >= 0, got {self.lower_ratio}")
        if self.entropy_weight is not None and self.entropy_weight < 0:
            problems.append(f"entropy_weight must be >= 0, got {self.entropy_weight}")
        if self.encoder_lr_scale is not None and self.encoder_lr_scale < 0:
            problems.append(f"encoder_lr_scale must be >= 0, got {self.encoder_lr_scale}")
        if problems:
            raise ImgclustError("invalid SeCu settings: " + "; ".join(problems), "fix the listed SeCu options")

    @property
    def eval_head(self) -> int:
        assert self.ks is not None
        return self.ks.index(self.n_clusters)

    def resolved_entropy_weight(self, n_instances: int) -> float:
        return float(self.entropy_weight) if self.entropy_weight is not None else 0.12 * n_instances


def build_secu_net(config: SeCuConfig, in_dim: int, encoder: nn.Module | None = None,
                   input_transform: nn.Module | None = None) -> SeCuModel:
    """The network for ``config``: ``encoder`` (identity when None) → projector → unit features, + centres."""
    assert config.ks is not None
    return SeCuModel(encoder if encoder is not None else nn.Identity(), in_dim, config.ks, dim=config.dim,
                     hidden_dim=config.hidden_dim, input_transform=input_transform)


# ---------------------------------------------------------------------------------------------------------
# The trainable method
# ---------------------------------------------------------------------------------------------------------

class SeCu(MethodBase):
    """SeCu for the training loop. State: :class:`~.state.SeCuState` (memory, counts, duals) and the
    per-epoch centre snapshot (recomputed from the centres at every epoch start, so never saved).

    Args:
        config: SeCu settings.
        encoder: module put in front of the projector instead of ``spec.encoder`` (the from-scratch
            ResNets); ``None``: the inputs' encoder (a fine-tuned backbone tail) or identity (head mode).
        input_transform: applied to the inputs before the encoder (image normalisation).
    """

    name = "secu"
    n_views = 2

    def __init__(self, config: SeCuConfig | None = None, encoder: nn.Module | None = None,
                 input_transform: nn.Module | None = None):
        self.config = config or SeCuConfig()
        self._encoder = encoder
        self._input_transform = input_transform
        self.state: SeCuState | None = None
        self.snapshot: list[torch.Tensor] | None = None
        self._memo: tuple[Any, torch.Tensor] | None = None

    # -- model and optimiser -------------------------------------------------------------------------------
    def build_model(self, spec: InputSpec) -> nn.Module:
        cfg = self.config
        encoder = self._encoder if self._encoder is not None else spec.encoder
        in_dim = int(getattr(encoder, "feature_dim", spec.feature_dim)) if self._encoder is not None \
            else spec.feature_dim
        net = build_secu_net(cfg, in_dim, encoder, self._input_transform)
        assert cfg.ks is not None
        self.state = SeCuState(spec.n_samples, cfg.ks, constraint=cfg.constraint, lower_ratio=cfg.lower_ratio,
                               dual_lr=cfg.dual_lr, alpha=cfg.resolved_entropy_weight(spec.n_samples))
        return net

    def param_groups(self, model: nn.Module, config: Any) -> list[dict[str, Any]]:
        """Encoder + projector at the (scheduled) base lr; centres at the constant ``centre_lr``.

        Weight decay applies to every parameter, centres and 1-D ones included, as the authors' SGD.
        """
        net: SeCuModel = unwrap(model)  # type: ignore[assignment]
        scale = self.config.encoder_lr_scale
        projector_ids = {id(p) for p in net.projector.parameters()}
        encoder_params = [p for p in net.encoder_parameters() if id(p) not in projector_ids]
        groups: list[dict[str, Any]] = [{"params": list(net.projector.parameters()), "name": "projector"}]
        if encoder_params:
            groups.append({"params": encoder_params, "name": "encoder",
                           "lr_scale": 1.0 if scale is None else float(scale)})
        groups.append({"params": net.centre_parameters(), "name": "centres", "lr": self.config.centre_lr,
                       "fixed_lr": True})
        return [g for g in groups if g.get("lr_scale", 1.0) > 0]

    # -- epochs --------------------------------------------------------------------------------------------
    def on_epoch_start(self, model: nn.Module, epoch: int, ctx: Any) -> None:
        """Freeze the centre snapshot C̄ for the representation loss; move the state to the device."""
        assert self.state is not None, "build_model creates the state"
        self.state.to(ctx.device)
        self.snapshot = [c.to(ctx.device) for c in unwrap(model).snapshot()]

    def training_step(self, model: nn.Module, batch: Batch, ctx: Any) -> dict[str, torch.Tensor]:
        cfg, state = self.config, self.state
        assert state is not None and self.snapshot is not None
        first_epoch = batch.epoch == 0
        z_a, z_b = model(batch.views[0], batch.views[1])
        centres = unwrap(model).normalized_centres()
        local_ids = batch.indices.to(torch.long)
        # 1. assign the local batch in every head (heads are independent; state untouched so far)
        with torch.no_grad():
            previous, labels = [], []
            for h, c in enumerate(centres):
                previous.append(state.previous_labels(h, local_ids).to(z_a.device))
                labels.append(state.assign(h, mean_similarity(z_a, z_b, c), local_ids, first_epoch))
            # 2. one gather of (ids, labels of every head) for the global batch, in rank order
            gathered = dist.all_gather(torch.stack([local_ids.to(z_a.device)] + labels, dim=1))
            for h in range(len(centres)):
                state.commit(h, gathered[:, h + 1], gathered[:, 0], first_epoch)
                if first_epoch:  # the representation target uses the fresh label in the first epoch
                    previous[h] = state.previous_labels(h, local_ids).to(z_a.device)
                # an instance never assigned before (e.g. dropped from the first epoch) uses its fresh label
                previous[h] = torch.where(previous[h] >= 0, previous[h], labels[h])
        # 3. losses on the local batch
        loss_c = z_a.new_zeros((), dtype=torch.float32)
        loss_x = z_a.new_zeros((), dtype=torch.float32)
        for h, c in enumerate(centres):
            loss_c = loss_c + centre_loss(z_a, z_b, c, labels[h], cfg.centre_temperature)
            loss_x = loss_x + representation_loss(z_a, z_b, self.snapshot[h], previous[h], cfg.rep_temperature,
                                                  cfg.label_mix)
        n_terms = 2.0 * len(centres)
        loss_c, loss_x = loss_c / n_terms, loss_x / n_terms
        return {"loss": loss_x + loss_c, "loss_x": loss_x.detach(), "loss_c": loss_c.detach()}

    def on_epoch_end(self, model: nn.Module, epoch: int, ctx: Any) -> dict[str, float]:
        """Cluster-size statistics of every head (the authors print max/min counts per head), then the
        size constraint's per-epoch counts restart."""
        assert self.state is not None
        stats = self.state.stats()
        out: dict[str, float] = {}
        for key, entry in stats.items():
            out[f"{key}_size_min"] = entry["counts_min"]
            out[f"{key}_size_max"] = entry["counts_max"]
            out[f"{key}_nonempty"] = entry["nonempty"]
            if "dual_max" in entry:
                out[f"{key}_dual_max"] = entry["dual_max"]
        self.state.end_epoch()
        return out

    # -- evaluation (label-free) ---------------------------------------------------------------------------
    def _latents(self, model: nn.Module, ctx: Any) -> torch.Tensor:
        key = (getattr(ctx, "model_version", None), ctx.epoch, id(unwrap(model)))
        if self._memo is not None and self._memo[0] == key and key[0] is not None:
            return self._memo[1]
        net: SeCuModel = unwrap(model)  # type: ignore[assignment]
        was_training = net.training
        net.eval()
        z = ctx.embed(net.embed)
        net.train(was_training)
        self._memo = (key, z)
        return z

    def _eval_logits(self, model: nn.Module, ctx: Any) -> torch.Tensor:
        net: SeCuModel = unwrap(model)  # type: ignore[assignment]
        centres = net.normalized_centres()[self.config.eval_head].detach().float()
        return self._latents(model, ctx) @ centres.T

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: TrainInputs, ctx: Any) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centre of the head with K = n_clusters; confidence = softmax(z·c/τ_x) of that centre."""
        logits = self._eval_logits(model, ctx)
        prob = torch.softmax(logits / self.config.rep_temperature, dim=1)
        confidence, labels = prob.max(dim=1)
        return labels.cpu().numpy().astype(np.int64), confidence.cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def selection_score(self, model: nn.Module, inputs: TrainInputs, ctx: Any) -> float:
        """``H(Y|X) − H(Y)`` (nats) of ``softmax(z·c/τ_x)`` over the clean inputs, head K = n_clusters.

        Lower is better: confident assignments (small conditional entropy) spread over all clusters
        (large marginal entropy). No label is used.
        """
        prob = torch.softmax(self._eval_logits(model, ctx) / self.config.rep_temperature, dim=1).double()
        conditional = -(prob * torch.log(prob.clamp_min(1e-12))).sum(dim=1).mean()
        marginal = prob.mean(dim=0)
        marginal_entropy = -(marginal * torch.log(marginal.clamp_min(1e-12))).sum()
        return float(conditional - marginal_entropy)

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"secu_state": None if self.state is None else self.state.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("secu_state")
        if saved is not None:
            if self.state is None:
                raise ImgclustError("SeCu state loaded before the model was built", "call build_model first")
            self.state.load_state_dict(saved)
        self._memo = None


# ---------------------------------------------------------------------------------------------------------
# The fitted model (ClusterModel)
# ---------------------------------------------------------------------------------------------------------

class SeCuClusterModel(ClusterModel):
    """A trained SeCu network as a :class:`ClusterModel`; assigns with the head whose K = ``n_clusters``.

    ``input_encoder`` says what :meth:`assign` consumes:

    * ``"backbone"``: clean backbone features (head mode);
    * ``"trunk-n"``: the backbone trunk's activations (n fine-tuned blocks, the network holds the tail);
    * ``"pixels-S"``: the images themselves, uint8 or float in [0, 1], (N, 3, S, S) (from-scratch ResNet;
      the network normalises them).
    """

    method = "secu"

    def __init__(self, net: SeCuModel, config: SeCuConfig, in_dim: int, encoder: str = "backbone",
                 backbone: str | None = None, trainable_blocks: int = 0, image_size: int | None = None,
                 normalization: str | None = None, normalize_inputs: bool = False):
        if isinstance(net.encoder, SplitEncoder) and net.encoder.trunk is not None:
            net.encoder = SplitEncoder(None, net.encoder.tail)   # prediction consumes trunk activations
        self.net = net.cpu().eval()
        self.secu_config = config
        self.in_dim = int(in_dim)
        self.encoder = encoder
        self.backbone = backbone
        self.trainable_blocks = int(trainable_blocks)
        self.image_size = image_size
        self.normalization = normalization
        self.normalize_inputs = bool(normalize_inputs)
        if encoder in RESNETS:
            self.input_encoder = f"pixels-{int(image_size or ENCODERS[encoder][0])}"
        else:
            self.input_encoder = "backbone" if self.trainable_blocks == 0 else f"trunk-{self.trainable_blocks}"

    @property
    def cluster_centers_(self) -> np.ndarray:
        """(K, dim) unit centres of the evaluated head."""
        return self.net.normalized_centres()[self.secu_config.eval_head].detach().cpu().numpy()

    @torch.no_grad()
    def assign(self, inputs: np.ndarray, device: torch.device | str = "cpu", batch_size: int = 512) -> Assignment:
        device = torch.device(device)
        net = self.net.to(device).eval()
        centres = net.normalized_centres()[self.secu_config.eval_head].float()
        labels, confidence, distance = [], [], []
        for start in range(0, len(inputs), batch_size):
            chunk = inputs[start:start + batch_size]
            x = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(chunk))
            x = x.to(device)
            if x.dtype != torch.uint8:
                x = x.float()
            cos = net.embed(x) @ centres.T
            prob = torch.softmax(cos / self.secu_config.rep_temperature, dim=1)
            best_cos, lab = cos.max(dim=1)
            labels.append(lab.cpu())
            confidence.append(prob.gather(1, lab[:, None]).squeeze(1).cpu())
            distance.append((1.0 - best_cos).cpu())
        self.net.cpu()
        if not labels:
            return Assignment(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32))
        return Assignment(torch.cat(labels).numpy().astype(np.int64),
                          torch.cat(confidence).numpy().astype(np.float32),
                          torch.cat(distance).numpy().astype(np.float32))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Encoder (or fine-tuned tail), projector and all heads' centres; a frozen trunk is left out."""
        return {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()
                if not k.startswith("encoder.trunk.")}

    def config(self) -> dict[str, Any]:
        return {"secu": dataclasses.asdict(self.secu_config), "in_dim": self.in_dim, "encoder": self.encoder,
                "backbone": self.backbone, "trainable_blocks": self.trainable_blocks,
                "image_size": self.image_size, "normalization": self.normalization,
                "normalize_inputs": self.normalize_inputs}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> "SeCuClusterModel":
        secu_config = SeCuConfig(**config["secu"])
        encoder_name = config.get("encoder", "backbone")
        blocks = int(config.get("trainable_blocks", 0))
        encoder: nn.Module | None = None
        transform: nn.Module | None = None
        if encoder_name in RESNETS:
            encoder = RESNETS[encoder_name]()
            mean, std = NORMALIZATIONS[config.get("normalization") or ENCODERS[encoder_name][1]]
            transform = Normalize(mean, std)
        elif blocks > 0:
            from ...backbones import create_backbone

            _, tail = create_backbone(config["backbone"]).split(blocks)
            encoder = SplitEncoder(None, tail)
        elif config.get("normalize_inputs"):
            transform = L2Normalize()
        net = build_secu_net(secu_config, int(config["in_dim"]), encoder, transform)
        missing, unexpected = net.load_state_dict(dict(tensors), strict=False)
        missing = [k for k in missing if not k.startswith("encoder.trunk.")]
        if missing or unexpected:
            raise ImgclustError(f"saved SeCu model does not match its config (missing {missing[:5]}, "
                                f"unexpected {unexpected[:5]})",
                                "re-run the clustering; the model files were modified or mixed up")
        return cls(net, secu_config, int(config["in_dim"]), encoder_name, config.get("backbone"), blocks,
                   config.get("image_size"), config.get("normalization"), bool(config.get("normalize_inputs")))


# ---------------------------------------------------------------------------------------------------------
# Registry entry point
# ---------------------------------------------------------------------------------------------------------

# Options of the registry entry point besides SeCuConfig's and TrainConfig's fields.
_DATA_OPTIONS: dict[str, Any] = {
    "encoder": "backbone",     # "backbone" (registry backbone) | "resnet18_cifar" | "resnet18_stl"
    "trainable_blocks": 0,     # backbone blocks fine-tuned (0 = head mode on cached features)
    "n_views": 4,              # cached augmented views (head mode / CPU fine-tuning); even: half per view type;
                               # 0 in head mode: the clean features only (no extra backbone pass)
    "min_crop": 0.3,           # RandomResizedCrop lower scale [--min-crop]
    "image_size": None,        # from-scratch ResNets: side of the decoded images (default 32 / 96)
    "normalization": None,     # from-scratch ResNets: "cifar10" | "cifar100" | "imagenet" (default per encoder)
    "normalize_inputs": True,  # head mode: L2-normalise the backbone features before the projector
    "on_the_fly": None,        # images form for backbone fine-tuning (default: on CUDA)
    "cache_dtype": "float32",
}
# The authors' optimisation (main.py + run_cifar10.sh): epoch 0 at encoder lr 0, linear warm-up to
# epoch 11, cosine to 0; epochs default per encoder below (401 = 1 held + 400 for CIFAR-10).
_TRAIN_DEFAULTS: dict[str, Any] = {"batch_size": 128, "lr": 0.2, "optimizer": "sgd", "momentum": 0.9,
                                   "weight_decay": 1e-4, "schedule": "cosine", "hold_epochs": 1.0,
                                   "warmup_epochs": 11.0, "drop_last": False}
_EPOCHS = {"resnet18_cifar": 401, "resnet18_stl": 801, "backbone": 100}


@dataclass
class _Options:
    secu: SeCuConfig
    train: Any
    data: dict[str, Any] = field(default_factory=dict)


def _split_options(options: dict[str, Any], n_clusters: int, seed: int) -> _Options:
    from ...train.loop import TrainConfig

    secu_fields = {f.name for f in dataclasses.fields(SeCuConfig)} - {"n_clusters"}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"seed"}
    unknown = sorted(set(options) - secu_fields - train_fields - set(_DATA_OPTIONS))
    if unknown:
        raise ImgclustError(f"unknown SeCu option(s): {', '.join(unknown)}",
                            f"SeCu accepts: {', '.join(sorted(secu_fields | train_fields | set(_DATA_OPTIONS)))}")
    data = dict(_DATA_OPTIONS)
    data.update({k: v for k, v in options.items() if k in _DATA_OPTIONS})
    encoder = str(data["encoder"])
    if encoder != "backbone" and encoder not in RESNETS:
        raise ImgclustError(f"unknown SeCu encoder {encoder!r}",
                            f"use encoder=backbone or one of: {', '.join(RESNETS)}")
    if data["normalization"] is not None and data["normalization"] not in NORMALIZATIONS:
        raise ImgclustError(f"unknown normalization {data['normalization']!r}",
                            f"use one of: {', '.join(NORMALIZATIONS)}")
    check_view_count(int(data["n_views"]), head_mode=encoder == "backbone" and int(data["trainable_blocks"]) == 0)
    secu_kwargs = {k: v for k, v in options.items() if k in secu_fields}
    if secu_kwargs.get("encoder_lr_scale") is None:
        secu_kwargs["encoder_lr_scale"] = 1.0 if encoder in RESNETS else 0.1
    secu = SeCuConfig(n_clusters=n_clusters, **secu_kwargs)
    train_kwargs = dict(_TRAIN_DEFAULTS, epochs=_EPOCHS[encoder])
    train_kwargs.update({k: v for k, v in options.items() if k in train_fields})
    train = TrainConfig(seed=seed, **train_kwargs)
    return _Options(secu, train, data)


def _view_groups(n_views: int) -> list[list[int]] | None:
    """Cached views alternate view-1 / view-2 augmentations: step-view j draws from its own kind."""
    if n_views < 2:
        return None
    return [list(range(0, n_views, 2)), list(range(1, n_views, 2))]


def secu_fit_input(options: dict[str, Any]) -> str:
    """``"pixels-S"`` for the from-scratch ResNets (they never need backbone features), else ``"backbone"``."""
    encoder = str(options.get("encoder", _DATA_OPTIONS["encoder"]))
    if encoder in RESNETS:
        return f"pixels-{int(options.get('image_size') or ENCODERS[encoder][0])}"
    return "backbone"


def build_inputs(context: FitContext, opts: _Options) -> tuple[TrainInputs, nn.Module | None, nn.Module | None]:
    """Training inputs for ``context`` and, for the from-scratch ResNets, (encoder, input transform)."""
    from ...train.protocol import decode_images, prepare_inputs

    data = opts.data
    encoder_name = str(data["encoder"])
    if encoder_name in RESNETS:
        if context.dataset is None:
            raise ImgclustError(f"encoder={encoder_name} trains on images, but the input is embeddings",
                                "use encoder=backbone with embeddings")
        from ...backbones.base import Preprocess

        size = int(data["image_size"] or ENCODERS[encoder_name][0])
        mean, std = NORMALIZATIONS[data["normalization"] or ENCODERS[encoder_name][1]]
        given = np.asarray(context.features)
        if given.ndim == 4 and given.dtype == np.uint8 and given.shape[1:] == (3, size, size):
            images = torch.from_numpy(given)  # decoded by the estimator (secu_fit_input)
        else:
            images = decode_images(context.dataset, Preprocess(input_size=size, mean=mean, std=std),
                                   num_workers=context.num_workers, progress=context.progress)
        encoder = RESNETS[encoder_name]()
        inputs = TrainInputs(images=images, augment=secu_views(float(data["min_crop"])), normalize=None,
                             encoder=None, feature_dim=encoder.feature_dim, labels=context.labels)
        return inputs, encoder, Normalize(mean, std)
    features = np.asarray(context.features, dtype=np.float32)
    blocks = int(data["trainable_blocks"])
    if context.dataset is None or context.backbone is None:
        if blocks > 0:
            raise ImgclustError("fine-tuning (trainable_blocks > 0) needs images, but the input is embeddings",
                                "use trainable_blocks=0 with embeddings")
        _logger.warning("SeCu on embeddings: no augmented views exist, both views are the embedding itself")
        transform = L2Normalize() if data["normalize_inputs"] else None
        return TrainInputs.from_features(features, labels=context.labels), None, transform
    n_views = int(data["n_views"])
    inputs = prepare_inputs(context.dataset, context.backbone, n_trainable_blocks=blocks, n_views=n_views,
                            augment=secu_views(float(data["min_crop"])), device=context.device,
                            on_the_fly=data["on_the_fly"], cache_dir=context.cache_dir,
                            batch_size=context.batch_size, num_workers=context.num_workers, seed=context.seed,
                            labels=context.labels, reference_features=features,
                            cache_dtype=str(data["cache_dtype"]), precision=context.precision,
                            progress=context.progress,
                            shard_size=context.shard_size)
    if inputs.mode == "cached":
        inputs.view_groups = _view_groups(n_views)
    transform = L2Normalize() if blocks == 0 and data["normalize_inputs"] else None
    return inputs, None, transform


def fit_secu(context: FitContext) -> FitResult:
    """Registry entry point: train SeCu on ``context``.

    Options (``--set KEY=VALUE``): every :class:`SeCuConfig` field, every
    :class:`~imgclust.train.loop.TrainConfig` field (defaults: the authors' SGD, lr 0.2, momentum 0.9,
    wd 1e-4, batch 128, 11 warm-up epochs, cosine), and ``encoder``, ``trainable_blocks``, ``n_views``,
    ``min_crop``, ``image_size``, ``normalization``, ``normalize_inputs``, ``on_the_fly``, ``cache_dtype``.
    """
    from ...train.loop import fit

    opts = _split_options(dict(context.options), context.n_clusters, context.seed)
    inputs, encoder, transform = build_inputs(context, opts)
    rest = len(inputs) % opts.train.batch_size
    if not opts.train.drop_last and len(inputs) > opts.train.batch_size and 0 < rest < 2 * dist.world_size():
        # batch norm cannot train on a 1-row batch (per process): drop that last step of each epoch
        _logger.info("SeCu: the last batch of each epoch would hold %d sample(s); dropping it", rest)
        opts.train = dataclasses.replace(opts.train, drop_last=True)
    method = SeCu(opts.secu, encoder=encoder, input_transform=transform)
    result = fit(method, inputs, opts.train, device=context.device, run_dir=context.run_dir, resume=context.resume)
    net: SeCuModel = result.model  # type: ignore[assignment]
    encoder_name = str(opts.data["encoder"])
    model = SeCuClusterModel(net, opts.secu, int(inputs.feature_dim or 0), encoder_name,
                             getattr(context.backbone, "name", None), int(opts.data["trainable_blocks"]),
                             opts.data["image_size"] or (ENCODERS[encoder_name][0] if encoder_name in RESNETS
                                                         else None),
                             opts.data["normalization"], transform is not None and encoder_name not in RESNETS)
    labels, confidence, distance = _assign_clean(net, inputs, torch.device(context.device), opts.secu,
                                                 opts.train.eval_batch_size)
    assert method.state is not None
    info = {"epochs": result.epochs_done, "best_epoch": result.best_epoch, "best_score": result.best_score,
            "resumed_from": result.resumed_from, "history": result.history, "encoder": encoder_name,
            "trainable_blocks": int(opts.data["trainable_blocks"]), "config": dataclasses.asdict(opts.secu),
            "train_config": opts.train.to_dict(), "cluster_stats": method.state.stats(),
            "confidence_temperature": opts.secu.rep_temperature}
    return FitResult(model=model, assignment=Assignment(labels, confidence, distance), info=info)


@torch.no_grad()
def _assign_clean(net: SeCuModel, inputs: TrainInputs, device: torch.device, config: SeCuConfig, batch_size: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest-centre labels, confidence and cosine distance of every clean training input."""
    net = net.to(device).eval()
    centres = net.normalized_centres()[config.eval_head].float()
    labels, confidence, distance = [], [], []
    for _, x in inputs.iter_clean(batch_size, device):
        cos = net.embed(x) @ centres.T
        prob = torch.softmax(cos / config.rep_temperature, dim=1)
        best, lab = cos.max(dim=1)
        labels.append(lab.cpu())
        confidence.append(prob.gather(1, lab[:, None]).squeeze(1).cpu())
        distance.append((1.0 - best).cpu())
    return (torch.cat(labels).numpy().astype(np.int64), torch.cat(confidence).numpy().astype(np.float32),
            torch.cat(distance).numpy().astype(np.float32))
