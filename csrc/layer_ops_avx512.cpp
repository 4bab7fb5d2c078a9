// The decoder-layer kernels built for AVX-512 (F + BW + VL); bf16 stores use AVX512-BF16 where present.
#include "layer_ops_simd.h"
#include "simd_avx512.h"

namespace fastprm {
namespace avx512 {

LayerOps layer_ops(bool native_bf16) {
  return native_bf16 ? simd::LayerOpsOf<Vec16, F32, BF16Native, F16>::make()
                     : simd::LayerOpsOf<Vec16, F32, BF16, F16>::make();
}

}  // namespace avx512
}  // namespace fastprm
