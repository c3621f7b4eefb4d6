"""Batched, parallel feature extraction: decode in DataLoader workers, normalise and encode on the device."""

from __future__ import annotations

import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .. import distributed as dist
from ..data.base import ImageDataset
from ..errors import BadImageError, ImgclustError
from .cache import FeatureCache, FeatureSet, default_cache_dir

_logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 2048

#: Forward-pass precisions of :func:`extract_features`.
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """The forward-pass precision ``precision`` means on ``device``: ``"auto"`` is float16 on CUDA, float32 on a
    CPU (the same features on every CPU; ``"bfloat16"`` is faster on CPUs with AMX, see BENCHMARKS.md)."""
    if precision not in PRECISIONS:
        raise ImgclustError(f"unknown precision {precision!r}", f"use one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "float16" if torch.device(device).type == "cuda" else "float32"
    return precision


class _DecodedImages(Dataset):
    """Rows of an image dataset as ``(index, uint8 (3,S,S) tensor or None, reason)``; never raises."""

    def __init__(self, dataset: ImageDataset, indices: range, to_tensor: Callable[[Any], torch.Tensor]):
        self.dataset = dataset
        self.indices = indices
        self.to_tensor = to_tensor

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | None, str]:
        index = self.indices[position]
        try:
            return index, self.to_tensor(self.dataset.load(index)), ""
        except BadImageError as err:
            return index, None, err.message
        except Exception as err:  # one odd file must never end a run of hours; it is listed instead
            return index, None, f"unexpected {type(err).__name__}: {err}"


def _collate(rows: list[tuple[int, torch.Tensor | None, str]]) -> tuple[list[int], torch.Tensor | None,
                                                                         list[tuple[int, str]]]:
    good = [(i, t) for i, t, _ in rows if t is not None]
    bad = [(i, reason) for i, t, reason in rows if t is None]
    batch = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], batch, bad


def _worker_init(_: int) -> None:
    # Decoding is single-threaded work; extra intra-op threads in each worker only fight the model's.
    torch.set_num_threads(1)


def iter_decoded(dataset: ImageDataset, rows: range, to_tensor: Callable[[Any], torch.Tensor], batch_size: int,
                 num_workers: int, pin_memory: bool = False
                 ) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]]:
    """Batches ``(row indices, uint8 (B,3,S,S) or None, [(row, reason) of undecodable rows])`` of ``rows``."""
    loader = DataLoader(_DecodedImages(dataset, rows, to_tensor), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate, worker_init_fn=_worker_init, pin_memory=pin_memory)
    yield from loader


def decode_images(dataset: ImageDataset, preprocess: Any, num_workers: int | None = None, progress: bool = True
                  ) -> tuple[torch.Tensor, np.ndarray, list[dict[str, Any]]]:
    """All decodable images, preprocessed by ``preprocess.to_uint8_tensor``, as one uint8 (N_valid, 3, S, S) tensor.

    Returns the tensor, the dataset rows it holds, and ``{"index", "item", "reason"}`` for the rest.
    """
    from tqdm.auto import tqdm

    size = int(preprocess.input_size)
    workers = default_num_workers() if num_workers is None else num_workers
    parts: list[torch.Tensor] = []
    valid: list[int] = []
    bad: list[dict[str, Any]] = []
    with tqdm(total=len(dataset), desc="decoding images", unit="img", disable=not progress, leave=False) as bar:
        for indices, images, failures in iter_decoded(dataset, range(len(dataset)), preprocess.to_uint8_tensor,
                                                      256, workers):
            bad += [{"index": i, "item": dataset.items[i], "reason": r} for i, r in failures]
            if images is not None:
                parts.append(images)
                valid += indices
            bar.update(len(indices) + len(failures))
    images = torch.cat(parts) if parts else torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return images, np.asarray(valid, dtype=np.int64), bad


