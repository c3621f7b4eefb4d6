"""Any timm model as a backbone: hub weights when online, local weight files otherwise.

Imported lazily by the registry, since importing timm costs seconds.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import timm
import timm.data
import torch
from huggingface_hub import constants as hf_constants
from timm.models import get_pretrained_cfg, is_model, split_model_name_tag
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as vit_checkpoint_filter
from torch import nn

from ..errors import ImgclustError
from .base import RANDOM_WEIGHTS, RANDOM_WEIGHTS_ID, Backbone, Preprocess
from .weights import apply_state_dict, load_state_dict, weights_id_of

IMAGENET_CLASSES = 1000
# A connection attempt to the hub (or the HTTPS proxy) that takes longer than this counts as offline:
# without this check huggingface_hub retries with back-off for ~50 s before failing.
_HUB_PROBE_TIMEOUT_S = 3.0


def is_timm_model(name: str) -> bool:
    """Whether ``name`` is a timm architecture, optionally with a valid pretrained tag (``resnet50.a1_in1k``)."""
    arch, tag = split_model_name_tag(name)
    if not is_model(arch):
        return False
    if not tag:
        return True
    try:
        return get_pretrained_cfg(name) is not None
    except RuntimeError:  # timm raises for an unknown tag
        return False


def timm_model_names() -> list[str]:
    """All timm architecture names (for 'did you mean' suggestions)."""
    return timm.list_models()


# ---------------------------------------------------------------------------------------------------------------
# Trunk/tail pieces. Each registers exactly the submodules and parameters it runs, so ``tail.parameters()``
# is the trainable set; where timm's code is needed it is borrowed (called with the piece as ``self``) rather
# than re-implemented, so position-embedding and pooling variants keep timm's behaviour.


class _ViTEmbed(nn.Module):
    """Patch embedding, prefix tokens, position embedding, pre-norm: (N,3,S,S) -> tokens (N,T,C)."""

    def __init__(self, vit: VisionTransformer):
        super().__init__()
        for attr in ("patch_embed", "cls_token", "reg_token", "pos_embed", "pos_drop", "patch_drop", "norm_pre"):
            setattr(self, attr, getattr(vit, attr))  # registers modules/parameters; None stays a plain None
        self.dynamic_img_size = vit.dynamic_img_size
        self.no_embed_class = vit.no_embed_class
        self.num_prefix_tokens = vit.num_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = VisionTransformer._pos_embed(self, self.patch_embed(x))
        return self.norm_pre(self.patch_drop(x))


class _ViTHead(nn.Module):
    """Final norm, token pooling and post-pool norm: tokens (N,T,C) -> (N,C)."""

    def __init__(self, vit: VisionTransformer):
        super().__init__()
        for attr in ("norm", "attn_pool", "fc_norm", "head_drop"):
            setattr(self, attr, getattr(vit, attr))
        self.global_pool = vit.global_pool
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.pool_include_prefix = vit.pool_include_prefix

    pool = VisionTransformer.pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_drop(self.fc_norm(self.pool(self.norm(x))))


class _ResNetHead(nn.Module):
    """Global pooling and the model's dropout: (N,C,h,w) -> (N,C)."""

    def __init__(self, resnet: ResNet):
        super().__init__()
        self.global_pool = resnet.global_pool
        self.drop_rate = resnet.drop_rate

    forward_head = ResNet.forward_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(x, pre_logits=True)


def _split_vit(vit: VisionTransformer, n: int) -> tuple[nn.Module, nn.Module]:
    cut = len(vit.blocks) - n
    return (nn.Sequential(_ViTEmbed(vit), *vit.blocks[:cut]),
            nn.Sequential(*vit.blocks[cut:], _ViTHead(vit)))


def _split_resnet(resnet: ResNet, n: int) -> tuple[nn.Module, nn.Module]:
    stages = [resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4]
    cut = len(stages) - n
    stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.act1, resnet.maxpool)
    return nn.Sequential(stem, *stages[:cut]), nn.Sequential(*stages[cut:], _ResNetHead(resnet))


@dataclass(frozen=True)
class _Family:
    """Architecture-specific knowledge: how to count/split blocks and convert foreign checkpoints."""

    model_type: type[nn.Module]
    num_blocks: Callable[[Any], int]
    split: Callable[[Any, int], tuple[nn.Module, nn.Module]]
    # timm's converter for this family's checkpoints (original DINOv2 / OpenAI CLIP key formats, position
    # embeddings saved at another resolution); None: keys are used as they are.
    checkpoint_filter: Callable[[dict[str, torch.Tensor], Any], dict[str, torch.Tensor]] | None = None


