"""Feature-extraction throughput per inference engine, on CIFAR-10 JPEGs and on 12-megapixel JPEGs.

In one run, on the same images, repeats interleaved (engine by engine, repeat by repeat) so machine noise hits
all alike:
  * input pipeline, per image on one core: decode, resize/crop, batch collation, normalisation; and the
    loader alone (no forward pass) in images/s with DataLoader processes and with decoding threads;
  * bare forward pass of each engine on tensors decoded and normalised beforehand (torch float32
    channels-last, as extraction runs it; torch NCHW, the path before channels-last; onnxruntime; openvino);
  * full extraction (decode + preprocess + forward + cache write, through ``extract_features``) per engine
    (torch float32 with decoding processes = the path before the engines, onnxruntime, openvino, auto with
    decoding processes = before the decoding threads, auto; torch bfloat16 only on CPUs with bfloat16
    instructions, elsewhere it is emulated and ~20x slower) on both kinds of JPEG, with the ONNX export already
    cached (its one-time cost is reported on its own). Each full extraction runs in a fresh process, as a user's
    run does: measured in the benchmark's own process, the torch path ran 20 % slower once ONNX Runtime had run
    there (2-core Xeon, 32.5 against 39.9 images/s), which made the "before" reference too slow;
  * per engine: the least cosine of its features to torch float32, and the ACC of k-means (K = 10) on them.
Optionally (``--full-cifar``) all 60,000 CIFAR-10 images with ``engine="auto"`` end to end, export included
(in the benchmark's own process, after everything else; on 2026-12-06 it ran at the rate of the spawned ONNX Runtime
runs, 207 against 200-204 images/s).

The 12-megapixel JPEGs are made once from real CIFAR-10 images (upscaled to 4000×3000, quality 90) under
``benchmarks/cache/jpeg12mp/``. Load averages before and after each part are recorded: on a shared machine
the ratios measured side by side are what count.

    .venv/bin/python benchmarks/extract.py [--images 2560] [--big-images 320] [--repeats 3] [--full-cifar]

A full extraction includes the engine's start (session, first runs: ~0.1-0.5 s), so small image counts
understate the steady rate against the bare forward pass; the defaults keep that under 5 %.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, print_table, require_cifar10, save_result  # noqa: E402

from imgclust.backbones import create_backbone  # noqa: E402
from imgclust.data import PathListDataset  # noqa: E402
from imgclust.data.decode import open_image  # noqa: E402
from imgclust.features import engines, extract_features, iter_decoded  # noqa: E402
from imgclust.features.extract import default_num_workers  # noqa: E402
from imgclust.methods.kmeans import kmeans  # noqa: E402
from imgclust.metrics import cluster_accuracy  # noqa: E402

BIG_SIZE = (4000, 3000)  # 12 megapixels
BIG_QUALITY = 90
# (label, engine, precision, decoding): "processes" = DataLoader processes, one per spare core (the path before
# 2026-12-05's change); None = --workers (default: the library's, on a CPU one decoding thread per core between
# forward passes). The first row is the reference ("before") of the x_before column.
FULL_RUNS = [("torch float32, decoding processes (before)", "torch", "float32", "processes"),
             ("torch bfloat16", "torch", "bfloat16", None),
             ("onnxruntime", "onnxruntime", "float32", None), ("openvino", "openvino", "float32", None),
             ("auto, decoding processes", "auto", "float32", "processes"), ("auto", "auto", "float32", None)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2560, help="CIFAR-10 train JPEGs (equal per class)")
    parser.add_argument("--big-images", type=int, default=320, help="12-megapixel JPEGs (equal per class)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--full-cifar", action="store_true",
                        help="also extract all 60,000 CIFAR-10 images with engine=auto (export included)")
    parser.add_argument("--out", default="extract_engines", help="result name under benchmarks/results/")
    args = parser.parse_args()

    root = require_cifar10()
    backbone = create_backbone(args.backbone).eval()
    installed = engines.installed_engines()
    bf16_kernels = _cpu_bf16_kernels()
    # Without bfloat16 instructions PyTorch emulates them (measured 20x slower than float32 on an AVX2 EPYC).
    full_runs = [r for r in FULL_RUNS if (r[1] in installed or r[1] == "auto")
                 and (r[2] != "bfloat16" or any(bf16_kernels.values()))]
    bare_engines = [e for e in ("onnxruntime", "openvino") if e in installed]
    cifar, cifar_labels = _cifar_subset(root, args.images)
    big, big_labels = _big_jpegs(root, args.big_images)
    sets = {"cifar10 32px": (cifar, cifar_labels), "12MP": (big, big_labels)}
    loads: dict[str, list[float]] = {"start": list(os.getloadavg())}
    work = Path(tempfile.mkdtemp(prefix="imgclust-extract-bench-"))
    try:
        # -- one-time export, checked (its cost is reported, not part of the per-run timings) -----------------
        export_root = work / "exports"
        decoded = {name: _decoded(ds, backbone) for name, (ds, _) in sets.items()}
        sample = backbone.normalize(decoded["cifar10 32px"][:engines.CHECK_IMAGES])
        export_started = time.perf_counter()
        auto_engine = engines.open_engine("auto", backbone, backbone=backbone, encoder_id="backbone",
                                          device="cpu", precision="float32", export_root=export_root,
                                          sample=sample, n_images=10**9)
        export_seconds = time.perf_counter() - export_started
        export = engines.OnnxExport(backbone, backbone, "backbone", export_root)
        export_manifest = export.manifest() or {}

        pipeline = _pipeline_rows(sets, backbone, args.batch_size, args.workers)
        loads["after_pipeline"] = list(os.getloadavg())

        # -- bare forward passes and full extractions, interleaved -----------------------------------------------
        bare_engine_objects: dict[str, Callable[[torch.Tensor], np.ndarray]] = {
            "torch float32 channels-last": engines.TorchEngine(backbone, "cpu"),
            "torch float32 NCHW (before channels-last)": _nchw(backbone)}
        for name in bare_engines:
            bare_engine_objects[name] = engines._ENGINE_CLASSES[name](export.model_path, torch.get_num_threads())
        batches = _normalised_batches(decoded["cifar10 32px"], backbone, args.batch_size)
        for run in bare_engine_objects.values():
            run(batches[0])  # warm-up: the first passes allocate and pick kernels
        bare: dict[str, list[float]] = {name: [] for name in bare_engine_objects}
        full: dict[tuple[str, str], list[float]] = {}
        features: dict[tuple[str, str], np.ndarray] = {}
        for repeat in range(args.repeats):
            for name, run in bare_engine_objects.items():
                bare[name].append(_bare_rate(run, batches))
            for set_name, (dataset, _) in sets.items():
                for label, engine, precision, decoding in full_runs:
                    workers = default_num_workers() if decoding == "processes" else args.workers
                    rate, result = _full_rate(dataset, args.backbone, engine, precision, workers, export_root, work,
                                              args.batch_size)
                    full.setdefault((set_name, label), []).append(rate)
                    features[(set_name, label)] = result
            print(f"repeat {repeat + 1}/{args.repeats} done (load {os.getloadavg()[0]:.1f})", flush=True)
        loads["after_engines"] = list(os.getloadavg())

        # -- tables ---------------------------------------------------------------------------------------------
        bare_median = {name: statistics.median(rates) for name, rates in bare.items()}
        reference_bare = bare_median["torch float32 channels-last"]
        bare_rows = [{"engine": name, "images_per_s": rate, "x_torch_float32": rate / reference_bare}
                     for name, rate in bare_median.items()]
        engine_of_bare = {FULL_RUNS[0][0]: "torch float32 channels-last", "onnxruntime": "onnxruntime",
                          "openvino": "openvino", "auto": _bare_name(auto_engine.name),
                          "auto, decoding processes": _bare_name(auto_engine.name)}
        full_rows = []
        for (set_name, label), rates in full.items():
            dataset, labels = sets[set_name]
            rate = statistics.median(rates)
            reference = features[(set_name, FULL_RUNS[0][0])]
            mine = features[(set_name, label)]
            before = statistics.median(full[(set_name, FULL_RUNS[0][0])])
            acc = _kmeans_acc(mine, labels)
            bare_name = engine_of_bare.get(label)
            full_rows.append({
                "images": set_name, "engine": label, "full_images_per_s": rate, "x_before": rate / before,
                "full_over_bare": rate / bare_median[bare_name] if bare_name in bare_median else None,
                "min_cosine_to_float32": engines.min_cosine(mine, reference),
                "kmeans_acc": acc, "acc_minus_float32": acc - _kmeans_acc(reference, labels)})
        print("\nbare forward pass (pre-decoded, normalised CIFAR-10 tensors)")
        bare_table = print_table(bare_rows, ["engine", "images_per_s", "x_torch_float32"])
        print("\nfull extraction (decode + preprocess + forward + cache write)")
        full_table = print_table(full_rows, ["images", "engine", "full_images_per_s", "x_before", "full_over_bare",
                                             "min_cosine_to_float32", "kmeans_acc", "acc_minus_float32"])
        print("\ninput pipeline (one core, ms per image; loader: images/s)")
        pipeline_table = print_table(pipeline, ["images", "stage", "value", "unit"])
        print(f"\nauto chose {auto_engine.name}; export + one-time check took {export_seconds:.1f} s")

        # -- all of CIFAR-10, engine auto, end to end -----------------------------------------------------------
        full_cifar = _full_cifar(root, backbone, args, work) if args.full_cifar else None
        loads["end"] = list(os.getloadavg())
        path = save_result(args.out, {
            "backbone": args.backbone, "batch_size": args.batch_size, "workers": args.workers,
            "default_workers": default_num_workers(), "installed_engines": installed,
            "cifar_images": len(cifar), "big_images": len(big), "big_jpeg": {"size": BIG_SIZE, "quality": BIG_QUALITY},
            "repeats": args.repeats, "cpu_bf16_kernels": bf16_kernels, "auto_engine": auto_engine.name,
            "export_and_check_seconds": export_seconds,
            "export_manifest": export_manifest, "load_averages": loads,
            "bare": bare_rows, "bare_runs": bare, "full": full_rows,
            "full_runs": {f"{s} | {label}": rates for (s, label), rates in full.items()},
            "pipeline": pipeline, "full_cifar": full_cifar,
            "tables": {"bare": bare_table, "full": full_table, "pipeline": pipeline_table}})
        print(f"wrote {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _cpu_bf16_kernels() -> dict[str, bool]:
    """The CPU's bfloat16 instructions (the speed of precision=bfloat16 depends on them), from /proc/cpuinfo."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    return {"amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags}


