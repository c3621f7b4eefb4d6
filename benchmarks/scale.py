"""How the cost of the scale-sensitive stages grows with N: neighbour mining (k=20) and k-means (K=10, 1000).

Every measurement runs in a fresh process that memory-maps a float16 feature file (as the feature cache is
stored) and reports wall time and peak resident memory (``ru_maxrss``, which includes the file pages it
touched), so one stage's memory never hides in another's.

Data:

* ``latent16``: synthetic unit vectors in D dims whose directions come from a 16-dimensional Gaussian latent
  plus isotropic noise (σ² = 0.25 of the signal). Calibrated once on N = 20,000: an IVF index needs at least
  as wide a search (nprobe) as on the real CIFAR-10 features for the same recall, so it is not an easier
  case than real data (uniform random directions are the opposite extreme: see ``uniform``).
* ``uniform``: uniformly random unit vectors, the worst case for any approximate index (no neighbourhood
  structure; the nearest neighbour is barely closer than a random row).
* ``cifar10``: real default-backbone features (1280-d) of all 60,000 CIFAR-10 images (train + test, as in
  ``quality.py``), from the benchmark feature cache (extracted on first use: about 30 min on 2 cores;
  ``--cifar-train-per-class 1000`` takes 20,000).

Stages: ``knn-exact`` (faiss IndexFlatIP, chunked), ``knn-ivf`` and ``knn-hnsw`` (the library's approximate
path: breadth raised until the recall@20 measured on 1,000 rows reaches the target), ``kmeans-exact`` (trained
on all rows) and ``kmeans-sampled`` (trained on max(100,000, 256·K) rows, every row assigned), with
``n_init=1`` and at most 25 iterations (faiss's default). Exact stages are skipped where they would take hours;
the fitted exponent a of time ∝ N^a says how the skipped cells would grow.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale.py      # the grid in BENCHMARKS.md (about 1 h, 1 thread)
    .venv/bin/python benchmarks/scale.py --sizes 10000,100000 --dims 384 --data latent16

Writes benchmarks/results/scale.json and scale.png and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, RESULTS, print_table, save_result  # noqa: E402

DATA_DIR = REPO / "benchmarks" / "cache" / "scale"
K_NEIGHBORS = 20
KMEANS_ITERATIONS = 25
LATENT_DIM = 16
NOISE = 0.5


# -- data ------------------------------------------------------------------------------------------------------
def synthetic(kind: str, n: int, d: int, seed: int = 0) -> Path:
    """Write (once) and return a float16 (n, d) file of unit vectors of the given kind."""
    path = DATA_DIR / f"{kind}-{n}-{d}.npy"
    if path.exists():
        return path
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, LATENT_DIM)))[0].astype(np.float32)
    tmp = path.with_suffix(".tmp.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, d))
    for start in range(0, n, 100_000):
        rows = min(100_000, n - start)
        if kind == "uniform":
            x = rng.standard_normal((rows, d), dtype=np.float32)
        else:
            z = rng.standard_normal((rows, LATENT_DIM), dtype=np.float32)
            noise = rng.standard_normal((rows, d), dtype=np.float32)
            x = z @ basis.T + NOISE * math.sqrt(LATENT_DIM / d) * noise
        out[start:start + rows] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    del out
    tmp.rename(path)
    return path


def cifar10_features(train_per_class: int) -> Path:
    """CIFAR-10 train (``train_per_class`` per class) + test images through the default backbone (benchmark
    cache), as one float16 file."""
    path = DATA_DIR / f"cifar10-{10 * train_per_class + 10_000}-1280.npy"
    if path.exists():
        return path
    from _common import require_cifar10
    from quality import CACHE, cifar10

    from imgclust import ImageClusterer

    root = require_cifar10()
    parts = []
    for split, per_class in (("train", train_per_class), ("test", 1000)):
        clusterer = ImageClusterer(cache_dir=str(CACHE), num_workers=2)
        features, _, _ = clusterer.encode(cifar10(root, split, per_class))
        parts.append(np.asarray(features, dtype=np.float16))
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    np.save(path, np.concatenate(parts))
    return path


# -- one measurement (child process) -----------------------------------------------------------------------
def measure(stage: str, path: Path, k_clusters: int, target_recall: float) -> dict[str, Any]:
    from imgclust.methods.kmeans import kmeans
    from imgclust.neighbors import nearest_neighbors

    x = np.load(path, mmap_mode="r")
    started = time.perf_counter()
    out: dict[str, Any] = {}
    if stage.startswith("knn-"):
        index = stage.split("-", 1)[1]
        found = nearest_neighbors(x, K_NEIGHBORS, index=index, target_recall=target_recall, approximate_above=None)
        out["search"] = found.search
        if index != "exact":
            out["recall"] = found.search["recall_at_k"]
    else:
        result = kmeans(x, k_clusters, n_init=1, max_iter=KMEANS_ITERATIONS,
                        approximate_above=None if stage == "kmeans-exact" else 100_000)
        out["training_rows"] = result.training_rows
        out["mean_cosine"] = round(1.0 - result.inertia / len(result.labels), 5)  # higher is better
    out["seconds"] = round(time.perf_counter() - started, 2)
    out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    return out


def run_child(stage: str, path: Path, k_clusters: int, target_recall: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", stage, str(path), str(k_clusters), str(target_recall)]
    # PASSIVE: idle OpenMP threads sleep instead of spinning, which on a shared CPU slowed faiss 100x here.
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_WAIT_POLICY="PASSIVE")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the grid ----------------------------------------------------------------------------------------------
def planned(stage: str, n: int, d: int, k: int, args: argparse.Namespace) -> bool:
    """Skip the cells that would take hours on a CPU (their growth is the fitted exponent)."""
    if stage == "knn-exact":
        return n <= args.exact_knn_max
    if stage == "knn-hnsw":
        return n <= args.hnsw_max
    if stage == "kmeans-exact":
        return n * k * d <= args.exact_kmeans_max_work
    if stage == "kmeans-sampled":
        return n > 100_000  # below it the library trains on every row: the same as exact
    return True


def exponent(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(time) on log(N): time ∝ N^a."""
    if len(points) < 2:
        return None
    logs = np.log([[n, t] for n, t in points])
    return round(float(np.polyfit(logs[:, 0], logs[:, 1], 1)[0]), 2)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, family in zip(axes, ("knn", "kmeans")):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in rows:
            if r["stage"].startswith(family) and r["data"] == "latent16":
                label = f"{r['stage']}{' K=' + str(r['K']) if family == 'kmeans' else ''} d={r['D']}"
                series.setdefault(label, []).append((r["N"], r["seconds"]))
        for label, points in sorted(series.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N (rows)")
        ax.set_ylabel("seconds")
        ax.set_title("neighbour mining, k=20" if family == "knn" else "k-means (n_init=1, ≤25 iterations)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    threads = os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count())
    fig.suptitle(f"imgclust scale, latent16 synthetic features, {threads} CPU thread(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        stage, path, k_clusters, target = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
        print(json.dumps(measure(stage, path, k_clusters, target)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dims", default="384,1280")
    parser.add_argument("--data", default="cifar10,latent16,uniform")
    parser.add_argument("--stages", default="knn-exact,knn-ivf,knn-hnsw,kmeans-exact,kmeans-sampled")
    parser.add_argument("--clusters", default="10,1000")
    parser.add_argument("--target-recall", type=float, default=0.9)
    parser.add_argument("--exact-knn-max", type=int, default=100_000)
    parser.add_argument("--hnsw-max", type=int, default=100_000)
    parser.add_argument("--exact-kmeans-max-work", type=float, default=4e11, help="largest N·K·D trained exactly")
    parser.add_argument("--uniform-sizes", default="100000", help="uniform data is measured at these N only")
    parser.add_argument("--cifar-train-per-class", type=int, default=5000)
    parser.add_argument("--name", default="scale")
    parser.add_argument("--skip", action="append", default=[], metavar="DATA:D:STAGE",
                        help="leave out one cell kind, e.g. uniform:1280:knn-hnsw (repeatable)")
    parser.add_argument("--resume-log", type=Path, default=None,
                        help="output of an interrupted run: the cells it printed are kept, not measured again")
    args = parser.parse_args()
    done: dict[tuple[Any, ...], dict[str, Any]] = {}
    if args.resume_log is not None:
        for line in args.resume_log.read_text().splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                done[(row["data"], row["N"], row["D"], row["stage"], row["K"])] = row

    cells: list[tuple[str, int, int]] = []
    for data in args.data.split(","):
        if data == "cifar10":
            cells.append((data, 10 * args.cifar_train_per_class + 10_000, 1280))
            continue
        sizes = args.uniform_sizes if data == "uniform" else args.sizes
        cells += [(data, int(n), int(d)) for n in sizes.split(",") for d in args.dims.split(",")]
    rows: list[dict[str, Any]] = []
    for data, n, d in cells:
        path = cifar10_features(args.cifar_train_per_class) if data == "cifar10" else synthetic(data, n, d)
        for stage in args.stages.split(","):
            for k in ([int(v) for v in args.clusters.split(",")] if stage.startswith("kmeans") else [0]):
                if not planned(stage, n, d, k, args) or f"{data}:{d}:{stage}" in args.skip:
                    continue
                cell = (data, n, d, stage, k or "")
                if cell in done:
                    rows.append(done[cell])
                    continue
                load = os.getloadavg()[0]
                result = run_child(stage, path, k, args.target_recall)
                row = {"data": data, "N": n, "D": d, "stage": stage, "K": k or "", "load_avg": round(load, 1),
                       **{key: v for key, v in result.items() if key != "search"}}
                if "search" in result and stage != "knn-exact":
                    search = result["search"]
                    if "fallback_from" in search:  # every IVF list was needed: searched exactly instead
                        row["breadth"] = f"exact (IVF needed every list, recall {search['approximate_recall_at_k']})"
                    else:
                        row["breadth"] = f"{search['breadth_name']}={search['breadth']}" + (
                            f", k_factor={search['k_factor']}" if "k_factor" in search else "")
                    row["index"] = search["index"]
                rows.append(row)
                print(json.dumps(row), flush=True)

    exponents = {}
    for data in {r["data"] for r in rows}:
        for key in {(r["stage"], r["K"], r["D"]) for r in rows if r["data"] == data}:
            points = [(r["N"], r["seconds"]) for r in rows
                      if r["data"] == data and (r["stage"], r["K"], r["D"]) == key]
            a = exponent(points)
            if a is not None:
                exponents[f"{data} {key[0]}{' K=' + str(key[1]) if key[1] else ''} d={key[2]}"] = a
    for r in rows:
        r["exponent"] = exponents.get(f"{r['data']} {r['stage']}{' K=' + str(r['K']) if r['K'] else ''} d={r['D']}",
                                      "")
    print()
    table = print_table(rows, ["data", "N", "D", "stage", "K", "seconds", "peak_rss_gib", "recall", "breadth",
                               "training_rows", "mean_cosine", "exponent", "load_avg"])
    png = RESULTS / f"{args.name}.png"
    plot(rows, png)
    save_result(args.name, {"k_neighbors": K_NEIGHBORS, "target_recall": args.target_recall,
                            "kmeans_iterations": KMEANS_ITERATIONS, "rows": rows, "exponents": exponents,
                            "table_markdown": table, "plot": str(png.relative_to(REPO))})
    print(f"\nwrote {RESULTS / (args.name + '.json')} and {png}")


if __name__ == "__main__":
    main()
