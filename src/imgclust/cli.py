"""Command line: ``imgclust cluster SOURCE -k K`` and friends. Thin: all work happens in the library."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .errors import ImgclustError

EXAMPLES = """\
examples:
  imgclust cluster builtin:digits -k 10                     # embedded demo: 1,797 digits, prints ACC/NMI/ARI
  imgclust cluster ~/photos -k 8 --out runs/photos          # a folder of your own images (recursive)
  imgclust cluster data/cifar10/test -k 10 --device cuda    # class sub-folders are used as labels for scoring
  imgclust cluster feats.npz -k 20                          # bring-your-own embeddings (float array)
  imgclust cluster ~/photos -k 8 --backbone dinov2_vits14 --weights dinov2_vits14.safetensors
outputs (in --out): assignments.csv, metrics.json (when labels exist), run.json, model.json + model.safetensors
"""


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _method_options(pairs: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ImgclustError(f"--set expects KEY=VALUE, got {pair!r}", "write e.g. --set n_init=20")
        key, value = pair.split("=", 1)
        options[key.strip()] = _parse_value(value)
    return options


def _default_out(source: str, method: str, k: int) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source.rstrip("/")).name or source).strip("-") or "run"
    return Path("runs") / f"{slug}-{method}-k{k}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgclust", description="Deep image clustering.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    parser.add_argument("--version", action="version", version=f"imgclust {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    cluster = sub.add_parser("cluster", help="cluster images into K groups",
                             formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
                             description="Cluster a folder of images, an image/feature array, or a built-in "
                                         "dataset (builtin:NAME[:SPLIT]) into K groups.")
    cluster.add_argument("source", help="folder, .npy/.npz file, or builtin:NAME[:SPLIT] "
                                        "(see `imgclust datasets`)")
    cluster.add_argument("-k", "--n-clusters", type=int, required=True, help="number of clusters (≥ 2)")
    cluster.add_argument("--method", default="kmeans", help="clustering method (see `imgclust methods`)")
    cluster.add_argument("--backbone", default="efficientnet_lite0",
                         help="feature extractor (see `imgclust backbones`); default: efficientnet_lite0")
    cluster.add_argument("--weights", help="local .safetensors/.pth weights file for the backbone")
    cluster.add_argument("--out", type=Path, help="output folder (default: runs/<source>-<method>-k<K>)")
    cluster.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:N")
    cluster.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    cluster.add_argument("--workers", type=int, default=None, help="image decoding processes")
    cluster.add_argument("--cache-dir", help="feature cache folder (default ~/.cache/imgclust/features)")
    cluster.add_argument("--data-root", help="folder holding built-in dataset files")
    cluster.add_argument("--seed", type=int, default=0, help="random seed")
    cluster.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                         help="method option, repeatable (e.g. --set n_init=20)")
    cluster.add_argument("--resume", action="store_true", help="continue a killed training run in --out")
    cluster.add_argument("-q", "--quiet", action="store_true", help="no progress bars, only the summary")

    for name, text in (("backbones", "list backbones"), ("methods", "list clustering methods"),
                       ("datasets", "list built-in datasets")):
        sub.add_parser(name, help=text)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def cmd_cluster(args: argparse.Namespace) -> int:
    from . import ImageClusterer
    from ._io import RunLock
    from .report import write_run_outputs

    if args.data_root:
        os.environ["IMGCLUST_DATA"] = args.data_root
    out = args.out or _default_out(args.source, args.method, args.n_clusters)
    started = time.perf_counter()
    with RunLock(out):
        clusterer = ImageClusterer(
            n_clusters=args.n_clusters, method=args.method, backbone=args.backbone, weights=args.weights,
            device=args.device, batch_size=args.batch_size, num_workers=args.workers,
            cache_dir=args.cache_dir, random_state=args.seed, method_options=_method_options(args.options),
            run_dir=str(out), resume=args.resume, progress=not args.quiet)
        source = os.path.expanduser(args.source)
        clusterer.fit(source)
        timings = {**clusterer.timings_, "total": time.perf_counter() - started}
        config = {k: v for k, v in vars(args).items() if k not in ("func",)}
        config["out"] = str(out)
        paths = write_run_outputs(out, clusterer, config, timings, source)
        clusterer.save(out)
    _print_summary(clusterer, out, timings, paths)
    return 0


def _print_summary(clusterer: Any, out: Path, timings: dict[str, float], paths: dict[str, Path]) -> None:
    import numpy as np

    valid = clusterer.labels_ >= 0
    sizes = np.bincount(clusterer.labels_[valid], minlength=clusterer.n_clusters)
    lines = [f"imgclust: {int(valid.sum())} images → {clusterer.n_clusters} clusters "
             f"({clusterer.method}, {clusterer.backbone}) in {timings['total']:.1f} s"]
    if clusterer.skipped_:
        lines.append(f"  skipped {len(clusterer.skipped_)} unreadable file(s), listed in {paths['run']}")
    lines.append("  cluster sizes: " + " ".join(f"{i}:{n}" for i, n in enumerate(sizes)))
    if clusterer.metrics_ is not None:
        m = clusterer.metrics_
        lines.append(f"  ACC {m['acc']:.4f}  NMI {m['nmi']:.4f}  ARI {m['ari']:.4f}  "
                     f"(against the {m['n_classes']} labels that came with the data)")
    lines.append(f"  results: {out}/ (assignments.csv, run.json"
                 + (", metrics.json" if "metrics" in paths else "") + ", model.json)")
    print("\n".join(lines))


def cmd_list(args: argparse.Namespace) -> int:
    if args.command == "backbones":
        from .backbones import available_backbones

        print("\n".join(available_backbones()))
        print("(any timm model name also works, with --weights FILE when offline)")
    elif args.command == "methods":
        from .methods import available_methods

        print("\n".join(available_methods()))
    else:
        from .data import BUILTIN_DATASETS

        for name in BUILTIN_DATASETS:
            print(f"builtin:{name}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return cmd_cluster(args) if args.command == "cluster" else cmd_list(args)
    except ImgclustError as err:
        print(f"imgclust: error: {err.message}", file=sys.stderr)
        if err.fix:
            print(f"  fix: {err.fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imgclust: interrupted; finished shards/epochs are kept — rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
