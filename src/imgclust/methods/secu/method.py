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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ... import distributed as dist
from ...augment import secu_views
from ...backbones.base import Preprocess
from ...errors import ImgclustError
from ...features.views import decode_all
from ...train.inputs import check_view_count
from ...train.loop import TrainConfig, fit
from ...train.protocol import Batch, InputSpec, MethodBase, TrainInputs, unwrap
from ..base import FitContext, FitResult
from ..options import Derived, Option, OptionSet, ResolvedOptions, options_from_dataclass
from ..registry import register_method
from ..trainable import (
    LatentCache,
    NetworkClusterModel,
    backbone_name,
    build_train_inputs,
    input_options,
    train_options,
)
from .losses import centre_loss, mean_similarity, representation_loss
from .model import ENCODERS, NORMALIZATIONS, L2Normalize, Normalize, SeCuModel
from .resnet import RESNETS
from .state import CONSTRAINTS, SeCuState

_logger = logging.getLogger(__name__)

__all__ = ["SeCuConfig", "SeCu", "SeCuClusterModel", "SECU_OPTIONS", "fit_secu", "secu_fit_input", "build_secu_net"]


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
        self._latents = LatentCache(lambda net: net.embed)  # clean-input projections (N, dim), memoised

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
        self._latents.clear()


# ---------------------------------------------------------------------------------------------------------
# The fitted model (ClusterModel)
# ---------------------------------------------------------------------------------------------------------

