// AVX-512 (F + BW + VL) row primitives; the bf16 store uses AVX512-BF16's vcvtneps2bf16 where present.
// Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512bf16 -mfma -mf16c; only called when the CPU has them.
#include <immintrin.h>

#include "row_ops.h"

namespace fastprm {
namespace avx512 {
namespace {

struct F32 {
  using T = float;
  static __m512 load(const T* p) { return _mm512_loadu_ps(p); }
  static float scalar(T v) { return v; }
  static void store(T* p, __m512 v) { _mm512_storeu_ps(p, v); }
  static T from_float(float v) { return v; }
};

struct BF16 {
  using T = uint16_t;
  static __m512 load(const T* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  static float scalar(T v) { return bf16_to_float(v); }
  static void store(T* p, __m512 v) {
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 is_nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    rounded = _mm512_mask_mov_epi32(rounded, is_nan, _mm512_set1_epi32(0x7fc0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(rounded));
  }
  static T from_float(float v) { return float_to_bf16(v); }
};

// Same as BF16 but rounds with the AVX512-BF16 instruction (round to nearest even, as torch).
struct BF16Native : BF16 {
  static void store(T* p, __m512 v) {
    const __m256bh packed = _mm512_cvtneps_pbh(v);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)packed);
  }
};

struct F16 {
  using T = uint16_t;
  static __m512 load(const T* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static float scalar(T v) { return f16_to_float(v); }
  static void store(T* p, __m512 v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  static T from_float(float v) { return float_to_f16(v); }
};

template <class R>
void dot(const void* xv, const float* w, int C, int64_t H, float* out) {
  const typename R::T* x = static_cast<const typename R::T*>(xv);
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
  const float* w1 = w + (C == 2 ? H : 0);
  int64_t h = 0;
  for (; h + 32 <= H; h += 32) {
    const __m512 x0 = R::load(x + h), x1 = R::load(x + h + 16);
    a0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(w + h), a0);
    a1 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(w + h + 16), a1);
    if (C == 2) {
      b0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(w1 + h), b0);
      b1 = _mm512_fmadd_ps(x1, _mm512_loadu_ps(w1 + h + 16), b1);
    }
  }
  for (; h + 16 <= H; h += 16) {
    const __m512 x0 = R::load(x + h);
    a0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(w + h), a0);
    if (C == 2) b0 = _mm512_fmadd_ps(x0, _mm512_loadu_ps(w1 + h), b0);
  }
  float s0 = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
  float s1 = _mm512_reduce_add_ps(_mm512_add_ps(b0, b1));
  for (; h < H; ++h) {
    const float xs = R::scalar(x[h]);
    s0 += xs * w[h];
    if (C == 2) s1 += xs * w1[h];
  }
  out[0] = s0;
  if (C == 2) out[1] = s1;
}

template <class R>
void combine_store(void* yv, const float* w, int C, const float* g, int64_t H) {
  typename R::T* y = static_cast<typename R::T*>(yv);
  const __m512 g0 = _mm512_set1_ps(g[0]);
  const __m512 g1 = _mm512_set1_ps(C == 2 ? g[1] : 0.f);
  int64_t h = 0;
  for (; h + 16 <= H; h += 16) {
    __m512 v = _mm512_mul_ps(g0, _mm512_loadu_ps(w + h));
    if (C == 2) v = _mm512_fmadd_ps(g1, _mm512_loadu_ps(w + H + h), v);
    R::store(y + h, v);
  }
  for (; h < H; ++h) {
    float v = g[0] * w[h];
    if (C == 2) v = __builtin_fmaf(g[1], w[H + h], v);
    y[h] = R::from_float(v);
  }
}

template <class R>
void accumulate(float* acc, int64_t ld, const void* xv, int C, const float* g, int64_t len) {
  const typename R::T* x = static_cast<const typename R::T*>(xv);
  for (int c = 0; c < C; ++c) {
    float* a = acc + c * ld;
    const __m512 gc = _mm512_set1_ps(g[c]);
    int64_t h = 0;
    for (; h + 16 <= len; h += 16) _mm512_storeu_ps(a + h, _mm512_fmadd_ps(gc, R::load(x + h), _mm512_loadu_ps(a + h)));
    for (; h < len; ++h) a[h] = __builtin_fmaf(g[c], R::scalar(x[h]), a[h]);
  }
}

template <class R>
RowOps make() {
  return {dot<R>, combine_store<R>, accumulate<R>};
}

}  // namespace

RowOps row_ops(DType dtype, bool native_bf16) {
  switch (dtype) {
    case DType::bf16:
      return native_bf16 ? make<BF16Native>() : make<BF16>();
    case DType::f16:
      return make<F16>();
    default:
      return make<F32>();
  }
}

}  // namespace avx512
}  // namespace fastprm
