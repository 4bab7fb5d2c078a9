"""The tables of an eval output (the JSON of ``fastprm eval``), shared by the terminal and the HTML report."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Table:
    """A titled table of already formatted cells: ``rows`` is [R][len(header)] strings."""

    title: str
    header: list[str]
    rows: list[list[str]]


def percent(x: float | None) -> str:
    """0.1234 -> '12.3'; a missing or undefined value (None, NaN) -> 'n/a'."""
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def number(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def processbench_tables(m: dict) -> list[Table]:
    """Per-subset accuracies and F1 at the chosen threshold, the sweep's best, step calibration and the
    reliability bins."""
    accuracy_rows = [
        [name, str(s["n_error"]), str(s["n_correct"])]
        + [percent(s[k]) for k in ("error_accuracy", "correct_accuracy", "f1")]
        for name, s in m["subsets"].items()
    ]
    accuracy_rows.append(
        ["average", "", ""] + [percent(m["average"][k]) for k in ("error_accuracy", "correct_accuracy", "f1")]
    )
    steps = m["steps"]
    summary = [
        ["best threshold (average F1)", number(m["best"]["threshold"], 2)],
        ["best average F1", percent(m["best"]["f1"])],
        ["rows with no scored step (left out)", str(m.get("unscored_rows", "n/a"))],
        ["labelled steps", str(steps["n"])],
        ["labelled steps with no score (errors)", str(steps.get("n_nan", "n/a"))],
        ["step AUROC", number(steps["auroc"])],
        ["step ECE", number(steps["ece"])],
    ]
    bins = [
        [f"{b['lo']:.1f}-{b['hi']:.1f}", str(b["count"]), number(b["confidence"]), number(b["accuracy"])]
        for b in steps["reliability"]
    ]
    return [
        Table(
            f"ProcessBench at threshold {m['threshold']:g} (%)",
            ["subset", "erroneous", "all correct", "error acc", "correct acc", "F1"],
            accuracy_rows,
        ),
        Table("Threshold sweep and step calibration", ["metric", "value"], summary),
        Table(
            "Reliability (step P(good) vs fraction good)", ["bin", "steps", "confidence", "accuracy"], bins
        ),
    ]


def best_of_n_tables(m: dict) -> list[Table]:
    """Accuracy of every rule with all candidates, and against N."""
    curve = m["curve"]
    unscored = m.get("unscored_rows")
    counts = f"{m['n_problems']} problems" + (
        f", {unscored} candidates with no scored step" if unscored else ""
    )
    return [
        Table(
            f"Best-of-N accuracy, all candidates ({counts}, %)",
            ["rule", "accuracy"],
            [[rule, percent(m["accuracy"][rule])] for rule in m["rules"]],
        ),
        Table(
            "Best-of-N accuracy against N (%)",
            ["rule"] + [f"N={n}" for n in curve["n"]],
            [[rule] + [percent(x) for x in curve[rule]] for rule in m["rules"]],
        ),
    ]


def search_tables(m: dict) -> list[Table]:
    """Accuracy and generation budget of each search method."""
    rows = [[name, percent(v["accuracy"]), f"{v['generated_steps']:.1f}"] for name, v in m["methods"].items()]
    tables = [
        Table(
            f"Search ({m['n_problems']} problems)",
            ["method", "accuracy (%)", "steps generated / problem"],
            rows,
        )
    ]
    beam = m["methods"].get("beam search")
    if beam and "prm_tokens" in beam:
        tables.append(
            Table(
                "Beam search PRM cost per problem (tokens through the backbone)",
                ["sessions", "full re-score at every depth", "ratio"],
                [[f"{beam['prm_tokens']:.0f}", f"{beam['prm_tokens_full_rescore']:.0f}",
                  f"{beam['prm_tokens_full_rescore'] / max(beam['prm_tokens'], 1):.1f}x"]],
            )
        )  # fmt: skip
    return tables


def metrics_tables(m: dict) -> list[Table]:
    """The tables of one eval output, by its ``kind``."""
    builders = {"processbench": processbench_tables, "best_of_n": best_of_n_tables, "search": search_tables}
    if m.get("kind") not in builders:
        raise ValueError(
            f"not a fastprm eval output (kind {m.get('kind')!r}); expected one of {sorted(builders)}"
        )
    return builders[m["kind"]](m)


def text_table(table: Table) -> str:
    """The table as aligned plain text under its title."""
    widths = [max(len(row[i]) for row in [table.header, *table.rows]) for i in range(len(table.header))]
    lines = [table.title]
    for row in [table.header, *table.rows]:
        lines.append(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))
            )
        )
    return "\n".join(lines)
