"""Operator schemas of the step-scoring op, their fake (meta) implementations and autograd.

Device kernels live in per-device backends (``cpu.py``, ``cuda.py``) and register themselves against these
schemas, so the public function, torch.compile and autograd see one op whatever the device.
"""

from __future__ import annotations

import torch

from .grad import step_logit_grad

torch.library.define(
    "fastprm::find_steps",
    "(Tensor input_ids, Tensor cu_seqlens, Tensor sep_token_ids) -> (Tensor step_index, Tensor cu_steps)",
)
torch.library.define(
    "fastprm::score_steps_forward",
    "(Tensor hidden, Tensor weight, Tensor? bias, Tensor step_index, Tensor cu_steps, int positive_class, "
    "float threshold) -> (Tensor step_logits, Tensor step_probs, Tensor min, Tensor log_prod, Tensor mean, "
    "Tensor last, Tensor first_error, Tensor argmin)",
)
torch.library.define(
    "fastprm::score_steps_backward",
    "(Tensor grad_step_logits, Tensor hidden, Tensor weight, Tensor step_index) "
    "-> (Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)",
)


def accumulator_dtype(hidden_dtype: torch.dtype) -> torch.dtype:
    """Outputs and accumulation are float32, except that float64 inputs stay float64."""
    return torch.float64 if hidden_dtype == torch.float64 else torch.float32


@torch.library.register_fake("fastprm::find_steps")
def _find_steps_fake(input_ids, cu_seqlens, sep_token_ids):
    num_steps = torch.library.get_ctx().new_dynamic_size()
    return (
        input_ids.new_empty(num_steps, dtype=torch.int64),
        cu_seqlens.new_empty(cu_seqlens.shape[0], dtype=torch.int64),
    )


@torch.library.register_fake("fastprm::score_steps_forward")
def _forward_fake(hidden, weight, bias, step_index, cu_steps, positive_class, threshold):
    K, B, C = step_index.shape[0], cu_steps.shape[0] - 1, weight.shape[0]
    acc = accumulator_dtype(hidden.dtype)
    per_seq = [hidden.new_empty(B, dtype=acc) for _ in range(4)]
    return (
        hidden.new_empty(K, C, dtype=acc),
        hidden.new_empty(K, dtype=acc),
        *per_seq,
        hidden.new_empty(B, dtype=torch.int64),
        hidden.new_empty(B, dtype=torch.int64),
    )


@torch.library.register_fake("fastprm::score_steps_backward")
def _backward_fake(grad_step_logits, hidden, weight, step_index):
    acc = accumulator_dtype(hidden.dtype)
    return (
        torch.empty_like(hidden, memory_format=torch.contiguous_format),
        weight.new_empty(weight.shape, dtype=acc),
        weight.new_empty(weight.shape[0], dtype=acc),
    )


def setup_context(ctx, inputs, output):
    hidden, weight, bias, step_index, cu_steps, positive_class, _threshold = inputs
    step_logits, step_probs, *_, argmin = output
    ctx.save_for_backward(hidden, weight, step_index, cu_steps, step_logits, step_probs, argmin)
    ctx.positive_class = positive_class
    ctx.has_bias = bias is not None
    ctx.bias_dtype = bias.dtype if bias is not None else None


def backward(ctx, g_logits, g_probs, g_min, g_log_prod, g_mean, g_last, _g_first_error, _g_argmin):
    hidden, weight, step_index, cu_steps, step_logits, step_probs, argmin = ctx.saved_tensors
    grad_step_logits = step_logit_grad(
        step_logits, step_probs, cu_steps, argmin, ctx.positive_class,
        g_logits, g_probs, g_min, g_log_prod, g_mean, g_last,
    )  # fmt: skip
    grad_hidden, grad_weight, grad_bias = torch.ops.fastprm.score_steps_backward(
        grad_step_logits, hidden, weight, step_index
    )
    return (
        grad_hidden,
        grad_weight.to(weight.dtype),
        grad_bias.to(ctx.bias_dtype) if ctx.has_bias else None,
        None,
        None,
        None,
        None,
    )


torch.library.register_autograd("fastprm::score_steps_forward", backward, setup_context=setup_context)


class EagerCPUForward(torch.autograd.Function):
    """The same forward and autograd for eager CPU calls, without the dispatcher round trip (which costs
    more than the kernel on small batches). torch.compile always goes through the registered op."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, step_index, cu_steps, positive_class, threshold):
        from .cpu import score_steps_forward

        inputs = (hidden, weight, bias, step_index, cu_steps, positive_class, threshold)
        output = score_steps_forward(*inputs)
        setup_context(ctx, inputs, output)
        ctx.mark_non_differentiable(output[6], output[7])
        return output

    @staticmethod
    def backward(ctx, *grads):
        return backward(ctx, *grads)
