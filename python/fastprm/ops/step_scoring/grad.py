"""d loss / d step logits from the gradients of every output of the forward op.

Shared by all backends: it touches only [K, C] and [B] tensors, so the kernels are left with the part that
reads hidden rows (projecting this gradient back to hidden, weight and bias).
"""

from __future__ import annotations

import torch


def step_logit_grad(
    step_logits: torch.Tensor,
    step_probs: torch.Tensor,
    cu_steps: torch.Tensor,
    argmin: torch.Tensor,
    positive_class: int,
    g_logits: torch.Tensor | None,
    g_probs: torch.Tensor | None,
    g_min: torch.Tensor | None,
    g_log_prod: torch.Tensor | None,
    g_mean: torch.Tensor | None,
    g_last: torch.Tensor | None,
) -> torch.Tensor:
    """Gradient w.r.t. the [K, C] step logits.

    Args:
        step_logits: [K, C], step_probs: [K] forward outputs; cu_steps: [B + 1]; argmin: [B] global step of
            each sequence's min (-1 when empty).
        g_*: incoming gradients of the forward outputs (None for outputs that received none).

    Returns:
        [K, C] in the dtype of step_logits.
    """
    K, C = step_logits.shape
    B = cu_steps.shape[0] - 1
    p = step_probs
    num_steps = cu_steps[1:] - cu_steps[:-1]
    seq = torch.repeat_interleave(torch.arange(B, device=p.device), num_steps, output_size=K)
    step_ids = torch.arange(K, device=p.device)

    # Everything that depends on the step probability, then through p' = p (1 - p) to the positive logit.
    g_p = torch.zeros_like(p) if g_probs is None else g_probs.clone()
    if g_mean is not None:
        g_p += (g_mean / num_steps.clamp(min=1))[seq]
    if g_min is not None:
        g_p += torch.where(step_ids == argmin[seq], g_min[seq], 0.0)
    if g_last is not None:
        g_p += torch.where(step_ids == cu_steps[1:][seq] - 1, g_last[seq], 0.0)
    g_z = g_p * p * (1 - p)
    if g_log_prod is not None:
        # d log sigmoid(z) / dz = 1 - p: exact even where p underflows.
        g_z += g_log_prod[seq] * (1 - p)

    if C == 1:
        grad = (g_z if positive_class == 1 else -g_z).unsqueeze(1)
    else:
        sign = torch.tensor(
            [-1.0, 1.0] if positive_class == 1 else [1.0, -1.0], dtype=p.dtype, device=p.device
        )
        grad = g_z.unsqueeze(1) * sign
    if g_logits is not None:
        grad = grad + g_logits
    return grad.contiguous()
