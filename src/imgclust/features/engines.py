"""Inference engines for the forward pass of feature extraction.

``torch`` runs the encoder module itself (channels-last input, autocast in the requested precision). The ONNX
engines run the same encoder exported once with ``torch.onnx.export`` (opset 17, dynamic batch):
``onnxruntime`` (measured about 5x PyTorch eager on 2-core CPUs with EfficientNet-Lite0, same float32 features)
and ``openvino``. Both compute in float32 and give PyTorch's float32 features to a cosine of 0.9999999, so the
engine is not part of the feature-cache identity: a cache entry written by one engine is reused by the others.

The export is cached beside the features (``<feature cache>/onnx/<backbone>-<encoder>-<hash>/``) with a manifest
(backbone, weights id, pooling and a hash of the exported parameters, encoder, opset, input size, torch/onnx versions,
the model file's SHA-256); a manifest that is unreadable, foreign or does not match its file is rebuilt. A file
lock beside the folder makes processes that race (torchrun) export once and reuse it.

Every ONNX engine is checked once per machine on a few real images before it is trusted: it must give features
at cosine >= :data:`MIN_COSINE` to PyTorch float32. ``auto`` on a CPU measures each installed engine in that
check and takes the fastest that passes; the result is remembered in the export manifest. On CUDA ``auto`` is
``torch``. An engine that is not installed, refuses the model or fails the check falls back to ``torch`` with
one warning line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import re
import shutil
import time
import warnings
from contextlib import nullcontext
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np
import torch

from .._io import atomic_path, write_json
from ..errors import ImgclustError
from .cache import cache_key

_logger = logging.getLogger(__name__)

#: Inference engines of feature extraction; ``"auto"`` picks one for the device (see the module docstring).
ENGINES = ("auto", "torch", "onnxruntime", "openvino")
#: Engines that run an ONNX export, in the order ``auto`` tries them.
ONNX_ENGINES = ("onnxruntime", "openvino")
#: ONNX opset of the exports (the issue's measurements used 17; ORT and OpenVINO both run it).
ONNX_OPSET = 17
#: The least per-image cosine to PyTorch float32 features for an engine to count as giving the same features.
MIN_COSINE = 0.9999
#: ``auto`` exports for extractions of at least this many images (smaller ones use an export already checked
#: here, else torch): exporting and checking EfficientNet-Lite0 costs ~15 s on a 2-core CPU, which ONNX Runtime
#: wins back after ~1,000 images (45 vs ~200 images/s).
AUTO_MIN_IMAGES = 1000
#: ``auto`` takes an engine listed earlier (onnxruntime, openvino, torch) unless a later one is this much faster.
TIE_MARGIN = 1.1
#: ONNX Runtime runs each batch in slices of this many images, whose activations are a quarter of a batch of 64's:
#: measured on EfficientNet-Lite0 (2-core Xeon) 250 images/s against 240 for slices of 64, and a session's first
#: run allocating for 0.09 s instead of 0.5 s (BENCHMARKS.md, inference engines).
ORT_RUN_BATCH = 16
#: Images of the one-time check (timed twice after a warm-up; enough for a stable speed ranking).
CHECK_IMAGES = 16

EXPORT_FORMAT_VERSION = 1
_INPUT, _OUTPUT = "images", "features"
_warned: set[str] = set()


class Engine(Protocol):
    """Runs the forward pass of one batch."""

    name: str

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        """Normalised float32 images (B,3,S,S) -> float32 encoder outputs (B,...) as a numpy array."""


def check_engine(engine: str) -> str:
    """``engine`` itself when it names an engine (refused before any work otherwise).

    Raises:
        ImgclustError: unknown engine name.
    """
    if engine not in ENGINES:
        raise ImgclustError(f"unknown inference engine {engine!r}", f"use one of: {', '.join(ENGINES)}")
    return engine


class TorchEngine:
    """The encoder module itself, on ``device``, in ``precision`` (autocast for bfloat16/float16)."""

    name = "torch"

    def __init__(self, encoder: torch.nn.Module, device: str | torch.device, precision: str = "float32"):
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        self.autocast = (nullcontext() if precision == "float32"
                         else torch.autocast(self.device.type, dtype=getattr(torch, precision)))

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        # channels-last lets oneDNN / cuDNN pick their fast convolution kernels: measured 1.5-1.7x on
        # EfficientNet-Lite0 on the 2-core CPU, same features to 1e-5.
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self.autocast:
            out = self.encoder(x)
        return out.float().cpu().numpy()


class OnnxRuntimeEngine:
    """An ONNX export run by ONNX Runtime's CPU provider with ``threads`` intra-op threads."""

    name = "onnxruntime"

    def __init__(self, model_path: Path, threads: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Threads that spin while waiting for work take the core from the decoding worker beside them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # ORT's informational lines are not for users
        self.session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        array = x.detach().cpu().float().contiguous().numpy()
        return np.concatenate([self.session.run([_OUTPUT], {_INPUT: array[start:start + ORT_RUN_BATCH]})[0]
                               for start in range(0, len(array), ORT_RUN_BATCH)])


class OpenVinoEngine:
    """An ONNX export compiled by OpenVINO for the CPU, computing in float32 (its default on CPUs with bfloat16
    units is bfloat16, which gives other features)."""

    name = "openvino"

    def __init__(self, model_path: Path, threads: int):
        import openvino

        core = openvino.Core()
        self.model = core.compile_model(core.read_model(str(model_path)), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        array = x.detach().cpu().float().contiguous().numpy()
        # The result lives in the request's output buffer, which the next call overwrites: copy it out.
        return np.array(self.model(array)[0], dtype=np.float32, copy=True)


_ENGINE_CLASSES: dict[str, type] = {"onnxruntime": OnnxRuntimeEngine, "openvino": OpenVinoEngine}


def open_engine(requested: str, encoder: torch.nn.Module, *, backbone: Any, encoder_id: str,
                device: str | torch.device, precision: str, export_root: str | os.PathLike,
                sample: torch.Tensor, n_images: int) -> Engine:
    """The engine that runs the forward pass of an extraction.

    Args:
        requested: one of :data:`ENGINES`.
        encoder: the module to run (the backbone or its trunk), in eval mode.
        backbone: the backbone ``encoder`` belongs to (name, weights id, input size).
        encoder_id: names ``encoder`` (``"backbone"``, ``"trunk-3"``).
        device: the extraction's device; ONNX engines run on the CPU only.
        precision: the resolved forward-pass precision; ONNX engines compute float32 only.
        export_root: the feature cache root; exports are kept in its ``onnx/`` folder.
        sample: a few normalised float32 images (the extraction's first batch) for the one-time check.
        n_images: how many images the extraction encodes (``auto`` exports only when it pays off).

    Returns:
        The engine; ``torch`` when an ONNX engine is missing, refuses the model or fails the check (one
        warning line says so).
    """
    requested = check_engine(requested)
    device = torch.device(device)
    torch_engine = TorchEngine(encoder, device, precision)
    if requested == "torch":
        return torch_engine
    if requested == "auto":
        # GPUs: PyTorch is already fast there; other precisions: only PyTorch computes them.
        if device.type != "cpu" or precision != "float32":
            return torch_engine
        candidates = [name for name in ONNX_ENGINES if _installed(name)]
        if not candidates:
            return torch_engine
    else:
        if device.type != "cpu":
            _warn_once(f"engine {requested} runs on the CPU only; the forward pass on {device} uses torch")
            return torch_engine
        if precision != "float32":
            _warn_once(f"engine {requested} computes in float32 only; precision {precision} uses torch")
            return torch_engine
        if not _installed(requested):
            _warn_once(f"engine {requested} is not installed (pip install {requested}); using torch")
            return torch_engine
        candidates = [requested]
    try:
        export = OnnxExport(encoder, backbone, encoder_id, export_root)
        if requested == "auto" and n_images < AUTO_MIN_IMAGES and not export.checked(candidates):
            return torch_engine  # exporting and checking would cost more time than they save
        with export.locked():
            return export.choose(candidates, torch_engine, sample, keep_torch=requested == "auto")
    except Exception as err:  # noqa: BLE001 (exporters and runtimes raise anything for a model they refuse)
        _warn_once(f"engine {requested} could not run backbone {backbone.name} ({encoder_id}): "
                   f"{type(err).__name__}: {_first_line(err)}; using torch")
        return torch_engine


class OnnxExport:
    """The cached ONNX export of one encoder: its folder, manifest and the engine checks remembered there."""

    def __init__(self, encoder: torch.nn.Module, backbone: Any, encoder_id: str, root: str | os.PathLike):
        self.encoder = encoder
        self.input_size = int(backbone.preprocess.input_size)
        self.identity = {
            "format_version": EXPORT_FORMAT_VERSION,
            "backbone": backbone.name,
            "weights_id": backbone.weights_id,
            "pooling": getattr(backbone, "pooling", "native"),
            # The parameters themselves: a random-init or fine-tuned module shares its weights_id with others.
            "weights_hash": parameters_hash(encoder),
            "encoder": encoder_id,
            "input_size": self.input_size,
            "opset": ONNX_OPSET,
            "torch": torch.__version__,
            "onnx": _version("onnx"),
        }
        readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{backbone.name}-{encoder_id}")[:80]
        self.path = Path(root) / "onnx" / f"{readable}-{cache_key(self.identity)[:16]}"
        self.model_path = self.path / "model.onnx"
        self.manifest_path = self.path / "manifest.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold this export's lock (beside the folder, which :meth:`ensure` may delete and recreate)."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / f"{self.path.name}.lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def manifest(self) -> dict[str, Any] | None:
        """The manifest when it belongs to this export and its model file is the one it describes."""
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(manifest, dict) or manifest.get("identity") != self.identity:
            return None
        try:
            if manifest.get("model_sha256") != _file_sha256(self.model_path):
                return None
        except OSError:
            return None
        return manifest

    def checked(self, engines: list[str]) -> bool:
        """Whether the export is cached and every one of ``engines`` was checked on this machine."""
        manifest = self.manifest()
        done = manifest.get("checks", {}).get(machine_key(), {}) if manifest else {}
        return all(name in done for name in engines)

    def ensure(self) -> dict[str, Any]:
        """Export unless a valid export is cached; returns its manifest. Call while holding :meth:`locked`."""
        manifest = self.manifest()
        if manifest is not None:
            return manifest
        if self.path.exists():
            _logger.info("rebuilding the ONNX export %s (its manifest is missing, foreign or stale)", self.path)
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        _logger.info("exporting %s (%s) to ONNX once: %s", self.identity["backbone"], self.identity["encoder"],
                     self.path)
        started = time.perf_counter()
        example = torch.zeros(2, 3, self.input_size, self.input_size)  # batch 2: keeps the batch axis symbolic
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            # Extraction runs under inference_mode, whose tensors the exporter's tracer refuses.
            with atomic_path(self.model_path) as tmp, warnings.catch_warnings(), torch.inference_mode(False), \
                    torch.no_grad():
                # The TorchScript exporter's notes (constant folding of strided slices, its deprecation) are
                # not actionable here.
                warnings.simplefilter("ignore")
                torch.onnx.export(self.encoder, (example,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                                  input_names=[_INPUT], output_names=[_OUTPUT],
                                  dynamic_axes={_INPUT: {0: "batch"}, _OUTPUT: {0: "batch"}})
        finally:
            self.encoder.train(was_training)
        manifest = {"identity": self.identity, "model_file": self.model_path.name,
                    "model_sha256": _file_sha256(self.model_path), "model_bytes": self.model_path.stat().st_size,
                    "export_seconds": round(time.perf_counter() - started, 2), "checks": {}}
        write_json(self.manifest_path, manifest)
        return manifest

    def choose(self, candidates: list[str], torch_engine: TorchEngine, sample: torch.Tensor,
               keep_torch: bool) -> Engine:
        """The fastest of ``candidates`` (and of torch, when ``keep_torch``) that gives torch's features.

        Each engine is checked once per machine on ``sample`` (cosine to torch float32, images/s), and the
        result kept in the manifest. Call while holding :meth:`locked`.
        """
        manifest = self.ensure()
        machine = machine_key()
        checks: dict[str, Any] = manifest.setdefault("checks", {}).setdefault(machine, {})
        engines: dict[str, Engine] = {}
        missing = [name for name in candidates if name not in checks]
        if missing:
            sample = sample[:CHECK_IMAGES].float()
            reference, torch_rate = _timed(torch_engine, sample)
            checks.setdefault("torch", {"images_per_s": round(torch_rate, 2), "min_cosine": 1.0})
            for name in missing:
                try:
                    engines[name] = _ENGINE_CLASSES[name](self.model_path, torch.get_num_threads())
                    out, rate = _timed(engines[name], sample)
                    checks[name] = {"images_per_s": round(rate, 2),
                                    "min_cosine": float(min_cosine(out, reference))}
                except Exception as err:  # noqa: BLE001 (a runtime that refuses the model is a failed check)
                    checks[name] = {"error": f"{type(err).__name__}: {_first_line(err)}"}
            checks["check_images"] = int(len(sample))
            write_json(self.manifest_path, manifest)
        passed = [name for name in candidates
                  if checks.get(name, {}).get("min_cosine", -1.0) >= MIN_COSINE]
        for name in candidates:
            if name not in passed:
                result = checks.get(name, {})
                reason = result.get("error") or f"features at cosine {result.get('min_cosine')} < {MIN_COSINE}"
                _warn_once(f"engine {name} does not reproduce the torch features of {self.identity['backbone']} "
                           f"({self.identity['encoder']}): {reason}; not using it")
        if keep_torch:
            passed.append("torch")
        if not passed:
            return torch_engine
        # Speeds within TIE_MARGIN are noise on a shared machine: the earlier engine of ``passed`` wins them.
        fastest = max(checks[name]["images_per_s"] for name in passed)
        best = next(name for name in passed if checks[name]["images_per_s"] * TIE_MARGIN >= fastest)
        if best == "torch":
            return torch_engine
        _logger.info("forward pass by %s (%s images/s on this machine's check; torch %s)", best,
                     checks[best]["images_per_s"], checks.get("torch", {}).get("images_per_s"))
        return engines.get(best) or _ENGINE_CLASSES[best](self.model_path, torch.get_num_threads())


def parameters_hash(module: torch.nn.Module) -> str:
    """``sha256:<16 hex>`` of a module's state (names, dtypes, shapes and bytes of every tensor)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return f"sha256:{digest.hexdigest()[:16]}"


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest per-row cosine between two (N, ...) arrays (rows flattened)."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min((a * b).sum(1) / np.maximum(norms, 1e-30))) if len(a) else 1.0


def machine_key() -> str:
    """What an engine check depends on: the CPU, the thread count and the engines' versions."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    versions = ", ".join(f"{name} {_version(name)}" for name in ONNX_ENGINES)
    return f"{cpu}; {torch.get_num_threads()} threads; torch {torch.__version__}; {versions}"


def installed_engines() -> list[str]:
    """The engines that can run here (torch always)."""
    return ["torch", *[name for name in ONNX_ENGINES if _installed(name)]]


def _installed(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    except Exception:  # noqa: BLE001 (a broken install raises whatever its native loader raises)
        return False
    return True


def _timed(engine: Engine, sample: torch.Tensor) -> tuple[np.ndarray, float]:
    """The engine's output on ``sample`` and its best rate of two timed runs after a warm-up, images/s."""
    out = engine(sample)
    best = math.inf
    for _ in range(2):
        started = time.perf_counter()
        out = engine(sample)
        best = min(best, time.perf_counter() - started)
    return out, len(sample) / max(best, 1e-9)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else ""


def _warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time this process meets it (extractions of several views and
    spaces would otherwise repeat it)."""
    if message not in _warned:
        _warned.add(message)
        _logger.warning(message)
