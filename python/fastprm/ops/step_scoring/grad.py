"""d loss / d step logits from the gradients of every output of the forward op.

Shared by all backends: it touches only [K, C] and [B] tensors, so the kernels are left with the part that
reads hidden rows (projecting this gradient back to hidden, weight and bias).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class OutputGrads(NamedTuple):
    """Incoming gradients of the forward op's differentiable outputs; None for an output that got none."""

    step_logits: torch.Tensor | None = None  # [K, C]
    step_probs: torch.Tensor | None = None  # [K]
    min: torch.Tensor | None = None  # [B], and the rest too
    log_prod: torch.Tensor | None = None
    prod: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    last: torch.Tensor | None = None


def step_logit_grad(
    step_logits: torch.Tensor,
    step_probs: torch.Tensor,
    prod: torch.Tensor,
    cu_steps: torch.Tensor,
    argmin: torch.Tensor,
    positive_class: int,
    grads: OutputGrads,
) -> torch.Tensor:
    """Gradient w.r.t. the [K, C] step logits.

    Args:
        step_logits: [K, C], step_probs: [K], prod: [B] forward outputs; cu_steps: [B + 1]; argmin: [B] global
            step of each sequence's min (-1 when empty); positive_class: 0 or 1.
        grads: the incoming gradients. Only those given contribute, so a NaN step adds NaN to the gradient
            only through outputs that the loss used, as autograd through the reference does.

    Returns:
        [K, C] contiguous, in the dtype of step_logits.
    """
    K, C = step_logits.shape
    B = cu_steps.shape[0] - 1
    p = step_probs
    num_steps = cu_steps[1:] - cu_steps[:-1]
    seq = torch.repeat_interleave(torch.arange(B, device=p.device), num_steps, output_size=K)
    step_ids = torch.arange(K, device=p.device)

    # Everything that depends on the step probability, then through p' = p (1 - p) to the positive margin.
    g_p = None if grads.step_probs is None else grads.step_probs.clone()
    per_step = []
    if grads.mean is not None:
        per_step.append((grads.mean / num_steps.clamp(min=1))[seq])
    if grads.min is not None:
        per_step.append(torch.where(step_ids == argmin[seq], grads.min[seq], 0.0))
    if grads.last is not None:
        per_step.append(torch.where(step_ids == cu_steps[1:][seq] - 1, grads.last[seq], 0.0))
    for g in per_step:
        g_p = g if g_p is None else g_p + g
    g_z = None if g_p is None else g_p * p * (1 - p)

    # prod = exp(log_prod): its gradient reaches log_prod times prod. Where it is zero (an output without a
    # gradient that the dispatcher filled with zeros) it adds nothing, even to a sequence whose prod is NaN.
    g_log_prod = grads.log_prod
    if grads.prod is not None:
        from_prod = torch.where(grads.prod == 0, 0.0, grads.prod * prod)
        g_log_prod = from_prod if g_log_prod is None else g_log_prod + from_prod
    if g_log_prod is not None:
        # d log sigmoid(z) / dz = 1 - p: exact even where p underflows.
        from_log = g_log_prod[seq] * (1 - p)
        g_z = from_log if g_z is None else g_z + from_log

    grad = torch.zeros_like(step_logits) if grads.step_logits is None else grads.step_logits.clone()
    if g_z is not None:
        # z = logit (C = 1) or logit[positive_class] - logit[other] (C = 2); C = 1 with positive_class 0 is -logit.
        sign = 1.0 if positive_class == 1 else -1.0
        if C == 1:
            grad[:, 0] += sign * g_z
        else:
            grad[:, 1] += sign * g_z
            grad[:, 0] -= sign * g_z
    return grad.contiguous()