_FAMILIES = (
    _Family(VisionTransformer, lambda m: len(m.blocks), _split_vit, vit_checkpoint_filter),
    # A ResNet's "blocks" are its four stages layer1..layer4.
    _Family(ResNet, lambda m: 4, _split_resnet),
)


def _family_of(model: nn.Module) -> _Family | None:
    return next((f for f in _FAMILIES if isinstance(model, f.model_type)), None)


class TimmBackbone(Backbone):
    """A timm model without its classifier: (N,3,S,S) normalised -> pre-logits features (N,D).

    :meth:`split` supports ViTs (blocks = transformer blocks; the tail adds the final norm and token pooling)
    and ResNets (blocks = the four stages; the tail adds global pooling). Other families only support 0
    trainable blocks.
    """

    def __init__(self, name: str, model: nn.Module, preprocess: Preprocess, weights_id: str,
                 weights_path: str | None = None):
        super().__init__(name, getattr(model, "head_hidden_size", None) or model.num_features, preprocess,
                         weights_id)
        self.model = model
        self.weights_path = weights_path  # a local weights file (None: hub or random); read by class_head()

    @property
    def _family(self) -> _Family | None:
        # Looked up, not stored: keeps the module free of non-picklable attributes (the family's lambdas).
        return _family_of(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # num_classes=0: timm's head is an identity, the output is the pooled features

    @property
    def num_blocks(self) -> int:
        return self._family.num_blocks(self.model) if self._family else 0

    def split(self, n_trainable_blocks: int) -> tuple[nn.Module, nn.Module]:
        if n_trainable_blocks and self._family is None:
            raise ImgclustError(
                f"fine-tuning blocks of backbone '{self.name}' ({type(self.model).__name__}) is not supported: "
                "only ViT and ResNet backbones can be split",
                fix="use 0 trainable blocks (train a head on frozen features), or a ViT/ResNet/EfficientNet-Lite "
                    "backbone")
        return super().split(n_trainable_blocks)

    def _split(self, n: int) -> tuple[nn.Module, nn.Module]:
        return self._family.split(self.model, n)

    def class_head(self) -> nn.Linear | None:
        """The pretrained 1000-class classifier (timm's ``get_classifier()``), read again from the hub or the
        local weights file since the backbone is built without it; None for headless or random weights."""
        cfg = self.model.pretrained_cfg
        classifier = cfg.get("classifier")
        if (cfg.get("num_classes") != IMAGENET_CLASSES or not isinstance(classifier, str)
                or self.weights_id == RANDOM_WEIGHTS_ID):
            return None
        if self.weights_path is not None:
            state = load_state_dict(self.weights_path)
            weight, bias = state.get(f"{classifier}.weight"), state.get(f"{classifier}.bias")
        else:
            timm_name = f"{cfg['architecture']}.{cfg['tag']}" if cfg.get("tag") else cfg["architecture"]
            full = _create_pretrained(self.name, timm_name, {}).get_classifier()
            weight, bias = (full.weight, full.bias) if isinstance(full, nn.Linear) else (None, None)
        if weight is None or bias is None or tuple(weight.shape) != (IMAGENET_CLASSES, self.feature_dim):
            return None
        head = nn.Linear(self.feature_dim, IMAGENET_CLASSES)
        head.load_state_dict({"weight": weight.detach().float(), "bias": bias.detach().float()})
        return head.eval()


def create_timm_backbone(name: str, weights: str | None = None, *, timm_name: str | None = None,
                         model_kwargs: dict[str, Any] | None = None, cfg_overlay: dict[str, Any] | None = None,
                         local_weights_only: bool = False) -> TimmBackbone:
    """Build a timm backbone in eval mode, without its classifier.

    Args:
        name: the backbone name the user gave (an alias or a timm name).
        weights: ``None``: timm's pretrained weights from the Hugging Face hub (or its local cache);
            ``"random"``: random initialisation; otherwise a local ``.safetensors``/``.pth`` file (timm key
            format, or one timm converts: original DINO/DINOv2/OpenAI-CLIP; nested and prefixed checkpoints
            are unwrapped, a classifier or projection head in it is ignored).
        timm_name: the timm model to build, if ``name`` is an alias.
        model_kwargs: extra ``timm.create_model`` arguments (e.g. ``img_size``).
        cfg_overlay: overrides of timm's pretrained config (input size, mean/std, crop) for preprocessing.
        local_weights_only: the hub has no weights for this alias, so ``weights`` must be a file.

    Raises:
        ImgclustError: no hub weights exist, or the hub is unreachable and they are not cached; bad or
            mismatching weights file.
    """
    timm_name = timm_name or name
    kwargs = {"num_classes": 0, "pretrained_cfg_overlay": cfg_overlay or None, **(model_kwargs or {})}
    if weights is None and (local_weights_only or not _has_pretrained_weights(timm_name)):
        raise ImgclustError(f"backbone '{name}' has no downloadable weights",
                            fix=f"pass --weights PATH to a local .safetensors/.pth checkpoint for '{name}', or pick "
                                "a timm name with weights (timm.list_pretrained())")
    if weights is None:
        model = _create_pretrained(name, timm_name, kwargs)
        weights_id = f"hub:{model.pretrained_cfg.get('hf_hub_id') or timm_name}"
    else:
        model = timm.create_model(timm_name, pretrained=False, **kwargs)
        if weights == RANDOM_WEIGHTS:
            weights_id = RANDOM_WEIGHTS_ID
        else:
            _load_local(model, weights, name)
            weights_id = weights_id_of(weights)
    config = timm.data.resolve_model_data_config(model)
    preprocess = Preprocess(int(config["input_size"][-1]), tuple(config["mean"]), tuple(config["std"]),
                            interpolation=config["interpolation"], crop_pct=float(config["crop_pct"]))
    weights_path = weights if weights not in (None, RANDOM_WEIGHTS) else None
    return TimmBackbone(name, model, preprocess, weights_id, weights_path=weights_path).eval()


def _load_local(model: nn.Module, path: str, name: str) -> None:
    state = load_state_dict(path)
    family = _family_of(model)
    if family is not None and family.checkpoint_filter is not None:
        state = family.checkpoint_filter(state, model)
    apply_state_dict(model, _drop_classifier(state, model), path,
                     fix=f"pass a checkpoint of a {model.pretrained_cfg.get('architecture', type(model).__name__)} "
                         f"model (the architecture of backbone '{name}')")


def _drop_classifier(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Remove classifier (or SSL projection-head) keys the headless model does not have."""
    classifier = model.pretrained_cfg.get("classifier") or ()
    prefixes = tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier))
    own = model.state_dict().keys()
    return {k: v for k, v in state.items() if k in own or not k.startswith(prefixes)}


def _has_pretrained_weights(timm_name: str) -> bool:
    cfg = get_pretrained_cfg(timm_name)  # without a tag: the architecture's default tag
    return cfg is not None and bool(cfg.has_weights)


def _weights_source(timm_name: str) -> str:
    """Where timm downloads the weights from, e.g. "file model.safetensors of hub repo timm/vit_small…"."""
    cfg = get_pretrained_cfg(timm_name)
    if cfg is not None and cfg.hf_hub_id:
        return f"file {cfg.hf_hub_filename or 'model.safetensors'} of hub repo {cfg.hf_hub_id}"
    if cfg is not None and cfg.url:
        return f"file {cfg.url}"
    return "from the model hub"


def _create_pretrained(name: str, timm_name: str, kwargs: dict[str, Any]) -> nn.Module:
    offline = _offline_requested() or not _hub_reachable()
    try:
        with _hub_offline_mode(offline):
            return timm.create_model(timm_name, pretrained=True, **kwargs)
    except Exception as e:  # hub/network errors come in many types (OSError, HTTP errors, hub errors)
        reason = ("the model hub is unreachable and they are not in the local cache" if offline
                  else f"{type(e).__name__}: {e}")
        raise ImgclustError(f"cannot get pretrained weights for backbone '{name}' ({timm_name}), "
                            f"{_weights_source(timm_name)}: {reason}",
                            fix="connect to the internet once to download them, or pass --weights PATH to a local "
                                ".safetensors/.pth file with these weights") from e


def _offline_requested() -> bool:
    # The environment is read here too because huggingface_hub reads HF_HUB_OFFLINE only when imported.
    return hf_constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES",
                                                                                           "TRUE"}


def _hub_reachable(timeout: float = _HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub (or the HTTPS proxy) opens within ``timeout`` seconds."""
    target = urllib.parse.urlsplit(urllib.request.getproxies().get("https") or hf_constants.ENDPOINT)
    address = (target.hostname, target.port or (443 if target.scheme == "https" else 80))
    reached: list[bool] = []

    def probe() -> None:
        with contextlib.suppress(OSError), socket.create_connection(address, timeout=timeout):
            reached.append(True)

    # A thread bounds the DNS lookup too, which socket timeouts do not cover.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(reached)


@contextlib.contextmanager
def _hub_offline_mode(offline: bool) -> Iterator[None]:
    """Make huggingface_hub serve from its cache only (no retries) while ``offline``."""
    previous = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = previous or offline
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = previous
