"""Command line: ``imgclust cluster SOURCE -k K`` and friends. Thin: all work happens in the library."""

from __future__ import annotations

import argparse
import contextlib
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
worked example (your own photos, number of groups unknown):
  imgclust cluster ~/photos --out runs/photos               # 1. estimates K (2..30), clusters, writes a report
  xdg-open runs/photos/report.html                          # 2. look at it (macOS: open …; or any browser)
  imgclust export runs/photos --to ~/photos-by-cluster      # 3. one folder per cluster (symlinks to the originals)
  imgclust predict runs/photos ~/new-photos --out new.csv   # 4. assign new images to the same clusters

more:
  imgclust cluster ~/photos -k 8                            # you know K
  imgclust cluster ~/photos --k-range 5:50 --plots          # search K in 5..50; figures also as PNG files
  imgclust cluster builtin:digits -k 10                     # embedded demo: 1,797 digits, prints ACC/NMI/ARI
  imgclust cluster data/cifar10/test -k 10 --device cuda    # class sub-folders are used as labels for scoring
  imgclust cluster feats.npz -k 20                          # bring-your-own embeddings (float array)
  imgclust cluster ~/photos -k 8 --backbone dinov2_vits14 --weights dinov2_vits14.safetensors
  imgclust export runs/photos --to sorted --names names.json --mode copy   # names.json: {"0": "cats", "1": "cars"}
  imgclust report runs/photos --plots                       # rebuild report.html (+ plots/*.png)
outputs (in --out): report.html, assignments.csv, metrics.json (when labels exist), run.json,
  k_selection.json + k_selection.png (when K was estimated), model.json + model.safetensors
