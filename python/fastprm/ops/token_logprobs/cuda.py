"""CUDA backend: the chunked loop of ``chunked.py`` (cuBLAS GEMMs, in the call's GEMM dtype as on CPU) with the
Triton row kernels of ``fastprm.kernels.token_logprobs`` (imported on first use, so Triton stays optional).
float64 exists for gradcheck only: it takes the reference, which computes it exactly."""

from __future__ import annotations

import torch

from . import chunked
from .reference import reference_backward, reference_forward


def token_logprobs_forward(hidden, weight, targets, temperature, chunk_size, row_chunk_size, gemm_dtype):
    """``fastprm::token_logprobs_forward`` on CUDA."""
    if hidden.dtype == torch.float64:
        return reference_forward(hidden, weight, targets, temperature, gemm_dtype)
    from fastprm.kernels import token_logprobs as triton_kernels

    return chunked.forward(
        hidden, weight, targets, temperature, chunk_size, row_chunk_size, gemm_dtype, triton_kernels
    )


def token_logprobs_backward(
    grad_logprobs, hidden, weight, targets, lse, temperature, chunk_size, row_chunk_size, gemm_dtype
):
    """``fastprm::token_logprobs_backward`` on CUDA."""
    if hidden.dtype == torch.float64:
        return reference_backward(grad_logprobs, hidden, weight, targets, lse, temperature, gemm_dtype)
    from fastprm.kernels import token_logprobs as triton_kernels

    return chunked.backward(
        grad_logprobs,
        hidden,
        weight,
        targets,
        lse,
        temperature,
        chunk_size,
        row_chunk_size,
        gemm_dtype,
        triton_kernels,
    )
