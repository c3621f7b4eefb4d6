"""Command line: ``imgclust cluster SOURCE -k K`` and friends. Thin: all work happens in the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from . import distributed
from ._version import __version__
from ._io import RunLock
from .backbones import POOLINGS, available_backbones
from .data import BUILTIN_DATASETS, DEFAULT_MAX_PIXELS
from .errors import ImgclustError
from .export import export_clusters, format_result
from .features.engines import ENGINES
from .features.whitening import WHITENINGS
from .kselect import CRITERIA, DEFAULT_CRITERION
from .methods import DEFAULT_METHOD
from .predict import format_prediction, predict_images, write_prediction
from .report.html import write_report
from .run import run_cluster
from .runfolder import PLOTS, RunFolder, check_output_file
from .terminal import describe_methods, format_summary

EXAMPLES = """\
worked example (your own photos, number of groups unknown):
  imgclust cluster ~/photos --out runs/photos               # 1. estimates K, clusters, writes a report
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
  imgclust export runs/photos --to sorted --names auto      # folders named after the clusters (00_mammal, …)
  imgclust export runs/photos --to sorted --names names.json --mode copy   # names.json: {"0": "cats", "1": "cars"}
  imgclust report runs/photos --plots                       # rebuild report.html (+ plots/*.png)
outputs (in --out): report.html, assignments.csv, metrics.json (when labels exist), run.json,
  k_selection.json + k_selection.png (when K was estimated), duplicates.csv + outliers.csv (images),
  model.json + model.safetensors
"""


def parse_option_value(text: str) -> Any:
    """A ``--set KEY=VALUE`` value: ``5`` -> 5, ``true`` -> True, ``bf16`` -> "bf16" (read as JSON, else kept as
    a string: the shell has already removed any quotes)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def method_options(pairs: Sequence[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ImgclustError(f"--set expects KEY=VALUE, got {pair!r}", "write e.g. --set n_init=20")
        key, value = pair.split("=", 1)
        options[key.strip()] = parse_option_value(value)
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgclust", description="Deep image clustering.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    parser.add_argument("--version", action="version", version=f"imgclust {__version__}")
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
                         help="range searched when -k is not given (default 2 up to N/40 images, at least 30, "
                              "at most 200); the chosen K, its curve and the criterion are printed and saved in "
                              "k_selection.json/.png")
    cluster.add_argument("--k-criterion", default=None, choices=CRITERIA,
                         help=f"criterion for estimating K (default: {DEFAULT_CRITERION})")
    cluster.add_argument("--method", default=DEFAULT_METHOD,
                         help=f"clustering method (see `imgclust methods`); default: {DEFAULT_METHOD}")
    cluster.add_argument("--backbone", default="efficientnet_lite0",
                         help="feature extractor (see `imgclust backbones`); default: efficientnet_lite0")
    cluster.add_argument("--weights", help="local .safetensors/.pth weights file for the backbone")
    cluster.add_argument("--out", type=Path, help="output folder (default: runs/<source>-<method>-k<K>)")
    cluster.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:N")
    cluster.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    cluster.add_argument("--precision", default="auto",
                         help="forward-pass precision of feature extraction: auto (float16 on a GPU, float32 on "
                              "a CPU), float32, bfloat16 (1.7x faster extraction on CPUs with AMX, e.g. recent "
                              "Intel Xeon), float16")
    cluster.add_argument("--engine", default="auto", choices=ENGINES,
                         help="inference engine of feature extraction: auto (on a CPU the fastest installed engine "
                              "that gives PyTorch's float32 features, checked once per backbone; PyTorch on a GPU), "
                              "torch, onnxruntime, openvino")
    cluster.add_argument("--pooling", default="auto", choices=POOLINGS,
                         help="how EfficientNet-Lite pools its last feature map: auto (= gem, generalised-mean "
                              "pooling; timm models keep their own), gem, or avg (global average: the features of "
                              "runs made before GeM became the default)")
    cluster.add_argument("--whitening", default="auto", choices=WHITENINGS,
                         help="auto (= augment for kmeans and the layout methods, where it was measured to help; "
                              "none for turtle and for icbpl, secu and auto, which train on views of their own), "
                              "augment (whiten the features against what crops, flips and colour changes move: "
                              "4 views of up to 1,000 images are extracted for it, once per image set), or none")
    cluster.add_argument("--workers", type=int, default=None, help="image decoding processes "
                         "(default: on a CPU, one thread per core between forward passes; on a GPU, one per spare core)")
    cluster.add_argument("--cache-dir", help="feature cache folder (default ~/.cache/imgclust/features)")
    cluster.add_argument("--shard-size", type=int, default=2048,
                         help="images per feature-cache shard: the unit a killed extraction resumes from, and "
                              "that torchrun processes share out (default 2048)")
    cluster.add_argument("--data-root", help="folder holding built-in dataset files")
    cluster.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                         help="image files declaring more pixels are skipped as bad: a guard against "
                              f"decompression bombs (default {DEFAULT_MAX_PIXELS:,}, Pillow's limit)")
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
    export.add_argument("--names", metavar="auto|NAMES.json",
                        help='folder name per cluster: "auto" = the run\'s cluster names (00_mammal, 01_truck, …), '
                             'or a JSON file, e.g. {"0": "cats", "1": "cars"} (others: cluster_NN)')
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


