"""One feature source: the backbone(s), device, precision, engine, cache and loader settings of a run.

Built once (CLI, estimator) and passed whole to every stage that needs features, instead of threading six
settings one by one. With several backbones each one is its own representation space, cached on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .. import distributed
from ..backbones import (DEFAULT_BACKBONE, RANDOM_WEIGHTS, Backbone, check_backbone_name, check_pooling,
                         create_backbone)
from ..backbones.base import Preprocess
from ..data.base import EmbeddingDataset, ImageDataset
from ..errors import ImgclustError
from ..runfolder import check_output_folder
from .cache import FeatureSet
from .encoding import Encoding
from .engines import check_engine
from .extract import DEFAULT_SHARD_SIZE, decode_images, extract_features, resolve_precision

__all__ = ["BackboneSpec", "EncodedFeatures", "FeatureSource", "combine_spaces", "resolve_device"]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None`` → the local CUDA device when there is one (per ``LOCAL_RANK`` under torchrun)."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", distributed.local_rank())
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ImgclustError(f"unknown device {device!r}", "use auto, cpu, cuda or cuda:N") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ImgclustError(f"device {device!r} asked for, but this machine has no usable CUDA GPU",
                            "use --device cpu (or auto)")
    return resolved


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone of a source: a registry or timm name and its weights (``None``: the default ones)."""

    name: str
    weights: str | None = None

    @property
    def label(self) -> str:
        """The space's name: the backbone name, plus the weights file's name when not the default."""
        return self.name if self.weights is None else f"{self.name}:{Path(self.weights).name}"


@dataclass
class EncodedFeatures:
    """A dataset encoded by a :class:`FeatureSource`.

    Attributes:
        features: model inputs of the valid rows. Kind ``"features"``: (N_valid, D) float32; with one backbone
            exactly its cached features (memory-mapped when large), with several the concatenation of the
            L2-normalised spaces. Kind ``"trunk"``: (N_valid, C, H, W) activations. Kind ``"pixels"``: uint8
            (N_valid, 3, S, S).
        spaces: ``(start, stop)`` column range of each representation space in ``features`` (features only).
        space_names: the name of each space (the backbone, see :attr:`BackboneSpec.label`).
        valid_indices: (N_valid,) int64 dataset rows, those that decoded for every backbone.
        skipped: ``{"index", "item", "reason"}`` for every other row.
        encoding: what ``features`` hold.
        feature_sets: the cache entries read, one per backbone (empty for pixels and embeddings).
    """

    features: np.ndarray
    spaces: list[tuple[int, int]]
    space_names: list[str]
    valid_indices: np.ndarray
    skipped: list[dict[str, Any]] = field(default_factory=list)
    encoding: Encoding = field(default_factory=Encoding.features)
    feature_sets: list[FeatureSet] = field(default_factory=list)

    def space(self, index: int) -> np.ndarray:
        """The columns of representation space ``index`` (L2-normalised when there are several)."""
        start, stop = self.spaces[index]
        return self.features[:, start:stop]


