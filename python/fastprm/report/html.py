"""A self-contained HTML report of eval outputs: their tables and figures (base64 PNG) in one file."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path

from ..io import AtomicOutput
from .tables import Table, metrics_tables

STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { padding: 0.2em 0.7em; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
caption { text-align: left; font-weight: bold; padding-bottom: 0.3em; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
.source { color: #666; font-size: 0.9em; }
"""


def load_metrics(paths: Sequence[str | Path]) -> list[tuple[Path, dict]]:
    """(path, metrics) of every eval output named: JSON files, and the ``*.json`` of directories (sorted)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.glob("*.json"))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such metrics file or directory: {p}")
    if not files:
        raise FileNotFoundError(f"no metrics JSON in {', '.join(map(str, paths))}")
    return [(f, _read_json(f)) for f in files]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except ValueError as err:  # not UTF-8, or not JSON
        raise ValueError(f"{path}: not a JSON file: {err}") from None


def table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows
    )
    return f"<table><caption>{html.escape(table.title)}</caption><tr>{head}</tr>{body}</table>"


def image_html(png: bytes, alt: str) -> str:
    return (
        f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
    )


def render_report(metrics: Sequence[tuple[str | Path, dict]], title: str = "fastprm evaluation") -> str:
    """The HTML page: one section per (name, eval output), its tables then its figures."""
    from .plots import metrics_figures, png_bytes  # matplotlib only when a report is drawn

    sections = []
    for name, m in metrics:
        tables = "".join(table_html(t) for t in metrics_tables(m))
        figures = "".join(image_html(png_bytes(fig), alt) for alt, fig in metrics_figures(m).items())
        source = html.escape(f"{name} (scores: {m.get('scores_file', 'unknown')})")
        heading = {"processbench": "ProcessBench", "best_of_n": "Best-of-N", "search": "Search"}[m["kind"]]
        sections.append(
            f'<section><h2>{heading}</h2><p class="source">{source}</p>{tables}{figures}</section>'
        )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}</body></html>\n"
    )


def write_report(paths: Sequence[str | Path], output: str | Path, title: str = "fastprm evaluation") -> Path:
    """Loads the eval outputs at ``paths`` (:func:`load_metrics`) and writes their report to ``output``."""
    page = render_report(load_metrics(paths), title)
    with AtomicOutput(output) as out:
        out.write(page)
    return Path(output)
