// Baseline-ISA row primitives: plain loops the compiler may vectorize for the baseline target only.
#include <cmath>
#include <cstring>

#include "row_ops.h"

namespace fastprm {

float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal half: normalise into a float.
    exp = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t float_to_f16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: overflow to inf
  if (abs < 0x38800000u) {
    // Result is subnormal (or zero) in half: scale so the half ulp (2^-24) is 1, round to nearest even.
    float a;
    std::memcpy(&a, &abs, 4);
    const float scaled = a * 16777216.0f;  // exact: a power of two
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  uint32_t mant = abs + 0xc8000000u;  // rebias exponent from 127 to 15
  mant += 0xfffu + ((mant >> 13) & 1u);
  return sign | static_cast<uint16_t>(mant >> 13);
}

namespace portable {
namespace {

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i, DType dt) {
  return dt == DType::bf16 ? bf16_to_float(p[i]) : f16_to_float(p[i]);
}

void dot_f32(const void* xv, const float* w, int C, int64_t H, float* out) {
  const float* x = static_cast<const float*>(xv);
  for (int c = 0; c < C; ++c) {
    const float* wc = w + c * H;
    float acc = 0.f;
    for (int64_t h = 0; h < H; ++h) acc += load(x, h) * wc[h];
    out[c] = acc;
  }
}

template <DType DT>
void dot_half(const void* xv, const float* w, int C, int64_t H, float* out) {
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  for (int c = 0; c < C; ++c) {
    const float* wc = w + c * H;
    float acc = 0.f;
    for (int64_t h = 0; h < H; ++h) acc += load(x, h, DT) * wc[h];
    out[c] = acc;
  }
}

inline float combine(const float* w, int C, const float* g, int64_t H, int64_t h) {
  float v = g[0] * w[h];
  if (C == 2) v += g[1] * w[H + h];
  return v;
}

void combine_store_f32(void* yv, const float* w, int C, const float* g, int64_t H) {
  float* y = static_cast<float*>(yv);
  for (int64_t h = 0; h < H; ++h) y[h] = combine(w, C, g, H, h);
}

template <DType DT>
void combine_store_half(void* yv, const float* w, int C, const float* g, int64_t H) {
  uint16_t* y = static_cast<uint16_t*>(yv);
  for (int64_t h = 0; h < H; ++h) {
    const float v = combine(w, C, g, H, h);
    y[h] = DT == DType::bf16 ? float_to_bf16(v) : float_to_f16(v);
  }
}

void accumulate_f32(float* acc, int64_t ld, const void* xv, int C, const float* g, int64_t len) {
  const float* x = static_cast<const float*>(xv);
  for (int c = 0; c < C; ++c)
    for (int64_t h = 0; h < len; ++h) acc[c * ld + h] += g[c] * x[h];
}

template <DType DT>
void accumulate_half(float* acc, int64_t ld, const void* xv, int C, const float* g, int64_t len) {
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  for (int c = 0; c < C; ++c)
    for (int64_t h = 0; h < len; ++h) acc[c * ld + h] += g[c] * load(x, h, DT);
}

void widen_f32(const void* xv, int64_t len, float* out) { std::memcpy(out, xv, len * sizeof(float)); }

template <DType DT>
void widen_half(const void* xv, int64_t len, float* out) {
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  for (int64_t h = 0; h < len; ++h) out[h] = load(x, h, DT);
}

}  // namespace

RowOps row_ops(DType dtype) {
  switch (dtype) {
    case DType::bf16:
      return {dot_half<DType::bf16>, combine_store_half<DType::bf16>, accumulate_half<DType::bf16>,
              widen_half<DType::bf16>};
    case DType::f16:
      return {dot_half<DType::f16>, combine_store_half<DType::f16>, accumulate_half<DType::f16>,
              widen_half<DType::f16>};
    default:
      return {dot_f32, combine_store_f32, accumulate_f32, widen_f32};
  }
}

}  // namespace portable
}  // namespace fastprm