def cmd_cluster(args: argparse.Namespace) -> int:
    # Under torchrun every rank extracts and trains; only rank 0 owns (locks and writes) the run folder.
    distributed.init_from_env()
    if distributed.is_distributed() and args.n_clusters is None:
        raise ImgclustError("estimating K is not supported under torchrun", "pass -k when launching with torchrun")
    if args.n_clusters is not None and (args.k_range or args.k_criterion):
        print("imgclust: note: -k is given, so K is not estimated (--k-range/--k-criterion ignored)", file=sys.stderr)
    result = run_cluster(
        args.source, args.out, n_clusters="auto" if args.n_clusters is None else args.n_clusters,
        method=args.method, method_options=method_options(args.options), backbone=args.backbone,
        weights=args.weights, device=args.device, precision=args.precision, batch_size=args.batch_size,
        num_workers=args.workers, cache_dir=args.cache_dir, shard_size=args.shard_size, seed=args.seed,
        k_range=args.k_range, k_criterion=args.k_criterion, data_root=args.data_root, resume=args.resume,
        max_pixels=args.max_pixels, engine=args.engine, pooling=args.pooling,
        whitening=args.whitening,
        report=not args.no_report, plots=args.plots, progress=not args.quiet,
        command={key: value for key, value in vars(args).items() if key != "func"})
    if distributed.is_main_process():
        print(format_summary(result, with_curve=not args.quiet))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    result = export_clusters(args.run_dir, args.to, mode=args.mode, names=args.names, progress=not args.quiet)
    print(format_result(result, args.to, args.mode))
    return 0 if result.ok else 1


def cmd_predict(args: argparse.Namespace) -> int:
    if args.out:
        check_output_file(args.out, "--out")
    if args.batch_size is not None and args.batch_size < 1:
        raise ImgclustError(f"--batch-size must be ≥ 1, got {args.batch_size}", "pass e.g. --batch-size 64")
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
    folder = RunFolder(args.run_dir).require()
    # Never rewrite a report while a run writes the same folder.
    with RunLock(folder.path, remove_when_done=True):
        paths = write_report(folder.path, plots=args.plots, progress=not args.quiet, map_method=args.map_method)
    print(f"report: {paths['report']}" + (f"\nplots:  {folder / PLOTS}/" if args.plots else ""))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.command == "backbones":
        print("\n".join(available_backbones()))
        print("(any timm model name also works, with --weights FILE when offline)")
    elif args.command == "methods":
        print(describe_methods())
    else:
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