def _bare_name(engine: str) -> str:
    return "torch float32 channels-last" if engine == "torch" else engine


def _cifar_subset(root: Path, n: int) -> tuple[PathListDataset, np.ndarray]:
    per_class = max(1, n // 10)
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    paths = [p for c in classes for p in sorted((root / "train" / c).glob("*.jpg"))[:per_class]]
    labels = np.repeat(np.arange(len(classes)), per_class)
    return PathListDataset([str(p) for p in paths], draft_size=224), labels


def _big_jpegs(root: Path, n: int) -> tuple[PathListDataset, np.ndarray]:
    """``n`` 12-megapixel JPEGs made from CIFAR-10 *test* images (other images than the CIFAR subset), kept in
    benchmarks/cache/jpeg12mp/ for the next run."""
    per_class = max(1, n // 10)
    folder = REPO / "benchmarks" / "cache" / "jpeg12mp"
    classes = sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
    paths = []
    for c in classes:
        for source in sorted((root / "test" / c).glob("*.jpg"))[:per_class]:
            target = folder / c / f"{source.stem}.jpg"
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                big = Image.open(source).convert("RGB").resize(BIG_SIZE, Image.Resampling.BICUBIC)
                tmp = target.with_suffix(".tmp.jpg")
                big.save(tmp, quality=BIG_QUALITY)
                tmp.replace(target)
            paths.append(str(target))
    labels = np.repeat(np.arange(len(classes)), per_class)
    return PathListDataset(paths, draft_size=224), labels


def _decoded(dataset: PathListDataset, backbone: Any) -> torch.Tensor:
    return torch.stack([backbone.preprocess.to_uint8_tensor(dataset.load(i)) for i in range(len(dataset))])


def _normalised_batches(decoded: torch.Tensor, backbone: Any, batch_size: int) -> list[torch.Tensor]:
    return [backbone.normalize(decoded[s:s + batch_size]) for s in range(0, len(decoded), batch_size)]


def _nchw(backbone: Any) -> Callable[[torch.Tensor], np.ndarray]:
    def run(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return backbone(x.contiguous()).numpy()
    return run


def _bare_rate(run: Callable[[torch.Tensor], np.ndarray], batches: list[torch.Tensor]) -> float:
    started = time.perf_counter()
    for x in batches:
        run(x)
    return sum(len(x) for x in batches) / (time.perf_counter() - started)


def _full_rate(dataset: PathListDataset, backbone: str, engine: str, precision: str, workers: int | None,
               export_root: Path, work: Path, batch_size: int) -> tuple[float, np.ndarray]:
    """images/s of one full extraction in a fresh process, into a fresh cache that holds the export already (as
    after a first run)."""
    cache = work / f"cache-{time.monotonic_ns()}"
    shutil.copytree(export_root / "onnx", cache / "onnx")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as process:
        rate, features, used = process.submit(_extract_in_process, dataset, backbone, engine, precision, workers,
                                              cache, batch_size).result()
    if engine != "auto" and used != engine:
        print(f"warning: engine {engine} fell back to {used}", flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    return rate, features


def _extract_in_process(dataset: PathListDataset, backbone_name: str, engine: str, precision: str,
                        workers: int | None, cache: Path, batch_size: int) -> tuple[float, np.ndarray, str | None]:
    # A spawned process would spawn its DataLoader workers too (seconds of imports each); a user's run forks them.
    multiprocessing.set_start_method("fork", force=True)
    backbone = create_backbone(backbone_name).eval()
    started = time.perf_counter()
    result = extract_features(dataset, backbone, cache_dir=cache, precision=precision, engine=engine,
                              batch_size=batch_size, num_workers=workers, progress=False)
    rate = len(dataset) / (time.perf_counter() - started)
    return rate, np.array(result.features, dtype=np.float32), result.manifest.get("engine")


def _kmeans_acc(features: np.ndarray, labels: np.ndarray) -> float:
    return float(cluster_accuracy(labels, kmeans(features, int(labels.max()) + 1, seed=0).labels))


def _pipeline_rows(sets: dict[str, tuple[PathListDataset, np.ndarray]], backbone: Any, batch_size: int,
                   workers: int | None) -> list[dict[str, Any]]:
    """Per-image cost of each input stage on one core, and the loader's rate with decoding processes (one per
    spare core, or ``workers``) and with one decoding thread per core."""
    threads = torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    for set_name, (dataset, _) in sets.items():
        items = dataset.items[:64]
        torch.set_num_threads(1)  # as in a decoding worker
        decode = _ms_per_item(lambda p: open_image(p, draft_size=224), items)
        images = [open_image(p, draft_size=224) for p in items]
        resize = _ms_per_item(backbone.preprocess.to_uint8_tensor, images)
        tensors = [backbone.preprocess.to_uint8_tensor(im) for im in images]
        collate = _ms_per_item(lambda _: torch.stack(tensors[:batch_size]), [0] * 5) / min(batch_size, len(tensors))
        torch.set_num_threads(threads)
        batch = torch.stack(tensors[:batch_size])
        normalise = _ms_per_item(lambda _: backbone.normalize(batch), [0] * 5) / len(batch)
        pre = backbone.preprocess
        scale = 1 / (255 * torch.tensor(pre.std).view(1, 3, 1, 1))
        shift = -torch.tensor(pre.mean).view(1, 3, 1, 1) / torch.tensor(pre.std).view(1, 3, 1, 1)
        in_place = _ms_per_item(lambda _: batch.float().mul_(scale).add_(shift), [0] * 5) / len(batch)
        loaders = {}
        processes = default_num_workers() if workers is None else workers
        for label, n_processes, decode_threads in [
                (f"loader alone (decode+resize+collate), {processes} decoding processes", processes, 0),
                (f"loader alone (decode+resize+collate), {threads} decoding threads", 0, threads)]:
            started = time.perf_counter()
            n = 0
            for indices, _, failures in iter_decoded(dataset, range(len(dataset)), backbone.preprocess.to_uint8_tensor,
                                                     batch_size, n_processes, decode_threads=decode_threads):
                n += len(indices) + len(failures)
            loaders[label] = n / (time.perf_counter() - started)
        rows += [{"images": set_name, "stage": "decode (draft for 224 px)", "value": decode, "unit": "ms/img"},
                 {"images": set_name, "stage": "resize + crop + to uint8 tensor", "value": resize, "unit": "ms/img"},
                 {"images": set_name, "stage": f"collate (stack of {batch_size})", "value": collate,
                  "unit": "ms/img"},
                 {"images": set_name, "stage": f"normalise ({threads} threads)", "value": normalise,
                  "unit": "ms/img"},
                 {"images": set_name, "stage": f"normalise in place, x*scale+shift ({threads} threads)",
                  "value": in_place, "unit": "ms/img"},
                 *({"images": set_name, "stage": label, "value": rate, "unit": "img/s"}
                   for label, rate in loaders.items())]
    return rows


def _ms_per_item(fn: Callable[[Any], Any], items: list[Any], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter() - started) / len(items))
    return best * 1e3


def _full_cifar(root: Path, backbone: Any, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """All 60,000 CIFAR-10 JPEGs (train + test), engine auto, into an empty cache: export and check included."""
    paths = sorted(str(p) for split in ("train", "test") for p in (root / split).glob("*/*.jpg"))
    dataset = PathListDataset(paths, draft_size=224)
    load_before = list(os.getloadavg())
    started = time.perf_counter()
    result = extract_features(dataset, backbone, cache_dir=work / "full-cifar", engine="auto",
                              batch_size=args.batch_size, num_workers=args.workers, progress=True)
    seconds = time.perf_counter() - started
    out = {"images": len(dataset), "seconds": seconds, "images_per_s": len(dataset) / seconds,
           "engine": result.manifest.get("engine"), "load_before": load_before, "load_after": list(os.getloadavg())}
    print(f"\nCIFAR-10, {len(dataset)} images, engine auto ({out['engine']}): {seconds / 60:.1f} min "
          f"({out['images_per_s']:.0f} images/s); load {load_before[0]:.1f} -> {out['load_after'][0]:.1f}")
    return out


if __name__ == "__main__":
    main()
