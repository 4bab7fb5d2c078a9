// The kernels of layer_ops.h written once over a SIMD vector type, for every ISA file (the portable one
// included, with a one-lane vector).
//
// V (the ISA's fp32 vector) needs, besides what row_ops_simd.h uses: sub, div and exp2. R is the storage
// element type (F32, BF16, F16) as in row_ops_simd.h. Products and sums are rounded to R's dtype exactly
// where transformers' eager modules round them, so a bf16 result is the one torch's op-by-op forward gives
// up to the fp32 math's own last bit.
#pragma once

#include <cmath>
#include <cstdint>

#include "layer_ops.h"
#include "simd_math.h"

namespace fastprm {
namespace simd {

// Calls f(r) for every row, over `threads` OpenMP threads when there are at least kParallelElements
// elements: below that, starting the threads costs more than the rows (a few microseconds).
constexpr int64_t kParallelElements = 1 << 15;

template <class F>
void for_rows(int64_t rows, int64_t width, int threads, F f) {
  const bool parallel = threads > 1 && rows > 1 && rows * width >= kParallelElements;
#pragma omp parallel for num_threads(threads) if (parallel) schedule(static)
  for (int64_t r = 0; r < rows; ++r) f(r);
}

template <class V, class R>
struct LayerKernels {
  using Reg = typename V::Reg;
  using T = typename R::T;
  static constexpr int W = V::kWidth;
  static constexpr bool kHalf = sizeof(T) < sizeof(float);

  // v rounded to the storage dtype and widened again: where torch would store an intermediate tensor.
  static Reg round(Reg v) {
    if (!kHalf) return v;
    T tmp[W];
    R::store(tmp, v);
    return R::load(tmp);
  }
  static float round_one(float v) { return kHalf ? R::scalar(R::from_float(v)) : v; }

  static T* row(const RowMatrix& m, int64_t r) { return static_cast<T*>(m.data) + r * m.stride; }

  // transformers' RMSNorm: y = x * rsqrt(mean(x^2) + eps) in fp32, rounded to the dtype, times the weight
  // (rounded again). With a residual, x is first x + residual rounded to the dtype (the layer's residual add),
  // which is also written out.
  static void rms_norm(const RmsNormArgs& a) {
    for_rows(a.rows, a.width, a.threads, [&a](int64_t r) { rms_norm_row(a, r); });
  }

  static void rms_norm_row(const RmsNormArgs& a, int64_t r) {
    const int64_t H = a.width;
    const T* src = row(a.x, r);
    Reg acc0 = V::zero(), acc1 = V::zero();
    float tail = 0.f;
    int64_t h = 0;
    if (a.residual.data != nullptr) {
      const T* res = row(a.residual, r);
      T* sum = static_cast<T*>(a.sum_out) + r * H;
      for (; h + W <= H; h += W) {
        R::store(sum + h, V::add(R::load(src + h), R::load(res + h)));
        const Reg v = R::load(sum + h);  // the sum as rounded to the dtype
        acc0 = V::fmadd(v, v, acc0);
      }
      for (; h < H; ++h) {
        const float v = round_one(R::scalar(src[h]) + R::scalar(res[h]));
        sum[h] = R::from_float(v);
        tail += v * v;
      }
      src = sum;
    } else {
      for (; h + 2 * W <= H; h += 2 * W) {
        const Reg v0 = R::load(src + h), v1 = R::load(src + h + W);
        acc0 = V::fmadd(v0, v0, acc0);
        acc1 = V::fmadd(v1, v1, acc1);
      }
      for (; h + W <= H; h += W) {
        const Reg v = R::load(src + h);
        acc0 = V::fmadd(v, v, acc0);
      }
      for (; h < H; ++h) {
        const float v = R::scalar(src[h]);
        tail += v * v;
      }
    }
    const float mean = (V::sum(V::add(acc0, acc1)) + tail) / static_cast<float>(H);
    const float inv = 1.f / std::sqrt(mean + a.eps);
    const T* w = static_cast<const T*>(a.weight);
    T* out = static_cast<T*>(a.out) + r * H;
    const Reg iv = V::set1(inv);
    for (h = 0; h + W <= H; h += W) R::store(out + h, V::mul(R::load(w + h), round(V::mul(R::load(src + h), iv))));
    for (; h < H; ++h) out[h] = R::from_float(R::scalar(w[h]) * round_one(R::scalar(src[h]) * inv));
  }

