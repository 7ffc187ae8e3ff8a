"""Figures for the run folder (PNG) and the report page (inline SVG), from plain report data.

Every function takes data and returns a matplotlib ``Figure``; ``svg`` turns one into an inline
``<svg>`` element with no external references, ``save_png`` into a file.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.backends import REGISTRY

# every backend's colour is its own (BackendInfo.colour); the PyTorch baseline is not a backend
COLOURS = {"pytorch": "#444444", **{name: info.colour for name, info in REGISTRY.items()}}
MARKERS = {"fp32": "o", "fp16": "s", "int8": "^"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "edgeship"  # stable element ids: the same data gives the same page
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, selectable, searchable
    import matplotlib.pyplot as plt

    return plt


def _plain_log_ticks(axis: Any) -> None:
    """Log-scale ticks as plain numbers (0.02, 0.1), not 2×10⁻²."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    # minor ticks labelled at 2× and 5× only, so labels do not run into each other
    axis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:.0e}"[0] in "25" else ""))


def svg(fig: Any) -> str:
    """The figure as an inline ``<svg>`` element (no XML prolog, no date), and close it."""
    plt = _pyplot()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def save_png(fig: Any, path: Path) -> None:
    plt = _pyplot()
    fig.savefig(path, dpi=110)
    plt.close(fig)


MEASURE_AXES = {"top1": "top-1 (%)", "cosine": "output cosine with the teacher (×100)"}