class SeCuClusterModel(NetworkClusterModel):
    """A trained SeCu network as a :class:`ClusterModel`; assigns with the head whose K = ``n_clusters``.

    ``input_encoder`` says what :meth:`assign` consumes:

    * ``"backbone"``: clean backbone features (head mode);
    * ``"trunk-n"``: the backbone trunk's activations (n fine-tuned blocks, the network holds the tail);
    * ``"pixels-S"``: the images themselves, uint8 or float in [0, 1], (N, 3, S, S) (from-scratch ResNet;
      the network normalises them).
    """

    method = "secu"
    assign_batch_size = 512

    def __init__(self, net: SeCuModel, config: SeCuConfig, in_dim: int, encoder: str = "backbone",
                 backbone: str | None = None, trainable_blocks: int = 0, image_size: int | None = None,
                 normalization: str | None = None, normalize_inputs: bool = False):
        super().__init__(net, in_dim, backbone, trainable_blocks)
        self.secu_config = config
        self.encoder = encoder
        self.image_size = image_size
        self.normalization = normalization
        self.normalize_inputs = bool(normalize_inputs)
        if encoder in RESNETS:
            self.input_encoder = f"pixels-{int(image_size or ENCODERS[encoder][0])}"

    @property
    def cluster_centers_(self) -> np.ndarray:
        """(K, dim) unit centres of the evaluated head."""
        return self.net.normalized_centres()[self.secu_config.eval_head].detach().cpu().numpy()

    def assign_batch(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Nearest centre of the evaluated head; confidence ``softmax(z·c/τ_x)`` of it; distance 1 − cos."""
        centres = net.normalized_centres()[self.secu_config.eval_head].float()
        cos = net.embed(x) @ centres.T
        prob = torch.softmax(cos / self.secu_config.rep_temperature, dim=1)
        best_cos, labels = cos.max(dim=1)
        return labels, prob.gather(1, labels[:, None]).squeeze(1), 1.0 - best_cos

    def config(self) -> dict[str, Any]:
        return {"secu": dataclasses.asdict(self.secu_config), "in_dim": self.in_dim, "encoder": self.encoder,
                "backbone": self.backbone, "trainable_blocks": self.trainable_blocks,
                "image_size": self.image_size, "normalization": self.normalization,
                "normalize_inputs": self.normalize_inputs}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> "SeCuClusterModel":
        secu_config = SeCuConfig(**config["secu"])
        encoder_name = config.get("encoder", "backbone")
        encoder, transform = _network_parts(encoder_name, config.get("normalization"),
                                            bool(config.get("normalize_inputs")), cls.tail_encoder(config))
        net = cls.load_net(build_secu_net(secu_config, int(config["in_dim"]), encoder, transform), tensors, "SeCu")
        return cls(net, secu_config, int(config["in_dim"]), encoder_name, config.get("backbone"),
                   int(config.get("trainable_blocks", 0)), config.get("image_size"), config.get("normalization"),
                   bool(config.get("normalize_inputs")))


def _network_parts(encoder_name: str, normalization: str | None, normalize_inputs: bool,
                   tail: nn.Module | None) -> tuple[nn.Module | None, nn.Module | None]:
    """(encoder, input transform) in front of the projector: a from-scratch ResNet behind image
    normalisation, a fine-tuned tail, or nothing (head mode, optionally behind L2 normalisation)."""
    if encoder_name in RESNETS:
        mean, std = NORMALIZATIONS[normalization or ENCODERS[encoder_name][1]]
        return RESNETS[encoder_name](), Normalize(mean, std)
    if tail is not None:
        return tail, None
    return None, L2Normalize() if normalize_inputs else None


# ---------------------------------------------------------------------------------------------------------
# Options and the registry entry point
# ---------------------------------------------------------------------------------------------------------

# The authors' optimisation (main.py + run_cifar10.sh): epoch 0 at encoder lr 0, linear warm-up to
# epoch 11, cosine to 0; epochs per encoder (401 = 1 held + 400 for CIFAR-10).
_EPOCHS = {"resnet18_cifar": 401, "resnet18_stl": 801, "backbone": 100}

SECU_OPTIONS = OptionSet("SeCu", [
    *options_from_dataclass("method", SeCuConfig, exclude=("n_clusters",), defaults={
        "encoder_lr_scale": Derived(lambda v: 1.0 if v["input"]["encoder"] in RESNETS else 0.1,
                                    "1.0 for the from-scratch ResNets, 0.1 for backbone blocks")}),
    *train_options(batch_size=128, lr=0.2, optimizer="sgd", momentum=0.9, weight_decay=1e-4, schedule="cosine",
                   hold_epochs=1.0, warmup_epochs=11.0, drop_last=False,
                   epochs=Derived(lambda v: _EPOCHS.get(v["input"]["encoder"], _EPOCHS["backbone"]),
                                  "401 (resnet18_cifar), 801 (resnet18_stl), 100 (backbone)")),
    *input_options(),
    Option("input", "encoder", "backbone", str, "backbone (registry backbone) | resnet18_cifar | resnet18_stl"),
    Option("input", "min_crop", 0.3, float, "RandomResizedCrop lower scale [--min-crop]"),
    Option("input", "image_size", None, int | None, "from-scratch ResNets: side of the decoded images "
                                                      "(default 32 / 96)"),
    Option("input", "normalization", None, str | None, "from-scratch ResNets: cifar10 | cifar100 | imagenet "
                                                        "(default per encoder)"),
    Option("input", "normalize_inputs", True, bool, "head mode: L2-normalise the backbone features before the "
                                                    "projector"),
])


def _check_inputs(inputs: dict[str, Any]) -> None:
    encoder = str(inputs["encoder"])
    if encoder != "backbone" and encoder not in RESNETS:
        raise ImgclustError(f"unknown SeCu encoder {encoder!r}",
                            f"use encoder=backbone or one of: {', '.join(RESNETS)}")
    if inputs["normalization"] is not None and inputs["normalization"] not in NORMALIZATIONS:
        raise ImgclustError(f"unknown normalization {inputs['normalization']!r}",
                            f"use one of: {', '.join(NORMALIZATIONS)}")
    check_view_count(int(inputs["n_views"]), head_mode=encoder == "backbone" and int(inputs["trainable_blocks"]) == 0)


def _image_size(inputs: dict[str, Any]) -> int | None:
    encoder = str(inputs["encoder"])
    return int(inputs["image_size"] or ENCODERS[encoder][0]) if encoder in RESNETS else inputs["image_size"]


def secu_fit_input(options: ResolvedOptions) -> str:
    """``"pixels-S"`` for the from-scratch ResNets (they never need backbone features), else ``"backbone"``."""
    if str(options["input"]["encoder"]) in RESNETS:
        return f"pixels-{_image_size(options['input'])}"
    return "backbone"


def _view_groups(n_views: int) -> list[list[int]] | None:
    """Cached views alternate view-1 / view-2 augmentations: step-view j draws from its own kind."""
    if n_views < 2:
        return None
    return [list(range(0, n_views, 2)), list(range(1, n_views, 2))]


def build_inputs(context: FitContext, inputs: dict[str, Any]) -> tuple[TrainInputs, nn.Module | None,
                                                                        nn.Module | None]:
    """Training inputs for ``context`` and, for the from-scratch ResNets, (encoder, input transform)."""
    encoder_name = str(inputs["encoder"])
    views = secu_views(float(inputs["min_crop"]))
    if encoder_name in RESNETS:
        images = _training_images(context, encoder_name, int(_image_size(inputs) or 0), inputs["normalization"])
        encoder, transform = _network_parts(encoder_name, inputs["normalization"], False, None)
        return (TrainInputs(images=images, augment=views, normalize=None, encoder=None,
                            feature_dim=encoder.feature_dim, labels=context.labels), encoder, transform)
    if context.dataset is None or context.source is None:
        _logger.warning("SeCu on embeddings: no augmented views exist, both views are the embedding itself")
    train_inputs = build_train_inputs(context, inputs, views)
    if train_inputs.mode == "cached" and context.dataset is not None and context.source is not None:
        train_inputs.view_groups = _view_groups(int(inputs["n_views"]))
    head_mode = int(inputs["trainable_blocks"]) == 0
    return train_inputs, None, L2Normalize() if head_mode and inputs["normalize_inputs"] else None


def _training_images(context: FitContext, encoder_name: str, size: int, normalization: str | None) -> torch.Tensor:
    """uint8 (N, 3, size, size) images: as the estimator decoded them (``secu_fit_input``), else decoded here."""
    if context.dataset is None:
        raise ImgclustError(f"encoder={encoder_name} trains on images, but the input is embeddings",
                            "use encoder=backbone with embeddings")
    given = np.asarray(context.features)
    if given.ndim == 4 and given.dtype == np.uint8 and given.shape[1:] == (3, size, size):
        return torch.from_numpy(given)
    mean, std = NORMALIZATIONS[normalization or ENCODERS[encoder_name][1]]
    source = context.source
    return decode_all(Preprocess(input_size=size, mean=mean, std=std), context.dataset,
                      num_workers=source.num_workers if source is not None else None,
                      progress=source.progress if source is not None else None)


@register_method("secu", model=SeCuClusterModel, options=SECU_OPTIONS, fit_input=secu_fit_input, whitening="never",
                 summary="SeCu: stable cluster discrimination with multiple heads and size/entropy constraints")
def fit_secu(context: FitContext) -> FitResult:
    """Registry entry point: train SeCu on ``context`` (options: :data:`SECU_OPTIONS`; training defaults: the
    authors' SGD, lr 0.2, momentum 0.9, wd 1e-4, batch 128, 11 warm-up epochs, cosine)."""
    opts = SECU_OPTIONS.resolve(context.options)
    _check_inputs(opts["input"])
    secu_config = SeCuConfig(n_clusters=context.n_clusters, **opts["method"])
    train_config = TrainConfig(seed=context.seed, **opts["train"])
    inputs, encoder, transform = build_inputs(context, opts["input"])
    rest = len(inputs) % train_config.batch_size
    if not train_config.drop_last and len(inputs) > train_config.batch_size and 0 < rest < 2 * dist.world_size():
        # batch norm cannot train on a 1-row batch (per process): drop that last step of each epoch
        _logger.info("SeCu: the last batch of each epoch would hold %d sample(s); dropping it", rest)
        train_config = dataclasses.replace(train_config, drop_last=True)
    method = SeCu(secu_config, encoder=encoder, input_transform=transform)
    result = fit(method, inputs, train_config, device=context.device, run_dir=context.run_dir, resume=context.resume)
    encoder_name = str(opts["input"]["encoder"])
    model = SeCuClusterModel(result.model, secu_config, int(inputs.feature_dim or 0), encoder_name,
                             backbone_name(context), int(opts["input"]["trainable_blocks"]),
                             _image_size(opts["input"]), opts["input"]["normalization"],
                             transform is not None and encoder_name not in RESNETS)
    assignment = model.assign_training_inputs(inputs, torch.device(context.device), train_config.eval_batch_size)
    assert method.state is not None
    info = {**result.summary(), "encoder": encoder_name,
            "trainable_blocks": int(opts["input"]["trainable_blocks"]), "config": dataclasses.asdict(secu_config),
            "train_config": train_config.to_dict(), "cluster_stats": method.state.stats(),
            "confidence_temperature": secu_config.rep_temperature}
    return FitResult(model=model, assignment=assignment, info=info)
