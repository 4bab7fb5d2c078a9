"""Pure-PyTorch reference of the token log-probability op: the specification and the test oracle.

It materialises the full [N, V] logits; every fast path must match it. It also owns what the ``gemm_dtype``
argument means (:func:`gemm_dtype_of`), since that is part of the specification.
"""

from __future__ import annotations

import torch

from ...kernels.contract import accumulator_dtype

GEMM_DTYPES = ("input", "float32")


def gemm_dtype_of(hidden_dtype: torch.dtype, weight_dtype: torch.dtype, gemm_dtype: str) -> torch.dtype:
    """The dtype the op's matrix products take their operands and results in, for ``gemm_dtype``:

    - ``"input"``: the inputs' dtype (``torch.promote_types`` of the two), as eager ``hidden @ weight.T`` and
      its autograd compute it: bf16 / fp16 inputs give logits rounded to bf16 / fp16;
    - ``"float32"``: the accumulator dtype (float32; float64 for float64 hidden): 16-bit operands are upcast
      and the logits are never rounded to 16 bits.

    Raises ValueError for any other ``gemm_dtype``.
    """
    if gemm_dtype == "input":
        return torch.promote_types(hidden_dtype, weight_dtype)
    if gemm_dtype == "float32":
        return accumulator_dtype(hidden_dtype)
    raise ValueError(f"gemm_dtype must be one of {GEMM_DTYPES}, got {gemm_dtype!r}")


def _logits(
    hidden: torch.Tensor, weight: torch.Tensor, temperature: float, gemm_dtype: torch.dtype
) -> torch.Tensor:
    """[N, V] logits ``hidden @ weight.T`` taken in ``gemm_dtype``, then divided by ``temperature`` in the
    accumulator dtype."""
    acc = accumulator_dtype(hidden.dtype)
    return (hidden.to(gemm_dtype) @ weight.to(gemm_dtype).T).to(acc) / temperature


def token_logprobs_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    gemm_dtype: str = "input",
) -> torch.Tensor:
    """``log_softmax((hidden @ weight.T) / temperature).gather(targets)``, the product taken as ``gemm_dtype``
    says (:func:`gemm_dtype_of`) and the rest in the accumulator dtype: [N] float32 (float64 for float64
    hidden). Gradients flow to hidden and weight through plain autograd (whose gradient products run in the
    same dtype as the forward's). Arguments as :func:`fastprm.ops.token_logprobs`."""
    logits = _logits(hidden, weight, temperature, gemm_dtype_of(hidden.dtype, weight.dtype, gemm_dtype))
    return torch.log_softmax(logits, dim=-1).gather(1, targets.long()[:, None]).squeeze(1)


def reference_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    gemm_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward op's outputs, in the order of ``fastprm::token_logprobs_forward``: logprobs [N] and the
    per-row log-sum-exp [N] of the scaled logits (what the backward recomputes the softmax from)."""
    logits = _logits(hidden, weight, temperature, gemm_dtype)
    lse = torch.logsumexp(logits, dim=-1)
    return logits.gather(1, targets.long()[:, None]).squeeze(1) - lse, lse


def reference_backward(
    grad_logprobs: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    temperature: float,
    gemm_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fastprm::token_logprobs_backward``: with g = grad_logprobs [N], d loss / d logits = g * (onehot(targets)
    - softmax) / temperature in the accumulator dtype, projected back to grad_hidden [N, H] (hidden's dtype)
    and grad_weight [V, H] (weight's dtype) by products taken in ``gemm_dtype`` (d loss / d logits rounded to
    it first, as autograd through a ``gemm_dtype`` product has it)."""
    logits = _logits(hidden, weight, temperature, gemm_dtype)
    grad_logits = -torch.exp(logits - lse[:, None])
    grad_logits[torch.arange(targets.shape[0]), targets.long()] += 1.0
    grad_logits *= (grad_logprobs.to(logits.dtype) / temperature)[:, None]
    grad_logits = grad_logits.to(gemm_dtype)
    grad_hidden = grad_logits @ weight.to(gemm_dtype)
    grad_weight = grad_logits.T @ hidden.to(gemm_dtype)
    return grad_hidden.to(hidden.dtype), grad_weight.to(weight.dtype)
