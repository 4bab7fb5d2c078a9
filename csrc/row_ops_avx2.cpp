// AVX2 + FMA + F16C row primitives. Compiled with -mavx2 -mfma -mf16c; only called when the CPU has them.
#include <immintrin.h>

#include "row_ops.h"

namespace fastprm {
namespace avx2 {
namespace {

// Eight row elements widened to fp32.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8_bf16(const uint16_t* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
inline __m256 load8_f16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

struct F32 {
  using T = float;
  static __m256 load(const T* p) { return load8(p); }
  static float scalar(T v) { return v; }
  static void store(T* p, __m256 v) { _mm256_storeu_ps(p, v); }
  static T from_float(float v) { return v; }
};

struct BF16 {
  using T = uint16_t;
  static __m256 load(const T* p) { return load8_bf16(p); }
  static float scalar(T v) { return bf16_to_float(v); }
  static void store(T* p, __m256 v) {
    // Round to nearest even on the integer bits; NaN lanes become torch's canonical NaN.
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7fc0), is_nan);
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(rounded, rounded), 0xd8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }
  static T from_float(float v) { return float_to_bf16(v); }
};

struct F16 {
  using T = uint16_t;
  static __m256 load(const T* p) { return load8_f16(p); }
  static float scalar(T v) { return f16_to_float(v); }
  static void store(T* p, __m256 v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  static T from_float(float v) { return float_to_f16(v); }
};

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <class R>
void dot(const void* xv, const float* w, int C, int64_t H, float* out) {
  const typename R::T* x = static_cast<const typename R::T*>(xv);
  // Four accumulators per head row cover the FMA latency; the row is read once for both head rows.
  __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  __m256 b[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  const float* w1 = w + (C == 2 ? H : 0);
  int64_t h = 0;
  for (; h + 32 <= H; h += 32) {
    for (int u = 0; u < 4; ++u) {
      const __m256 xu = R::load(x + h + 8 * u);
      a[u] = _mm256_fmadd_ps(xu, _mm256_loadu_ps(w + h + 8 * u), a[u]);
      if (C == 2) b[u] = _mm256_fmadd_ps(xu, _mm256_loadu_ps(w1 + h + 8 * u), b[u]);
    }
  }
  for (; h + 8 <= H; h += 8) {
    const __m256 x0 = R::load(x + h);
    a[0] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(w + h), a[0]);
    if (C == 2) b[0] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(w1 + h), b[0]);
  }
  float s0 = hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
  float s1 = hsum(_mm256_add_ps(_mm256_add_ps(b[0], b[1]), _mm256_add_ps(b[2], b[3])));
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
  const __m256 g0 = _mm256_set1_ps(g[0]);
  const __m256 g1 = _mm256_set1_ps(C == 2 ? g[1] : 0.f);
  int64_t h = 0;
  for (; h + 8 <= H; h += 8) {
    __m256 v = _mm256_mul_ps(g0, _mm256_loadu_ps(w + h));
    if (C == 2) v = _mm256_fmadd_ps(g1, _mm256_loadu_ps(w + H + h), v);
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
    const __m256 gc = _mm256_set1_ps(g[c]);
    int64_t h = 0;
    for (; h + 8 <= len; h += 8) _mm256_storeu_ps(a + h, _mm256_fmadd_ps(gc, R::load(x + h), _mm256_loadu_ps(a + h)));
    for (; h < len; ++h) a[h] = __builtin_fmaf(g[c], R::scalar(x[h]), a[h]);
  }
}

template <class R>
RowOps make() {
  return {dot<R>, combine_store<R>, accumulate<R>};
}

}  // namespace

RowOps row_ops(DType dtype) {
  switch (dtype) {
    case DType::bf16:
      return make<BF16>();
    case DType::f16:
      return make<F16>();
    default:
      return make<F32>();
  }
}

}  // namespace avx2
}  // namespace fastprm