  // silu(gate) * up with gate, up the halves of each [2I] row; silu(g) = g / (1 + e^-g) is rounded to the
  // dtype before the product, as torch's act_fn(gate) * up.
  static void silu_mul(const SiluMulArgs& a) {
    for_rows(a.rows, 2 * a.width, a.threads, [&a](int64_t r) { silu_mul_row(a, r); });
  }

  static void silu_mul_row(const SiluMulArgs& a, int64_t r) {
    const int64_t I = a.width;
    const T* g = row(a.gate_up, r);
    const T* u = g + I;
    T* out = static_cast<T*>(a.out) + r * I;
    int64_t i = 0;
    for (; i + W <= I; i += W) {
      const Reg gv = R::load(g + i);
      const Reg silu = round(simd::silu<V>(gv));
      R::store(out + i, V::mul(silu, R::load(u + i)));
    }
    for (; i < I; ++i) {
      const float gv = R::scalar(g[i]);
      out[i] = R::from_float(round_one(gv / (1.f + std::exp(-gv))) * R::scalar(u[i]));
    }
  }

  // transformers' apply_rotary_pos_emb on one head row x [D]: x * cos + rotate_half(x) * sin, with
  // rotate_half(x) = (-x2, x1) for the halves x1, x2; each product and the sum rounded to the dtype.
  static void rotary(const RotaryArgs& a) {
    for_rows(a.tokens, a.heads * a.head_dim, a.threads, [&a](int64_t t) {
      const T* c = row(a.cos, t);
      const T* s = row(a.sin, t);
      for (int64_t h = 0; h < a.heads; ++h)
        rotary_head(static_cast<T*>(a.x) + t * a.stride_token + h * a.stride_head, c, s, a.head_dim / 2);
    });
  }

  static void rotary_head(T* x, const T* c, const T* s, int64_t half) {
    int64_t i = 0;
    for (; i + W <= half; i += W) {
      const Reg x1 = R::load(x + i), x2 = R::load(x + half + i);
      const Reg o1 = V::sub(round(V::mul(x1, R::load(c + i))), round(V::mul(x2, R::load(s + i))));
      const Reg o2 = V::add(round(V::mul(x2, R::load(c + half + i))), round(V::mul(x1, R::load(s + half + i))));
      R::store(x + i, o1);
      R::store(x + half + i, o2);
    }
    for (; i < half; ++i) {
      const float x1 = R::scalar(x[i]), x2 = R::scalar(x[half + i]);
      const float o1 = round_one(x1 * R::scalar(c[i])) - round_one(x2 * R::scalar(s[i]));
      const float o2 = round_one(x2 * R::scalar(c[half + i])) + round_one(x1 * R::scalar(s[half + i]));
      x[i] = R::from_float(o1);
      x[half + i] = R::from_float(o2);
    }
  }
};

// The kernels of one ISA, each picking its element type from the call's dtype.
template <class V, class F32, class BF16, class F16>
struct LayerOpsOf {
  static void rms_norm(const RmsNormArgs& a) {
    if (a.dtype == DType::bf16) return LayerKernels<V, BF16>::rms_norm(a);
    if (a.dtype == DType::f16) return LayerKernels<V, F16>::rms_norm(a);
    LayerKernels<V, F32>::rms_norm(a);
  }
  static void silu_mul(const SiluMulArgs& a) {
    if (a.dtype == DType::bf16) return LayerKernels<V, BF16>::silu_mul(a);
    if (a.dtype == DType::f16) return LayerKernels<V, F16>::silu_mul(a);
    LayerKernels<V, F32>::silu_mul(a);
  }
  static void rotary(const RotaryArgs& a) {
    if (a.dtype == DType::bf16) return LayerKernels<V, BF16>::rotary(a);
    if (a.dtype == DType::f16) return LayerKernels<V, F16>::rotary(a);
    LayerKernels<V, F32>::rotary(a);
  }
  static LayerOps make() { return {rms_norm, silu_mul, rotary}; }
};

}  // namespace simd
}  // namespace fastprm
