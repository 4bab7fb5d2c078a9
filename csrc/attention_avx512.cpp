// The varlen attention kernel built for AVX-512 (F + BW + VL); only called when the CPU has them. With
// AVX512-BF16 (native_bf16), bf16 attention runs its products as bf16 pair dot products.
#include "attention_simd.h"
#include "simd_avx512.h"

namespace fastprm {
namespace avx512 {

bool attention_supported(int head_dim) { return simd::Attention<Vec16, F32>::supported(head_dim); }

void varlen_attention(const AttentionArgs& args, bool native_bf16) {
  switch (args.dtype) {
    case DType::bf16:
      if (native_bf16) return simd::Attention<Vec16, BF16Pairs>::run(args);
      return simd::Attention<Vec16, BF16>::run(args);
    case DType::f16:
      return simd::Attention<Vec16, F16>::run(args);
    default:
      return simd::Attention<Vec16, F32>::run(args);
  }
}

}  // namespace avx512
}  // namespace fastprm
