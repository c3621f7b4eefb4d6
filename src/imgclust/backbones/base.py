"""What every backbone provides: its preprocessing, pooled features, and a trunk/tail split for fine-tuning."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import ImgclustError

#: ``weights=`` value that asks for randomly initialised weights (tests, debugging).
RANDOM_WEIGHTS = "random"
#: ``weights_id`` of a randomly initialised backbone.
RANDOM_WEIGHTS_ID = "random-init"

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
# Downscaling by more than this factor first shrinks by an integer factor (box filter), then resamples:
# several times faster on camera-sized photos, and per Pillow's docs indistinguishable from a full resample.
_REDUCING_GAP = 3.0


@dataclass(frozen=True)
class Preprocess:
    """How images are turned into a backbone's input.

    Args:
        input_size: side S of the square input, in pixels.
        mean: per-channel mean (RGB) subtracted after scaling pixels to [0, 1].
        std: per-channel standard deviation (RGB) divided by after subtracting the mean.
        interpolation: resampling filter: nearest, bilinear, bicubic, lanczos, box or hamming.
        crop_pct: fraction of the resized shorter side kept by the centre crop (timm's convention): the shorter
            side is resized to ``round(S / crop_pct)`` and the centre S×S kept.
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 1.0

    def __post_init__(self) -> None:
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation {self.interpolation!r} not in {sorted(_RESAMPLE)}")
        if not 0.0 < self.crop_pct <= 1.0 or self.input_size < 1:
            raise ValueError(f"need input_size >= 1 and 0 < crop_pct <= 1, got {self.input_size}, {self.crop_pct}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (feature-cache manifests, run.json)."""
        return {"input_size": self.input_size, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "crop_pct": self.crop_pct}

    def to_uint8_tensor(self, img: Image.Image) -> torch.Tensor:
        """Resize and centre-crop one image; runs in DataLoader workers, so PIL + numpy only.

        Args:
            img: a PIL image (converted to RGB if it is not).

        Returns:
            uint8 tensor (3, S, S), S = ``input_size``.
        """
        if img.mode != "RGB":
            img = img.convert("RGB")
        size = self.input_size
        width, height = img.size
        # Resizing the shorter side to round(S/crop_pct) and cropping S×S selects a centred square of this side
        # in source pixels; cropping that square and resizing it in one call gives the same image without
        # materialising the intermediate (huge for panoramas, since the long side scales too).
        side = size * min(width, height) / round(size / self.crop_pct)
        left, top = (width - side) / 2, (height - side) / 2
        img = img.resize((size, size), _RESAMPLE[self.interpolation], box=(left, top, left + side, top + side),
                         reducing_gap=_REDUCING_GAP)
        return torch.from_numpy(np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)))


class Backbone(nn.Module, abc.ABC):
    """A pretrained feature extractor: normalised images (N,3,S,S) -> pooled features (N, feature_dim).

    The network lives in ``self.model`` (so ``state_dict()`` keys start with ``model.``; the weights loader strips
    that prefix again). Nothing here picks a device: move the module where it should run.

    Attributes:
        name: the backbone's name as given to :func:`imgclust.backbones.create_backbone`.
        feature_dim: D, the size of the pooled feature vector.
        preprocess: resizing/cropping and normalisation the weights were trained with.
        weights_id: ``sha256:<16 hex>`` of the weights file, ``hub:<model id>`` for hub downloads, or
            ``random-init``; part of feature-cache keys.
        pooling: how the last feature map becomes one vector: ``gem`` or ``avg`` for EfficientNet-Lite,
            ``native`` (the model's own) for timm models; part of feature-cache keys.
    """

    def __init__(self, name: str, feature_dim: int, preprocess: Preprocess, weights_id: str,
                 pooling: str = "native"):
        super().__init__()
        self.name = name
        self.feature_dim = feature_dim
        self.preprocess = preprocess
        self.weights_id = weights_id
        self.pooling = pooling

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features, no classifier.

        Args:
            x: float (N, 3, S, S), already normalised (see :meth:`normalize`).

        Returns:
            (N, feature_dim) features.
        """

    @property
    @abc.abstractmethod
    def num_blocks(self) -> int:
        """How many blocks :meth:`split` can move into the trainable tail (0: only frozen-feature methods)."""

    def normalize(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(x / 255 - mean) / std`` on ``x``'s device.

        Args:
            x: uint8 (N, 3, S, S) (or (3, S, S)) from :meth:`Preprocess.to_uint8_tensor`, on any device.
            dtype: floating dtype of the result.

        Returns:
            ``dtype`` tensor of the same shape, on ``x.device``.
        """
        mean = torch.tensor(self.preprocess.mean, dtype=dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.preprocess.std, dtype=dtype, device=x.device).view(3, 1, 1)
        return (x.to(dtype) / 255 - mean) / std

    def split(self, n_trainable_blocks: int) -> tuple[nn.Module, nn.Module]:
        """Cut the network into a frozen trunk and a trainable tail, for fine-tuning on cached trunk outputs.

        ``tail(trunk(x))`` equals ``self(x)`` (exactly, in eval mode). Both parts share their parameters with
        this backbone (no copies), so training the tail updates the backbone. The tail holds the last
        ``n_trainable_blocks`` blocks plus everything after them (final conv/norm, pooling).
        ``n_trainable_blocks=0`` returns ``(self, nn.Identity())``: the trunk output is then the (N, D) feature
        itself, the smallest thing to cache, and the tail has no parameters.

        Args:
            n_trainable_blocks: 0 .. :attr:`num_blocks`.

        Returns:
            ``(trunk, tail)``: trunk maps (N,3,S,S) to an intermediate tensor, tail maps that to (N, D).

        Raises:
            ImgclustError: ``n_trainable_blocks`` out of range, or this backbone family cannot be split.
        """
        if n_trainable_blocks == 0:
            return self, nn.Identity()
        if not 0 < n_trainable_blocks <= self.num_blocks:
            raise ImgclustError(
                f"cannot make {n_trainable_blocks} blocks of backbone '{self.name}' trainable: "
                f"it has {self.num_blocks}",
                fix=f"choose a number of trainable blocks between 0 and {self.num_blocks}")
        return self._split(n_trainable_blocks)

    @abc.abstractmethod
    def _split(self, n: int) -> tuple[nn.Module, nn.Module]:
        """:meth:`split` for 1 <= n <= num_blocks."""

    def class_head(self) -> nn.Module | None:
        """The ImageNet-1k classifier that maps this backbone's pooled features to class logits, if it has one.

        Feature extraction drops the classifier; cluster naming (:mod:`imgclust.naming`) applies it to the cached
        pooled features instead, so naming costs no second pass over the images.

        Returns:
            A CPU module in eval mode mapping float (N, feature_dim) to (N, 1000) logits in the standard
            ImageNet-1k class order, or None when the weights have no such classifier (self-supervised or
            random weights, other label sets).
        """
        return None

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, feature_dim={self.feature_dim}, weights_id={self.weights_id!r}, "
                f"pooling={self.pooling!r}")