@dataclass
class FeatureSource:
    """Backbone(s) and every extraction setting, validated once, each backbone built once.

    Attributes:
        backbones: the representation spaces, in order (the first one gives trunks for fine-tuning).
        device: where normalisation, augmentation and the forward pass run (``"auto"``: CUDA when present).
        precision: the forward pass's precision (see :func:`~imgclust.features.resolve_precision`).
        engine: the inference engine of the forward pass (:data:`~imgclust.features.engines.ENGINES`).
        pooling: how EfficientNet-Lite pools its last feature map (:data:`~imgclust.backbones.POOLINGS`; ``auto``:
            GeM for EfficientNet-Lite, the model's own pooling for timm models). Part of the features' identity.
        cache_dir: the feature cache root (``None``: ``~/.cache/imgclust/features``).
        batch_size: images per forward pass.
        num_workers: decoding processes (0: decode in this process; ``None``: on a CPU each batch is decoded by
            one thread per core between forward passes, on a GPU by one process per spare core).
        shard_size: images per cache shard (the unit of resume and of sharing work under torchrun).
        progress: show progress bars (on the main process only).
    """

    backbones: tuple[BackboneSpec, ...] = (BackboneSpec(DEFAULT_BACKBONE),)
    device: torch.device | str = "cpu"
    precision: str = "auto"
    engine: str = "auto"
    pooling: str = "auto"
    cache_dir: Path | None = None
    batch_size: int = 64
    num_workers: int | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    progress: bool = True
    _built: dict[int, Backbone] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        specs = [self.backbones] if isinstance(self.backbones, (str, BackboneSpec)) else self.backbones
        self.backbones = tuple(b if isinstance(b, BackboneSpec) else BackboneSpec(str(b)) for b in specs)
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir).expanduser()

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_names(cls, backbone: str | Sequence[str] = DEFAULT_BACKBONE,
                   weights: str | Sequence[str | None] | None = None, **settings: Any) -> "FeatureSource":
        """A source from backbone names (``"efficientnet_lite0,efficientnet_lite2"`` or a list) and their weights
        (one per backbone, as a comma list or a list; ``None`` or an empty entry: the default weights).

        Raises:
            ImgclustError: no name, or a number of weights that does not match the number of backbones.
        """
        names = [n.strip() for n in (backbone.split(",") if isinstance(backbone, str) else backbone)]
        if not names or not all(names):
            raise ImgclustError(f"empty backbone name in {backbone!r}",
                                "give one name, or several separated by commas: efficientnet_lite0,efficientnet_lite2")
        if weights is None:
            per_backbone: list[str | None] = [None] * len(names)
        elif isinstance(weights, str):
            # One backbone: the whole string is its weights (a path may hold a comma).
            per_backbone = [weights] if len(names) == 1 else [w.strip() for w in weights.split(",")]
        else:
            per_backbone = list(weights)
        if len(per_backbone) != len(names):
            raise ImgclustError(f"{len(per_backbone)} weights given for {len(names)} backbones ({', '.join(names)})",
                                "give one --weights entry per backbone, comma-separated; leave an entry empty "
                                "for the default weights (e.g. ',my_lite2.safetensors')")
        specs = tuple(BackboneSpec(n, w or None) for n, w in zip(names, per_backbone))
        return cls(backbones=specs, **settings)

    @classmethod
    def from_backbone(cls, backbone: Backbone | Sequence[Backbone], **settings: Any) -> "FeatureSource":
        """A source around already-built backbone(s) (their weights are whatever the objects hold)."""
        built = [backbone] if isinstance(backbone, torch.nn.Module) else list(backbone)
        source = cls(backbones=tuple(BackboneSpec(b.name) for b in built), **settings)
        source._built.update(enumerate(built))
        return source

    # -- checks ------------------------------------------------------------------------------------------
    @property
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def validate(self) -> "FeatureSource":
        """Check every setting before any work; returns ``self``.

        Raises:
            ImgclustError: naming the bad setting and how to fix it.
        """
        if not self.backbones:
            raise ImgclustError("no backbone given", f"name at least one backbone, e.g. {DEFAULT_BACKBONE}")
        repeated = {s for s in self.backbones if self.backbones.count(s) > 1}
        if repeated:
            raise ImgclustError(f"backbone {next(iter(repeated)).label!r} is listed twice",
                                "list each backbone (with its weights) once")
        _check_int("batch size", self.batch_size, 1, "--batch-size")
        if self.num_workers is not None:
            _check_int("number of decoding workers", self.num_workers, 0, "--workers")
        _check_int("shard size", self.shard_size, 1, "--shard-size")
        resolve_precision(self.precision, self.torch_device)
        check_engine(self.engine)
        if self.cache_dir is not None:
            check_output_folder(self.cache_dir, "--cache-dir")
        for spec in self.backbones:
            _check_backbone(spec)
            check_pooling(spec.name, self.pooling)
        return self

    # -- backbones ---------------------------------------------------------------------------------------
    @property
    def n_spaces(self) -> int:
        return len(self.backbones)

    @property
    def space_names(self) -> list[str]:
        return [s.label for s in self.backbones]

    def backbone(self, index: int = 0) -> Backbone:
        """Backbone ``index``, built on first use and kept."""
        if index not in self._built:
            spec = self.backbones[index]
            self._built[index] = create_backbone(spec.name, weights=spec.weights, pooling=self.pooling)
        return self._built[index]

    def encoder(self, encoding: Encoding | str, index: int = 0) -> torch.nn.Module:
        """The module that computes ``encoding`` from normalised images: the backbone, or its trunk."""
        encoding = Encoding.parse(encoding)
        if encoding.kind == "pixels":
            raise ValueError("pixels are decoded, not encoded")
        backbone = self.backbone(index)
        return backbone if encoding.kind == "features" else backbone.split(encoding.blocks)[0]

    # -- extraction --------------------------------------------------------------------------------------
    def prepare_decoding(self, dataset: Any, index: int = 0) -> None:
        """Let the JPEG decoder shrink big photos to backbone ``index``'s input size while decoding (far faster,
        no loss at the model's size). Part of the dataset's fingerprint, so set before every extraction."""
        owner = dataset
        while not hasattr(owner, "draft_size") and hasattr(owner, "parent"):
            owner = owner.parent  # a subset decodes through its parent
        if hasattr(owner, "draft_size"):
            owner.draft_size = self.backbone(index).preprocess.input_size

    def extract(self, dataset: ImageDataset, *, index: int = 0, encoder: torch.nn.Module | None = None,
                encoder_id: str = "backbone",
                augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                augment_id: str | None = None, view: int = 0, seed: int = 0, dtype: str = "float32"
                ) -> FeatureSet:
        """One space (backbone ``index``, or ``encoder`` on its preprocessing), one view, cached.

        ``augment_id`` names the augmentation in the cache identity; it defaults to ``augment.augment_id``
        (:class:`~imgclust.augment.BatchAugment`). Collective under torchrun: every process encodes its share of
        the shards.
        """
        backbone = self.backbone(index)
        self.prepare_decoding(dataset, index)
        if augment is not None and augment_id is None:
            augment_id = getattr(augment, "augment_id", None)
            if augment_id is None:
                raise ValueError("an augmentation without an augment_id attribute needs augment_id=...")
        return extract_features(dataset, backbone, cache_dir=self.cache_dir, device=self.torch_device,
                                batch_size=self.batch_size, num_workers=self.num_workers, encoder=encoder,
                                encoder_id=encoder_id, augment=augment, augment_id=augment_id or "none", view=view,
                                seed=seed, dtype=dtype, precision=self.precision, shard_size=self.shard_size,
                                progress=self.progress and distributed.is_main_process(), engine=self.engine)

    def encode(self, dataset: ImageDataset | EmbeddingDataset, encoding: Encoding | str = "backbone"
               ) -> EncodedFeatures:
        """The inputs ``encoding`` names for every decodable row of ``dataset``.

        Features: the clean features of every backbone, each cached on its own, combined by
        :func:`combine_spaces`. Trunk: the first backbone's trunk activations. Pixels: the decoded images.
        Ready-made embeddings pass through as one space.
        """
        encoding = Encoding.parse(encoding)
        if isinstance(dataset, EmbeddingDataset):
            features = np.asarray(dataset.features, dtype=np.float32)
            return EncodedFeatures(features, [(0, features.shape[1])], ["embeddings"], np.arange(len(dataset)))
        if encoding.kind == "pixels":
            images, valid, skipped = decode_images(dataset, pixel_preprocess(encoding.size), self.num_workers,
                                                   self.progress and distributed.is_main_process())
            return EncodedFeatures(images.numpy(), [], [], valid, skipped, encoding)
        if encoding.kind == "trunk":
            trunk = self.extract(dataset, encoder=self.encoder(encoding), encoder_id=encoding.id)
            return EncodedFeatures(np.asarray(trunk.features), [], [], trunk.valid_indices, list(trunk.skipped),
                                   encoding, [trunk])
        sets = [self.extract(dataset, index=i) for i in range(self.n_spaces)]
        features, valid, skipped = combine_spaces(sets)
        return EncodedFeatures(features, _column_ranges(sets), self.space_names, valid, skipped, encoding, sets)


