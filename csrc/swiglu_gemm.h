// The first half of a SwiGLU MLP as one GEMM with the activation in its epilogue, for CPUs with AVX512-BF16:
//
//   out [M, I] = bf16( silu(x Wg^T) * (x Wu^T) )      x [M, K], Wg and Wu [I, K], all bf16
//
// Each product of two bf16 values is exact in fp32; vdpbf16ps sums them in pairs into fp32 accumulators, and
// the gate and up sums of a column stay in registers until SiLU and the product, which are rounded once. So
// the [M, I] gate and up outputs are never written (oneDNN's post-op route writes the gate output and reads
// it back in the up GEMM), and the result is closer to the fp32 math than transformers' three roundings.
//
// The weights are packed once (swiglu_gemm_pack): per block of 16 output columns, per pair of inputs k, the
// 16 gate pairs then the 16 up pairs, zero-padded to whole blocks and pairs.
#pragma once

#include <cstdint>

namespace fastprm {

struct SwigluGemmPackArgs {
  int64_t intermediate, hidden;        // I, K
  const uint16_t* gate;                // [I, K] bf16, rows gate_stride elements apart, K contiguous
  const uint16_t* up;                  // [I, K] likewise
  int64_t gate_stride, up_stride;
  uint16_t* packed;                    // swiglu_gemm_packed_size(I, K) bf16
};

struct SwigluGemmArgs {
  int64_t rows, intermediate, hidden;  // M, I, K
  const uint16_t* x;                   // [M, K] bf16, rows x_stride elements apart, K contiguous
  int64_t x_stride;
  const uint16_t* packed;              // from swiglu_gemm_pack with the same I and K
  uint16_t* out;                       // [M, I] contiguous bf16
  int threads;
};

// Elements of the packed weights: ceil(I / 16) blocks x ceil(K / 2) pairs x (16 gate + 16 up) pairs.
inline int64_t swiglu_gemm_packed_size(int64_t intermediate, int64_t hidden) {
  return (intermediate + 15) / 16 * ((hidden + 1) / 2) * 64;
}

#if defined(__x86_64__) || defined(_M_X64)
namespace avx512 {
// Both need AVX512-BF16 (Isa::avx512_bf16).
void swiglu_gemm_pack(const SwigluGemmPackArgs& args);
void swiglu_gemm(const SwigluGemmArgs& args);
}  // namespace avx512
#endif

}  // namespace fastprm
