// Causal variable-length attention on CPU (inference): flash-attention's varlen forward, one row at a time,
// with grouped-query heads and an optional cached prefix per row.
//
// Row r's queries are the tokens cu_seqlens[r] .. cu_seqlens[r + 1] of q; its keys and values are the tokens
// prefix_spans[r] = (start, end) of the prefix tensors (keys of text before the row, computed earlier)
// followed by the row's own tokens of k and v. Query i of a row with P prefix tokens sees keys 0 .. P + i.
// Computed in fp32 whatever the storage dtype (bf16 on AVX512-BF16: bf16 products, P rounded to bf16, fp32
// sums), blockwise with an online softmax, so a row's result depends on that row's tokens only, never on the
// other rows of the call.
#pragma once

#include <cstdint>

#include "row_ops.h"

namespace fastprm {

// A [tokens, heads, head_dim] tensor with element strides; the head_dim stride is 1.
struct HeadsTensor {
  const void* data;
  int64_t stride_token, stride_head;
};

struct AttentionArgs {
  DType dtype;  // of q, k, v, the prefix tensors and out (f32, bf16 or f16)
  int heads_q, heads_kv, head_dim;
  float scale;  // applied to q . k before the softmax
  int64_t rows;
  const int64_t* cu_seqlens;    // [rows + 1]
  const int64_t* prefix_spans;  // [rows, 2] (start, end), or null: no prefix
  HeadsTensor q, k, v, prefix_k, prefix_v;
  void* out;  // [tokens, heads_q, head_dim] contiguous
  int threads;
};

// Whether the kernels of this ISA take this head_dim (a multiple of the ISA's vector width; the portable ISA
// has no kernel: callers use their reference path there).
bool attention_supported(Isa isa, int head_dim);

// Runs the kernel of `isa`; the caller has checked attention_supported and every bound.
void varlen_attention(Isa isa, const AttentionArgs& args);

namespace avx2 {
bool attention_supported(int head_dim);
void varlen_attention(const AttentionArgs& args);
}  // namespace avx2
namespace avx512 {
bool attention_supported(int head_dim);
void varlen_attention(const AttentionArgs& args, bool native_bf16);
}  // namespace avx512

}  // namespace fastprm
