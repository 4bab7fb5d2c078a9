// The decoder-layer kernels for the baseline ISA: layer_ops_simd.h's templates over a one-lane vector, so
// every ISA runs the same arithmetic in the same order.
#include <cmath>

#include "layer_ops_simd.h"

namespace fastprm {
namespace portable {
namespace {

struct Vec1 {
  using Reg = float;
  static constexpr int kWidth = 1;
  static Reg zero() { return 0.f; }
  static Reg set1(float v) { return v; }
  static Reg load(const float* p) { return *p; }
  static void store(float* p, Reg v) { *p = v; }
  static Reg add(Reg a, Reg b) { return a + b; }
  static Reg sub(Reg a, Reg b) { return a - b; }
  static Reg mul(Reg a, Reg b) { return a * b; }
  static Reg div(Reg a, Reg b) { return a / b; }
  static Reg fmadd(Reg a, Reg b, Reg c) { return a * b + c; }  // the baseline has no FMA instruction
  static float sum(Reg v) { return v; }
  static Reg exp2(Reg x) { return std::exp2(x); }
};

struct F32 {
  using T = float;
  static float load(const T* p) { return *p; }
  static void store(T* p, float v) { *p = v; }
  static float scalar(T v) { return v; }
  static T from_float(float v) { return v; }
};

struct BF16 {
  using T = uint16_t;
  static float load(const T* p) { return bf16_to_float(*p); }
  static void store(T* p, float v) { *p = float_to_bf16(v); }
  static float scalar(T v) { return bf16_to_float(v); }
  static T from_float(float v) { return float_to_bf16(v); }
};

struct F16 {
  using T = uint16_t;
  static float load(const T* p) { return f16_to_float(*p); }
  static void store(T* p, float v) { *p = float_to_f16(v); }
  static float scalar(T v) { return f16_to_float(v); }
  static T from_float(float v) { return float_to_f16(v); }
};

}  // namespace

LayerOps layer_ops() { return simd::LayerOpsOf<Vec1, F32, BF16, F16>::make(); }

}  // namespace portable
}  // namespace fastprm
