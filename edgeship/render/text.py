"""Numbers as people read them, shared by the terminal table and the report page."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from edgeship.data import substitution_note
from edgeship.qualification import EngineRow, Report


def size(value: int | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1024:.0f} KiB" if value < 1024**2 else f"{value / 1024**2:.1f} MiB"


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def change_points(drop: float | None) -> str:
    """A top-1 drop (points lost, as the report stores it) shown as the change it is: a 0.5-point loss is "-0.50 pt"."""
    return "—" if drop is None else f"{0.0 - drop:+.2f} pt"  # 0.0 - x: no "-0.00" for no change


def int8_weight_lines(row: EngineRow) -> list[str]:
    """What an INT8 engine's report row says of its weights: the layers kept in float, then how the rest were rounded."""
    return [line for line in (float_layers_line(row), weight_rounding_line(row)) if line]


def weight_rounding_line(row: EngineRow) -> str:
    """How an INT8 engine's weights were rounded (``weight_rounding: gptq``) and what it bought, layer by layer."""
    done = row.weight_rounding
    if not done:
        return ""
    layers = done["layers"]
    ratio = done.get("median_error_ratio")
    gain = f"; each layer's output error on them is ×{ratio:.2f} of nearest rounding's (median)" if ratio is not None else ""
    narrowed = sum(1 for layer in layers if layer.get("qmax", 127) != 127)  # records from before grids were kept: 8 bits
    grid = f" ({narrowed} of them on the quantizer's 7-bit grid)" if narrowed else ""
    return (f"{row.name}: {len(layers)} layers' INT8 weights rounded by {done['method'].upper()} on {done['samples']} "
            f"calibration samples{grid}{gain}" + (f"; {len(done['skipped'])} layers not rounded" if done.get("skipped") else ""))


def interval_text(ci95: Sequence[float] | None, groups: int | None = None) -> str:
    """``96.21–97.90%`` (``… over 16 photos`` with ``groups``): an agreement's 95% interval, or "" without one."""
    if ci95 is None:
        return ""
    low, high = ci95
    return f"{100 * low:.2f}–{100 * high:.2f}%" + (f" over {groups} photos" if groups else "")


def float_layers_line(row: EngineRow) -> str:
    """Which layers an INT8 engine keeps in float (``keep_float``) and how INT8 scored them alone."""
    kept = row.float_layers
    if not kept:
        return ""
    search = row.float_search
    if kept.get("auto") and search:
        chosen = next(c for c in search["candidates"] if c["float_layers"] == search["chosen"])
        outcome = "meet" if search["met"] else "come closest to (none meets)"
        figure = functools.partial(search_figure, cosine=search.get("measure") == "cosine")
        full = next((c for c in search["candidates"] if c["float_layers"] == 0 and "as_written" in c), None)
        kernels = (f"; fully quantized: {figure(full)} on the build machine's integer kernels, {figure(full['as_written'])} with its Q/DQ "
                   "computed as written" if full else "")
        alone = weights_alone_text(search, with_engine=not full)  # beside the figures above, or with the engine's own
        kernels += f"{',' if full else ';'} {alone}" if alone else ""
        return (f"{row.name}: keep_float auto: {search['chosen']} of {len(search['ranking'])} ranked layers kept in float "
                f"({len(kept['nodes'])} with the layers feeding them), the fewest that {outcome} {search['target_text']} on "
                f"{search['samples']} validation samples: {figure(chosen, spread=True)}"
                + (f", p50 {chosen['slowdown']:.2f}× the fully quantized engine's, timed together" if "slowdown" in chosen else "")
                + "; "
                f"{len(search['candidates'])} candidates built and scored in {search['seconds']:.0f} s"
                + (f" ({search['unranked']})" if search.get("unranked") else "") + kernels)
    worst = ", ".join(f"{r['weight']} (cosine {r['cosine']:.4f})" for r in kept["ranking"][: kept["count"]])
    return (f"{row.name}: {len(kept['nodes'])} layers kept in float (keep_float {kept['count']} + the convolutions feeding them); "
            f"most INT8-sensitive, weights alone in INT8 on {kept['samples']} calibration samples: {worst}")


def search_figure(scores: Mapping[str, Any], *, cosine: bool, spread: bool = False) -> str:
    """A search candidate's figure by its target's measure: output cosine, or top-1 agreement (with its 95% interval where
    ``spread`` and recorded)."""
    if cosine:
        return f"output cosine {scores['cosine']:.5f}"
    interval = interval_text(scores.get("agreement_ci95"), scores.get("agreement_groups")) if spread else ""
    return f"agreement {100 * scores['agreement']:.2f}%" + (f" (95% interval {interval})" if interval else "")


def weights_alone_text(search: Mapping[str, Any], *, with_engine: bool = True) -> str:
    """The fully quantized candidate's weights alone in INT8 (activations in float), where the search scored them, after
    the engine's own figure (``with_engine``): which half of the INT8 loss a user should work on. Empty for searches
    recorded without it."""
    full = next((c for c in search["candidates"] if c["float_layers"] == 0), None)
    alone = full.get("weights_alone") if full else None
    if not full or not alone or not alone.get("layers"):
        return ""
    figure = functools.partial(search_figure, cosine=search.get("measure") == "cosine")
    engine = f"fully quantized {figure(full)}, " if with_engine else ""
    return f"{engine}its weights alone in INT8 ({alone['layers']} layers, activations in float) {figure(alone)}"


def dataset_warnings(report: Report) -> list[str]:
    """What the terminal and the page's first screen say before anything else: the data is not what the recipe asked for."""
    note = substitution_note(report.dataset)
    return [note] if note else []


def db(value: float | None) -> str:
    """An SQNR in dB for people; None is an exact match."""
    return "exact" if value is None else f"{value:.1f}"


MEASURE_NAMES = {"top1": "top-1", "cosine": "cosine with the teacher's outputs"}


def student_measure(prune: Mapping[str, Any]) -> str:
    """The prune stage's validation score before → after: top-1, or the cosine with the unpruned model's outputs."""
    measure = prune.get("measure", "top1")
    before, after = prune["before"][f"val_{measure}"], prune["after"][f"val_{measure}"]
    if measure == "top1":
        return f"val top-1 {pct(before)} → {pct(after)}"
    return f"val {MEASURE_NAMES.get(measure, measure)} {before:.4f} → {after:.4f}"


def verdict_measure(verdict: Mapping[str, Any]) -> str:
    """The student's ORT FP32 engine against the teacher: top-1 and its drop, or the output cosine, named by the split
    the engines were scored on (test, or validation in a run that chose settings)."""
    on = "validation" if verdict.get("split") == "validation" else "test"
    if verdict.get("measure") == "cosine":
        return f"{on} output cosine with the teacher {verdict['student_cosine']:.4f}"
    return (f"{on} top-1 {pct(verdict['teacher_top1'])} → {pct(verdict['student_top1'])} "
            f"({change_points(verdict['top1_drop_points'])})")
