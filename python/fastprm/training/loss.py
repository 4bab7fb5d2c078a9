"""Per-step binary cross-entropy of a PRM, computed on the step rows only.

The fused path runs :func:`fastprm.ops.score_steps` (which reads only the step rows of the hidden states)
and applies the loss to the [K, C] step logits: no per-token logits exist at any point. For every head kind
the loss is a BCE on the positive-class margin z (C = 1: the logit, sign-flipped when the positive class is
0; C = 2: z_pos - z_neg, which makes the BCE equal to the 2-class softmax cross-entropy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .label_modes import LABEL_MODES


def positive_margin(step_logits: torch.Tensor, positive_class: int) -> torch.Tensor:
    """[K, C] step logits -> [K] logit of P(step good)."""
    if step_logits.shape[1] == 1:
        return step_logits[:, 0] if positive_class == 1 else -step_logits[:, 0]
    return step_logits[:, positive_class] - step_logits[:, 1 - positive_class]


def step_loss_mask(labels: torch.Tensor, cu_steps: torch.Tensor, mode: str) -> torch.Tensor:
    """[K] bool: which steps the loss counts.

    ``all``: every step. ``last``: the last step of each sequence. ``first_error``: steps up to and including
    the first negative one (label < 0.5) of each sequence; later steps are ignored.
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"label mode must be one of {LABEL_MODES}, got {mode!r}")
    K = labels.shape[0]
    if mode == "all":
        return torch.ones(K, dtype=torch.bool, device=labels.device)
    num_steps = cu_steps[1:] - cu_steps[:-1]
    seq = torch.repeat_interleave(
        torch.arange(num_steps.shape[0], device=labels.device), num_steps, output_size=K
    )
    if mode == "last":
        return torch.arange(K, device=labels.device) == (cu_steps[1:] - 1)[seq]
    negative = (labels < 0.5).to(torch.int64)
    # Negatives strictly before each step, within its sequence: cumulative count minus the sequence's offset.
    before = torch.cumsum(negative, 0) - negative
    start = torch.cat([before.new_zeros(1), torch.cumsum(negative, 0)])[cu_steps[:-1]]
    return (before - start[seq]) == 0


def step_bce_sum(
    step_logits: torch.Tensor,
    labels: torch.Tensor,
    cu_steps: torch.Tensor,
    *,
    positive_class: int = 1,
    mode: str = "all",
    pos_weight: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed binary cross-entropy of the counted steps and how many steps were counted.

    Args:
        step_logits: [K, C] float logits of the step rows (C in {1, 2}).
        labels: [K] hard (0/1, bool) or soft (float in [0, 1]) labels; soft labels are used as they are.
        cu_steps: [B + 1] int64 offsets of each sequence's steps.
        positive_class: index of the "good" class.
        mode: ``all``, ``last`` or ``first_error`` (see :func:`step_loss_mask`).
        pos_weight: weight of the positive term (as in ``BCEWithLogitsLoss``).

    Returns:
        (loss sum, counted steps): scalar float32 tensors. The trainer divides by the count of the whole
        global batch; :func:`step_bce` by this batch's.
    """
    labels = labels.to(torch.float32)
    z = positive_margin(step_logits.float(), positive_class)
    mask = step_loss_mask(labels, cu_steps, mode)
    weight = None if pos_weight is None else torch.tensor(pos_weight, device=z.device)
    per_step = F.binary_cross_entropy_with_logits(z, labels, pos_weight=weight, reduction="none")
    return (per_step * mask).sum(), mask.sum().to(torch.float32)


def step_bce(
    step_logits: torch.Tensor,
    labels: torch.Tensor,
    cu_steps: torch.Tensor,
    *,
    reduction: str = "mean",
    **options,
) -> torch.Tensor:
    """Binary cross-entropy of every counted step, its ``mean`` over the counted steps or its ``sum``: a
    scalar float32 tensor. Arguments and ``options`` (positive_class, mode, pos_weight) as :func:`step_bce_sum`."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    total, counted = step_bce_sum(step_logits, labels, cu_steps, **options)
    return total if reduction == "sum" else total / counted.clamp(min=1)
