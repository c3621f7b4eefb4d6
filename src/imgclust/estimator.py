"""scikit-learn-style estimator: ``ImageClusterer(n_clusters=10).fit_predict("photos/")``."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClusterMixin

from . import __version__, distributed
from ._io import atomic_path, write_json
from .data import load_source
from .data.base import EmbeddingDataset, ImageDataset
from .errors import ImgclustError
from .features import FeatureSet
from .features.extract import DEFAULT_SHARD_SIZE
from .methods import available_methods, fit_input, fit_method, load_model
from .methods.base import Assignment, ClusterModel, FitContext

_logger = logging.getLogger(__name__)


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


class ImageClusterer(ClusterMixin, BaseEstimator):
    """Cluster images (a folder, a list of paths, a uint8 image array) or ready-made feature vectors.

    Args:
        n_clusters: K, the number of clusters (≥ 2).
        method: ``"kmeans"`` (the baseline), ``"icbpl"`` or ``"secu"`` — see ``available_methods()``.
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
        labels_: (N,) int64 cluster of each input row; -1 for rows that could not be decoded.
        confidence_: (N,) float, NaN for undecodable rows.
        distance_: (N,) float cosine distance to the assigned centre, NaN for undecodable rows.
        items_: identifier (path) of each input row.
        skipped_: ``{"item", "reason"}`` for each row that could not be decoded.
        true_labels_: (N,) int64 labels that came with the source (-1 unknown), or ``None``.
        class_names_: class names of those labels, or ``None``.
        model_: the fitted :class:`ClusterModel`.
        timings_: seconds per stage.
    """

    def __init__(self, n_clusters: int = 10, method: str = "kmeans", backbone: str = "efficientnet_lite0",
                 weights: str | None = None, device: str = "auto", batch_size: int = 64,
                 num_workers: int | None = None, cache_dir: str | None = None, random_state: int = 0,
                 method_options: dict[str, Any] | None = None, run_dir: str | None = None,
                 resume: bool = False, progress: bool = True, shard_size: int = DEFAULT_SHARD_SIZE,
                 precision: str = "auto"):
        self.n_clusters = n_clusters
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
    def _backbone(self) -> Any:
        if getattr(self, "backbone_", None) is None:
            from .backbones import create_backbone

            self.backbone_ = create_backbone(self.backbone, weights=self.weights)
        return self.backbone_

    def encode(self, source: Any, encoder: str = "backbone", labels: Any = None
                ) -> tuple[np.ndarray, np.ndarray, Any]:
        """Encode any accepted source: (inputs of the decodable rows, their row indices, the dataset).

        ``encoder`` is ``"backbone"`` (clean backbone features, cached), ``"trunk-N"`` (activations in front
        of the last N backbone blocks) or ``"pixels-S"`` (the images as uint8 (N,3,S,S)).
        """
        dataset = load_source(source, labels=labels)
        if isinstance(dataset, EmbeddingDataset):
            return np.asarray(dataset.features, dtype=np.float32), np.arange(len(dataset)), dataset
        from .features import decode_images, extract_features

        if getattr(self, "device_", None) is None:  # encode() may come before fit()
            self.device_ = resolve_device(self.device)

        if encoder.startswith("pixels-"):  # models trained from scratch on the images themselves
            from .backbones.base import Preprocess

            pixels = Preprocess(input_size=int(encoder.split("-")[1]), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
            images, valid, skipped = decode_images(dataset, pixels, self.num_workers, self.progress)
            self.last_feature_set_ = FeatureSet(np.zeros((len(valid), 0), np.float32), valid, skipped)
            return images.numpy(), valid, dataset
        backbone = self._backbone()
        if hasattr(dataset, "draft_size"):
            # Let the JPEG decoder shrink big photos while decoding: far faster, no loss at the model's size.
            dataset.draft_size = backbone.preprocess.input_size
        kwargs: dict[str, Any] = {}
        if encoder != "backbone":
            trunk, _ = backbone.split(int(encoder.split("-")[1]))
            kwargs = {"encoder": trunk, "encoder_id": encoder}
        # Under torchrun every process encodes its share of the shards (extract_features is collective).
        feature_set = extract_features(dataset, backbone, cache_dir=self.cache_dir, device=self.device_,
                                       batch_size=self.batch_size, num_workers=self.num_workers,
                                       shard_size=self.shard_size, precision=self.precision,
                                       progress=self.progress and distributed.is_main_process(), **kwargs)
        self.last_feature_set_ = feature_set
        return np.asarray(feature_set.features), feature_set.valid_indices, dataset

    # -- fitting -----------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> "ImageClusterer":
        """Cluster ``X``; ``y`` (optional) are true labels, used only for evaluation (``metrics_``)."""
        if self.method not in available_methods():
            raise ImgclustError(f"unknown method {self.method!r}",
                                f"choose one of: {', '.join(available_methods())}")
        if not isinstance(self.n_clusters, (int, np.integer)) or self.n_clusters < 2:
            raise ImgclustError(f"n_clusters must be an integer ≥ 2, got {self.n_clusters!r}",
                                "pass -k 2 or more")
        self.device_ = resolve_device(self.device)
        from .features import resolve_precision

        resolve_precision(self.precision, self.device_)  # refuse a bad setting before any work
        timings: dict[str, float] = {}
        started = time.perf_counter()
        # Backbone features, or for models trained from scratch only the decoded images.
        encoder = fit_input(self.method, dict(self.method_options or {}))
        features, valid, dataset = self.encode(X, encoder=encoder, labels=y)
        timings["features" if encoder == "backbone" else "decode"] = time.perf_counter() - started
        n_total = len(dataset)
        if len(valid) < self.n_clusters:
            raise ImgclustError(
                f"-k {self.n_clusters} asked for, but only {len(valid)} of {n_total} images could be used",
                f"use -k {len(valid)} or fewer, or add images" if len(valid) >= 2
                else "add images: clustering needs at least 2")
        true_labels = None if dataset.labels is None else np.asarray(dataset.labels, dtype=np.int64)
        context = FitContext(
            features=features, n_clusters=int(self.n_clusters), seed=int(self.random_state),
            device=self.device_,
            dataset=dataset.subset(valid) if isinstance(dataset, ImageDataset) else None,
            backbone=self.backbone_ if isinstance(dataset, ImageDataset) and encoder == "backbone" else None,
            labels=None if true_labels is None else true_labels[valid],
            run_dir=Path(self.run_dir) if self.run_dir else None, resume=self.resume,
            cache_dir=Path(self.cache_dir) if self.cache_dir else None, batch_size=self.batch_size,
            num_workers=self.num_workers, progress=self.progress, options=dict(self.method_options or {}),
            shard_size=self.shard_size, precision=self.precision)
        started = time.perf_counter()
        result = fit_method(self.method, context)
        timings["fit"] = time.perf_counter() - started

        self.model_: ClusterModel = result.model
        self.fit_info_ = result.info
        self.items_ = list(dataset.items)
        self.true_labels_ = true_labels
        self.class_names_ = dataset.class_names
        self.valid_indices_ = valid
        self.labels_, self.confidence_, self.distance_ = _scatter(result.assignment, valid, n_total)
        self.skipped_ = self._skipped(dataset)
        self.timings_ = timings
        self.metrics_ = None
        if true_labels is not None:
            from .metrics import evaluate

            self.metrics_ = evaluate(true_labels[valid], self.labels_[valid], n_clusters=int(self.n_clusters),
                                     class_names=dataset.class_names)
        return self

    def _skipped(self, dataset: Any) -> list[dict[str, str]]:
        feature_set = getattr(self, "last_feature_set_", None)
        if feature_set is None or isinstance(dataset, EmbeddingDataset):
            return []
        return [{"item": s["item"], "reason": s["reason"]} for s in feature_set.skipped]

    def fit_predict(self, X: Any, y: Any = None, **kwargs: Any) -> np.ndarray:
        return self.fit(X, y).labels_

    # -- prediction --------------------------------------------------------------------------------------
    def predict_assignment(self, X: Any) -> tuple[Assignment, list[str], list[dict[str, str]]]:
        """Assignment of every row of ``X`` (label -1 for undecodable rows), their ids, and the skipped."""
        self._check_fitted()
        self.device_ = resolve_device(self.device)
        inputs, valid, dataset = self.encode(X, encoder=self.model_.input_encoder)
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
        from safetensors.torch import save

        self._check_fitted()
        folder = Path(folder)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.model_.state_tensors().items()}
        with atomic_path(folder / "model.safetensors") as tmp:
            # bytes, not save_file: save_file writes its own temporary, which a kill would leave behind
            tmp.write_bytes(save(tensors))
        backbone = getattr(self, "backbone_", None)
        params = self.get_params()
        params["method_options"] = _jsonable(params.get("method_options") or {})
        write_json(folder / "model.json", {
            "format": "imgclust-model", "imgclust_version": __version__, "estimator": params,
            "method": self.model_.method, "model_config": self.model_.config(),
            "backbone": {"name": self.backbone, "weights": self.weights,
                         "weights_id": getattr(backbone, "weights_id", None)},
        })
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "ImageClusterer":
        """Rebuild a saved clusterer (from ``fit``/``save`` or an ``imgclust cluster`` run folder)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        meta_path, tensor_path = folder / "model.json", folder / "model.safetensors"
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
        estimator = cls(**meta["estimator"])
        estimator.backbone_ = None
        estimator.model_ = load_model(meta["method"], tensors, meta["model_config"])
        saved_id = meta["backbone"].get("weights_id")
        if saved_id:
            current = estimator._backbone().weights_id
            if current != saved_id:
                raise ImgclustError(
                    f"the backbone weights differ from the ones this model was fitted with ({current} ≠ {saved_id})",
                    "install the same backbone weights, or pass the original weights file")
        return estimator


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
