"""How rows are grouped into backbone batches: token-budget batches of length-sorted rows and the batch
layouts. Torch-free, so the CLI can offer the layout names without loading torch."""

from __future__ import annotations

from collections.abc import Sequence


def token_budget_batches(
    lengths: Sequence[int], batch_tokens: int, max_rows: int | None = None
) -> list[list[int]]:
    """Groups row indices into batches after sorting by length, so padding stays minimal.

    A batch holds rows while (rows x longest row) fits in ``batch_tokens``; a single row longer than the
    budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[i]  # rows arrive in increasing length
        fits = (len(current) + 1) * longest <= batch_tokens and (max_rows is None or len(current) < max_rows)
        if current and not fits:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


# Backbone batch layouts of the Scorer: one forward per row, one packed varlen sequence, right-padded rows.
LAYOUTS = ("rows", "packed", "padded")


def default_layout(prm) -> str:
    """The layout without measurement (``FASTPRM_TUNE=off``; otherwise :mod:`fastprm.tuning` measures).

    ``rows`` on CPU: one unpadded, mask-free forward per row, the previous default (the fastest of the three
    with torch's GEMMs at Qwen2.5-0.5B widths on an AVX2 AMD EPYC Zen 3; on an AMD EPYC Zen 5, packed
    batches beat it on a small model, benchmarks/results/bench_score_amd-epyc-family-26-model-2.md).
    ``packed`` when the backbone's attention is flash-attention 2, which runs a [1, N] varlen batch without
    padding; else ``padded`` length-sorted batches.
    """
    if prm.device.type == "cpu":
        return "rows"
    if getattr(prm.backbone.config, "_attn_implementation", None) == "flash_attention_2":
        return "packed"
    return "padded"
