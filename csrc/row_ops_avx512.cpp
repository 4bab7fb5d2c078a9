// AVX-512 (F + BW + VL) row primitives; the bf16 store uses AVX512-BF16's vcvtneps2bf16 where present.
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512bf16 -mfma -mf16c; only called when the CPU has them.
#include "simd_avx512.h"

#include "row_ops_simd.h"

namespace fastprm {
namespace avx512 {

RowOps row_ops(DType dtype, bool native_bf16) {
  switch (dtype) {
    case DType::bf16:
      return native_bf16 ? simd::make<Vec16, BF16Native>() : simd::make<Vec16, BF16>();
    case DType::f16:
      return simd::make<Vec16, F16>();
    default:
      return simd::make<Vec16, F32>();
  }
}

}  // namespace avx512
}  // namespace fastprm
