"""Batched, parallel feature extraction: decode in DataLoader workers, normalise and encode on the device."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
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
from .engines import check_engine, open_engine

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
                 num_workers: int, pin_memory: bool = False, decode_threads: int = 0
                 ) -> Iterator[tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]]:
    """Batches ``(row indices, uint8 (B,3,S,S) or None, [(row, reason) of undecodable rows])`` of ``rows``.

    Decoded by ``num_workers`` DataLoader processes that run ahead of the consumer, or, with ``decode_threads``
    > 0, by that many threads of this process, one batch when the consumer asks for it (nothing runs beside the
    consumer's own work). Every image opens its own file, so decoding is thread-safe; Pillow releases the GIL.
    """
    images = _DecodedImages(dataset, rows, to_tensor)
    if decode_threads > 0:
        with ThreadPoolExecutor(decode_threads, thread_name_prefix="imgclust-decode") as pool:
            for start in range(0, len(images), batch_size):
                yield _collate(list(pool.map(images.__getitem__, range(start, min(start + batch_size, len(images))))))
        return
    loader = DataLoader(images, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate,
                        worker_init_fn=_worker_init, pin_memory=pin_memory)
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
    engine: str = "auto",
) -> FeatureSet:
    """Encode every image of ``dataset`` with ``encoder`` (default: the backbone), cached on disk.

    Args:
        dataset: images to encode.
        backbone: a :class:`imgclust.backbones.Backbone`; gives the preprocessing and the default encoder.
        cache_dir: cache root (default :func:`default_cache_dir`); ``use_cache=False`` keeps nothing.
        device: where normalisation, augmentation and the forward pass run.
        batch_size: images per forward pass.
        num_workers: decoding processes, which run ahead of the forward pass; 0 decodes in this process.
            Default: on a CPU, each batch decoded by one thread per core between two forward passes (the forward
            pass uses every core itself); on a GPU, one process per spare core.
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
        engine: inference engine of the forward pass (:data:`.engines.ENGINES`). Not part of the
            cache identity: every engine gives the float32 features of PyTorch (checked once per machine).

    Returns:
        The features of the decodable rows, with the skipped files and their reasons.
    """
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    check_engine(engine)
    identity = _cache_identity(dataset, backbone, encoder_id, augment_id if augment is not None else "none",
                               view, seed if augment is not None else 0, dtype, precision)
    root = _cache_root(cache_dir, use_cache)
    cache = FeatureCache(root, identity, list(dataset.items))
    n_shards = max(1, -(-len(dataset) // shard_size))
    # One process at a time fills a cache entry (another run on the same images waits, then reuses it);
    # under torchrun rank 0 holds the lock for all ranks.
    with cache.exclusive() if dist.is_main_process() else nullcontext():
        missing = _missing_shards(cache, n_shards)
        if missing is None:
            _logger.info("reusing cached features %s", cache.path)
            return _load_merged(cache)
        if len(missing) < n_shards:
            _logger.info("resuming extraction: %d of %d shards already done", n_shards - len(missing), n_shards)
        # Under torchrun each process encodes every world_size-th missing shard; rank 0 merges them at the end.
        todo = [_shard_rows(s, shard_size, len(dataset)) for s in missing[dist.rank()::dist.world_size()]]
        shards = ShardEncoder(dataset, backbone, encoder if encoder is not None else backbone, encoder_id,
                              device=device, precision=precision, engine=engine, export_root=root,
                              augment=augment, batch_size=batch_size, num_workers=num_workers, dtype=dtype,
                              n_images=sum(len(rows) for rows in todo))
        _encode_shards(cache, shards, todo, shard_size, generator_seed=int(seed) * 1_000_003 + int(view) * 10_007,
                       progress=progress, desc=f"features {backbone.name}")
        result = _merge(cache, n_shards, shards.manifest())
    return result if use_cache else _keep_in_memory(result, root)


def _cache_identity(dataset: ImageDataset, backbone: Any, encoder_id: str, augment_id: str, view: int, seed: int,
                    dtype: str, precision: str) -> dict[str, Any]:
    """The fields that decide what the features are (a cache entry is reused only when all match)."""
    return {
        "backbone": backbone.name,
        "weights": backbone.weights_id,
        "pooling": getattr(backbone, "pooling", "native"),
        "preprocess": backbone.preprocess.to_dict(),
        "encoder": encoder_id,
        "augment": augment_id,
        "view": int(view),
        "seed": int(seed),
        "dataset": dataset.fingerprint(),
        "dtype": dtype,
        "precision": precision,
    }


def _cache_root(cache_dir: str | os.PathLike | None, use_cache: bool) -> Path:
    """The cache root; without the cache a temporary folder, the same one in every torchrun process."""
    if use_cache:
        return Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return Path(dist.broadcast_object(tempfile.mkdtemp(prefix="imgclust-features-")
                                      if dist.is_main_process() else None))


def _missing_shards(cache: FeatureCache, n_shards: int) -> list[int] | None:
    """The shards still to encode, or ``None`` when the entry is complete. Rank 0 decides for everyone, so all
    processes take the same path."""
    plan: list[int] | str | None = None
    if dist.is_main_process():
        if cache.load_complete() is not None:
            plan = "complete"
        else:
            cache.start()
            plan = [s for s in range(n_shards) if cache.finished_shard(s) is None]
    plan = dist.broadcast_object(plan)
    return None if plan == "complete" else plan


def _load_merged(cache: FeatureCache) -> FeatureSet:
    merged = cache.load_complete()
    assert merged is not None, f"{cache.path}: rank 0 found it complete or merged it"
    return merged


class ShardEncoder:
    """Encodes the rows of one shard: decoded in DataLoader workers, then augmented, normalised and run through
    the encoder batch by batch on the device."""

    def __init__(self, dataset: ImageDataset, backbone: Any, encoder: torch.nn.Module, encoder_id: str, *,
                 device: torch.device, precision: str, engine: str, export_root: Path,
                 augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None, batch_size: int,
                 num_workers: int | None, dtype: str, n_images: int):
        self.dataset, self.backbone, self.encoder_id = dataset, backbone, encoder_id
        self.device, self.precision, self.engine_name, self.export_root = device, precision, engine, export_root
        self.augment, self.batch_size, self.dtype, self.n_images = augment, batch_size, dtype, n_images
        # On a CPU the forward pass keeps every core busy, and decoding processes beside it take cores from it:
        # by default each batch is decoded on all cores between two forward passes instead (2-core EPYC, ONNX
        # Runtime, 12-MP JPEGs: 64 images/s against 43 with one decoding process; CIFAR JPEGs: the same 128).
        # On a GPU the processes decode while the GPU computes.
        if num_workers is None and device.type == "cpu":
            self.workers, self.decode_threads = 0, torch.get_num_threads()
        else:
            self.workers, self.decode_threads = default_num_workers() if num_workers is None else num_workers, 0
        preprocess = backbone.preprocess
        self.mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one in-place multiply-add: normalising allocated and passed over the batch
        # four times, which cost more than ONNX Runtime's forward pass (measured: 2-2.5x cheaper in place)
        self.scale = 1.0 / (255.0 * self.std)
        self.shift = -self.mean / self.std
        self.encoder = encoder.to(device).eval()
        self.engine: Any = None  # opened at the first batch: its one-time check runs on real images

    def encode_shard(self, rows: range, generator: torch.Generator, on_rows: Callable[[int], Any]
                     ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """``(features, valid rows, {"index", "item", "reason"} of undecodable rows)`` of ``rows``;
        ``on_rows(n)`` is called after each batch of n rows (progress)."""
        loader = iter_decoded(self.dataset, rows, self.backbone.preprocess.to_uint8_tensor, self.batch_size,
                              self.workers, pin_memory=self.device.type == "cuda", decode_threads=self.decode_threads)
        parts: list[np.ndarray] = []
        valid: list[int] = []
        bad: list[dict[str, Any]] = []
        with torch.inference_mode():
            for indices, images, failures in loader:
                bad += [{"index": i, "item": self.dataset.items[i], "reason": r} for i, r in failures]
                if images is not None:
                    parts.append(self.encode_batch(images, generator))
                    valid += indices
                on_rows(len(indices) + len(failures))
        features = np.concatenate(parts) if parts else np.zeros((0, *self._output_shape()), dtype=self.dtype)
        return features, np.asarray(valid, dtype=np.int64), bad

    def encode_batch(self, images: torch.Tensor, generator: torch.Generator) -> np.ndarray:
        """uint8 images (B,3,S,S) -> stored features (B,...): augmented, normalised, encoded."""
        x = images.to(self.device, non_blocking=True).float()
        if self.augment is None:
            x.mul_(self.scale).add_(self.shift)
        else:
            x = self.augment(x.div_(255), generator).sub_(self.mean).div_(self.std)
        return self.forward_batch(x).astype(self.dtype, copy=False)

    def forward_batch(self, x: torch.Tensor) -> np.ndarray:
        """The forward pass of one batch of normalised images (B,3,S,S) on the device, by the inference engine."""
        if self.engine is None:
            self.engine = open_engine(self.engine_name, self.encoder, backbone=self.backbone,
                                      encoder_id=self.encoder_id, device=self.device, precision=self.precision,
                                      export_root=self.export_root, sample=x, n_images=self.n_images)
        return self.engine(x)

    def manifest(self) -> dict[str, Any]:
        """How the features were computed (for the cache manifest)."""
        return {"device": str(self.device), "engine": getattr(self.engine, "name", None),
                "batch_size": self.batch_size, "world_size": dist.world_size(),
                **({"decode_threads": self.decode_threads} if self.decode_threads else {"num_workers": self.workers})}

    def _output_shape(self) -> tuple[int, ...]:
        """Shape of one encoded image, for shards in which no image decoded."""
        size = self.backbone.preprocess.input_size
        with torch.inference_mode():
            return tuple(self.encoder(torch.zeros(1, 3, size, size, device=self.device)).shape[1:])


def _encode_shards(cache: FeatureCache, shards: ShardEncoder, todo: list[range], shard_size: int,
                   generator_seed: int, progress: bool, desc: str) -> None:
    """Encode and store each shard of ``todo``; each shard's augmentations are seeded from (seed, view, shard)."""
    from tqdm.auto import tqdm

    if dist.is_distributed():
        desc += f" (rank {dist.rank()})"
    with tqdm(total=sum(len(rows) for rows in todo), desc=desc, unit="img", disable=not progress,
              leave=False) as bar:
        for rows in todo:
            shard = rows.start // shard_size
            started = time.perf_counter()
            generator = torch.Generator(device=shards.device)
            generator.manual_seed(generator_seed + shard)
            features, valid, bad = shards.encode_shard(rows, generator, bar.update)
            cache.write_shard(shard, features, valid, bad, time.perf_counter() - started, rank=dist.rank())


def _merge(cache: FeatureCache, n_shards: int, extra_manifest: dict[str, Any]) -> FeatureSet:
    """Wait for every process's shards; rank 0 merges them, then every process opens the merged entry."""
    dist.barrier()
    if dist.is_main_process():
        cache.merge(n_shards, extra_manifest)
    dist.barrier()
    return _load_merged(cache)


def _keep_in_memory(result: FeatureSet, root: Path) -> FeatureSet:
    """The arrays in memory, and the temporary cache folder dropped (once every process holds its copy)."""
    result = FeatureSet(np.array(result.features), result.valid_indices, result.skipped, result.manifest, None)
    dist.barrier()
    if dist.is_main_process():
        shutil.rmtree(root, ignore_errors=True)
    return result


def _shard_rows(shard: int, shard_size: int, n: int) -> range:
    return range(shard * shard_size, min(n, (shard + 1) * shard_size))
