"""fastprm's fused ops (documented public functions over torch.library ops)."""

from .rms_norm.api import rms_norm, rms_norm_reference
from .rotary.api import rotary_, rotary_reference_
from .silu_mul.api import silu_mul, silu_mul_reference
from .step_scoring.api import StepScores, find_steps, score_steps, score_steps_reference
from .step_sums import step_sums
from .swiglu_gemm.api import PackedGateUp, pack_gate_up, swiglu_gemm, swiglu_gemm_reference
from .token_logprobs.api import token_logprobs, token_logprobs_reference
from .varlen_attention.api import varlen_attention, varlen_attention_reference

__all__ = [
    "PackedGateUp",
    "StepScores",
    "find_steps",
    "pack_gate_up",
    "rms_norm",
    "rms_norm_reference",
    "rotary_",
    "rotary_reference_",
    "score_steps",
    "score_steps_reference",
    "silu_mul",
    "silu_mul_reference",
    "step_sums",
    "swiglu_gemm",
    "swiglu_gemm_reference",
    "token_logprobs",
    "token_logprobs_reference",
    "varlen_attention",
    "varlen_attention_reference",
]
