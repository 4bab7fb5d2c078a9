// Math written once over an ISA's fp32 vector type V (set1, fmadd), for the simd_*.h headers.
#pragma once

namespace fastprm {
namespace simd {

// 2^f for |f| <= 1/2: Cephes' exp2f polynomial (relative error ~2e-7). The ISA's exp2 splits x = n + f and
// scales the result by 2^n.
template <class V>
typename V::Reg exp2_fraction(typename V::Reg f) {
  typename V::Reg p = V::set1(1.535336188319500e-4f);
  p = V::fmadd(p, f, V::set1(1.339887440266574e-3f));
  p = V::fmadd(p, f, V::set1(9.618437357674640e-3f));
  p = V::fmadd(p, f, V::set1(5.550332471162809e-2f));
  p = V::fmadd(p, f, V::set1(2.402264791363012e-1f));
  p = V::fmadd(p, f, V::set1(6.931472028550421e-1f));
  return V::fmadd(p, f, V::set1(1.f));
}

// silu(g) = g / (1 + e^-g), e^-g as the ISA's 2^(-g log2 e): SwiGLU's activation in the layer-op and GEMM kernels.
template <class V>
typename V::Reg silu(typename V::Reg g) {
  return V::div(g, V::add(V::set1(1.f), V::exp2(V::mul(g, V::set1(-1.4426950408889634f)))));
}

}  // namespace simd
}  // namespace fastprm
