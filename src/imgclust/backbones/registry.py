"""Backbone names -> factories: our EfficientNet-Lite models, friendly aliases of timm models, any timm name."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..errors import ImgclustError
from .base import Backbone
from .efficientnet_lite import POOLINGS
from .efficientnet_lite import VARIANTS as EFFICIENTNET_LITE_VARIANTS
from .efficientnet_lite import create_efficientnet_lite

DEFAULT_BACKBONE = "efficientnet_lite0"

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TimmAlias:
    """A short name for a timm model with a pretrained tag.

    Args:
        timm_name: the timm model (``architecture.tag``).
        model_kwargs: extra ``timm.create_model`` arguments, as pairs.
        cfg_overlay: overrides of timm's pretrained config (preprocessing), as pairs.
        local_weights_only: timm has no hub weights for it; ``--weights PATH`` is required.
    """

    timm_name: str
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    cfg_overlay: tuple[tuple[str, Any], ...] = ()
    local_weights_only: bool = False


# DINOv2 runs at 224 px (16×16 patches) instead of timm's 518 px: its linear-probe results are reported at
# 224, and 518 px costs ~6x the compute, too slow on a CPU. timm resamples the position embeddings on load.
_DINOV2_AT_224 = {"model_kwargs": (("img_size", 224),), "cfg_overlay": (("input_size", (3, 224, 224)),)}

TIMM_ALIASES: dict[str, TimmAlias] = {
    "dino_vits16": TimmAlias("vit_small_patch16_224.dino"),
    "dino_vitb16": TimmAlias("vit_base_patch16_224.dino"),
    "dinov2_vits14": TimmAlias("vit_small_patch14_dinov2.lvd142m", **_DINOV2_AT_224),
    "dinov2_vitb14": TimmAlias("vit_base_patch14_dinov2.lvd142m", **_DINOV2_AT_224),
    "clip_vitb16": TimmAlias("vit_base_patch16_clip_224.openai"),
    "clip_vitb32": TimmAlias("vit_base_patch32_clip_224.openai"),
    # timm has no MoCo v3 weights: this is timm's plain ViT-B/16 filled from the official checkpoint
    # (e.g. vit-b-300ep.pth.tar; its momentum encoder and projection heads are dropped on load), with the
    # ImageNet mean/std and 256->224 centre crop MoCo v3 was evaluated with.
    "mocov3_vitb16": TimmAlias("vit_base_patch16_224", local_weights_only=True,
                               cfg_overlay=(("mean", _IMAGENET_MEAN), ("std", _IMAGENET_STD),
                                            ("crop_pct", 0.875))),
    "resnet50": TimmAlias("resnet50.a1_in1k"),
    "resnet18": TimmAlias("resnet18.a1_in1k"),
}


def _create_timm_alias(alias: TimmAlias, name: str, weights: str | None, pooling: str) -> Backbone:
    del pooling  # only "auto" gets here (check_pooling): timm models pool as they were trained
    from .timm_models import create_timm_backbone  # importing timm takes seconds: only when needed

    return create_timm_backbone(name, weights, timm_name=alias.timm_name, model_kwargs=dict(alias.model_kwargs),
                                cfg_overlay=dict(alias.cfg_overlay), local_weights_only=alias.local_weights_only)


# Factories take (name, weights, pooling).
_REGISTRY: dict[str, Callable[[str, str | None, str], Backbone]] = {
    **{name: create_efficientnet_lite for name in EFFICIENTNET_LITE_VARIANTS},
    **{name: partial(_create_timm_alias, alias) for name, alias in TIMM_ALIASES.items()},
}


def available_backbones() -> list[str]:
    """Names with a dedicated entry (EfficientNet-Lite and the timm aliases).

    Any ``timm`` model name (``timm.list_models()``, optionally with a pretrained tag such as
    ``convnext_tiny.fb_in1k``) works as well.
    """
    return sorted(_REGISTRY)


def create_backbone(name: str = DEFAULT_BACKBONE, weights: str | None = None, pooling: str = "auto") -> Backbone:
    """Build a backbone in eval mode, on the CPU.

    Args:
        name: one of :func:`available_backbones`, or any timm model name.
        weights: ``None`` for the default pretrained weights (bundled for EfficientNet-Lite, from the
            Hugging Face hub or its cache for timm models), a local ``.safetensors``/``.pth`` file, or
            ``"random"`` (random initialisation, for tests).
        pooling: one of :data:`POOLINGS`: ``auto`` (GeM for EfficientNet-Lite, the model's own pooling for timm
            models), ``gem`` or ``avg`` (EfficientNet-Lite only).

    Returns:
        The backbone, in eval mode.

    Raises:
        ImgclustError: unknown name (with the closest names) or pooling, unusable weights, hub unreachable.
    """
    name = name.strip()
    key = _registry_key(name)
    check_pooling(name, pooling)
    if key in _REGISTRY:
        return _REGISTRY[key](key, weights, pooling)
    check_backbone_name(name)
    from .timm_models import create_timm_backbone

    return create_timm_backbone(name, weights)


def _registry_key(name: str) -> str:
    """The registry's spelling of a backbone name: case and ``-``/``_`` do not matter."""
    return name.strip().lower().replace("-", "_")


def check_pooling(name: str, pooling: str) -> None:
    """Refuse a pooling that is unknown, or that backbone ``name`` cannot do; builds nothing.

    Raises:
        ImgclustError: naming the pooling and the values that work.
    """
    if pooling not in POOLINGS:
        raise ImgclustError(f"unknown pooling {pooling!r}", f"use one of {', '.join(POOLINGS)}")
    if pooling != "auto" and _registry_key(name) not in EFFICIENTNET_LITE_VARIANTS:
        raise ImgclustError(f"pooling {pooling!r} is only available for the EfficientNet-Lite backbones, not {name!r}",
                            "leave --pooling at auto: timm models pool as they were trained")


def check_backbone_name(name: str) -> None:
    """Refuse a name that is neither in the registry nor a timm model; builds nothing.

    Raises:
        ImgclustError: unknown name, with the closest names.
    """
    name = name.strip()
    key = _registry_key(name)
    if key in _REGISTRY:
        return
    from .timm_models import is_timm_model, timm_model_names  # importing timm takes seconds: only when needed

    if is_timm_model(name):
        return
    close = difflib.get_close_matches(key, sorted({*available_backbones(), *timm_model_names()}), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ImgclustError(
        f"unknown backbone {name!r}{hint}",
        fix=f"use one of {', '.join(available_backbones())}, or any timm model name (see timm.list_models())")