def sensitivity_figure(document: Mapping[str, Any], max_drop: float) -> Any:
    """Validation score (top-1, or output cosine with the unpruned model) of each layer group pruned alone, per ratio
    (Torch-Pruning style sensitivity curves)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for group, curve in document["curves"].items():
        ratios = [float(r) for r in curve]
        ax.plot([100 * r for r in ratios], [100 * a for a in curve.values()], marker="o", label=group)
    base = 100 * document["base_accuracy"]
    ax.axhline(base, color="black", linewidth=1, label="unpruned")
    ax.axhline(base - max_drop, color="red", linestyle="--", linewidth=1, label=f"max_drop ({max_drop:g} pt)")
    measure = document.get("measure", "top1")
    ax.set(xlabel="channels pruned in the group alone (%)", ylabel=f"validation {MEASURE_AXES.get(measure, measure)}",
           title=f"Pruning sensitivity per layer group ({document['val_images']} validation "
                 f"{'images' if measure == 'top1' else 'samples'})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def training_figure(histories: Mapping[str, Mapping[str, Sequence[float]] | None], scores: Mapping[str, Any],
                    measure: str = "top1") -> Any:
    """Training loss and the validation score (top-1, or fidelity to the teacher) per epoch of each run (distilled,
    hard-label fine-tune)."""
    plt = _pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, history in histories.items():
        if not history:
            continue
        epochs = list(range(1, len(history["val_accuracy"]) + 1))
        loss_ax.plot(epochs, history["train_loss"], marker="o", label=name)
        acc_ax.plot(epochs, [100 * a for a in history["val_accuracy"]], marker="o", label=name)
    acc_ax.axhline(100 * scores["teacher"][f"val_{measure}"], color="black", linewidth=1, label="teacher")
    acc_ax.axhline(100 * scores["student_before"][f"val_{measure}"], color="grey", linestyle="--", linewidth=1, label="student before")
    axis = MEASURE_AXES.get(measure, measure)
    loss_ax.set(xlabel="epoch", ylabel="training loss (each run's own objective)", title="Training loss")
    acc_ax.set(xlabel="epoch", ylabel=f"validation {axis}", title=f"Validation {axis.split(' (')[0]} (held out)")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


def ablation_figure(scores: Mapping[str, Any], measure: str = "top1", split: str = "eval") -> Any:
    """Test score (top-1, or fidelity to the teacher) of the teacher, the pruned student before recovery, the hard-label
    fine-tune and the distilled student; the validation score in a run scored on validation (``split: val``)."""
    plt = _pyplot()
    names = [("teacher", "teacher"), ("student_before", "pruned, before"), ("hard_label_finetune", "hard-label fine-tune"),
             ("distilled", "distilled")]
    shown = [(label, 100 * scores[key][f"{split}_{measure}"]) for key, label in names if scores.get(key)]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bars = ax.barh([label for label, _ in shown], [value for _, value in shown], color=["#444", "#bbb", "#8fb3d9", "#1f77b4"][: len(shown)])
    for bar, (_, value) in zip(bars, shown, strict=True):
        ax.text(value, bar.get_y() + bar.get_height() / 2, f" {value:.2f}{'%' if measure == 'top1' else ''}", va="center", fontsize=9)
    low = min(value for _, value in shown)
    ax.set(xlim=(max(0.0, low - 3), 100), xlabel=f"{'test' if split == 'eval' else 'validation'} {MEASURE_AXES.get(measure, measure)}",
           title="Distillation ablation" if measure == "top1" else "Distillation")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def footprint_figure(prune: Mapping[str, Any]) -> Any:
    """MACs and parameters before and after pruning."""
    plt = _pyplot()
    before, after = prune["before"], prune["after"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, key, unit, scale in ((axes[0], "macs", "MMACs", 1e6), (axes[1], "parameters", "thousand parameters", 1e3)):
        values = [before[key] / scale, after[key] / scale]
        bars = ax.bar(["before", "after"], values, color=["#bbb", "#1f77b4"])
        for bar, value in zip(bars, values, strict=True):
            ax.text(bar.get_x() + bar.get_width() / 2, value, f"{value:.1f}", ha="center", va="bottom", fontsize=9)
        ax.set(ylabel=unit, title=f"{key.capitalize()}: {after[key] / before[key]:.1%} kept")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def pareto_figure(points: Sequence[Mapping[str, Any]], *, ylabel: str = "top-1 (%)", scale: float = 100.0) -> Any:
    """Accuracy (``point["accuracy"]``: top-1, or agreement with FP32 on unlabelled data) against p50 latency (with its
    95% interval) for every measured engine and the baseline; the Pareto front
    (no other point both faster and more accurate) joined by a line. ``scale``: 100 for fractions shown in percent, 1 for a
    generic model's output cosine."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for point in points:
        low, high = point["p50_ci"]
        ax.errorbar(point["p50_ms"], scale * point["accuracy"], xerr=[[point["p50_ms"] - low], [high - point["p50_ms"]]],
                    marker=MARKERS.get(point["precision"], "*"), markersize=9 if point["backend"] != "pytorch" else 12,
                    color=COLOURS.get(point["backend"], "black"), linestyle="none", capsize=3)
        ax.annotate(point["name"], (point["p50_ms"], scale * point["accuracy"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    front = pareto_front(points)
    if len(front) > 1:
        ax.plot([p["p50_ms"] for p in front], [scale * p["accuracy"] for p in front], color="black", linewidth=1, alpha=0.5,
                linestyle="--", label="Pareto front")
        ax.legend(fontsize=8, loc="best")
    ax.set(xscale="log", xlabel="p50 latency per call (ms, log scale; bars: 95% interval)", ylabel=ylabel,
           title="Accuracy against latency" if ylabel.startswith("top-1 (") else
           "Output fidelity against latency" if scale == 1 else "Agreement with FP32 against latency")
    _plain_log_ticks(ax.xaxis)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def pareto_front(points: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The points no other point beats on both latency (lower) and accuracy (higher), fastest first."""
    front, best = [], -1.0
    for point in sorted(points, key=lambda p: (p["p50_ms"], -p["accuracy"])):
        if point["accuracy"] > best:
            front.append(point)
            best = point["accuracy"]
    return front


def latency_figure(rows: Sequence[Mapping[str, Any]]) -> Any:
    """One violin per engine from its kept distribution (0th..99th percentile), with p50 and p99 marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(rows) + 1.5))
    grid = np.linspace(0, 99, 991)
    data = []
    for row in rows:
        q = np.asarray(row["latency"]["quantiles_ms"], dtype=float)
        data.append(np.interp(grid, np.arange(len(q)), q))  # an equal-weight sample of the distribution up to p99
    parts = ax.violinplot(data, orientation="horizontal", showextrema=False, widths=0.8)
    for body, row in zip(parts["bodies"], rows, strict=True):
        body.set_facecolor(COLOURS.get(row["backend"], "grey"))
        body.set_alpha(0.6)
    for y, row in enumerate(rows, 1):
        lat = row["latency"]
        ax.plot([lat["p50_ms"]], [y], marker="|", color="black", markersize=14)
        ax.plot([lat["p99_ms"]], [y], marker="|", color="red", markersize=14)
    ax.set_yticks(range(1, len(rows) + 1), [row["name"] for row in rows])
    ax.set(xscale="log", xlabel="latency per call (ms, log scale), up to p99; black: p50, red: p99",
           title=f"Latency distribution per engine (batch {rows[0]['latency']['batch_size'] if rows else '?'})")
    ax.invert_yaxis()
    _plain_log_ticks(ax.xaxis)
    ax.grid(axis="x", alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def throughput_figure(rows: Sequence[Mapping[str, Any]]) -> Any:
    """Samples per second at each measured batch size, per engine."""
    plt = _pyplot()
    batches = sorted({int(b) for row in rows for b, t in row["throughput"].items() if t.get("status") == "ok"})
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) * max(len(batches), 1) / 2 + 1.8))
    height = 0.8 / max(len(batches), 1)
    for i, batch in enumerate(batches):
        values = [row["throughput"].get(str(batch), {}).get("samples_per_second", 0.0) for row in rows]
        ax.barh(np.arange(len(rows)) + i * height, values, height=height, label=f"batch {batch}")
    ax.set_yticks(np.arange(len(rows)) + height * (len(batches) - 1) / 2, [row["name"] for row in rows])
    ax.set(xlabel="samples per second", title="Throughput")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def peak_figure(points: Sequence[Mapping[str, Any]]) -> Any:
    """Each engine's achieved multiply-accumulate rate as a fraction of this machine's peak at its precision."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(points) + 1.4))
    y = np.arange(len(points))
    ax.barh(y, [100 * p["fraction"] for p in points], color=[COLOURS.get(p["backend"], "grey") for p in points])
    ax.set_yticks(y, [p["name"] for p in points])
    ax.set(xlabel="achieved MAC rate, % of the machine's GEMM peak at the engine's precision",
           title="Distance from the machine's limit")
    ax.invert_yaxis()
    _plain_log_ticks(ax.xaxis)
    ax.grid(axis="x", alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def divergence_figure(series: Mapping[str, Sequence[Mapping[str, Any]]]) -> Any:
    """Accumulated SQNR against depth, one panel per backend, one line per engine: where along the graph each engine
    leaves the FP32 model. ``series``: engine name → its rows (``depth``, ``sqnr_db``; None is exact and not drawn)."""
    plt = _pyplot()
    backends = sorted({name.split("/")[0] for name in series})
    fig, axes = plt.subplots(1, len(backends), figsize=(4.2 * len(backends) + 0.8, 3.4), sharey=True, squeeze=False)
    for ax, backend in zip(axes[0], backends, strict=True):
        predicted = any(name.split("/")[0] == backend and "predicted" in name for name in series)
        for name, rows in series.items():
            if name.split("/")[0] != backend:
                continue
            points = [(r["depth"], r["sqnr_db"]) for r in rows if r["sqnr_db"] is not None]
            if not points:
                continue
            precision = name.split("/")[1].split(" ")[0]
            ax.plot(*zip(*points, strict=True), marker=MARKERS.get(precision, "o"), markersize=3, linewidth=1.2,
                    color=COLOURS.get(backend, "grey"), alpha=1.0 if precision == "int8" else 0.55, label=precision)
        ax.set(title=backend + (" (predicted on ONNX Runtime)" if predicted else ""), xlabel="depth (node index in the FP32 ONNX)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("accumulated SQNR vs FP32 (dB)")
    fig.tight_layout()
    return fig


def float_search_figure(searches: Mapping[str, Mapping[str, Any]]) -> Any:
    """``keep_float: auto``: above, each candidate's agreement (with its 95% interval where recorded; or output cosine)
    with FP32 on validation samples, the target as a line; below, its in-process p50; both against the number of ranked
    layers kept in float, the choice circled. Two panels, so that neither figure reads off the other's axis."""
    plt = _pyplot()
    fig, (ax, low) = plt.subplots(2, 1, sharex=True, figsize=(8, 5.0), gridspec_kw={"height_ratios": [2, 1]})
    cosine = any(search.get("measure") == "cosine" for search in searches.values())
    for name, search in searches.items():
        colour = COLOURS.get(name.split("/")[0], "grey")
        measure, scale = ("cosine", 1.0) if search.get("measure") == "cosine" else ("agreement", 100.0)
        points = sorted(search["candidates"], key=lambda c: c["float_layers"])
        counts = [c["float_layers"] for c in points]
        ax.plot(counts, [scale * c[measure] for c in points], marker="o", color=colour, label=name)
        bounded = [c for c in points if measure == "agreement" and c.get("agreement_ci95")]
        if bounded:  # the validation data's own noise: each candidate's 95% interval
            ax.errorbar([c["float_layers"] for c in bounded], [scale * c[measure] for c in bounded],
                        yerr=[[scale * (c[measure] - c["agreement_ci95"][0]) for c in bounded],
                              [scale * (c["agreement_ci95"][1] - c[measure]) for c in bounded]],
                        fmt="none", ecolor=colour, alpha=0.35, capsize=2)
        together = search.get("together")
        p50 = "slowdown" if together else "p50_ms"  # with a latency budget, the ratio of the rounds that judged it
        low.plot(counts, [c[p50] for c in points], marker="s", color=colour, alpha=0.8)
        if together:
            low.axhline(together["max_slowdown"], color=colour, linestyle=":", linewidth=1)
        chosen = next(c for c in points if c["float_layers"] == search["chosen"])
        ax.scatter([chosen["float_layers"]], [scale * chosen[measure]], s=160, facecolors="none", edgecolors=colour, linewidths=2)
        low.scatter([chosen["float_layers"]], [chosen[p50]], s=160, facecolors="none", edgecolors=colour, linewidths=2)
        limit = search["target"].get("min_cosine" if measure == "cosine" else "min_agreement")
        if limit is not None:
            ax.axhline(scale * limit, color=colour, linestyle=":", linewidth=1)
    ylabel = "output cosine with FP32,\nvalidation" if cosine else "top-1 agreement with\nFP32, validation (%)"
    ax.set(ylabel=ylabel, title="keep_float: auto — candidates searched")
    budgeted = [bool(search.get("together")) for search in searches.values()]
    if all(budgeted):
        ylabel = "p50 ÷ fully quantized,\nround by round"
    else:
        ylabel = "p50: ms, or ÷ fully\nquantized where budgeted" if any(budgeted) else "p50 in the\nsearch (ms)"
    low.set(xlabel="ranked layers kept in float", ylabel=ylabel)
    for axis in (ax, low):
        axis.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def sweep_figure(points: Sequence[Mapping[str, Any]], backend: str, *, ylabel: str, scale: float) -> Any:
    """One backend's engines from every trial of a sweep: accuracy against p50, marker area by engine size, marker by
    precision; the Pareto-optimal ones (``point["optimal"]``) edged in black and labelled with their trial, the
    recipe's own (``point["recipe"]``) labelled "recipe"."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    largest = max((p["size_mib"] for p in points), default=1.0) or 1.0
    for precision in sorted({p["precision"] for p in points}):
        chosen = [p for p in points if p["precision"] == precision]
        ax.scatter([p["p50_ms"] for p in chosen], [scale * p["accuracy"] for p in chosen],
                   s=[30 + 270 * p["size_mib"] / largest for p in chosen], marker=MARKERS.get(precision, "*"),
                   color=COLOURS.get(backend, "black"), alpha=0.6, label=precision,
                   edgecolors=["black" if p["optimal"] else COLOURS.get(backend, "black") for p in chosen],
                   linewidths=[1.6 if p["optimal"] else 0.0 for p in chosen])
    for point in points:
        if point["optimal"] or point["recipe"]:
            label = point["trial"] + (" (recipe)" if point["recipe"] else "")
            ax.annotate(label, (point["p50_ms"], scale * point["accuracy"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set(xscale="log", xlabel="p50 latency per call (ms, log scale)", ylabel=ylabel,
           title=f"{backend}: every trial's engines (area: engine size; black edge: Pareto-optimal)")
    _plain_log_ticks(ax.xaxis)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="precision", title_fontsize=8, markerscale=0.6)
    fig.tight_layout()
    return fig


def together_figure(points: Sequence[Mapping[str, Any]], backend: str, *, ylabel: str, scale: float) -> Any:
    """One backend's front engines and contenders: accuracy against p50, each drawn where its own trial timed it (hollow)
    and where the engines timed together put it (filled, with the range of its round p50s), joined by an arrow, dashed
    for a contender from off the front (``point["on_front"]`` false); an engine no faster than a more accurate one, timed
    together (``point["beaten"]``), in grey."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    colour = COLOURS.get(backend, "black")
    for point in points:
        y = scale * point["accuracy"]
        tint = "#999999" if point["beaten"] else colour
        marker = MARKERS.get(point["precision"], "*")
        ax.scatter([point["trial_p50_ms"]], [y], marker=marker, s=70, facecolors="none", edgecolors=tint, linewidths=1.4)
        ax.errorbar([point["p50_ms"]], [y], xerr=[[point["p50_ms"] - point["low_ms"]], [point["high_ms"] - point["p50_ms"]]],
                    fmt=marker, markersize=8, color=tint, ecolor=tint, capsize=3)
        ax.annotate("", xy=(point["p50_ms"], y), xytext=(point["trial_p50_ms"], y),
                    arrowprops={"arrowstyle": "->", "color": tint, "alpha": 0.6, "shrinkA": 5, "shrinkB": 6,
                                "linestyle": "-" if point.get("on_front", True) else "--"})
        ax.annotate(point["label"], (point["p50_ms"], y), textcoords="offset points", xytext=(6, 5), fontsize=8, color=tint)
    ax.set(xscale="log", xlabel="p50 latency per call (ms, log scale)", ylabel=ylabel,
           title=f"{backend}: the front and its contenders, trial p50 (hollow) → timed together (filled)")
    _plain_log_ticks(ax.xaxis)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig
