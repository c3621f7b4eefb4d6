"""Safe loading of local weight files (.safetensors, .pth/.pt/.bin) and their content hash.

Checkpoints are never unpickled with arbitrary code: ``.pth`` files go through
``torch.load(weights_only=True)``, which refuses pickles that would import or call anything beyond tensors
and plain containers.
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
from pathlib import Path

import torch

from ..errors import ImgclustError

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".tar", ".ckpt")

# Containers that training scripts wrap the weights in, most preferred first: DINO-style checkpoints hold
# both "teacher" and "student"; the teacher is the one that is evaluated and published.
_NESTING_KEYS = ("state_dict", "model", "teacher", "student")
# Added by nn.DataParallel/DDP ("module."), torch.compile ("_orig_mod.") and by saving a whole imgclust
# Backbone ("model."). Stripped only when every key has it, so a real submodule called "model" survives.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
# Self-supervised checkpoints keep the encoder next to projection heads / momentum copies
# (DINO: "backbone." + "head."; MoCo v3: "base_encoder." + "momentum_encoder." + "predictor.").
# When such a prefix is present only the keys under it are kept: that is the encoder to extract features with.
_ENCODER_PREFIXES = ("backbone.", "base_encoder.")


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so large checkpoints need no extra memory.

    Raises:
        ImgclustError: the file does not exist.
    """
    path = _existing_file(path)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def weights_id_of(path: str | Path) -> str:
    """Short content id of a weights file, ``sha256:<first 16 hex digits>``, used in feature-cache keys."""
    return f"sha256:{file_sha256(path)[:16]}"


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a flat ``name -> tensor`` state dict from a local file, safely, on the CPU.

    Nested checkpoints are unwrapped (``state_dict``/``model``/``teacher``/``student`` keys), wrapper prefixes
    (``module.``, ``_orig_mod.``, ``model.``) stripped, and for self-supervised checkpoints only the encoder
    (keys under ``backbone.`` or ``base_encoder.``) is kept. Non-tensor entries (epoch, args) are dropped.

    Args:
        path: a ``.safetensors`` file, or a PyTorch checkpoint (``.pth``, ``.pt``, ``.bin``, ``.tar``, ``.ckpt``).

    Returns:
        The state dict, tensors on the CPU.

    Raises:
        ImgclustError: missing file, unknown extension, unreadable file, a pickle that would run code, or no
            tensors found.
    """
    path = _existing_file(path)
    name = path.name.lower()
    if name.endswith(SAFETENSORS_SUFFIXES):
        raw = _load_safetensors(path)
    elif name.endswith(PICKLE_SUFFIXES):
        raw = _load_pickle(path)
    else:
        raise ImgclustError(
            f"weights file {path} has an unknown type (expected {', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)})",
            fix="pass a .safetensors file or a PyTorch checkpoint (.pth/.pt/.bin)")
    state = _strip_prefixes(_unwrap(raw))
    if not state:
        raise ImgclustError(f"no weight tensors found in {path}",
                            fix="pass the checkpoint that holds the model's state dict")
    return state


def apply_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, fix: str) -> None:
    """Load ``state`` into ``model`` strictly; a mismatch becomes one short error naming a few keys.

    Args:
        model: the network to fill.
        state: weights, e.g. from :func:`load_state_dict`.
        path: the file they came from (for the message).
        fix: what the user should pass instead.

    Raises:
        ImgclustError: missing or unexpected keys, or tensors of another shape.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [f"{k} {tuple(state[k].shape)} (model: {tuple(v.shape)})" for k, v in own.items()
                if k in state and state[k].shape != v.shape]
    problems = [f"{len(keys)} {what} {keys[:limit]}" for what, keys, limit in (
        ("missing keys", missing, 5), ("unexpected keys", unexpected, 5), ("tensors of another shape", reshaped, 3),
    ) if keys]
    if problems:
        raise ImgclustError(f"weights in {path} do not fit this model: {'; '.join(problems)}", fix=fix)
    model.load_state_dict(state)


def _existing_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ImgclustError(f"weights file not found: {path}",
                            fix="check the --weights path (a local .safetensors/.pth file)")
    return path


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise ImgclustError(f"cannot read safetensors file {path}: {e}",
                            fix="re-download or re-export the weights file") from e


def _load_pickle(path: Path) -> object:
    # argparse.Namespace is allowed because DINO/iBOT checkpoints store their training args in one; it only
    # sets attributes, so it cannot run code.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is mostly advice to disable the check; keep only the line naming what was blocked.
        blocked = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line.upper()), "")
        raise ImgclustError(
            f"refusing to load {path}: it holds Python objects besides tensors, and unpickling those can run code"
            + (f" ({blocked})" if blocked else ""),
            fix="if you trust the file, convert it once to .safetensors "
                "(safetensors.torch.save_file(state_dict, 'weights.safetensors')) and pass that") from e
    except (RuntimeError, OSError, EOFError) as e:
        raise ImgclustError(f"cannot read PyTorch checkpoint {path}: {e}",
                            fix="check the file is a complete PyTorch checkpoint, or pass a .safetensors file"
                            ) from e


def _unwrap(obj: object) -> dict[str, torch.Tensor]:
    """Descend through the usual checkpoint containers to the tensors."""
    while isinstance(obj, dict):
        inner = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        obj = inner
    return {}


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
        for prefix in _ENCODER_PREFIXES:
            if any(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                changed = True
    return state