"""


def parse_option_value(text: str) -> Any:
    """A ``--set KEY=VALUE`` value: ``5`` -> 5, ``true`` -> True, ``bf16`` -> "bf16" (read as JSON, else kept as
    a string: the shell has already removed any quotes)."""
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
        options[key.strip()] = parse_option_value(value)
    return options


def _default_out(source: str, method: str, k: int | None) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(source.rstrip("/")).name or source).strip("-") or "run"
    return Path("runs") / f"{slug}-{method}-k{'auto' if k is None else k}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgclust", description="Deep image clustering.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    parser.add_argument("--version", action="version", version=f"imgclust {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    cluster = sub.add_parser("cluster", help="cluster images into K groups (K estimated when not given)",
                             formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
                             description="Cluster a folder of images, an image/feature array, or a built-in "
                                         "dataset (builtin:NAME[:SPLIT]) into K groups, and write a visual "
                                         "report (report.html) into the output folder.")
    cluster.add_argument("source", help="folder, .npy/.npz file, or builtin:NAME[:SPLIT] "
                                        "(see `imgclust datasets`)")
    cluster.add_argument("-k", "--n-clusters", type=int, default=None,
                         help="number of clusters (≥ 2); leave out to estimate it (see --k-range)")
    cluster.add_argument("--k-range", default=None, metavar="LOW:HIGH",
                         help="range searched when -k is not given (default 2:30); the chosen K, its curve "
                              "and the criterion are printed and saved in k_selection.json/.png")
    cluster.add_argument("--k-criterion", default=None, choices=_k_criteria(),
                         help="criterion for estimating K (default: %s)" % _default_k_criterion())
    cluster.add_argument("--method", default="kmeans", help="clustering method (see `imgclust methods`)")
    cluster.add_argument("--backbone", default="efficientnet_lite0",
                         help="feature extractor (see `imgclust backbones`); default: efficientnet_lite0")
    cluster.add_argument("--weights", help="local .safetensors/.pth weights file for the backbone")
    cluster.add_argument("--out", type=Path, help="output folder (default: runs/<source>-<method>-k<K>)")
    cluster.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:N")
    cluster.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    cluster.add_argument("--precision", default="auto",
                         help="forward-pass precision of feature extraction: auto (float16 on a GPU, float32 on "
                              "a CPU), float32, bfloat16 (about 2x faster on CPUs with AMX: recent Intel Xeon), "
                              "float16")
    cluster.add_argument("--workers", type=int, default=None, help="image decoding processes")
    cluster.add_argument("--cache-dir", help="feature cache folder (default ~/.cache/imgclust/features)")
    cluster.add_argument("--shard-size", type=int, default=2048,
                         help="images per feature-cache shard: the unit a killed extraction resumes from, and "
                              "that torchrun processes share out (default 2048)")
    cluster.add_argument("--data-root", help="folder holding built-in dataset files")
    cluster.add_argument("--seed", type=int, default=0, help="random seed")
    cluster.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                         help="method option, repeatable (e.g. --set n_init=20)")
    cluster.add_argument("--resume", action="store_true", help="continue a killed training run in --out")
    cluster.add_argument("--plots", action="store_true", help="also write the report's figures as PNG files "
                                                              "(plots/ in the output folder)")
    cluster.add_argument("--no-report", action="store_true", help="do not write report.html")
    cluster.add_argument("-q", "--quiet", action="store_true", help="no progress bars, only the summary")
    cluster.set_defaults(func=cmd_cluster)

    export = sub.add_parser("export", help="one folder per cluster, with links to (or copies of) the images",
                            formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
                            description="Build DIR/cluster_00, DIR/cluster_01, … holding the images of each "
                                        "cluster of a run. Originals are never moved or overwritten; nothing is "
                                        "written outside DIR; re-running is safe (existing identical entries "
                                        "are kept, different files are reported, never overwritten).")
    export.add_argument("run_dir", type=Path, help="the --out folder of `imgclust cluster`")
    export.add_argument("--to", type=Path, required=True, metavar="DIR", help="destination folder")
    export.add_argument("--mode", choices=("symlink", "hardlink", "copy"), default="symlink",
                        help="symlink (default), hardlink (same file system) or copy")
    export.add_argument("--names", type=Path, metavar="NAMES.json",
                        help='folder name per cluster, e.g. {"0": "cats", "1": "cars"} (others: cluster_NN)')
    export.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    export.set_defaults(func=cmd_export)

    predict = sub.add_parser("predict", help="assign new images to the clusters of a run",
                             formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
                             description="Assign new images (a folder, or image files) to the clusters of a "
                                         "finished run, with the run's saved model.")
    predict.add_argument("run_dir", type=Path, help="the --out folder of `imgclust cluster`")
    predict.add_argument("images", nargs="+", help="a folder (searched recursively) or image files")
    predict.add_argument("--out", type=Path, metavar="FILE.csv",
                         help="write path,cluster,confidence,distance per image (default: print them)")
    predict.add_argument("--device", default=None, help="auto, cpu, cuda (default: as in the run)")
    predict.add_argument("--batch-size", type=int, default=None, help="images per forward pass")
    predict.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(func=cmd_predict)

    report = sub.add_parser("report", help="(re)write report.html of a run",
                            description="Write report.html (self-contained; opens from disk) for a run folder.")
    report.add_argument("run_dir", type=Path, help="the --out folder of `imgclust cluster`")
    report.add_argument("--plots", action="store_true", help="also write the figures as PNG files in plots/")
    report.add_argument("--map", dest="map_method", default="auto", choices=("auto", "tsne", "umap", "pca"),
                        help="layout of the 2-D map (auto = t-SNE)")
    report.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    report.set_defaults(func=cmd_report)

    for name, text in (("backbones", "list backbones"), ("methods", "list clustering methods"),
                       ("datasets", "list built-in datasets")):
        sub.add_parser(name, help=text).set_defaults(func=cmd_list)
    return parser


def _k_criteria() -> tuple[str, ...]:
    from .kselect import CRITERIA

    return CRITERIA


def _default_k_criterion() -> str:
    from .kselect import DEFAULT_CRITERION

    return DEFAULT_CRITERION


def _version() -> str:
    from . import __version__

    return __version__


def cmd_cluster(args: argparse.Namespace) -> int:
    from . import distributed

    # Under torchrun every rank extracts and trains; only rank 0 owns (locks and writes) the run folder.
    distributed.init_from_env()
    if distributed.is_distributed() and args.n_clusters is None:
        raise ImgclustError("estimating K is not supported under torchrun", "pass -k when launching with torchrun")
    if not distributed.is_main_process():
        return _cluster_worker_rank(args)
    return _cluster_main(args)


def _cluster_worker_rank(args: argparse.Namespace) -> int:
    """A non-zero torchrun rank: the same fit on its share of every batch; rank 0 writes all files."""
    if args.data_root:
        os.environ["IMGCLUST_DATA"] = args.data_root
    out = args.out or _default_out(args.source, args.method, args.n_clusters)
    _clusterer(args, out, progress=False).fit(os.path.expanduser(args.source))
    return 0


def _clusterer(args: argparse.Namespace, out: Path, progress: bool) -> Any:
    from . import ImageClusterer

    return ImageClusterer(
        n_clusters=args.n_clusters if args.n_clusters is not None else 2, method=args.method,
        backbone=args.backbone, weights=args.weights, device=args.device, batch_size=args.batch_size,
        num_workers=args.workers, cache_dir=args.cache_dir, shard_size=args.shard_size, random_state=args.seed,
        precision=args.precision,
        method_options=_method_options(args.options), run_dir=str(out), resume=args.resume, progress=progress)


def _cluster_main(args: argparse.Namespace) -> int:
    from ._io import RunLock
    from .report import write_run_outputs

    if args.data_root:
        os.environ["IMGCLUST_DATA"] = args.data_root
    out = args.out or _default_out(args.source, args.method, args.n_clusters)
    progress = not args.quiet
    if args.n_clusters is not None and (args.k_range or args.k_criterion):
        print("imgclust: note: -k is given, so K is not estimated (--k-range/--k-criterion ignored)", file=sys.stderr)
    started = time.perf_counter()
    selection = None
    report_paths: dict[str, Path] = {}
    with RunLock(out):
        clusterer = _clusterer(args, out, progress)
        source = os.path.expanduser(args.source)
        k_seconds = 0.0
        if args.n_clusters is None:
            from .kselect import DEFAULT_CRITERION, format_curve, select_k_for_source, write_k_selection

            k_started = time.perf_counter()
            selection, n_classes = select_k_for_source(clusterer, source, args.k_range,
                                                       args.k_criterion or DEFAULT_CRITERION, progress=progress)
            write_k_selection(out, selection, plot=True)
            clusterer.set_params(n_clusters=selection.k)
            k_seconds = time.perf_counter() - k_started
            if progress:
                note = f"\n  (the source's labels have {n_classes} classes; they were not used)" if n_classes else ""
                print(format_curve(selection) + note, flush=True)
        clusterer.fit(source)
        timings = {**clusterer.timings_}
        if selection is not None:
            # features were extracted (or read from the cache) while estimating K
            timings = {"estimate_k": k_seconds, **timings}
        timings["total"] = time.perf_counter() - started
        config = {k: v for k, v in vars(args).items() if k not in ("func",)}
        config["out"] = str(out)
        config["n_clusters"] = int(clusterer.n_clusters)
        config["k_estimated"] = selection is not None
        paths = write_run_outputs(out, clusterer, config, timings, source)
        clusterer.save(out)
        if not args.no_report:
            from .report.html import write_report

            report_started = time.perf_counter()
            feature_set = getattr(clusterer, "last_feature_set_", None)
            features = None if feature_set is None else feature_set.features
            report_paths = write_report(out, features=features, plots=args.plots, progress=progress,
                                        seed=args.seed)
            timings["report"] = time.perf_counter() - report_started
            timings["total"] = time.perf_counter() - started
    _print_summary(clusterer, out, timings, paths, selection, report_paths)
    return 0


def _print_summary(clusterer: Any, out: Path, timings: dict[str, float], paths: dict[str, Path],
                   selection: Any = None, report_paths: dict[str, Path] | None = None) -> None:
    import numpy as np

    valid = clusterer.labels_ >= 0
    sizes = np.bincount(clusterer.labels_[valid], minlength=clusterer.n_clusters)
    lines = [f"imgclust: {int(valid.sum())} images → {clusterer.n_clusters} clusters "
             f"({clusterer.method}, {clusterer.backbone}) in {timings['total']:.1f} s"]
    if selection is not None:
        from .kselect import neighbouring_levels

        lines.append(f"  K = {selection.k} estimated by {selection.criterion} over K = {selection.k_values[0]}.."
                     f"{selection.k_values[-1]} (curve: {out / 'k_selection.png'}); force it with -k")
        coarser, finer = neighbouring_levels(selection)
        levels = [f"{k} ({what})" for k, what in ((coarser, "coarser"), (finer, "finer")) if k is not None]
        if levels:
            lines.append(f"  next levels of structure: -k {' or -k '.join(levels)}")
    if clusterer.skipped_:
        lines.append(f"  skipped {len(clusterer.skipped_)} unreadable file(s), listed in {paths['run']}")
    lines.append("  cluster sizes: " + " ".join(f"{i}:{n}" for i, n in enumerate(sizes)))
    conf = clusterer.confidence_[valid]
    if conf.size:
        lines.append(f"  mean confidence {float(np.nanmean(conf)):.2f}")
    if clusterer.metrics_ is not None:
        m = clusterer.metrics_
        lines.append(f"  ACC {m['acc']:.4f}  NMI {m['nmi']:.4f}  ARI {m['ari']:.4f}  "
                     f"(against the {m['n_classes']} labels that came with the data)")
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items() if k != "total")
    lines.append(f"  time: {stages}")
    lines.append(f"  results: {out}/ (assignments.csv, run.json"
                 + (", metrics.json" if "metrics" in paths else "") + ", model.json)")
    if report_paths and "report" in report_paths:
        lines.append(f"  report:  {report_paths['report']}   (open it in a browser)")
        if len(report_paths) > 1:
            lines.append(f"  plots:   {out / 'plots'}/")
        lines.append(f"  next:    imgclust export {out} --to DIR     |   imgclust predict {out} NEW_IMAGES")
    print("\n".join(lines))


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_clusters, format_result

    result = export_clusters(args.run_dir, args.to, mode=args.mode, names=args.names, progress=not args.quiet)
    print(format_result(result, args.to, args.mode))
    return 0 if result.ok else 1


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import format_prediction, predict_images, write_prediction

    prediction = predict_images(args.run_dir, args.images, device=args.device, batch_size=args.batch_size,
                                progress=not args.quiet)
    if args.out:
        write_prediction(args.out, prediction)
        shown = format_prediction(prediction, limit=0 if args.quiet else 10, more_hint=False)
        print(f"{shown}\nwritten {len(prediction.items)} rows to {args.out}")
    else:
        print(format_prediction(prediction, limit=len(prediction.items)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ._io import RunLock
    from .report.html import write_report

    # Never rewrite a report while a run writes the same folder (a missing folder: write_report says so).
    with RunLock(args.run_dir) if Path(args.run_dir).is_dir() else contextlib.nullcontext():
        paths = write_report(args.run_dir, plots=args.plots, progress=not args.quiet, map_method=args.map_method)
    print(f"report: {paths['report']}" + (f"\nplots:  {args.run_dir / 'plots'}/" if args.plots else ""))
    return 0


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
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # imgclust's own progress notes; other libraries (faiss's loader, matplotlib's font cache) stay quiet
    logging.getLogger("imgclust").setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    try:
        return args.func(args)
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
