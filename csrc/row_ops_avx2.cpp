// AVX2 + FMA + F16C row primitives. Compiled with -mavx2 -mfma -mf16c; only called when the CPU has them.
#include "simd_avx2.h"

#include "row_ops_simd.h"

namespace fastprm {
namespace avx2 {

RowOps row_ops(DType dtype) {
  switch (dtype) {
    case DType::bf16:
      return simd::make<Vec8, BF16>();
    case DType::f16:
      return simd::make<Vec8, F16>();
    default:
      return simd::make<Vec8, F32>();
  }
}

}  // namespace avx2
}  // namespace fastprm