def pixel_preprocess(size: int) -> Preprocess:
    """Images resized to ``size`` pixels and scaled to [0, 1], nothing else (models trained from scratch)."""
    return Preprocess(input_size=int(size), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def combine_spaces(sets: Sequence[FeatureSet]) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """The spaces of one dataset as one matrix: ``(features, valid rows, skipped)``.

    One space: its features as they are (no copy of a memory-mapped cache entry). Several: each L2-normalised
    (spaces of different scales and sizes weigh alike in Euclidean distances), concatenated, on the rows
    that decoded for every backbone; a row skipped by any backbone is listed once.
    """
    if len(sets) == 1:
        return np.asarray(sets[0].features), sets[0].valid_indices, list(sets[0].skipped)
    valid = sets[0].valid_indices
    for feature_set in sets[1:]:
        valid = np.intersect1d(valid, feature_set.valid_indices)
    widths = [int(np.prod(s.features.shape[1:])) for s in sets]
    out = np.empty((len(valid), sum(widths)), dtype=np.float32)
    start = 0
    for feature_set, width in zip(sets, widths):
        rows = np.searchsorted(feature_set.valid_indices, valid)
        part = np.asarray(feature_set.features[rows], dtype=np.float32).reshape(len(valid), width)
        norms = np.linalg.norm(part, axis=1, keepdims=True)
        out[:, start:start + width] = part / np.maximum(norms, 1e-12)
        start += width
    skipped: dict[str, dict[str, Any]] = {}
    for feature_set in sets:
        for row in feature_set.skipped:
            skipped.setdefault(row["item"], row)
    return out, np.asarray(valid, dtype=np.int64), list(skipped.values())


def _column_ranges(sets: Sequence[FeatureSet]) -> list[tuple[int, int]]:
    ranges, start = [], 0
    for feature_set in sets:
        width = int(np.prod(feature_set.features.shape[1:]))
        ranges.append((start, start + width))
        start += width
    return ranges


def _check_int(what: str, value: Any, minimum: int, option: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ImgclustError(f"{what} must be an integer ≥ {minimum}, got {value!r}",
                            f"pass {option} {max(minimum, 1)} or more")


def _check_backbone(spec: BackboneSpec) -> None:
    """A known name (registry or timm) and, when given, an existing weights file; builds nothing."""
    check_backbone_name(spec.name)
    if spec.weights not in (None, RANDOM_WEIGHTS) and not Path(spec.weights).expanduser().is_file():
        raise ImgclustError(f"weights file not found: {spec.weights} (backbone {spec.name})",
                            "check the --weights path (a local .safetensors/.pth file)")
