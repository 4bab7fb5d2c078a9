// The decoder-layer kernels built for AVX2 + FMA + F16C; only called when the CPU has them.
#include "layer_ops_simd.h"
#include "simd_avx2.h"

namespace fastprm {
namespace avx2 {

LayerOps layer_ops() { return simd::LayerOpsOf<Vec8, F32, BF16, F16>::make(); }

}  // namespace avx2
}  // namespace fastprm
