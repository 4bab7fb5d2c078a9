// AVX512 vector and element types shared by the avx512 kernel files (row ops, attention). Include
// only from files compiled with the avx512 flags of CMakeLists.txt: everything here has internal linkage, so
// each file gets its own copy built with its own instruction set.
#pragma once

#include <immintrin.h>

#include "row_ops.h"
#include "simd_math.h"

namespace fastprm {
namespace avx512 {
namespace {

struct Vec16 {
  using Reg = __m512;
  static constexpr int kWidth = 16;
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg set1(float v) { return _mm512_set1_ps(v); }
  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, Reg v) { _mm512_storeu_ps(p, v); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm512_mul_ps(a, b); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(Reg v) { return _mm512_reduce_add_ps(v); }
  static Reg sub(Reg a, Reg b) { return _mm512_sub_ps(a, b); }
  static Reg div(Reg a, Reg b) { return _mm512_div_ps(a, b); }
  static Reg max(Reg a, Reg b) { return _mm512_max_ps(a, b); }
  static float max_of(Reg v) { return _mm512_reduce_max_ps(v); }
  // 2^x: x = n + f with n = round(x), |f| <= 1/2, 2^f by simd::exp2_fraction, then scaled by 2^n with vscalefps, which flushes to 0 below the normal range. x is clamped to [-150, 128]
  // first, so x = -inf gives 0 rather than NaN.
  static Reg exp2(Reg x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-150.f)), _mm512_set1_ps(128.f));
    const Reg n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const Reg f = _mm512_sub_ps(x, n);
    const Reg p = simd::exp2_fraction<Vec16>(f);
    return _mm512_scalef_ps(p, n);
  }
  // Rows of a register tile in the attention micro-kernels: 4 rows x 4 vectors = 16 of the 32 registers.
  static constexpr int kTileRows = 4;
};

struct F32 {
  using T = float;
  static __m512 load(const T* p) { return _mm512_loadu_ps(p); }
  static void store(T* p, __m512 v) { _mm512_storeu_ps(p, v); }
  static float scalar(T v) { return v; }
  static T from_float(float v) { return v; }
};

struct BF16 {
  using T = uint16_t;
  static __m512 load(const T* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  static void store(T* p, __m512 v) {
    // Round to nearest even on the integer bits; NaN lanes become torch's canonical NaN.
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 is_nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    rounded = _mm512_mask_mov_epi32(rounded, is_nan, _mm512_set1_epi32(0x7fc0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(rounded));
  }
  static float scalar(T v) { return bf16_to_float(v); }
  static T from_float(float v) { return float_to_bf16(v); }
};

// Same as BF16 but rounds with the AVX512-BF16 instruction (round to nearest even, as torch).
struct BF16Native : BF16 {
  static void store(T* p, __m512 v) {
    const __m256bh packed = _mm512_cvtneps_pbh(v);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)packed);
  }
};

// BF16Native whose attention products run as AVX512-BF16 dot products over bf16 pairs (attention_simd.h): a
// 32-bit word holds a pair, its first element in the low half.
struct BF16Pairs : BF16Native {
  static constexpr bool kPairDot = true;
  static __m512 pairs(const uint32_t* p) { return _mm512_castsi512_ps(_mm512_loadu_si512(p)); }
  // acc + a0 b0 + a1 b1 in each fp32 lane, (a0, a1) = `pair` and (b0, b1) the lane's pair of b (vdpbf16ps).
  static __m512 dot(__m512 acc, uint32_t pair, __m512 b) {
    return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_set1_epi32(static_cast<int>(pair)), (__m512bh)_mm512_castps_si512(b));
  }
  // Pairs with the second element zeroed.
  static __m512 first_of_pairs(__m512 b) {
    return _mm512_castsi512_ps(_mm512_maskz_mov_epi16(0x55555555u, _mm512_castps_si512(b)));
  }
  // The 32 values lo, hi rounded to bf16 (nearest even), in order, as 16 pairs.
  static void to_pairs(uint32_t* out, __m512 lo, __m512 hi) {
    _mm512_storeu_si512(out, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  }
};

struct F16 {
  using T = uint16_t;
  static __m512 load(const T* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static void store(T* p, __m512 v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  static float scalar(T v) { return f16_to_float(v); }
  static T from_float(float v) { return float_to_f16(v); }
};

}  // namespace
}  // namespace avx512
}  // namespace fastprm
