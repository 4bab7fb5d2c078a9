"""Accuracy of search methods at their generation budget, from ``fastprm search`` outputs.

A best-of-N output gives every best-of-N rule at once (its candidates carry their answers and the search's
aggregate; :mod:`fastprm.metrics.bon`): ``random`` is the expected accuracy of one sample, ``majority`` the
plain vote, ``prm-<agg>`` and ``weighted-<agg>`` the PRM's selections. A beam search output gives its own
choice. Each method's budget is the mean number of steps the generator produced per problem.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .answers import answer_key, answers_equal
from .bon import Problem, best_of_n


def _bon_problem(row: dict, aggregate: str) -> Problem:
    gold = str(row["answer"])
    candidates = row["candidates"]
    return Problem(
        [answers_equal(c["answer"], gold) for c in candidates],
        {aggregate: [np.nan if c["score"] is None else c["score"] for c in candidates]},
        [answer_key(c["answer"]) for c in candidates],
    )


def search_metrics(bon_rows: Sequence[dict], beam_rows: Sequence[dict], aggregate: str = "min") -> dict:
    """``kind: search`` metrics: per method its accuracy and mean generated steps per problem.

    Args:
        bon_rows: rows of a best-of-N ``fastprm search`` output (with gold ``answer``), or none.
        beam_rows: rows of a beam search output, or none.
        aggregate: the aggregate the best-of-N search ranked by (its candidates' ``score``).
    """
    methods: dict[str, dict] = {}
    if bon_rows:
        bon = best_of_n([_bon_problem(r, aggregate) for r in bon_rows], [aggregate], bases=4, seed=0)
        n = max(len(r["candidates"]) for r in bon_rows)
        steps = float(np.mean([r["counters"]["generated_steps"] for r in bon_rows]))
        one = float(np.mean([len(r["candidates"][0]["steps"]) for r in bon_rows]))
        methods["one sample"] = {"accuracy": bon["accuracy"]["random"], "generated_steps": one}
        for rule in ("majority", f"prm-{aggregate}", f"weighted-{aggregate}"):
            name = f"best-of-{n} {rule}" if rule != "majority" else f"majority vote of {n}"
            methods[name] = {"accuracy": bon["accuracy"][rule], "generated_steps": steps}
    if beam_rows:
        counters = [r["counters"] for r in beam_rows]
        methods["beam search"] = {
            "accuracy": float(np.mean([bool(r.get("correct")) for r in beam_rows])),
            "generated_steps": float(np.mean([c["generated_steps"] for c in counters])),
            "prm_tokens": float(np.mean([c["prm_tokens"] for c in counters])),
            "prm_tokens_full_rescore": float(np.mean([c["prm_tokens_full_rescore"] for c in counters])),
        }
    return {
        "kind": "search",
        "n_problems": max(len(bon_rows), len(beam_rows)),
        "methods": methods,
    }
