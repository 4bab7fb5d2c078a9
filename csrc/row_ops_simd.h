// The row primitives of row_ops.h written once over a SIMD vector type, for the x86 ISA files.
//
// Each ISA file (compiled with its own -m flags) defines, in its anonymous namespace:
//   V: an fp32 vector: Reg, kWidth, zero(), set1(v), load(p), store(p, r), add(a, b), mul(a, b),
//      fmadd(a, b, c) = a * b + c, sum(r) = horizontal sum;
//   row element types R (F32, BF16, F16): T (the stored element), load(p) -> V::Reg of kWidth elements
//      widened to fp32, store(p, r) rounded to T, scalar(t) -> float, from_float(f) -> T;
// and then includes this header. Every function here is a template over those types, which have internal
// linkage, so each ISA gets its own instantiations: code built with AVX-512 is never shared with the AVX2 path.
#pragma once

#include <cstdint>

#include "row_ops.h"

namespace fastprm {
namespace simd {

template <class V, class R>
void dot(const void* xv, const float* w, int C, int64_t H, float* out) {
  using Reg = typename V::Reg;
  constexpr int W = V::kWidth;
  constexpr int kUnroll = 32 / W;  // 32 elements a step: enough independent FMAs to cover their latency
  const typename R::T* x = static_cast<const typename R::T*>(xv);
  const float* w1 = w + (C == 2 ? H : 0);  // the row is read once for both head rows
  Reg a[kUnroll], b[kUnroll];
  for (int u = 0; u < kUnroll; ++u) a[u] = b[u] = V::zero();
  int64_t h = 0;
  for (; h + 32 <= H; h += 32) {
    for (int u = 0; u < kUnroll; ++u) {
      const Reg xu = R::load(x + h + W * u);
      a[u] = V::fmadd(xu, V::load(w + h + W * u), a[u]);
      if (C == 2) b[u] = V::fmadd(xu, V::load(w1 + h + W * u), b[u]);
    }
  }
  for (; h + W <= H; h += W) {
    const Reg x0 = R::load(x + h);
    a[0] = V::fmadd(x0, V::load(w + h), a[0]);
    if (C == 2) b[0] = V::fmadd(x0, V::load(w1 + h), b[0]);
  }
  // Pairwise: ((a0 + a1) + (a2 + a3)) for four accumulators.
  for (int step = 1; step < kUnroll; step *= 2) {
    for (int u = 0; u + step < kUnroll; u += 2 * step) {
      a[u] = V::add(a[u], a[u + step]);
      b[u] = V::add(b[u], b[u + step]);
    }
  }
  float s0 = V::sum(a[0]), s1 = V::sum(b[0]);
  for (; h < H; ++h) {
    const float xs = R::scalar(x[h]);
    s0 += xs * w[h];
    if (C == 2) s1 += xs * w1[h];
  }
  out[0] = s0;
  if (C == 2) out[1] = s1;
}

template <class V, class R>
void combine_store(void* yv, const float* w, int C, const float* g, int64_t H) {
  using Reg = typename V::Reg;
  typename R::T* y = static_cast<typename R::T*>(yv);
  const Reg g0 = V::set1(g[0]);
  const Reg g1 = V::set1(C == 2 ? g[1] : 0.f);
  int64_t h = 0;
  for (; h + V::kWidth <= H; h += V::kWidth) {
    Reg v = V::mul(g0, V::load(w + h));
    if (C == 2) v = V::fmadd(g1, V::load(w + H + h), v);
    R::store(y + h, v);
  }
  for (; h < H; ++h) {
    float v = g[0] * w[h];
    if (C == 2) v = __builtin_fmaf(g[1], w[H + h], v);
    y[h] = R::from_float(v);
  }
}

template <class V, class R>
void accumulate(float* acc, int64_t ld, const void* xv, int C, const float* g, int64_t len) {
  const typename R::T* x = static_cast<const typename R::T*>(xv);
  for (int c = 0; c < C; ++c) {
    float* a = acc + c * ld;
    const typename V::Reg gc = V::set1(g[c]);
    int64_t h = 0;
    for (; h + V::kWidth <= len; h += V::kWidth) V::store(a + h, V::fmadd(gc, R::load(x + h), V::load(a + h)));
    for (; h < len; ++h) a[h] = __builtin_fmaf(g[c], R::scalar(x[h]), a[h]);
  }
}

template <class V, class R>
void widen(const void* xv, int64_t len, float* out) {
  const typename R::T* x = static_cast<const typename R::T*>(xv);
  int64_t h = 0;
  for (; h + V::kWidth <= len; h += V::kWidth) V::store(out + h, R::load(x + h));
  for (; h < len; ++h) out[h] = R::scalar(x[h]);
}

template <class V, class R>
RowOps make() {
  return {dot<V, R>, combine_store<V, R>, accumulate<V, R>, widen<V, R>};
}

}  // namespace simd
}  // namespace fastprm
