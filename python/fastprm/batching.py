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


def prompt_group_batches(
    prompts: Sequence[tuple[int, ...]], lengths: Sequence[int], batch_tokens: int
) -> list[tuple[list[tuple[int, ...]], list[list[int]]]]:
    """Rows grouped by prompt for problem-shared scoring: [(prompts, sub-batches of row indices), ...].

    Each entry's prompts run once, in one forward; its rows then run after them, their own tokens only
    (``lengths[i] - len(prompts[i])``), in the sub-batches. Whole groups (rows of one prompt, in order of
    first appearance) share an entry while their prompts and rows fit in ``batch_tokens``; a group that does
    not fit alone is an entry of its own, its rows in sub-batches of at most ``batch_tokens`` tokens (a longer
    row alone). So one entry's prompts are alive at a time: at most one big group's prefix.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(i)
    entries: list[tuple[list[tuple[int, ...]], list[list[int]]]] = []
    shared: list[tuple[int, ...]] = []
    members: list[int] = []
    used = 0
    for prompt, rows in groups.items():
        cost = len(prompt) + sum(lengths[i] - len(prompt) for i in rows)
        if members and used + cost > batch_tokens:
            entries.append((shared, [members]))
            shared, members, used = [], [], 0
        if cost <= batch_tokens:
            shared.append(prompt)
            members += rows
            used += cost
            continue
        sub_batches: list[list[int]] = [[]]
        filled = 0
        for i in rows:
            own = lengths[i] - len(prompt)
            if sub_batches[-1] and filled + own > batch_tokens:
                sub_batches.append([])
                filled = 0
            sub_batches[-1].append(i)
            filled += own
        entries.append(([prompt], sub_batches))
    if members:
        entries.append((shared, [members]))
    return entries


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
