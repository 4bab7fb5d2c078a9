// The first half of a SwiGLU MLP as one GEMM with the activation in its epilogue, on CPUs with AVX-512:
//
//   out [M, I] = silu(x Wg^T) * (x Wu^T)      x [M, K], Wg and Wu [I, K], all fp32 or all bf16
//
// The gate and up sums of a column stay in fp32 registers until SiLU and the product, which are rounded once
// to the dtype: the [M, I] gate and up outputs are never written (oneDNN's post-op route writes the gate
// output and reads it back in the up GEMM). bf16 (AVX512-BF16): each product of two bf16 values is exact in
// fp32 and vdpbf16ps sums them in pairs, so the result is closer to the fp32 math than transformers' three
// roundings (after each GEMM and after SiLU). fp32: FMAs.
//
// The weights are packed once (swiglu_gemm_pack): per block of 16 output columns, per step of inputs (one
// fp32 input, or a pair of bf16 ones), the 16 gate columns' inputs then the 16 up columns', zero-padded to
// whole blocks and steps.
#pragma once

#include <cstdint>

#include "row_ops.h"

namespace fastprm {

struct SwigluGemmPackArgs {
  DType dtype;                  // f32 or bf16, of the weights and the packed copy
  int64_t intermediate, hidden;  // I, K
  const void* gate;              // [I, K], rows gate_stride elements apart, K contiguous
  const void* up;                // [I, K] likewise
  int64_t gate_stride, up_stride;
  void* packed;  // swiglu_gemm_packed_size(dtype, I, K) elements
};

struct SwigluGemmArgs {
  DType dtype;                         // f32 or bf16, of x, the packed weights and out
  int64_t rows, intermediate, hidden;  // M, I, K
  const void* x;                       // [M, K], rows x_stride elements apart, K contiguous
  int64_t x_stride;
  const void* packed;  // from swiglu_gemm_pack with the same dtype, I and K
  void* out;           // [M, I] contiguous
  int threads;
};

// Inputs per step: a bf16 pair feeds one vdpbf16ps, an fp32 value one FMA.
inline int64_t swiglu_gemm_step_inputs(DType dtype) { return dtype == DType::bf16 ? 2 : 1; }

// Elements of the packed weights: ceil(I / 16) blocks x ceil(K / step) steps x (16 gate + 16 up) x step.
inline int64_t swiglu_gemm_packed_size(DType dtype, int64_t intermediate, int64_t hidden) {
  const int64_t step = swiglu_gemm_step_inputs(dtype);
  return (intermediate + 15) / 16 * ((hidden + step - 1) / step) * 32 * step;
}

#if defined(__x86_64__) || defined(_M_X64)
namespace avx512 {
// fp32 needs AVX-512 (Isa::avx512), bf16 AVX512-BF16 (Isa::avx512_bf16).
void swiglu_gemm_pack(const SwigluGemmPackArgs& args);
void swiglu_gemm(const SwigluGemmArgs& args);
}  // namespace avx512
#endif

}  // namespace fastprm
