// Element-wise parts of a Llama-family decoder layer (inference), fused: RMSNorm (optionally after the
// residual add), SwiGLU over a merged gate/up projection, and rotary embedding of q and k in place.
//
// Every kernel works row by row on [rows, width] tensors whose last dimension is contiguous, reads fp32 /
// bf16 / fp16 and computes in fp32, rounding to the storage dtype exactly where transformers' eager modules
// round (so bf16 results match theirs up to the fp32 math's own rounding). A row's result depends on that row
// only; rows are split over `threads` OpenMP threads when the call is large enough to pay for them.
#pragma once

#include <cstdint>

#include "row_ops.h"

namespace fastprm {

// A [rows, width] matrix with a row stride in elements; the width elements are contiguous.
struct RowMatrix {
  void* data;
  int64_t stride;
};

struct RmsNormArgs {
  DType dtype;  // of x, residual, weight and the outputs
  int64_t rows, width;
  float eps;
  RowMatrix x, residual;  // residual.data null: none
  const void* weight;     // [width] contiguous
  void* sum_out;          // [rows, width] contiguous: x + residual rounded to dtype (residual only)
  void* out;              // [rows, width] contiguous: rmsnorm(x or sum) * weight
  int threads;
};

struct SiluMulArgs {
  DType dtype;
  int64_t rows, width;  // width = I: gate_up is [rows, 2I]
  RowMatrix gate_up;
  void* out;  // [rows, I] contiguous: silu(gate) * up
  int threads;
};

struct RotaryArgs {
  DType dtype;  // of x, cos and sin
  int64_t tokens, heads, head_dim;
  void* x;  // [tokens, heads, head_dim], rotated in place
  int64_t stride_token, stride_head;
  RowMatrix cos, sin;  // [tokens, head_dim]
  int threads;
};

struct LayerOps {
  void (*rms_norm)(const RmsNormArgs&);
  void (*silu_mul)(const SiluMulArgs&);
  void (*rotary)(const RotaryArgs&);
};

// The kernels of one ISA; the portable ISA's are the same templates over a one-lane "vector".
LayerOps layer_ops(Isa isa);

namespace portable {
LayerOps layer_ops();
}
#if defined(__x86_64__) || defined(_M_X64)
namespace avx2 {
LayerOps layer_ops();
}
namespace avx512 {
LayerOps layer_ops(bool native_bf16);
}
#endif

}  // namespace fastprm
