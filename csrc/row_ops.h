// Per-ISA primitives on one contiguous row of hidden states.
//
// Everything the step-scoring kernels do to a hidden row is one of three things: project it onto the C <= 2
// head rows (forward), write back the gradient row g @ W (backward, d hidden), or accumulate g^T x into the
// weight gradient (backward, d weight). A fourth widens a row to fp32 (the head's weights, once per call).
// Each ISA file implements these for fp32 / bf16 / fp16 rows with fp32 accumulation; the kernels in
// score_steps.cpp never touch intrinsics.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace fastprm {

enum class DType : int { f32 = 0, bf16 = 1, f16 = 2, f64 = 3 };

// Bytes per element of a row of this dtype.
constexpr size_t element_size(DType dt) { return dt == DType::f64 ? 8 : dt == DType::f32 ? 4 : 2; }

enum class Isa : int { portable = 0, avx2 = 1, avx512 = 2, avx512_bf16 = 3 };

struct RowOps {
  // out[c] = sum_h x[h] * w[c * H + h] for c < C.
  void (*dot)(const void* x, const float* w, int C, int64_t H, float* out);
  // y[h] = sum_c g[c] * w[c * H + h], rounded to the row dtype.
  void (*combine_store)(void* y, const float* w, int C, const float* g, int64_t H);
  // acc[c * ld + h] += g[c] * x[h] for h < len.
  void (*accumulate)(float* acc, int64_t ld, const void* x, int C, const float* g, int64_t len);
  // out[h] = x[h] as fp32 for h < len.
  void (*widen)(const void* x, int64_t len, float* out);
};

// The primitives of one ISA for one row dtype (f32, bf16 or f16).
RowOps row_ops(Isa isa, DType dtype);

namespace portable {
RowOps row_ops(DType dtype);
}
#if defined(__x86_64__) || defined(_M_X64)
namespace avx2 {
RowOps row_ops(DType dtype);
}
namespace avx512 {
RowOps row_ops(DType dtype, bool native_bf16);
}
#endif

// ISAs the running CPU supports, best last.
std::vector<Isa> supported_isas();
const char* isa_name(Isa isa);
// Parses a name as accepted by FASTPRM_CPU_ISA; returns false on an unknown name.
bool parse_isa(const std::string& name, Isa* out);

// Scalar conversions shared by every ISA's tail loops (round to nearest even, NaN stays NaN). `static`: each
// file gets its own copy compiled with its own flags; an inline function with external linkage would be
// merged across files by the linker, which could hand the portable path a copy built with AVX-512.
static inline float bf16_to_float(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

static inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  __builtin_memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // as torch: one canonical NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float f16_to_float(uint16_t v);
uint16_t float_to_f16(float f);

}  // namespace fastprm
