"""Operator schemas of the step-scoring op, their fake (meta) implementations, autograd, and the routes into
the per-device backends.

The ops are defined here and the backends' kernels registered against them, so torch.compile, autograd and
every device see one op. Eager CPU calls skip the dispatcher (which costs more than the kernel on a small
call) and go straight to the C++ backend, through :class:`EagerCPUForward` only when a gradient is needed.
"""

from __future__ import annotations

import torch

from ...kernels.contract import accumulator_dtype, step_count
from . import cpu, cuda
from .grad import OutputGrads, step_logit_grad

torch.library.define(
    "fastprm::find_steps",
    "(Tensor input_ids, Tensor cu_seqlens, Tensor sep_token_ids) -> (Tensor step_index, Tensor cu_steps)",
)
# The forward op's outputs, in order: differentiable floats, then integers without a gradient (argmin, the
# global step index of each sequence's min, is the backward's record of where the min's gradient goes).
FORWARD_OUTPUTS = (
    "step_logits", "step_probs", "min", "log_prod", "prod", "mean", "last", "first_error", "num_steps", "argmin",
)  # fmt: skip
_INTEGER_OUTPUTS = slice(FORWARD_OUTPUTS.index("first_error"), len(FORWARD_OUTPUTS))

# step_index is None in rows mode (forward and backward): hidden holds exactly the step rows, row k being step k.
torch.library.define(
    "fastprm::score_steps_forward",
    "(Tensor hidden, Tensor weight, Tensor? bias, Tensor? step_index, Tensor cu_steps, int positive_class, "
    "float threshold) -> (" + ", ".join(f"Tensor {name}" for name in FORWARD_OUTPUTS) + ")",
)
torch.library.define(
    "fastprm::score_steps_backward",
    "(Tensor grad_step_logits, Tensor hidden, Tensor weight, Tensor? step_index) "
    "-> (Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)",
)

for _device, _backend in (("cpu", cpu), ("cuda", cuda)):
    torch.library.register_kernel("fastprm::find_steps", _device, _backend.find_steps)
    torch.library.register_kernel("fastprm::score_steps_forward", _device, _backend.score_steps_forward)
    torch.library.register_kernel("fastprm::score_steps_backward", _device, _backend.score_steps_backward)


@torch.library.register_fake("fastprm::find_steps")
def _find_steps_fake(input_ids, cu_seqlens, sep_token_ids):
    num_steps = torch.library.get_ctx().new_dynamic_size()
    return (
        input_ids.new_empty(num_steps, dtype=torch.int64),
        cu_seqlens.new_empty(cu_seqlens.shape[0], dtype=torch.int64),
    )


@torch.library.register_fake("fastprm::score_steps_forward")
def _forward_fake(hidden, weight, bias, step_index, cu_steps, positive_class, threshold):
    K, B, C = step_count(step_index, hidden.shape[0]), cu_steps.shape[0] - 1, weight.shape[0]
    acc = accumulator_dtype(hidden.dtype)
    return (
        hidden.new_empty(K, C, dtype=acc),
        hidden.new_empty(K, dtype=acc),
        *(hidden.new_empty(B, dtype=acc) for _ in range(5)),
        *(hidden.new_empty(B, dtype=torch.int64) for _ in range(3)),
    )


@torch.library.register_fake("fastprm::score_steps_backward")
def _backward_fake(grad_step_logits, hidden, weight, step_index):
    acc = accumulator_dtype(hidden.dtype)
    return (
        torch.empty_like(hidden, memory_format=torch.contiguous_format),
        weight.new_empty(weight.shape, dtype=acc),
        weight.new_empty(weight.shape[0], dtype=acc),
    )


def _setup_context(ctx, inputs, output) -> None:
    hidden, weight, bias, step_index, cu_steps, positive_class, _threshold = inputs
    step_logits, step_probs, _min, _log_prod, prod, *_, argmin = output
    ctx.save_for_backward(hidden, weight, step_index, cu_steps, step_logits, step_probs, prod, argmin)
    ctx.positive_class = positive_class
    ctx.bias_dtype = None if bias is None else bias.dtype


def _input_grads(ctx, output_grads: tuple, project_back) -> tuple:
    """Gradients of the forward op's inputs. ``project_back`` is the backward op (dispatcher or backend)."""
    hidden, weight, step_index, cu_steps, step_logits, step_probs, prod, argmin = ctx.saved_tensors
    differentiable = OutputGrads(*output_grads[: _INTEGER_OUTPUTS.start])
    grad_step_logits = step_logit_grad(
        step_logits, step_probs, prod, cu_steps, argmin, ctx.positive_class, differentiable
    )
    grad_hidden, grad_weight, grad_bias = project_back(grad_step_logits, hidden, weight, step_index)
    return (
        grad_hidden,
        grad_weight.to(weight.dtype),
        None if ctx.bias_dtype is None else grad_bias.to(ctx.bias_dtype),
        None,
        None,
        None,
        None,
    )


def _backward(ctx, *output_grads):
    return _input_grads(ctx, output_grads, torch.ops.fastprm.score_steps_backward)


torch.library.register_autograd("fastprm::score_steps_forward", _backward, setup_context=_setup_context)


class EagerCPUForward(torch.autograd.Function):
    """The op's forward and autograd for eager CPU calls that need a gradient, without the dispatcher."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, step_index, cu_steps, positive_class, threshold):
        inputs = (hidden, weight, bias, step_index, cu_steps, positive_class, threshold)
        output = cpu.score_steps_forward(*inputs)
        _setup_context(ctx, inputs, output)
        ctx.mark_non_differentiable(*output[_INTEGER_OUTPUTS])
        ctx.set_materialize_grads(False)  # outputs the loss does not use give None, not zeros to add up
        return output

    @staticmethod
    def backward(ctx, *output_grads):
        return _input_grads(ctx, output_grads, cpu.score_steps_backward)


def _eager_cpu(device: torch.device) -> bool:
    return device.type == "cpu" and not torch.compiler.is_compiling()


def find_steps(input_ids: torch.Tensor, cu_seqlens: torch.Tensor, sep_token_ids: torch.Tensor):
    """Runs ``fastprm::find_steps`` on checked arguments (see :func:`fastprm.ops.find_steps`)."""
    if _eager_cpu(input_ids.device):
        return cpu.find_steps(input_ids, cu_seqlens, sep_token_ids)
    return torch.ops.fastprm.find_steps(input_ids, cu_seqlens, sep_token_ids)


def score_steps_forward(*args) -> tuple[torch.Tensor, ...]:
    """Runs ``fastprm::score_steps_forward`` on checked arguments (its schema's, in order), with autograd when
    an input needs a gradient."""
    hidden, weight, bias = args[:3]
    if not _eager_cpu(hidden.device):
        return torch.ops.fastprm.score_steps_forward(*args)
    if torch.is_grad_enabled() and (
        hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return EagerCPUForward.apply(*args)
    return cpu.score_steps_forward(*args)