def default_num_workers() -> int:
    """One decoding worker per spare core, at least one: the forward pass keeps the other cores busy."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def extract_features(
    dataset: ImageDataset,
    backbone: Any,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    num_workers: int | None = None,
    encoder: torch.nn.Module | None = None,
    encoder_id: str = "backbone",
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    augment_id: str = "none",
    view: int = 0,
    seed: int = 0,
    dtype: str = "float32",
    precision: str = "auto",
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
) -> FeatureSet:
    """Encode every image of ``dataset`` with ``encoder`` (default: the backbone), cached on disk.

    Args:
        dataset: images to encode.
        backbone: a :class:`imgclust.backbones.Backbone`; gives the preprocessing and the default encoder.
        cache_dir: cache root (default :func:`default_cache_dir`); ``use_cache=False`` keeps nothing.
        device: where normalisation, augmentation and the forward pass run.
        batch_size: images per forward pass.
        num_workers: decoding processes (default one per spare core); 0 decodes in this process.
        encoder: a module mapping normalised images (N,3,S,S) to any (N,*shape); e.g. a backbone trunk.
        encoder_id: names ``encoder`` in the cache identity (e.g. ``"trunk-3"``).
        augment: batched augmentation applied on the device to images in [0,1] before normalisation,
            called as ``augment(x, generator)``; the generator is seeded from (seed, view, shard), so a
            resumed extraction reproduces the same views.
        augment_id: names the augmentation in the cache identity.
        view: index of the augmented view (several views of one dataset are separate cache entries).
        seed: seeds the augmentation.
        dtype: stored dtype, ``"float32"`` or ``"float16"``.
        precision: the forward pass's autocast dtype (:func:`resolve_precision`); part of the cache identity.
        shard_size: rows per resumable shard.
        progress: show a progress bar.

    Returns:
        The features of the decodable rows, with the skipped files and their reasons.
    """
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    encoder = encoder if encoder is not None else backbone
    preprocess = backbone.preprocess
    identity = {
        "backbone": backbone.name,
        "weights": backbone.weights_id,
        "preprocess": preprocess.to_dict(),
        "encoder": encoder_id,
        "augment": augment_id if augment is not None else "none",
        "view": int(view),
        "seed": int(seed) if augment is not None else 0,
        "dataset": dataset.fingerprint(),
        "dtype": dtype,
        "precision": precision,
    }
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if not use_cache:
        import tempfile

        # Under torchrun every process must write to the same temporary folder: rank 0 names it.
        root = Path(dist.broadcast_object(tempfile.mkdtemp(prefix="imgclust-features-")
                                          if dist.is_main_process() else None))
    cache = FeatureCache(root, identity, list(dataset.items))
    n = len(dataset)
    n_shards = max(1, -(-n // shard_size))
    # One process at a time fills a cache entry (another run on the same images waits, then reuses it);
    # under torchrun rank 0 holds the lock for all ranks.
    with cache.exclusive() if dist.is_main_process() else nullcontext():
        # Rank 0 decides (reuse, or which shards are missing) for everyone, so all processes take the same path.
        plan = None
        if dist.is_main_process():
            if cache.load_complete() is not None:
                plan = "complete"
            else:
                cache.start()
                plan = [s for s in range(n_shards) if cache.finished_shard(s) is None]
        plan = dist.broadcast_object(plan)
        if plan == "complete":
            _logger.info("reusing cached features %s", cache.path)
            cached = cache.load_complete()
            assert cached is not None, f"{cache.path}: rank 0 found it complete"
            return cached
        if len(plan) < n_shards:
            _logger.info("resuming extraction: %d of %d shards already done", n_shards - len(plan), n_shards)
        # Under torchrun each process encodes every world_size-th missing shard; rank 0 merges them at the end.
        todo = plan[dist.rank()::dist.world_size()]
        workers = default_num_workers() if num_workers is None else num_workers
        mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)
        autocast = (nullcontext() if precision == "float32"
                    else torch.autocast(device.type, dtype=getattr(torch, precision)))
        encoder = encoder.to(device).eval()

        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(_shard_rows(s, shard_size, n)) for s in todo),
                   desc=f"features {backbone.name}" + (f" (rank {dist.rank()})" if dist.is_distributed() else ""),
                   unit="img", disable=not progress, leave=False)
        for shard in todo:
            started = time.perf_counter()
            rows = _shard_rows(shard, shard_size, n)
            loader = iter_decoded(dataset, rows, preprocess.to_uint8_tensor, batch_size, workers,
                                  pin_memory=device.type == "cuda")
            generator = torch.Generator(device=device)
            generator.manual_seed(int(seed) * 1_000_003 + int(view) * 10_007 + shard)
            parts: list[np.ndarray] = []
            valid: list[int] = []
            bad: list[dict[str, Any]] = []
            with torch.inference_mode():
                for indices, images, failures in loader:
                    bad += [{"index": i, "item": dataset.items[i], "reason": r} for i, r in failures]
                    if images is not None:
                        x = images.to(device, non_blocking=True).float().div_(255)
                        if augment is not None:
                            x = augment(x, generator)
                        # channels-last lets oneDNN / cuDNN pick their fast convolution kernels: measured
                        # 1.5-1.7x on EfficientNet-Lite0 on the 2-core CPU, same features to 1e-5.
                        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
                        with autocast:
                            out = encoder(x)
                        parts.append(out.float().cpu().numpy().astype(dtype, copy=False))
                        valid += indices
                    bar.update(len(indices) + len(failures))
            shape = parts[0].shape[1:] if parts else _output_shape(encoder, preprocess.input_size, device)
            features = np.concatenate(parts) if parts else np.zeros((0, *shape), dtype=dtype)
            cache.write_shard(shard, features, np.asarray(valid, dtype=np.int64), bad,
                              time.perf_counter() - started, rank=dist.rank())
        bar.close()
        dist.barrier()
        if dist.is_main_process():
            result = cache.merge(n_shards, {"device": str(device), "batch_size": batch_size, "num_workers": workers,
                                            "world_size": dist.world_size()})
        dist.barrier()
        if not dist.is_main_process():
            result = cache.load_complete()
            assert result is not None, f"{cache.path}: rank 0 merged it"
    if not use_cache:
        # Keep the arrays in memory and drop the temporary folder (once every process holds its copy).
        result = FeatureSet(np.array(result.features), result.valid_indices, result.skipped, result.manifest,
                            None)
        dist.barrier()
        if dist.is_main_process():
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    return result


def _shard_rows(shard: int, shard_size: int, n: int) -> range:
    return range(shard * shard_size, min(n, (shard + 1) * shard_size))


def _output_shape(encoder: torch.nn.Module, size: int, device: torch.device) -> tuple[int, ...]:
    """Shape of one encoded image, for shards in which no image decoded."""
    with torch.inference_mode():
        return tuple(encoder(torch.zeros(1, 3, size, size, device=device)).shape[1:])
