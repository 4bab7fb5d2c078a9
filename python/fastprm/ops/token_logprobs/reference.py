"""Pure-PyTorch reference of the token log-probability op: the specification and the test oracle.

It materialises the full [N, V] logits; every fast path must match it.
"""

from __future__ import annotations

import torch

from ...kernels.contract import accumulator_dtype


def _logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """[N, V] logits ``hidden @ weight.T / temperature`` in the accumulator dtype."""
    compute = accumulator_dtype(hidden.dtype)
    return hidden.to(compute) @ weight.to(compute).T / temperature


def token_logprobs_reference(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``log_softmax(hidden @ weight.T / temperature).gather(targets)``: [N] float32 (float64 for float64
    hidden); gradients flow to hidden and weight through plain autograd. Arguments as
    :func:`fastprm.ops.token_logprobs`."""
    logits = _logits(hidden, weight, temperature)
    return torch.log_softmax(logits, dim=-1).gather(1, targets.long()[:, None]).squeeze(1)


def reference_forward(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward op's outputs, in the order of ``fastprm::token_logprobs_forward``: logprobs [N] and the
    per-row log-sum-exp [N] of the scaled logits (what the backward recomputes the softmax from)."""
    logits = _logits(hidden, weight, temperature)
    lse = torch.logsumexp(logits, dim=-1)
    return logits.gather(1, targets.long()[:, None]).squeeze(1) - lse, lse


def reference_backward(
    grad_logprobs: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fastprm::token_logprobs_backward``: with g = grad_logprobs [N], d loss / d logits = g * (onehot(targets)
    - softmax) / temperature, projected back to grad_hidden [N, H] and grad_weight [V, H] (accumulator
    dtype)."""
    logits = _logits(hidden, weight, temperature)
    grad_logits = -torch.exp(logits - lse[:, None])
    grad_logits[torch.arange(targets.shape[0]), targets.long()] += 1.0
    grad_logits *= (grad_logprobs.to(logits.dtype) / temperature)[:, None]
    return grad_logits @ weight.to(logits.dtype), grad_logits.T @ hidden.to(logits.dtype)
