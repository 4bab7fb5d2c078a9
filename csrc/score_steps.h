// The fused step-scoring kernels on CPU: find separator rows, then score, reduce and back-propagate through
// the step rows only. Pure C++ over raw pointers (no libtorch): the Python layer owns every buffer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "row_ops.h"

namespace fastprm {

// A [n, h] matrix of hidden states with element strides (any layout).
struct Rows {
  const void* data;
  int64_t n, h, stride_n, stride_h;
  DType dtype;
};

// Ids and offsets may be int32 or int64.
struct IntArray {
  const void* data;
  int64_t size;
  bool is64;
  int64_t operator[](int64_t i) const {
    return is64 ? static_cast<const int64_t*>(data)[i] : static_cast<const int32_t*>(data)[i];
  }
};

// Checks cu_seqlens ([B + 1]) against N, then finds the rows whose id is one of the n_sep separators:
// step_index gets them in ascending order and cu_steps[B + 1] the offsets of each sequence's steps in it.
// Returns an error message naming the bad argument, or "" on success.
std::string find_steps(IntArray input_ids, IntArray cu_seqlens, const int64_t* sep_ids, int64_t n_sep,
                       std::vector<int64_t>* step_index, int64_t* cu_steps);

// Every kernel below takes step_index [K], the row of hidden that holds each step, or null for rows mode: hidden
// is [K, H], exactly the step rows in order (row k is step k), and nothing is gathered.

// Checks that cu_steps starts at 0, never decreases and ends at K, and that step_index lies in [0, N) and is
// strictly ascending within each sequence. In rows mode (null step_index) K must be N. Returns an error message
// or "".
std::string validate_steps(const int64_t* step_index, int64_t K, const int64_t* cu_steps, int64_t B, int64_t N);

// Per-step outputs [K] / [K, C] and per-sequence outputs [B]. Acc is float (fp32 / bf16 / fp16 rows) or
// double (fp64 rows, used for gradcheck).
template <class Acc>
struct ForwardOut {
  Acc *logits, *probs, *min, *log_prod, *prod, *mean, *last;
  int64_t *first_error, *num_steps, *argmin;
};

// Scores the K step rows through the [C, H] head (contiguous weight, bias [C] or null) and reduces them per
// sequence. Writes every element of `out`; a sequence without steps gets NaN reductions and -1 indices.
template <class Acc>
void score_forward(const Rows& hidden, const Acc* weight, const Acc* bias, int C, const int64_t* step_index,
                   int64_t K, const int64_t* cu_steps, int64_t B, int positive_class, double threshold, Isa isa,
                   const ForwardOut<Acc>& out);

// Given d loss / d step logits [K, C], writes d hidden (all of the contiguous [N, H] buffer in hidden's dtype:
// zero outside the step rows; in rows mode N = K and every row is a step row), d weight [C, H] and d bias [C].
// Deterministic: no float atomics, fixed order.
template <class Acc>
void score_backward(const Rows& hidden, const Acc* weight, int C, const Acc* grad_logits, const int64_t* step_index,
                    int64_t K, Isa isa, void* grad_hidden, Acc* grad_weight, Acc* grad_bias);

}  // namespace fastprm
