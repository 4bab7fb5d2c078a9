"""PNG figures of eval outputs (matplotlib, Agg canvas; no pyplot, so no global backend or figure state).

Every function takes plain lists/dicts as found in the JSON of ``fastprm eval`` (None for undefined
values) and returns a :class:`matplotlib.figure.Figure`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

GOOD, BAD = "#3a9d5d", "#d1495b"
BASELINES = ("random", "majority", "oracle")


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # rendering through Agg whatever backend the process has selected
    return fig


def _floats(values: Sequence[float | None]) -> np.ndarray:
    """JSON values to float64, None becoming NaN (matplotlib leaves gaps there)."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def shorten(text: str, max_chars: int) -> str:
    """Whitespace collapsed to single spaces, cut to ``max_chars`` with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= max_chars else flat[: max_chars - 1] + "…"


def step_scores_figure(
    steps: Sequence[str],
    step_scores: Sequence[float],
    threshold: float,
    label: int | None = None,
    title: str = "",
    max_chars: int = 70,
) -> Figure:
    """One solution: a horizontal bar per step (first at the top), green at or above ``threshold`` and red
    below, the weakest step marked, the step's text beside its bar, and the labelled first wrong step
    (``label`` >= 0, ProcessBench style) named on its tick."""
    scores = _floats(step_scores)
    n = len(scores)
    fig = _figure(11, 1.2 + 0.4 * n)
    ax = fig.add_subplot()
    fig.subplots_adjust(left=0.12, right=0.42)  # the step texts go right of the axes
    y = np.arange(n)
    ax.barh(y, scores, color=[GOOD if s >= threshold else BAD for s in scores], height=0.7)
    ax.axvline(threshold, color="0.3", linestyle="--", linewidth=1)
    weakest = -1 if np.isnan(scores).all() else int(np.nanargmin(scores))  # -1: no step to mark
    if weakest >= 0:
        ax.barh([weakest], [scores[weakest]], height=0.7, fill=False, edgecolor="black", linewidth=2)
    ax.set_xlim(0, 1)
    ax.set_ylim(n - 0.5, -0.5)
    notes = [[name for name, at in (("weakest", weakest), ("gold error", label)) if at == i] for i in y]
    ax.set_yticks(y, [f"step {i}" + (f" ({', '.join(note)})" if note else "") for i, note in zip(y, notes)])
    ax.set_xlabel("P(step good)")
    for i, text in zip(y, steps):
        ax.text(
            1.03,
            i,
            shorten(text, max_chars),
            va="center",
            ha="left",
            fontsize=8,
            parse_math=False,
            transform=ax.get_yaxis_transform(),
            clip_on=False,
        )
    ax.set_title(title, loc="left", fontsize=10, parse_math=False)
    return fig


def threshold_f1_figure(sweep: dict, best: dict, threshold: float | None = None) -> Figure:
    """F1 against the threshold: one thin line per subset, the subset average thick, the best average
    marked and the threshold used for the tables dashed."""
    fig = _figure(6.5, 4)
    ax = fig.add_subplot()
    t = _floats(sweep["thresholds"])
    for name, f1 in sweep["f1"].items():
        is_avg = name == "average"
        ax.plot(
            t,
            100 * _floats(f1),
            label=name,
            linewidth=2.5 if is_avg else 1,
            color="black" if is_avg else None,
        )
    if best.get("threshold") is not None:
        ax.plot([best["threshold"]], [100 * best["f1"]], "o", color="black")
        ax.annotate(
            f"best {best['threshold']:.2f}: {100 * best['f1']:.1f}",
            (best["threshold"], 100 * best["f1"]),
            xytext=(8, -14),
            textcoords="offset points",
        )
    if threshold is not None:
        ax.axvline(threshold, color="0.5", linestyle="--", linewidth=1)
    ax.set_xlabel("threshold")
    ax.set_ylabel("F1 (%)")
    ax.set_xlim(0, 1)
    ax.set_title("ProcessBench F1 against the threshold")
    ax.legend(fontsize=8)
    return fig


def reliability_figure(table: Sequence[dict], ece: float | None = None) -> Figure:
    """Reliability diagram: per confidence bin, the fraction of good steps (bars) against the diagonal of
    perfect calibration, and the number of steps per bin below."""
    fig = _figure(5.5, 5.5)
    ax, counts = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    lo, hi = _floats([b["lo"] for b in table]), _floats([b["hi"] for b in table])
    ax.bar(
        lo,
        _floats([b["accuracy"] for b in table]),
        width=hi - lo,
        align="edge",
        color=GOOD,
        edgecolor="white",
    )
    ax.plot(
        _floats([b["confidence"] for b in table]), _floats([b["accuracy"] for b in table]), "o", color="black"
    )
    ax.plot([0, 1], [0, 1], "--", color="0.4")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of good steps")
    ax.set_title("Step reliability" + ("" if ece is None else f" (ECE {ece:.3f})"))
    counts.bar(lo, [b["count"] for b in table], width=hi - lo, align="edge", color="0.6", edgecolor="white")
    counts.set_xlabel("P(step good)")
    counts.set_ylabel("steps")
    return fig


def best_of_n_figure(curve: dict, rules: Sequence[str]) -> Figure:
    """Accuracy against N per selection rule; the baselines (random, majority, oracle) dashed."""
    fig = _figure(6.5, 4)
    ax = fig.add_subplot()
    n = _floats(curve["n"])
    for rule in rules:
        ax.plot(
            n,
            100 * _floats(curve[rule]),
            marker="o",
            markersize=3,
            label=rule,
            linestyle="--" if rule in BASELINES else "-",
        )
    if n.size and n.max() > 2:
        ax.set_xscale("log", base=2)
    ax.set_xticks(n, [str(int(v)) for v in n])
    ax.set_xlabel("N (candidates per problem)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Best-of-N")
    ax.legend(fontsize=8, ncol=2)
    return fig


def search_figure(methods: dict) -> Figure:
    """Accuracy of each search method against the steps it generated per problem."""
    fig = _figure(6.5, 4)
    ax = fig.add_subplot()
    for name, v in methods.items():
        ax.scatter(v["generated_steps"], 100 * v["accuracy"], label=name, s=40)
    ax.set_xlabel("steps generated per problem")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Search at its generation budget")
    ax.legend(fontsize=8)
    return fig


def metrics_figures(m: dict) -> dict[str, Figure]:
    """All figures of one eval output, by name (``threshold_f1``, ``reliability``, ``solution_<k>``,
    ``best_of_n``, ``search``)."""
    if m["kind"] == "best_of_n":
        return {"best_of_n": best_of_n_figure(m["curve"], m["rules"])}
    if m["kind"] == "search":
        return {"search": search_figure(m["methods"])}
    figures = {
        "threshold_f1": threshold_f1_figure(m["sweep"], m["best"], m["threshold"]),
        "reliability": reliability_figure(m["steps"]["reliability"], m["steps"]["ece"]),
    }
    for k, ex in enumerate(m.get("examples", [])):
        title = f"{ex['id']}: label {ex['label']}, predicted {ex['predicted']}"
        figures[f"solution_{k}"] = step_scores_figure(
            ex["steps"], ex["step_scores"], m["threshold"], ex["label"], title
        )
    return figures


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def save_figures(figures: dict[str, Figure], directory: str | Path, prefix: str = "") -> list[Path]:
    """Writes ``<directory>/<prefix><name>.png`` for every figure; returns the paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = out / f"{prefix}{name}.png"
        path.write_bytes(png_bytes(fig))
        paths.append(path)
    return paths
