"""Training checkpoints: plain dicts of tensors/numbers/strings, written atomically, loadable with
``torch.load(path, weights_only=True)``.

Layout of ``run_dir/checkpoints/last.pt`` (format 1)::

    {"format": "imgclust-train", "version": 1,
     "method": str, "epochs_done": int, "global_step": int,
     "config": dict (the TrainConfig, JSON-like),
     "model": state_dict, "optimizer": state_dict, "scheduler": state_dict, "scaler": state_dict | None,
     "method_state": dict (the method's own state_dict()),
     "rng": {"python": [...], "numpy": {...}, "torch": ByteTensor, "cuda": [ByteTensor, ...]},
     "best": {"score": float, "epoch": int},
     "history": [one dict per finished epoch, as in train_log.jsonl]}

``best.pt`` holds ``{"format", "version", "method", "epoch", "score", "model"}`` of the epoch with the
lowest label-free selection score.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_path
from ..errors import ImgclustError

__all__ = ["FORMAT", "VERSION", "save_checkpoint", "load_checkpoint", "get_rng_state", "set_rng_state"]

FORMAT = "imgclust-train"
VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus format tags) to ``path`` atomically: a kill never leaves half a file."""
    data = {"format": FORMAT, "version": VERSION, **payload}
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` onto the CPU and check its format tag."""
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign file
        raise ImgclustError(f"cannot read training checkpoint {path}: {err}",
                            "delete the run folder's checkpoints/ to start afresh") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ImgclustError(f"{path} is not an imgclust training checkpoint",
                            "point --run-dir at a folder written by imgclust, or start without --resume")
    if int(data.get("version", 0)) > VERSION:
        raise ImgclustError(f"{path} was written by a newer imgclust (format {data.get('version')})",
                            "upgrade imgclust to resume this run")
    return data


def get_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA, when initialised) global RNG states as plain data."""
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"bit_generator": str(np_state["bit_generator"]),
                  "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state({"bit_generator": npy["bit_generator"],
                         "state": {"key": npy["key"].numpy().astype(np.uint32), "pos": npy["pos"]},
                         "has_gauss": npy["has_gauss"], "gauss": npy["gauss"]})
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
