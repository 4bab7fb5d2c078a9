// The varlen attention kernel built for AVX2 + FMA; only called when the CPU has them.
#include "attention_simd.h"
#include "simd_avx2.h"

namespace fastprm {
namespace avx2 {

bool attention_supported(int head_dim) { return simd::Attention<Vec8, F32>::supported(head_dim); }

void varlen_attention(const AttentionArgs& args) {
  switch (args.dtype) {
    case DType::bf16:
      return simd::Attention<Vec8, BF16>::run(args);
    case DType::f16:
      return simd::Attention<Vec8, F16>::run(args);
    default:
      return simd::Attention<Vec8, F32>::run(args);
  }
}

}  // namespace avx2
}  // namespace fastprm
