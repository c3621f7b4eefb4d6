"""What ``imgclust cluster`` prints: the K curve and the one-screen summary of a run (text only)."""

from __future__ import annotations

import textwrap
from typing import Any

import numpy as np

from .kselect import KSelection, neighbouring_levels, resolution_range_text, steps_in_view
from .methods import DEFAULT_METHOD, Derived, available_methods, get_method
from .methods.umap_pacmap_kmeans import KMEANS_KEPT, agreement_reading
from .runfolder import DUPLICATES, K_SELECTION_PNG, OUTLIERS


def _partitions_text(selection: KSelection) -> str:
    """" of UMAP-layout partitions of the whitened features" and the like: what the criterion scored."""
    if selection.criterion in ("eigengap", "stability"):
        return ""  # these score the graph, or k-means of their own
    layout = "UMAP-layout" if selection.settings.get("partitions") == "umap" else "k-means"
    features = selection.settings.get("features")
    return f" of {layout} partitions" + (f" of the {features} features" if features else "")


def format_curve(selection: KSelection, width: int = 30) -> str:
    """The curve as a few lines of text for the terminal (a bar per K, the chosen K marked)."""
    scores = np.asarray(selection.scores, dtype=float)
    finite = scores[np.isfinite(scores)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    span = (high - low) or 1.0
    lines = [f"K estimated: {selection.k}  (criterion: {selection.criterion}{_partitions_text(selection)}, "
             f"higher is better; {selection.n_samples} images, {selection.seconds:.1f} s)"]
    for k, s in zip(selection.k_values, scores):
        bar = "" if not np.isfinite(s) else "█" * max(1, int(round((s - low) / span * width)))
        mark = "  ← chosen" if k == selection.k else ""
        lines.append(f"  K={k:>3}  {s:>9.4f}  {bar}{mark}")
    steps = steps_in_view([step.to_dict() for step in selection.profile])
    if steps:
        resolution = selection.settings.get("resolution")
        lines.append(f"  modularity by resolution γ (the estimate uses γ = {resolution}; lower γ = coarser; "
                     "a K that holds over a wide range of γ is a stable level):")
        # No-break spaces inside an item keep "K=… for γ …" on one line.
        items = [f"K={step['k']} for γ {resolution_range_text(step)}".replace(" ", "\u00a0") for step in steps]
        lines += textwrap.wrap(" · ".join(items),
                               width=100, initial_indent="    ", subsequent_indent="    ", break_on_hyphens=False)
    return "\n".join(lines)




def format_summary(result: Any, with_curve: bool = True) -> str:
    """The one-screen summary of a finished :class:`~imgclust.run.RunResult`."""
    clusterer, out, timings, paths = result.clusterer, result.out, result.timings, result.paths
    valid = clusterer.labels_ >= 0
    k = clusterer.n_clusters_
    sizes = np.bincount(clusterer.labels_[valid], minlength=k)
    names = clusterer.cluster_names_
    lines = []
    selection = clusterer.k_selection_
    if selection is not None and with_curve:
        lines.append(format_curve(selection))
    lines.append(f"imgclust: {int(valid.sum())} images → {k} clusters "
                 f"({clusterer.method}, {clusterer.backbone}) in {timings['total']:.1f} s")
    if selection is not None:
        lines.append(f"  K = {selection.k} estimated by {selection.criterion} over K = {selection.k_values[0]}.."
                     f"{selection.k_values[-1]} (curve: {out / K_SELECTION_PNG}); force it with -k")
        coarser, finer = neighbouring_levels(selection)
        levels = [f"{level} ({what})" for level, what in ((coarser, "coarser"), (finer, "finer")) if level is not None]
        if levels:
            lines.append(f"  next levels of structure: -k {' or -k '.join(levels)}")
    if clusterer.skipped_:
        lines.append(f"  skipped {len(clusterer.skipped_)} unreadable file(s), listed in {paths['run']}")
    lines.append("  cluster sizes: " + " ".join(
        f"{i}{'(' + names[i] + ')' if names else ''}:{n}" for i, n in enumerate(sizes)))
    conf = clusterer.confidence_[valid]
    if conf.size:
        lines.append(f"  mean confidence {float(np.nanmean(conf)):.2f}")
    quality = clusterer.quality_
    if quality is not None:
        lines.append(f"  label-free quality score {quality['kappa']:.3f} "
                     "(how well a linear classifier re-learns the clusters, chance-corrected: 1 = perfectly)")
    info = clusterer.fit_info_ or {}
    if quality is not None and info.get("score_note"):
        lines.append(f"    note: {info['score_note']}")
    if info.get("layout_agreement") is not None:  # umap-pacmap-kmeans
        lines.append(f"  the two layouts agree {info['layout_agreement']:.2f} (adjusted Rand index, 1 = the same "
                     "clusters; it rises with ACC: Spearman 0.76 on the development runs, 0.90 on the balanced ones)")
        lines.append(f"    {agreement_reading(info['layout_agreement'])}")
        if info.get("partition_from") == "k-means":
            lines.append(f"    {KMEANS_KEPT}")
    if info.get("fallback"):
        lines.append(f"  fell back to {info['fallback']}")
    for candidate in info.get("candidates") or []:  # --method auto
        lines.append(f"    candidate {candidate['method']:<8} score {candidate['score']:.3f}  "
                     f"fit {candidate['fit_seconds']:.0f} s" + ("   ← kept" if candidate['method'] == info.get("winner")
                                                               else ""))
    found = getattr(result, "duplicates", None)
    if found is not None and (found.exact or found.near or found.outliers):
        lines.append(f"  {len(found.exact)} group(s) of identical files, {len(found.near)} of near-duplicates, "
                     f"{len(found.outliers)} outlier(s): {DUPLICATES}, {OUTLIERS} and the report")
    if clusterer.metrics_ is not None:
        m = clusterer.metrics_
        lines.append(f"  ACC {m['acc']:.4f}  NMI {m['nmi']:.4f}  ARI {m['ari']:.4f}  "
                     f"(against the {m['n_classes']} labels that came with the data)")
    stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in timings.items() if stage != "total")
    lines.append(f"  time: {stages}")
    written = [p.name for key, p in paths.items() if key in ("assignments", "run", "metrics", "duplicates",
                                                            "outliers")]
    lines.append(f"  results: {out}/ ({', '.join(written + ['model.json'])})")
    if "report" in paths:
        lines.append(f"  report:  {paths['report']}   (open it in a browser)")
        if any(key.startswith("plots/") for key in paths):
            lines.append(f"  plots:   {out / 'plots'}/")
        lines.append(f"  next:    imgclust export {out} --to DIR     |   imgclust predict {out} NEW_IMAGES")
    if clusterer.method == DEFAULT_METHOD:  # what the quality table and the development sets say to try next
        if clusterer.backbone == "efficientnet_lite0":
            lines.append(f"  better:  -k {k} --backbone efficientnet_lite0,efficientnet_lite2")
            lines.append("           (a second backbone's features as well: +0.01 to +0.15 ACC on the 11 CIFAR "
                         "development sets but -0.07 to 0 on the 10 Fashion-MNIST ones, +0.02 to +0.06 on 5 of "
                         "BENCHMARKS.md's 6 quality-table sets and -0.065 on Fashion-MNIST, -0.004 to +0.07 on 4 "
                         "held-out sets, measured before the whitening; one more extraction)")
        if info.get("partition_from") != "k-means":  # else k-means' partition is what this run already kept
            lines.append(f"  or:      -k {k} --method kmeans")
            lines.append("           (seconds, on the same whitened features: 0.834 against the default's 0.838 on "
                         "the 20 development sets; ahead on CIFAR-10's 3 and 5 classes by 0.004-0.013, level on its "
                         "10k split and 0.007 behind on the full one, where the default itself keeps k-means' "
                         "partition, behind on digit images by 0.11-0.12)")
    return "\n".join(lines)


def describe_methods() -> str:
    """``imgclust methods``: every method with its summary and its options (``--set KEY=VALUE``) and defaults."""
    lines = []
    for name in available_methods():
        method = get_method(name)
        lines.append(f"{name}{' (the default)' if name == DEFAULT_METHOD else ''}: {method.summary}")
        options = method.options.options.values() if method.options is not None else []
        for option in options:
            default = option.default if not isinstance(option.default, Derived) else (option.default.doc or "derived")
            help_text = f"  {option.help}" if option.help else ""
            lines.append(f"    --set {option.key}={default}{help_text}")
    lines.append("(a key may be written without its namespace when the name is unique, e.g. --set epochs=20)")
    return "\n".join(lines)
