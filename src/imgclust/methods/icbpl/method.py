"""ICBPL as a :class:`~imgclust.train.protocol.TrainableMethod`, its :class:`ClusterModel`, and the registry entry.

Per step (two augmented views x1, x2 of B samples, one sampled mined neighbour n of each; with
``clean_view`` x1 is the clean input)::

    z1, z2 = model(x1), model(x2)                  # unit latents (B, d)
    zn     = model(xn)  (no gradient by default)   # an augmented view of the neighbour
    loss = w_mmd · ½[MMD(z1, C) + MMD(z2, C)]      # match the uniform sample of the PEDCC centroids C
         + w_aug · aug(z1, z2)                     # two views agree
         + w_knn · ½[knn(z1, zn) + knn(z2, zn)]    # pull towards the neighbour
         + w_min · ½[min(z1, C) + min(z2, C)]      # sit on the nearest centroid

Prediction: nearest centroid by cosine; confidence ``softmax(cos / temperature)`` of that centroid.
Neighbours: mined on the clean backbone features at the start, re-mined on the current clean latents every
``remine_every`` epochs (0 = never). The choices where the paper is silent are in ``docs/methods/icbpl.md``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ...augment import BatchAugment
from ...distributed import differentiable_all_gather
from ...errors import ImgclustError
from ...neighbors import APPROXIMATE_ABOVE, INDEXES, nearest_neighbors, neighbor_purity
from ...train.loop import TrainConfig, fit
from ...train.protocol import (Batch, EpochBatchSampler, InputSpec, MethodBase, TrainInputs, draw_for_rows,
                               split_decay, unwrap)
from ..base import Assignment, FitContext, FitResult
from ..consensus import ConsensusModel, consensus_partition, mean_pairwise_nmi
from ..kmeans import kmeans
from ..options import Option, OptionSet, options_from_dataclass
from ..registry import register_method
from ..trainable import (
    LatentCache,
    NetworkClusterModel,
    backbone_name,
    build_train_inputs,
    input_options,
    train_options,
)
from .losses import augmentation_consistency_loss, min_centroid_distance_loss, mmd_loss, neighbor_loss
from .model import ICBPLNet
from .pedcc import pedcc

_logger = logging.getLogger(__name__)

__all__ = ["ICBPLConfig", "ICBPL", "ICBPLModel", "ICBPL_OPTIONS", "fit_icbpl", "build_icbpl_net"]


@dataclass
class ICBPLConfig:
    """ICBPL's own settings (the loop's are in :class:`~imgclust.train.loop.TrainConfig`).

    Attributes:
        n_clusters: K.
        latent_dim: d, the latent (and PEDCC) dimension; 128 holds an exact simplex for K <= 129.
        hidden_dim: width of the projection MLP (the authors' 512).
        batch_norm: batch norm in the projection MLP.
        temperature: softmax temperature of the confidence over the K cosines.
        pedcc_method: ``"auto"`` / ``"simplex"`` / ``"repulsion"`` (see :func:`.pedcc.pedcc`).
        pedcc_seed: seed of the PEDCC construction.
        w_mmd, w_aug, w_knn, w_min: loss weights (0 switches a term off: the ablation switches).
        min_warmup_epochs: ramp ``w_min`` linearly from 0 over this many epochs (per step), so the MMD can
            spread the latents over all centroids before they are pulled onto the nearest one.
        n_neighbors: k of the mined neighbour lists (one is sampled per anchor and step).
        remine_every: re-mine the neighbours on the current latents every R epochs (0 = never: keep the
            backbone-feature neighbours).
        neighbor_gradient: let the kNN loss move the neighbour too (default: the neighbour is a target).
        neighbor_index: ``"auto"`` / ``"exact"`` / ``"ivf"`` / ``"hnsw"``: how neighbours are mined (see
            :func:`imgclust.neighbors.nearest_neighbors`; auto = approximate past ``approximate_above`` rows on
            the CPU, with the measured recall logged as ``neighbor_recall``).
        approximate_above: row count past which ``neighbor_index="auto"`` searches approximately.
        kernel_mul, kernel_num: MMD bandwidth ratio and count (bw·{1/4, 1/2, 1, 2, 4}).
        encoder_lr_scale: learning rate of the fine-tuned backbone blocks relative to the head's.
        clean_view: step-view 1 is the clean input instead of an augmented view (one augmented view per
            step). The MMD then spreads the inputs that prediction sees, not only augmented ones; the authors'
            code trains on un-augmented images altogether.
        init: ``"kmeans"``: the first ``init_fraction`` of the steps pull each latent onto the PEDCC vertex of
            its spherical k-means cluster (k-means on the reference features, seeded by the run's seed), so
            training starts from the k-means partition; ``"random"``: the ICBPL losses from the first step.
        init_fraction: share of all steps spent on the k-means start.
        min_steps: when ``epochs`` is not given, the default epochs are raised so that training makes at
            least this many optimiser steps (0 = off); small sets otherwise get one step per epoch.
    """

    n_clusters: int = 10
    latent_dim: int = 128
    hidden_dim: int = 512
    batch_norm: bool = True
    temperature: float = 0.1
    pedcc_method: str = "auto"
    pedcc_seed: int = 0
    w_mmd: float = 4.0
    w_aug: float = 1.0
    w_knn: float = 1.0
    w_min: float = 0.25
    min_warmup_epochs: float = 0.0
    n_neighbors: int = 20
    remine_every: int = 0
    neighbor_gradient: bool = False
    neighbor_index: str = "auto"
    approximate_above: int | None = APPROXIMATE_ABOVE
    kernel_mul: float = 2.0
    kernel_num: int = 5
    encoder_lr_scale: float = 0.1
    clean_view: bool = False
    init: str = "kmeans"
    init_fraction: float = 0.2
    min_steps: int = 500

    def __post_init__(self) -> None:
        problems = []
        if self.n_clusters < 2:
            problems.append(f"n_clusters must be >= 2, got {self.n_clusters}")
        if self.latent_dim < 1 or self.hidden_dim < 0:
            problems.append(f"latent_dim must be >= 1 and hidden_dim >= 0, got {self.latent_dim}, {self.hidden_dim}")
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        if self.pedcc_method not in ("auto", "simplex", "repulsion"):
            problems.append(f"pedcc_method must be auto, simplex or repulsion, got {self.pedcc_method!r}")
        for name in ("w_mmd", "w_aug", "w_knn", "w_min", "min_warmup_epochs", "encoder_lr_scale"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.w_mmd + self.w_aug + self.w_knn + self.w_min <= 0:
            problems.append("at least one loss weight must be > 0")
        if self.n_neighbors < 1 or self.remine_every < 0:
            problems.append(f"need n_neighbors >= 1 and remine_every >= 0, got {self.n_neighbors}, "
                            f"{self.remine_every}")
        if self.neighbor_index not in INDEXES:
            problems.append(f"neighbor_index must be one of {', '.join(INDEXES)}, got {self.neighbor_index!r}")
        if self.init not in ("kmeans", "random"):
            problems.append(f"init must be kmeans or random, got {self.init!r}")
        if not 0 <= self.init_fraction < 1 or self.min_steps < 0:
            problems.append(f"need 0 <= init_fraction < 1 and min_steps >= 0, got {self.init_fraction}, "
                            f"{self.min_steps}")
        if self.kernel_num < 1 or self.kernel_mul <= 0:
            problems.append(f"need kernel_num >= 1 and kernel_mul > 0, got {self.kernel_num}, {self.kernel_mul}")
        if problems:
            raise ImgclustError("invalid ICBPL settings: " + "; ".join(problems), "fix the listed ICBPL options")


def build_icbpl_net(config: ICBPLConfig, in_dim: int, encoder: nn.Module | None = None) -> ICBPLNet:
    """The network for ``config`` (PEDCC centroids built deterministically from ``pedcc_seed``)."""
    centroids = pedcc(config.n_clusters, config.latent_dim, seed=config.pedcc_seed, method=config.pedcc_method)
    return ICBPLNet(encoder, in_dim, centroids, hidden_dim=config.hidden_dim, batch_norm=config.batch_norm,
                    temperature=config.temperature)


class ICBPL(MethodBase):
    """ICBPL for the training loop. State: the neighbour table and the epoch it was mined at."""

    name = "icbpl"
    n_views = 2

    def __init__(self, config: ICBPLConfig | None = None):
        self.config = config or ICBPLConfig()
        self.n_views = 1 if self.config.clean_view else 2
        self.neighbors: torch.Tensor | None = None  # (N, k) int64, CPU
        self.mined_at = -2  # -1: backbone features / given; e >= 0: latents at the start of epoch e
        self.init_labels: torch.Tensor | None = None  # (N,) k-means cluster of each sample (init="kmeans")
        self.init_refused = False  # k-means could not start (fewer distinct rows than K): the random head is kept
        self._latents = LatentCache(lambda net: net)  # clean-input latents (N, d), memoised

    # -- model and optimiser -------------------------------------------------------------------------------
    def build_model(self, spec: InputSpec) -> nn.Module:
        return build_icbpl_net(self.config, spec.feature_dim, spec.encoder)

    def param_groups(self, model: nn.Module, config: Any) -> list[dict[str, Any]]:
        """Head at the base lr; trainable backbone blocks at ``encoder_lr_scale``·lr; no decay on 1-D params."""
        net = unwrap(model)
        if getattr(config, "batch_size", self.config.n_clusters) < self.config.n_clusters:
            _logger.warning("ICBPL: batch size %s < K=%d: each MMD batch sees only part of the centroids",
                            config.batch_size, self.config.n_clusters)
        groups = []
        for part, scale in (("head", 1.0), ("encoder", self.config.encoder_lr_scale)):
            decay, no_decay = split_decay(list(getattr(net, part).named_parameters()))
            if decay:
                groups.append({"params": decay, "name": f"{part}", "lr_scale": scale})
            if no_decay:
                groups.append({"params": no_decay, "name": f"{part}_no_decay", "lr_scale": scale,
                               "weight_decay": 0.0})
        return [g for g in groups if g["lr_scale"] > 0]

    # -- neighbours ----------------------------------------------------------------------------------------
    def _mine(self, features: torch.Tensor | np.ndarray, ctx: Any) -> torch.Tensor:
        n = int(features.shape[0])
        k = min(self.config.n_neighbors, n - 1)
        found = nearest_neighbors(features, k, index=self.config.neighbor_index,
                                  approximate_above=self.config.approximate_above)
        if found.search is not None and "recall_at_k" in found.search:
            ctx.log(neighbor_recall=found.search["recall_at_k"])
        return torch.as_tensor(found.indices, dtype=torch.int64).cpu()

    def _log_purity(self, ctx: Any) -> None:
        labels = ctx.inputs.labels
        if labels is None or self.neighbors is None or not (labels >= 0).any():
            return
        ctx.log(neighbor_purity=neighbor_purity(self.neighbors.numpy(), labels))

    def on_epoch_start(self, model: nn.Module, epoch: int, ctx: Any) -> None:
        """First epoch: neighbours from ``inputs.neighbors``, else mined on the reference (backbone) features.
        Every ``remine_every`` epochs: re-mined on the current clean latents."""
        inputs: TrainInputs = ctx.inputs
        if self.neighbors is None:
            if inputs.neighbors is not None:
                self.neighbors = torch.as_tensor(inputs.neighbors[:, : self.config.n_neighbors], dtype=torch.int64)
            elif inputs.reference_features is not None:
                self.neighbors = self._mine(np.asarray(inputs.reference_features)
                                            if not isinstance(inputs.reference_features, torch.Tensor)
                                            else inputs.reference_features, ctx)
            else:
                # encoder(clean) = backbone features while the tail is untrained (tail(trunk(x)) == backbone(x)).
                net = unwrap(model)
                self.neighbors = self._mine(ctx.embed(lambda x: net.encoder(x).flatten(1)), ctx)
            self.mined_at = -1
            self._log_purity(ctx)
        elif self.config.remine_every > 0 and epoch > 0 and epoch % self.config.remine_every == 0 \
                and self.mined_at != epoch:
            self.neighbors = self._mine(self._latents(model, ctx), ctx)
            self.mined_at = epoch
            self._log_purity(ctx)
        ctx.log(neighbors_mined_at=self.mined_at)
        if self.config.init == "kmeans" and self.init_labels is None and inputs.reference_features is not None \
                and not self.init_refused:
            try:
                found = kmeans(np.asarray(inputs.reference_features), self.config.n_clusters,
                               seed=int(ctx.config.seed))
            except ImgclustError as err:  # fewer distinct rows than K: no k-means start, ICBPL still runs
                _logger.info("ICBPL: no k-means start (%s); starting from the random head", err.message)
                self.init_refused = True
                return
            self.init_labels = torch.as_tensor(found.labels, dtype=torch.int64)

    def _sample_neighbors(self, indices: torch.Tensor, generator: torch.Generator,
                          part: tuple[int, int] | None = None) -> np.ndarray:
        assert self.neighbors is not None, "on_epoch_start mines the neighbours before the first step"
        rows = self.neighbors[indices.cpu()]
        pick = draw_for_rows(lambda m: torch.randint(rows.shape[1], (m,), generator=generator), rows.shape[0], part)
        return rows[torch.arange(rows.shape[0]), pick].numpy()

    # -- training ------------------------------------------------------------------------------------------
    def training_step(self, model: nn.Module, batch: Batch, ctx: Any) -> dict[str, torch.Tensor]:
        cfg = self.config
        centroids = unwrap(model).centroids
        if cfg.clean_view:
            x1, x2 = ctx.load_clean(batch.indices), batch.views[0]
        else:
            x1, x2 = batch.views[0], batch.views[1]
        b = x1.shape[0]
        z = model(torch.cat([x1, x2], dim=0))
        z1, z2 = z[:b], z[b:]
        out: dict[str, torch.Tensor] = {}
        loss = z.new_zeros(())
        if cfg.w_mmd > 0:
            # The MMD is a statistic of the whole batch: under torchrun it is computed on the gathered global
            # batch (as one process would), not on each process's share.
            g1, g2 = differentiable_all_gather(z1), differentiable_all_gather(z2)
            out["mmd"] = 0.5 * (mmd_loss(g1, centroids, cfg.kernel_mul, cfg.kernel_num)
                                + mmd_loss(g2, centroids, cfg.kernel_mul, cfg.kernel_num))
            loss = loss + cfg.w_mmd * out["mmd"]
        if cfg.w_aug > 0:
            out["aug"] = augmentation_consistency_loss(z1, z2)
            loss = loss + cfg.w_aug * out["aug"]
        if cfg.w_knn > 0:
            xn = ctx.load(self._sample_neighbors(batch.indices, batch.generator, batch.part), batch.generator,
                          part=batch.part)[0]
            if cfg.neighbor_gradient:
                zn = model(xn)
            else:
                with torch.no_grad():
                    zn = model(xn)
            out["knn"] = 0.5 * (neighbor_loss(z1, zn, cfg.neighbor_gradient)
                                + neighbor_loss(z2, zn, cfg.neighbor_gradient))
            loss = loss + cfg.w_knn * out["knn"]
        if cfg.w_min > 0:
            out["min"] = 0.5 * (min_centroid_distance_loss(z1, centroids) + min_centroid_distance_loss(z2, centroids))
            loss = loss + self.min_weight(batch.global_step, getattr(ctx, "steps_per_epoch", 1)) * out["min"]
        out["loss"] = loss
        if self.init_labels is not None and batch.global_step < round(
                cfg.init_fraction * ctx.config.epochs * max(1, getattr(ctx, "steps_per_epoch", 1))):
            # k-means start: each latent is pulled onto the vertex of its k-means cluster; the ICBPL terms are
            # logged but not trained until the start is done
            target = centroids[self.init_labels[batch.indices.cpu()].to(centroids.device)].float()
            out["init"] = 0.5 * ((2.0 - 2.0 * (z1.float() * target).sum(dim=1)).mean()
                                 + (2.0 - 2.0 * (z2.float() * target).sum(dim=1)).mean())
            out["loss"] = out["init"]
        return out

    def min_weight(self, global_step: int, steps_per_epoch: int) -> float:
        """``w_min`` after the linear warm-up of ``min_warmup_epochs`` (a function of the step only)."""
        warmup = self.config.min_warmup_epochs * max(1, steps_per_epoch)
        if warmup <= 0:
            return self.config.w_min
        return self.config.w_min * min(1.0, (global_step + 1) / warmup)

    # -- evaluation (label-free) ---------------------------------------------------------------------------
    def predict(self, model: nn.Module, inputs: TrainInputs, ctx: Any) -> tuple[np.ndarray, np.ndarray]:
        labels, confidence, _ = unwrap(model).assign(self._latents(model, ctx))
        return labels.cpu().numpy().astype(np.int64), confidence.cpu().numpy().astype(np.float32)

    def selection_score(self, model: nn.Module, inputs: TrainInputs, ctx: Any) -> float:
        """The training objective on the clean inputs, without the augmentation term (lower = better).

        ``w_mmd``·MMD over consecutive batches of a fixed seeded permutation + ``w_knn``·mean distance to all
        k current neighbours + ``w_min``·mean distance to the nearest centroid. No label is used.
        """
        cfg = self.config
        z = self._latents(model, ctx)
        centroids = unwrap(model).centroids
        score = 0.0
        if cfg.w_mmd > 0:
            batch = max(cfg.n_clusters, int(getattr(ctx.config, "batch_size", 256)))
            order = torch.from_numpy(np.random.default_rng(ctx.seed).permutation(z.shape[0])).to(z.device)
            starts = range(0, max(1, z.shape[0] - batch + 1), batch)
            values = [float(mmd_loss(z[order[s:s + batch]], centroids, cfg.kernel_mul, cfg.kernel_num))
                      for s in starts]
            score += cfg.w_mmd * float(np.mean(values))
        if cfg.w_knn > 0 and self.neighbors is not None:
            nbr = self.neighbors.to(z.device)
            total = 0.0
            for s in range(0, z.shape[0], 4096):  # bounded memory: (4096, k, d) at a time
                total += float((2.0 - 2.0 * (z[s:s + 4096, None, :] * z[nbr[s:s + 4096]]).sum(-1)).sum())
            score += cfg.w_knn * total / float(nbr.numel())
        if cfg.w_min > 0:
            score += cfg.w_min * float(min_centroid_distance_loss(z, centroids))
        return score

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"neighbors": self.neighbors, "mined_at": int(self.mined_at), "init_labels": self.init_labels}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        neighbors = state.get("neighbors")
        self.neighbors = None if neighbors is None else torch.as_tensor(neighbors, dtype=torch.int64).cpu()
        self.mined_at = int(state.get("mined_at", -2))
        self.init_labels = state.get("init_labels")
        self._latents.clear()


# -------------------------------------------------------------------------------------------------------------
# The fitted model (ClusterModel) and the registry entry point
# -------------------------------------------------------------------------------------------------------------

class ICBPLModel(NetworkClusterModel):
    """A trained ICBPL network as a :class:`ClusterModel`: nearest PEDCC centroid of the latent.

    ``input_encoder`` is ``"backbone"`` (head mode: the inputs are clean backbone features) or
    ``"trunk-n"`` (n fine-tuned blocks: the inputs are the backbone trunk's activations, and the network
    holds the fine-tuned tail).
    """

    method = "icbpl"

    def __init__(self, net: ICBPLNet, config: ICBPLConfig, in_dim: int, backbone: str | None = None,
                 trainable_blocks: int = 0):
        super().__init__(net, in_dim, backbone, trainable_blocks)
        self.icbpl_config = config

    def assign_batch(self, net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return net.assign(net(x))

    def config(self) -> dict[str, Any]:
        return {"icbpl": dataclasses.asdict(self.icbpl_config), "in_dim": self.in_dim, "backbone": self.backbone,
                "trainable_blocks": self.trainable_blocks}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> "ICBPLModel":
        icbpl_config = ICBPLConfig(**config["icbpl"])
        net = build_icbpl_net(icbpl_config, int(config["in_dim"]), cls.tail_encoder(config))
        cls.load_net(net, tensors, "ICBPL")
        return cls(net, icbpl_config, int(config["in_dim"]), config.get("backbone"),
                   int(config.get("trainable_blocks", 0)))


ICBPL_OPTIONS = OptionSet("ICBPL", [
    *options_from_dataclass("method", ICBPLConfig, exclude=("n_clusters",)),
    *train_options(epochs=50, batch_size=256, lr=1e-3, optimizer="adam", schedule="cosine"),
    *input_options(),
    Option("input", "augment", "simclr", str, "BatchAugment recipe of the cached views"),
    Option("fit", "n_restarts", 1, int, "head mode: heads trained with seeds seed..seed+R-1, combined by consensus"),
])


@register_method("icbpl", model=ICBPLModel, options=ICBPL_OPTIONS, whitening="never",
                 summary="ICBPL: latents pulled to fixed PEDCC centroids")
def fit_icbpl(context: FitContext) -> FitResult:
    """Registry entry point: train ICBPL on ``context`` (options: :data:`ICBPL_OPTIONS`).

    Head mode (``trainable_blocks=0``) trains on cached features of ``n_views`` augmented views, or with
    ``n_views=0`` (and for bring-your-own embeddings, where no augmentation exists) on the clean features
    themselves: no backbone pass beyond the clean one, and the augmentation term is then zero. Fine-tuning
    caches the trunk activations of the views on the CPU, or augments images per step on CUDA.
    """
    opts = ICBPL_OPTIONS.resolve(context.options)
    icbpl_config = ICBPLConfig(n_clusters=context.n_clusters, **opts["method"])
    train_config = TrainConfig(seed=context.seed, **opts["train"])
    if "epochs" not in context.options:
        train_config = dataclasses.replace(train_config, epochs=_epochs_for_min_steps(
            train_config, len(context.features), icbpl_config.min_steps))
    blocks, n_restarts = int(opts["input"]["trainable_blocks"]), int(opts["fit"]["n_restarts"])
    if n_restarts < 1 or (n_restarts > 1 and blocks > 0):
        raise ImgclustError(f"n_restarts={n_restarts} is not possible with trainable_blocks={blocks}",
                            "use n_restarts >= 1, and restarts in head mode only (trainable_blocks=0): "
                            "fine-tuned restarts would share one backbone")
    inputs = build_train_inputs(context, opts["input"], BatchAugment(str(opts["input"]["augment"])))
    members, assignments, infos = [], [], []
    for restart in range(n_restarts):
        model, assignment, inputs, info = _fit_once(context, inputs, icbpl_config, train_config, blocks, restart,
                                                    n_restarts)
        members.append(model)
        assignments.append(assignment)
        infos.append(info)
    info = {**infos[0], "trainable_blocks": blocks, "config": dataclasses.asdict(icbpl_config),
            "train_config": train_config.to_dict(), "confidence_temperature": icbpl_config.temperature}
    if n_restarts == 1:
        return FitResult(model=members[0], assignment=assignments[0], info=info)
    labelings = [a.labels for a in assignments]
    consensus = consensus_partition(labelings, icbpl_config.n_clusters, seed=context.seed)
    model = ConsensusModel(members, consensus.centres)
    info.update(restarts=infos, restart_agreement_nmi=mean_pairwise_nmi(labelings))
    return FitResult(model=model, assignment=model.assign_labelings(labelings), info=info)


def _epochs_for_min_steps(config: TrainConfig, n_samples: int, min_steps: int) -> int:
    """``config.epochs``, raised so that training makes at least ``min_steps`` optimiser steps."""
    steps_per_epoch = len(EpochBatchSampler(n_samples, config.batch_size, config.seed, config.drop_last, 0, 1))
    return max(int(config.epochs), -(-int(min_steps) // steps_per_epoch))


def _fit_once(context: FitContext, inputs: TrainInputs, icbpl_config: ICBPLConfig, train_config: TrainConfig,
              blocks: int, restart: int, n_restarts: int
              ) -> tuple[ICBPLModel, Assignment, TrainInputs, dict[str, Any]]:
    """Restart ``restart``: the single run with seed + restart; with several, checkpoints in restart-r/.

    Returns the model, its assignment of the training inputs, the inputs for the next restart (holding the
    neighbours mined on the backbone features, to be reused) and what it logged.
    """
    run_dir = context.run_dir
    if n_restarts > 1 and run_dir is not None:
        run_dir = run_dir / f"restart-{restart}"
    config = dataclasses.replace(train_config, seed=train_config.seed + restart)
    method = ICBPL(icbpl_config)
    result = fit(method, inputs, config, device=context.device, run_dir=run_dir, resume=context.resume)
    if inputs.neighbors is None and method.mined_at == -1:
        inputs = dataclasses.replace(inputs, neighbors=method.neighbors.numpy())
    model = ICBPLModel(result.model, icbpl_config, inputs.feature_dim, backbone_name(context),
                       blocks)
    assignment = model.assign_training_inputs(inputs, torch.device(context.device), train_config.eval_batch_size)
    return model, assignment, inputs, {"seed": config.seed, **result.summary()}
