"""Operator schemas of the token log-probability op, their fake (meta) implementations, autograd, and the
routes into the per-device backends.

Eager CPU calls skip the dispatcher and go straight to the CPU backend, through :class:`EagerCPUForward` only
when a gradient is needed (as ``fastprm.ops.step_scoring.schema`` does).
"""

from __future__ import annotations

import torch

from ...kernels.contract import accumulator_dtype
from . import cpu, cuda

# gemm_dtype is the dtype the matrix products run in (api.py resolves the public "input" / "float32").
_OPTIONS = "float temperature, int chunk_size, int row_chunk_size, ScalarType gemm_dtype"
torch.library.define(
    "fastprm::token_logprobs_forward",
    f"(Tensor hidden, Tensor weight, Tensor targets, {_OPTIONS}) -> (Tensor logprobs, Tensor lse)",
)
torch.library.define(
    "fastprm::token_logprobs_backward",
    f"(Tensor grad_logprobs, Tensor hidden, Tensor weight, Tensor targets, Tensor lse, {_OPTIONS}) "
    "-> (Tensor grad_hidden, Tensor grad_weight)",
)

for _device, _backend in (("cpu", cpu), ("cuda", cuda)):
    torch.library.register_kernel("fastprm::token_logprobs_forward", _device, _backend.token_logprobs_forward)
    torch.library.register_kernel(
        "fastprm::token_logprobs_backward", _device, _backend.token_logprobs_backward
    )


@torch.library.register_fake("fastprm::token_logprobs_forward")
def _forward_fake(hidden, weight, targets, temperature, chunk_size, row_chunk_size, gemm_dtype):
    acc = accumulator_dtype(hidden.dtype)
    return hidden.new_empty(hidden.shape[0], dtype=acc), hidden.new_empty(hidden.shape[0], dtype=acc)


@torch.library.register_fake("fastprm::token_logprobs_backward")
def _backward_fake(
    grad_logprobs, hidden, weight, targets, lse, temperature, chunk_size, row_chunk_size, gemm_dtype
):
    return hidden.new_empty(hidden.shape), weight.new_empty(weight.shape)


def _setup_context(ctx, inputs, output) -> None:
    hidden, weight, targets, *options = inputs
    ctx.save_for_backward(hidden, weight, targets, output[1])
    ctx.options = options  # temperature, chunk_size, row_chunk_size, gemm_dtype


# The forward op's inputs after hidden and weight (targets and the options) have no gradient.
_NO_GRADS = (None,) * 5


def _input_grads(ctx, grad_logprobs, project_back) -> tuple:
    """Gradients of the forward op's inputs (lse is internal: its gradient is ignored). ``project_back`` is
    the backward op (dispatcher or backend)."""
    hidden, weight, targets, lse = ctx.saved_tensors
    if grad_logprobs is None:
        return None, None, *_NO_GRADS
    grad_hidden, grad_weight = project_back(
        grad_logprobs.contiguous(), hidden, weight, targets, lse, *ctx.options
    )
    return grad_hidden, grad_weight, *_NO_GRADS


def _backward(ctx, grad_logprobs, _grad_lse):
    return _input_grads(ctx, grad_logprobs, torch.ops.fastprm.token_logprobs_backward)


torch.library.register_autograd("fastprm::token_logprobs_forward", _backward, setup_context=_setup_context)


class EagerCPUForward(torch.autograd.Function):
    """The op's forward and autograd for eager CPU calls that need a gradient, without the dispatcher."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, chunk_size, row_chunk_size, gemm_dtype):
        inputs = (hidden, weight, targets, temperature, chunk_size, row_chunk_size, gemm_dtype)
        output = cpu.token_logprobs_forward(*inputs)
        _setup_context(ctx, inputs, output)
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        return output

    @staticmethod
    def backward(ctx, grad_logprobs, _grad_lse):
        return _input_grads(ctx, grad_logprobs, cpu.token_logprobs_backward)


def token_logprobs_forward(*args) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs ``fastprm::token_logprobs_forward`` on checked arguments (its schema's, in order), with autograd
    when an input needs a gradient."""
    hidden, weight = args[:2]
    if hidden.device.type != "cpu" or torch.compiler.is_compiling():
        return torch.ops.fastprm.token_logprobs_forward(*args)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return EagerCPUForward.apply(*args)
    return cpu.token_logprobs_forward(*args)
