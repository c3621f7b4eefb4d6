"""scikit-learn-style estimator: ``ImageClusterer(n_clusters=10).fit_predict("photos/")``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save
from sklearn.base import BaseEstimator, ClusterMixin

from ._io import atomic_path, write_json
from .runfolder import MODEL_JSON, MODEL_TENSORS
from ._version import __version__
from .data import DEFAULT_MAX_PIXELS, load_source
from .data.base import EmbeddingDataset, ImageDataset
from .errors import ImgclustError
from .features import FeatureSource, resolve_device
from .features.extract import DEFAULT_SHARD_SIZE
from .features.whitening import WHITENINGS, Whitening, fit_whitening, whiten
from .kselect import CRITERIA, DEFAULT_CRITERION, UMAP_MIN_ROWS, estimate_k, parse_k_range
from .methods import (DEFAULT_METHOD, available_methods, fit_input, fit_method, get_method, load_model,
                      validate_options)
from .methods.base import Assignment, ClusterModel, FitContext
from .metrics import evaluate
from .naming import name_clusters_with_head
from .score import partition_score

_logger = logging.getLogger(__name__)
#: Key prefix of the whitening arrays in ``model.safetensors`` (space index appended).
WHITENING_PREFIX = "whitening."


class ImageClusterer(ClusterMixin, BaseEstimator):
    """Cluster images (a folder, a list of paths, a uint8 image array) or ready-made feature vectors.

    Args:
        n_clusters: K, the number of clusters (≥ 2), or ``"auto"``: estimated from the features in ``fit``
            (:func:`imgclust.kselect.estimate_k`, exposed as ``k_selection_``).
        k_range: ``(low, high)`` or ``"low:high"`` searched when ``n_clusters="auto"``; ``None``: 2 up to
            N // 40, clipped to 30..200 (:func:`imgclust.kselect.default_k_range`).
        k_criterion: the criterion that picks K (``imgclust.kselect.CRITERIA``; ``None``: modularity).
        max_pixels: image files declaring more pixels are skipped as bad (decompression-bomb guard; ``None``:
            no limit).
        engine: the inference engine of feature extraction (``imgclust.features.engines.ENGINES``): ``"auto"``
            (on a CPU the fastest installed engine that gives PyTorch's float32 features, measured once per
            backbone; PyTorch on a GPU), ``"torch"``, ``"onnxruntime"``, ``"openvino"``.
        pooling: how EfficientNet-Lite pools its last feature map: ``"auto"`` (generalised-mean pooling, GeM; the
            model's own pooling for timm models), ``"gem"`` or ``"avg"`` (global average, what imgclust used before
            GeM; saved models from then load with it).
        whitening: ``"auto"`` (``"augment"`` for kmeans and the layout methods, where it was measured to help;
            ``"none"`` for turtle, not measured, and for icbpl, secu and auto, which train on augmented views of
            their own), ``"augment"`` (the features whitened against what augmentations change,
            :mod:`imgclust.features.whitening`; refused for icbpl, secu and auto) or ``"none"``; saved models from
            before the setting load with ``"none"``.
        quality_score: compute ``quality_``, the label-free score of the partition (a few seconds).
        method: ``"umap-pacmap-kmeans"`` (the default), ``"umap-kmeans"``, ``"pacmap-kmeans"``, ``"kmeans"`` (the
            baseline), ``"turtle"``, ``"icbpl"``, ``"secu"`` or ``"auto"`` — see ``available_methods()``.
        backbone: backbone name (``imgclust.backbones.available_backbones()``), default EfficientNet-Lite0.
        weights: local weights file for the backbone (``.safetensors``/``.pth``); ``None`` = the default.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``…
        batch_size: images per forward pass during feature extraction.
        precision: the extraction's forward-pass precision: ``"auto"`` (float16 on CUDA, float32 on a CPU),
            ``"float32"``, ``"bfloat16"`` (1.7× faster on a CPU with AMX, measured) or ``"float16"``.
        num_workers: decoding processes (``None``: one per spare core).
        cache_dir: feature cache root (``None``: ``~/.cache/imgclust/features``).
        random_state: seed of every random choice.
        method_options: method-specific settings, e.g. ``{"n_init": 10}`` for k-means.
        run_dir: where methods that train keep checkpoints and their log (``None``: no checkpoints).
        resume: continue a killed training run from ``run_dir``.
        progress: show progress bars.
        shard_size: images per feature-cache shard: the unit a killed extraction resumes from and that
            ``torchrun`` processes share out.

    Attributes (after ``fit``):
        n_clusters_: K used (estimated when ``n_clusters="auto"``); k_selection_: the estimate
            (:class:`~imgclust.kselect.KSelection`: the criterion's curve, the resolution profile), or ``None``.
        labels_: (N,) int64 cluster of each input row; -1 for rows that could not be decoded.
        confidence_: (N,) float, NaN for undecodable rows.
        distance_: (N,) float cosine distance to the assigned centre, NaN for undecodable rows.
        items_: identifier (path) of each input row.
        skipped_: ``{"item", "reason"}`` for each row that could not be decoded.
        true_labels_: (N,) int64 labels that came with the source (-1 unknown), or ``None``.
        class_names_: class names of those labels, or ``None``.
        model_: the fitted :class:`ClusterModel`.
        whitening_: the fitted :class:`~imgclust.features.whitening.Whitening` of each space, or ``None``.
        quality_: the label-free quality score (``kappa``: how well a linear classifier re-learns the clusters
            from the features, chance-corrected; ``per_space``), or ``None``.
        cluster_names_: a short name per cluster from the backbone's ImageNet head, or ``None`` (no head).
        metrics_: ACC/NMI/ARI… against the labels that came with the data, or ``None``.
        timings_: seconds per stage.
    """

    def __init__(self, n_clusters: int | str = 10, method: str = DEFAULT_METHOD, backbone: str = "efficientnet_lite0",
                 weights: str | None = None, device: str = "auto", batch_size: int = 64,
                 num_workers: int | None = None, cache_dir: str | None = None, random_state: int = 0,
                 method_options: dict[str, Any] | None = None, run_dir: str | None = None,
                 resume: bool = False, progress: bool = True, shard_size: int = DEFAULT_SHARD_SIZE,
                 precision: str = "auto", k_range: Any = None, k_criterion: str | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, engine: str = "auto", quality_score: bool = True,
                 pooling: str = "auto", whitening: str = "auto"):
        self.n_clusters = n_clusters
        self.pooling = pooling
        self.whitening = whitening
        self.k_range = k_range
        self.k_criterion = k_criterion
        self.max_pixels = max_pixels
        self.engine = engine
        self.quality_score = quality_score
        self.method = method
        self.backbone = backbone
        self.weights = weights
        self.device = device
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache_dir = cache_dir
        self.random_state = random_state
        self.method_options = method_options
        self.run_dir = run_dir
        self.resume = resume
        self.progress = progress
        self.shard_size = shard_size
        self.precision = precision

    # -- encoding ----------------------------------------------------------------------------------------
    def feature_source(self) -> FeatureSource:
        """The backbone(s) and extraction settings of this estimator, as one :class:`FeatureSource`; built again
        only when a setting changed, so each backbone is built once. ``backbone`` may name several backbones
        (``"efficientnet_lite0,efficientnet_lite2"`` or a list), ``weights`` one entry per backbone."""
        source = FeatureSource.from_names(self.backbone, self.weights, device=self.device, precision=self.precision,
                                          cache_dir=self.cache_dir, batch_size=self.batch_size,
                                          num_workers=self.num_workers, shard_size=self.shard_size,
                                          progress=self.progress, engine=self.engine, pooling=self.pooling)
        if getattr(self, "feature_source_", None) != source:
            self.feature_source_ = source
        return self.feature_source_

    def _backbone(self) -> Any:
        """The first backbone (the one whose trunk fine-tuning trains)."""
        self.backbone_ = self.feature_source().backbone(0)
        return self.backbone_

    def encode(self, source: Any, encoder: str = "backbone", labels: Any = None
                ) -> tuple[np.ndarray, np.ndarray, Any]:
        """Encode any accepted source: (inputs of the decodable rows, their row indices, the dataset).

        ``encoder`` is ``"backbone"`` (clean backbone features, cached; with several backbones their
        L2-normalised features side by side), ``"trunk-N"`` (activations in front of the last N blocks of the
        first backbone) or ``"pixels-S"`` (the images as uint8 (N,3,S,S)); see :class:`imgclust.features.Encoding`.
        The encoded features, with their representation spaces, are kept in ``encoded_``.
        """
        dataset = load_source(source, labels=labels, max_pixels=self.max_pixels)
        if getattr(self, "device_", None) is None:  # encode() may come before fit()
            self.device_ = resolve_device(self.device)
        # Under torchrun every process encodes its share of the shards (extraction is collective).
        self.encoded_ = self.feature_source().encode(dataset, encoder)
        if isinstance(dataset, ImageDataset) and self.encoded_.encoding.kind != "pixels":
            self._backbone()
        return self.encoded_.features, self.encoded_.valid_indices, dataset

    # -- fitting -----------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> "ImageClusterer":
        """Cluster ``X``; ``y`` (optional) are true labels, used only for evaluation (``metrics_``)."""
        self.check_params()
        timings: dict[str, float] = {}
        started = time.perf_counter()
        # Backbone features, or for models trained from scratch only the decoded images.
        encoder = fit_input(self.method, dict(self.method_options or {}))
        features, valid, dataset = self.encode(X, encoder=encoder, labels=y)
        timings["features" if encoder == "backbone" else "decode"] = time.perf_counter() - started
        n_total = len(dataset)
        if self.n_clusters != "auto":
            self._check_k_fits(int(self.n_clusters), len(valid), n_total)
        # The whitening does not depend on K, so it comes first: K is estimated on the features the method clusters.
        self.whitening_ = None
        if encoder == "backbone" and self.whitening_applies() and isinstance(dataset, ImageDataset):
            started = time.perf_counter()
            self.whitening_ = fit_whitening(self.feature_source(), dataset.subset(valid), features,
                                            self.encoded_.spaces)
            features = whiten(features, self.encoded_.spaces, self.whitening_)
            timings["whitening"] = time.perf_counter() - started
        self.k_selection_ = None
        if self.n_clusters == "auto":
            started = time.perf_counter()
            criterion = self.k_criterion or DEFAULT_CRITERION
            # Whitened features: modularity of UMAP-layout partitions of them (chosen for whitened features on the
            # development sets, imgclust.kselect); on fewer rows than that was measured on, or with another
            # criterion, k-means partitions of the raw features, as before.
            on_whitened = (self.whitening_ is not None and criterion == "modularity"
                           and len(valid) >= UMAP_MIN_ROWS)
            reference = (features if on_whitened else self.encoded_.features if encoder == "backbone"
                         else self.encode(X, labels=y)[0])
            if on_whitened:  # the layout comes before the progress bar over K, and takes most of the time
                _logger.info("estimating K: a UMAP layout of the whitened features, then k-means at each K")
            self.k_selection_ = estimate_k(reference, k_range=self.k_range, criterion=criterion,
                                           seed=int(self.random_state), progress=self.progress,
                                           partitions="umap" if on_whitened else "kmeans")
            self.k_selection_.settings["features"] = "whitened" if on_whitened else "raw"
            timings["estimate_k"] = time.perf_counter() - started
            _logger.info("K estimated: %d (%s over K = %d..%d)", self.k_selection_.k, self.k_selection_.criterion,
                         self.k_selection_.k_values[0], self.k_selection_.k_values[-1])
            self._check_k_fits(self.k_selection_.k, len(valid), n_total)
        self.n_clusters_ = int(self.k_selection_.k if self.k_selection_ is not None else self.n_clusters)
        true_labels = None if dataset.labels is None else np.asarray(dataset.labels, dtype=np.int64)
        context = FitContext(
            features=features, n_clusters=self.n_clusters_, seed=int(self.random_state),
            device=self.device_,
            dataset=dataset.subset(valid) if isinstance(dataset, ImageDataset) else None,
            source=self.feature_source() if isinstance(dataset, ImageDataset) else None,
            spaces=list(self.encoded_.spaces) if encoder == "backbone" else [],
            labels=None if true_labels is None else true_labels[valid],
            run_dir=Path(self.run_dir) if self.run_dir else None, resume=self.resume,
            options=get_method(self.method).options_for(self.method_options or {},
                                                        whitened=self.whitening_ is not None))
        started = time.perf_counter()
        result = fit_method(self.method, context)
        timings["fit"] = time.perf_counter() - started

        self.model_: ClusterModel = result.model
        self.fit_info_ = result.info
        self.items_ = list(dataset.items)
        self.true_labels_ = true_labels
        self.class_names_ = dataset.class_names
        self.valid_indices_ = valid
        self.dataset_ = dataset
        # kept for the report's 2-D map; a method trained on pixels has no features (the map re-extracts them)
        self.last_features_ = features if encoder == "backbone" else None
        self.labels_, self.confidence_, self.distance_ = _scatter(result.assignment, valid, n_total)
        self.skipped_ = self._skipped(dataset)
        self.timings_ = timings
        self.metrics_ = None
        if true_labels is not None:
            self.metrics_ = evaluate(true_labels[valid], self.labels_[valid], n_clusters=self.n_clusters_,
                                     class_names=dataset.class_names)
        started = time.perf_counter()
        self.quality_ = self._quality(result.assignment.labels) if self.quality_score else None
        self.cluster_names_ = self._names(result.assignment.labels) if encoder == "backbone" else None
        timings["score_and_names"] = time.perf_counter() - started
        return self

    @staticmethod
    def _check_k_fits(k: int, n_valid: int, n_total: int) -> None:
        if n_valid < k:
            raise ImgclustError(
                f"-k {k} asked for, but only {n_valid} of {n_total} images could be used",
                f"use -k {n_valid} or fewer, or add images" if n_valid >= 2
                else "add images: clustering needs at least 2")

    def _quality(self, labels: np.ndarray) -> dict[str, Any] | None:
        """The label-free quality score of the partition (:func:`imgclust.score.partition_score`), per space."""
        encoded = getattr(self, "encoded_", None)
        if encoded is None or encoded.encoding.kind != "features":
            return None  # a method trained on pixels: the clean features were not extracted
        score = partition_score(encoded.features, labels, spaces=encoded.spaces, seed=int(self.random_state))
        return {**score.to_dict(), "spaces": list(encoded.space_names)}

    def _names(self, labels: np.ndarray) -> list[str] | None:
        """A short name per cluster from the first backbone's ImageNet head (None without one)."""
        encoded = getattr(self, "encoded_", None)
        if encoded is None or not encoded.feature_sets:
            return None  # bring-your-own embeddings: numbers only
        head = self.feature_source().backbone(0).class_head()
        names = name_clusters_with_head(encoded.feature_sets[0].features, labels, head, self.n_clusters_)
        return None if names is None else [name.name for name in names]

    def whitening_applies(self) -> bool:
        """Whether ``fit`` whitens the features (``whitening`` resolved for the method; images needed, see fit)."""
        if self.whitening == "auto":
            return get_method(self.method).whitening == "default"
        return self.whitening == "augment"

    def check_params(self) -> None:
        """Refuse a bad setting before any work (ImgclustError naming the fix); sets ``device_``."""
        validate_options(self.method, dict(self.method_options or {}))  # the method, its options, its packages
        self._check_n_clusters()
        if self.whitening not in WHITENINGS:
            raise ImgclustError(f"--whitening must be one of {', '.join(WHITENINGS)}, got {self.whitening!r}",
                                "leave it out (auto) or pass --whitening none")
        if self.whitening == "augment" and get_method(self.method).whitening == "never":
            raise ImgclustError(f"--whitening augment does not apply to --method {self.method}: it trains on "
                                "augmented views of its own, which the whitening would not match",
                                "leave --whitening out (auto), or choose a method that clusters the features alone "
                                f"({', '.join(m for m in available_methods() if get_method(m).whitening != 'never')})")
        if self.max_pixels is not None and (isinstance(self.max_pixels, bool) or
                                            not isinstance(self.max_pixels, (int, np.integer)) or self.max_pixels < 1):
            raise ImgclustError(f"--max-pixels must be an integer ≥ 1, got {self.max_pixels!r}",
                                f"pass e.g. --max-pixels {DEFAULT_MAX_PIXELS}")
        self.device_ = resolve_device(self.device)
        self.feature_source().validate()  # numbers, precision, cache folder, backbone names and weights files

    def _check_n_clusters(self) -> None:
        """Refuse a bad K (or K range / criterion) before any work."""
        if isinstance(self.n_clusters, str) and self.n_clusters == "auto":
            parse_k_range(self.k_range)
            if self.k_criterion is not None and self.k_criterion not in CRITERIA:
                raise ImgclustError(f"unknown K criterion {self.k_criterion!r}",
                                    f"choose one of: {', '.join(CRITERIA)}")
            return
        if isinstance(self.n_clusters, bool) or not isinstance(self.n_clusters, (int, np.integer)) \
                or self.n_clusters < 2:
            raise ImgclustError(f"n_clusters must be an integer ≥ 2 or \"auto\", got {self.n_clusters!r}",
                                "pass -k 2 or more, or leave -k out to estimate K")

    def _skipped(self, dataset: Any) -> list[dict[str, str]]:
        encoded = getattr(self, "encoded_", None)
        if encoded is None or isinstance(dataset, EmbeddingDataset):
            return []
        return [{"item": s["item"], "reason": s["reason"]} for s in encoded.skipped]

    def fit_predict(self, X: Any, y: Any = None, **kwargs: Any) -> np.ndarray:
        return self.fit(X, y).labels_

    # -- prediction --------------------------------------------------------------------------------------
    def predict_assignment(self, X: Any) -> tuple[Assignment, list[str], list[dict[str, str]]]:
        """Assignment of every row of ``X`` (label -1 for undecodable rows), their ids, and the skipped."""
        self._check_fitted()
        self.device_ = resolve_device(self.device)
        inputs, valid, dataset = self.encode(X, encoder=self.model_.input_encoder)
        if len(valid) == 0:
            skipped = self._skipped(dataset)
            reasons = "; ".join(f"{s['item']}: {s['reason']}" for s in skipped[:3])
            raise ImgclustError(f"none of the {len(dataset)} image(s) to assign could be read ({reasons}"
                                f"{'; …' if len(skipped) > 3 else ''})",
                                "pass image files that open (jpg, jpeg, png, webp, bmp, gif, tif)")
        if self.whitening_:
            inputs = whiten(inputs, self.encoded_.spaces, self.whitening_)
        assignment = self.model_.assign(inputs, device=self.device_)
        labels, confidence, distance = _scatter(assignment, valid, len(dataset))
        return Assignment(labels, confidence, distance), list(dataset.items), self._skipped(dataset)

    def predict(self, X: Any) -> np.ndarray:
        """Cluster of each row of ``X`` (-1 where an image could not be decoded)."""
        return self.predict_assignment(X)[0].labels

    def _check_fitted(self) -> None:
        if getattr(self, "model_", None) is None:
            raise ImgclustError("this ImageClusterer is not fitted yet", "call fit() or ImageClusterer.load(run_dir)")

    # -- persistence -------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``model.safetensors`` + ``model.json``: all that ``load`` needs to predict new images."""
        self._check_fitted()
        folder = Path(folder)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.model_.state_tensors().items()}
        for index, whitening in enumerate(self.whitening_ or []):
            tensors.update({k: torch.from_numpy(v) for k, v in whitening.state(f"{WHITENING_PREFIX}{index}").items()})
        with atomic_path(folder / MODEL_TENSORS) as tmp:
            # bytes, not save_file: save_file writes its own temporary, which a kill would leave behind
            tmp.write_bytes(save(tensors))
        params = self.get_params()
        params["method_options"] = _jsonable(params.get("method_options") or {})
        write_json(folder / MODEL_JSON, {
            "format": "imgclust-model", "imgclust_version": __version__, "estimator": params,
            "method": self.model_.method, "model_config": self.model_.config(),
            "n_clusters": int(getattr(self, "n_clusters_", self.model_.config().get("n_clusters", 0)) or 0),
            "backbone": {"name": self.backbone, "weights": self.weights, "weights_ids": self._weights_ids()},
            "whitened_spaces": len(self.whitening_ or []),
        })
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "ImageClusterer":
        """Rebuild a saved clusterer (from ``fit``/``save`` or an ``imgclust cluster`` run folder)."""
        folder = Path(folder)
        meta_path, tensor_path = folder / MODEL_JSON, folder / MODEL_TENSORS
        if not meta_path.exists() or not tensor_path.exists():
            raise ImgclustError(f"{folder} holds no saved model (model.json + model.safetensors)",
                                "point at the --out folder of a finished `imgclust cluster` run")
        try:
            meta = json.loads(meta_path.read_text())
            tensors = load_file(str(tensor_path))
        except Exception as err:  # truncated or foreign files (safetensors raises its own error type)
            raise ImgclustError(f"cannot read the saved model in {folder}: {type(err).__name__}: {err}",
                                "re-run `imgclust cluster` to rewrite the run folder") from err
        if not isinstance(meta, dict) or meta.get("format") != "imgclust-model":
            raise ImgclustError(f"{meta_path} is not an imgclust model file", "point at an imgclust run folder")
        # Models saved before the pooling (whitening) setting existed were fitted on average-pooled (unwhitened)
        # features.
        estimator = cls(**{"pooling": "avg", "whitening": "none", **meta["estimator"]})
        estimator.backbone_ = None
        whitened = int(meta.get("whitened_spaces", 0))
        estimator.whitening_ = [Whitening.from_state(tensors, f"{WHITENING_PREFIX}{i}")
                                for i in range(whitened)] or None
        tensors = {k: v for k, v in tensors.items() if not k.startswith(WHITENING_PREFIX)}
        estimator.model_ = load_model(meta["method"], tensors, meta["model_config"])
        estimator.n_clusters_ = int(meta.get("n_clusters") or meta["model_config"].get("n_clusters")
                                    or estimator.n_clusters)
        saved = meta["backbone"].get("weights_ids") or [meta["backbone"].get("weights_id")]  # older: one backbone
        source = estimator.feature_source()
        for index, saved_id in enumerate(saved[:source.n_spaces]):
            current = source.backbone(index).weights_id if saved_id else None
            if current != saved_id:
                raise ImgclustError(
                    f"the weights of backbone {source.space_names[index]} differ from the ones this model was "
                    f"fitted with ({current} ≠ {saved_id})",
                    "install the same backbone weights, or pass the original weights file")
        return estimator

    def _weights_ids(self) -> list[str | None]:
        """The weights id of every backbone this estimator built (none for bring-your-own embeddings)."""
        source, encoded = getattr(self, "feature_source_", None), getattr(self, "encoded_", None)
        if source is None or encoded is None or not encoded.feature_sets:
            return []
        return [source.backbone(i).weights_id for i in range(source.n_spaces)]


def _scatter(assignment: Assignment, valid: np.ndarray, n_total: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = np.full(n_total, -1, dtype=np.int64)
    confidence = np.full(n_total, np.nan, dtype=np.float32)
    distance = np.full(n_total, np.nan, dtype=np.float32)
    labels[valid] = assignment.labels
    confidence[valid] = assignment.confidence
    distance[valid] = assignment.distance
    return labels, confidence, distance


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
