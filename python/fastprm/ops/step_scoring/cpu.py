"""CPU backend: the C++ kernels in ``csrc/``, with the reference as the fallback when the extension is missing.

Each function has the contract of its op in ``schema.py`` (arguments already checked by ``api.py``); the
reference functions named in the docstrings are the spec. The extension reads the torch tensors itself and
re-checks everything it dereferences; its outputs are fresh tensors (none shares memory with another, as a
registered op's outputs must not).
"""

from __future__ import annotations

from ..._native import native
from ...kernels.contract import check_steps
from .reference import find_steps_reference, reference_backward, reference_forward


def find_steps(input_ids, cu_seqlens, sep_token_ids):
    """``fastprm::find_steps`` (spec: ``find_steps_reference``): input_ids [N] and cu_seqlens [B + 1]
    int32/int64, sep_token_ids [S] int64 -> step_index [K], cu_steps [B + 1] int64."""
    if native is None:
        return find_steps_reference(input_ids, cu_seqlens, sep_token_ids)
    return native.find_steps(input_ids, cu_seqlens, sep_token_ids)


def score_steps_forward(hidden, weight, bias, step_index, cu_steps, positive_class, threshold):
    """``fastprm::score_steps_forward`` (spec: ``reference_forward``). hidden [N, H] float32 / bfloat16 /
    float16 / float64 with any strides; weight [C, H] and bias [C] of any float dtype and layout (used in the
    accumulator dtype); step_index [K] int64, or None in rows mode (hidden is [K, H], row k is step k);
    cu_steps [B + 1] int64."""
    if native is None:
        check_steps(step_index, cu_steps, hidden.shape[0])
        return reference_forward(hidden, weight, bias, step_index, cu_steps, positive_class, threshold)
    return native.score_forward(hidden, weight, bias, step_index, cu_steps, positive_class, threshold)


def score_steps_backward(grad_step_logits, hidden, weight, step_index):
    """``fastprm::score_steps_backward`` (spec: ``reference_backward``): grad_step_logits [K, C] contiguous in
    the accumulator dtype and step_index [K] int64 or None (rows mode) -> grad_hidden [N, H] (hidden's dtype,
    contiguous), grad_weight [C, H], grad_bias [C]."""
    if native is None:
        return reference_backward(grad_step_logits, hidden, weight, step_index)
    return native.score_backward(grad_step_logits, hidden, weight, step_index)
