#include "score_steps.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastprm {
namespace {

// Below these sizes a call runs on one thread: about 30 us of serial work. Waking the OpenMP team costs
// microseconds when its threads spin and up to a scheduler time slice when they sleep or the other cores are
// busy, more than the whole work of the small calls a search or a server makes (K <= 64 step rows of
// H <= 4096, a few thousand ids).
constexpr int64_t kMinParallelElements = 1 << 18;  // hidden elements read (K * H)
constexpr int64_t kMinParallelIds = 1 << 16;       // ids scanned for separators (N)

// Whether an id is a separator. The usual single separator is one compare.
template <class Id>
struct OneSeparator {
  Id sep;
  bool operator()(Id id) const { return id == sep; }
};

struct AnySeparator {
  const int64_t* sep_ids;
  int64_t n_sep;
  bool operator()(int64_t id) const {
    bool hit = false;
    for (int64_t s = 0; s < n_sep; ++s) hit |= id == sep_ids[s];
    return hit;
  }
};

// Appends the separator rows among ids [begin, end) to `rows`, in order.
template <class Id, class IsSeparator>
void append_separator_rows(const Id* ids, int64_t begin, int64_t end, IsSeparator is_separator,
                           std::vector<int64_t>& rows) {
  constexpr int64_t kBlock = 256;
  size_t k = rows.size();
  // Branch-free: separators come too irregularly to predict. Every row is written to the next free slot, which
  // advances only past a separator; each block first makes room for all its rows being separators.
  for (int64_t block = begin; block < end; block += kBlock) {
    const int64_t block_end = std::min(end, block + kBlock);
    if (rows.size() < k + kBlock) rows.resize(std::max(2 * rows.size(), k + kBlock));
    int64_t* slot = rows.data();
    for (int64_t i = block; i < block_end; ++i) {
      slot[k] = i;
      k += is_separator(ids[i]);
    }
  }
  rows.resize(k);
}

// The separator rows of all N ids, ascending: one pass over the ids, split into one contiguous range per
// thread when there are enough of them.
template <class Id, class IsSeparator>
void separator_rows(const Id* ids, int64_t N, IsSeparator is_separator, std::vector<int64_t>& rows) {
#ifdef _OPENMP
  const int threads = omp_get_max_threads();
  if (N >= kMinParallelIds && threads > 1) {
    std::vector<std::vector<int64_t>> parts(threads);
#pragma omp parallel num_threads(threads)
    {
      const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
      append_separator_rows(ids, N * t / T, N * (t + 1) / T, is_separator, parts[t]);
    }
    for (const std::vector<int64_t>& part : parts) rows.insert(rows.end(), part.begin(), part.end());
    return;
  }
#endif
  append_separator_rows(ids, 0, N, is_separator, rows);
}

// Element [h0, h0 + len) of row r, made contiguous in `scratch` when the row is strided.
const void* row_slice(const Rows& rows, int64_t r, int64_t h0, int64_t len, std::vector<char>& scratch) {
  const size_t es = element_size(rows.dtype);
  const char* base = static_cast<const char*>(rows.data) + (r * rows.stride_n + h0 * rows.stride_h) * es;
  if (rows.stride_h == 1) return base;
  scratch.resize(len * es);
  for (int64_t h = 0; h < len; ++h) std::memcpy(scratch.data() + h * es, base + h * rows.stride_h * es, es);
  return scratch.data();
}

// The row of hidden that holds step k: step_index[k], or k itself in rows mode (null step_index).
inline int64_t step_row(const int64_t* step_index, int64_t k) { return step_index ? step_index[k] : k; }

// Step rows lie far apart in hidden, so the hardware prefetcher, which follows a stream within a page, starts
// cold at every row (and every page of it). Asking for a later row's lines while this one is computed hides
// that latency.
constexpr int64_t kPrefetchRowsAhead = 2;

void prefetch_row(const Rows& rows, int64_t r) {
  if (rows.stride_h != 1) return;  // strided rows are gathered element by element anyway
  constexpr int64_t kLine = 64;
  const char* base = static_cast<const char*>(rows.data) + r * rows.stride_n * element_size(rows.dtype);
  const int64_t bytes = rows.h * static_cast<int64_t>(element_size(rows.dtype));
  for (int64_t offset = 0; offset < bytes; offset += kLine) __builtin_prefetch(base + offset, 0, 3);
}

// fp64 rows take plain loops: they exist for gradcheck, not for speed.
struct F64Ops {
  static void dot(const void* xv, const double* w, int C, int64_t H, double* out) {
    const double* x = static_cast<const double*>(xv);
    for (int c = 0; c < C; ++c) {
      double acc = 0;
      for (int64_t h = 0; h < H; ++h) acc += x[h] * w[c * H + h];
      out[c] = acc;
    }
  }
  static void combine_store(void* yv, const double* w, int C, const double* g, int64_t H) {
    double* y = static_cast<double*>(yv);
    for (int64_t h = 0; h < H; ++h) y[h] = g[0] * w[h] + (C == 2 ? g[1] * w[H + h] : 0.0);
  }
  static void accumulate(double* acc, int64_t ld, const void* xv, int C, const double* g, int64_t len) {
    const double* x = static_cast<const double*>(xv);
    for (int c = 0; c < C; ++c)
      for (int64_t h = 0; h < len; ++h) acc[c * ld + h] += g[c] * x[h];
  }
};

// One interface over both accumulator types so the kernels below are written once.
template <class Acc>
struct Ops;

template <>
struct Ops<float> {
  RowOps ops;
  Ops(Isa isa, DType dt) : ops(row_ops(isa, dt)) {}
  void dot(const void* x, const float* w, int C, int64_t H, float* out) const { ops.dot(x, w, C, H, out); }
  void combine_store(void* y, const float* w, int C, const float* g, int64_t H) const {
    ops.combine_store(y, w, C, g, H);
  }
  void accumulate(float* acc, int64_t ld, const void* x, int C, const float* g, int64_t len) const {
    ops.accumulate(acc, ld, x, C, g, len);
  }
};

template <>
struct Ops<double> : F64Ops {
  Ops(Isa, DType) {}
};

// log(1 + x) for x in [0, 1], accurate for tiny x: log(u) * x / (u - 1) with u = 1 + x cancels the rounding of
// u (Goldberg's trick; the Triton kernel does the same). glibc's log1pf costs several times logf, and it runs
// once per step.
template <class Acc>
Acc log1p_unit(Acc x) {
  const Acc u = 1 + x;
  return u == 1 ? x : std::log(u) * (x / (u - 1));
}

// Probability of the positive class and its log, from the head logits of one step (stable for any logit).
template <class Acc>
void step_probability(const Acc* logits, int C, int positive_class, Acc* prob, Acc* log_prob) {
  Acc z;
  if (C == 1)
    z = positive_class == 1 ? logits[0] : -logits[0];
  else
    z = logits[positive_class] - logits[1 - positive_class];
  if (z >= 0) {
    const Acc e = std::exp(-z);
    *prob = 1 / (1 + e);
    *log_prob = -log1p_unit(e);
  } else {
    const Acc e = std::exp(z);  // also reached by NaN, which propagates
    *prob = e / (1 + e);
    *log_prob = z - log1p_unit(e);
  }
}

// "" when offsets (B + 1 of them) start at 0, never decrease and end at `total`; else what is wrong, naming
// the argument as the Python reference does.
std::string check_offsets(IntArray offsets, int64_t total, const char* name, const char* total_name) {
  const std::string n = name;
  if (offsets.size < 1) return n + " must have at least one element (it is [B + 1])";
  if (offsets[0] != 0) return n + " must start at 0, got " + std::to_string(offsets[0]);
  const int64_t B = offsets.size - 1;
  for (int64_t b = 0; b < B; ++b) {
    if (offsets[b + 1] < offsets[b])
      return n + " must be non-decreasing, but " + n + "[" + std::to_string(b + 1) + "] = " +
             std::to_string(offsets[b + 1]) + " < " + n + "[" + std::to_string(b) + "] = " + std::to_string(offsets[b]);
  }
  if (offsets[B] != total)
    return n + " must end at " + total_name + " = " + std::to_string(total) + ", got " + std::to_string(offsets[B]);
  return "";
}

}  // namespace

std::string find_steps(IntArray input_ids, IntArray cu_seqlens, const int64_t* sep_ids, int64_t n_sep,
                       std::vector<int64_t>* step_index, int64_t* cu_steps) {
  const std::string err = check_offsets(cu_seqlens, input_ids.size, "cu_seqlens", "the number of rows N");
  if (!err.empty()) return err;
  const auto scan = [&](auto* ids) {
    using Id = std::remove_const_t<std::remove_pointer_t<decltype(ids)>>;
    const Id sep = static_cast<Id>(sep_ids[0]);
    // A separator that the id dtype cannot hold is compared as int64 (and never matches).
    if (n_sep == 1 && static_cast<int64_t>(sep) == sep_ids[0])
      separator_rows(ids, input_ids.size, OneSeparator<Id>{sep}, *step_index);
    else
      separator_rows(ids, input_ids.size, AnySeparator{sep_ids, n_sep}, *step_index);
  };
  if (input_ids.is64)
    scan(static_cast<const int64_t*>(input_ids.data));
  else
    scan(static_cast<const int32_t*>(input_ids.data));
  // The rows ascend, so the steps before sequence b are the rows before cu_seqlens[b].
  const int64_t K = static_cast<int64_t>(step_index->size());
  int64_t k = 0;
  for (int64_t b = 0; b < cu_seqlens.size; ++b) {
    while (k < K && (*step_index)[k] < cu_seqlens[b]) ++k;
    cu_steps[b] = k;
  }
  return "";
}

std::string validate_steps(const int64_t* step_index, int64_t K, const int64_t* cu_steps, int64_t B, int64_t N) {
  const std::string err =
      check_offsets({cu_steps, B + 1, true}, K, "cu_steps", step_index ? "len(step_index)" : "hidden.shape[0]");
  if (!err.empty() || !step_index) return err;  // rows mode: no indices, row k is step k
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t k = cu_steps[b]; k < cu_steps[b + 1]; ++k) {
      const int64_t r = step_index[k];
      if (r < 0 || r >= N)
        return "step_index[" + std::to_string(k) + "] = " + std::to_string(r) + " is out of range for hidden with " +
               std::to_string(N) + " rows";
      if (k > cu_steps[b] && r <= step_index[k - 1])
        return "step_index must be strictly ascending within each sequence, but sequence " + std::to_string(b) +
               " has step_index[" + std::to_string(k) + "] = " + std::to_string(r) + " after " +
               std::to_string(step_index[k - 1]);
    }
  }
  return "";
}

template <class Acc>
void score_forward(const Rows& hidden, const Acc* weight, const Acc* bias, int C, const int64_t* step_index,
                   int64_t K, const int64_t* cu_steps, int64_t B, int positive_class, double threshold, Isa isa,
                   const ForwardOut<Acc>& out) {
  const Ops<Acc> ops(isa, hidden.dtype);
  const int64_t H = hidden.h;
  const Acc nan = std::numeric_limits<Acc>::quiet_NaN();
  const Acc thr = static_cast<Acc>(threshold);
  std::vector<Acc> log_probs(K);  // exp and log1p cost as much as a short row: computed once per step
#pragma omp parallel if (K * H > kMinParallelElements)
  {
    std::vector<char> scratch;
#pragma omp for schedule(static)
    for (int64_t k = 0; k < K; ++k) {
      if (k + kPrefetchRowsAhead < K) prefetch_row(hidden, step_row(step_index, k + kPrefetchRowsAhead));
      Acc* lg = out.logits + k * C;
      ops.dot(row_slice(hidden, step_row(step_index, k), 0, H, scratch), weight, C, H, lg);
      if (bias)
        for (int c = 0; c < C; ++c) lg[c] += bias[c];
      step_probability(lg, C, positive_class, &out.probs[k], &log_probs[k]);
    }
    // Each sequence is reduced by one thread in step order, so its results never depend on the batch.
#pragma omp for schedule(dynamic, 16)
    for (int64_t b = 0; b < B; ++b) {
      const int64_t s = cu_steps[b], e = cu_steps[b + 1];
      out.num_steps[b] = e - s;
      if (s == e) {
        out.min[b] = out.log_prod[b] = out.prod[b] = out.mean[b] = out.last[b] = nan;
        out.first_error[b] = out.argmin[b] = -1;
        continue;
      }
      int64_t arg = s, first_error = -1;
      double sum_log = 0, sum_prob = 0;
      for (int64_t k = s; k < e; ++k) {
        const Acc p = out.probs[k], log_p = log_probs[k];
        const Acc best = out.probs[arg];
        // The first NaN step wins the min; otherwise the first of tied minima.
        if (!std::isnan(best) && (std::isnan(p) || p < best)) arg = k;
        sum_log += log_p;
        sum_prob += p;
        // A NaN step is never correct: "not at least the threshold" is an error, and NaN is not.
        if (first_error < 0 && !(p >= thr)) first_error = k - s;
      }
      out.argmin[b] = arg;
      out.min[b] = out.probs[arg];
      out.log_prod[b] = static_cast<Acc>(sum_log);
      out.prod[b] = std::exp(out.log_prod[b]);  // exp of the stored log_prod, as the reference defines it
      out.mean[b] = static_cast<Acc>(sum_prob / static_cast<double>(e - s));
      out.last[b] = out.probs[e - 1];
      out.first_error[b] = first_error;
    }
  }
}

template <class Acc>
void score_backward(const Rows& hidden, const Acc* weight, int C, const Acc* grad_logits, const int64_t* step_index,
                    int64_t K, Isa isa, void* grad_hidden, Acc* grad_weight, Acc* grad_bias) {
  const Ops<Acc> ops(isa, hidden.dtype);
  const int64_t H = hidden.h;
  const size_t row_bytes = H * element_size(hidden.dtype);

  // Rows hit by several steps (possible in given mode across sequences) get the sum of their step gradients,
  // added in step order: group equal rows with a stable sort instead of racing on the output. In rows mode step
  // k is row k: group g is step g alone, and as the K = N rows are all written, none needs zeroing.
  std::vector<int64_t> order, group_start;
  if (step_index) {
    order.resize(K);
    std::iota(order.begin(), order.end(), 0);
    bool strictly_ascending = true;
    for (int64_t k = 1; k < K && strictly_ascending; ++k) strictly_ascending = step_index[k] > step_index[k - 1];
    if (!strictly_ascending)
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return step_index[a] < step_index[b]; });
    for (int64_t i = 0; i < K; ++i)
      if (i == 0 || step_index[order[i]] != step_index[order[i - 1]]) group_start.push_back(i);
    group_start.push_back(K);
  }
  const int64_t G = step_index ? static_cast<int64_t>(group_start.size()) - 1 : K;

  // Weight gradient: each thread owns a slice of columns and walks all steps in order (no atomics).
  constexpr int64_t kSlice = 256;
  const int64_t n_slices = (H + kSlice - 1) / kSlice;
  std::fill(grad_weight, grad_weight + C * H, Acc(0));
  constexpr int64_t kZeroRows = 64;
  const int64_t N = hidden.n, n_zero_blocks = step_index ? (N + kZeroRows - 1) / kZeroRows : 0;
  const bool parallel = (K + N) * H > kMinParallelElements;

#pragma omp parallel if (parallel)
  {
    std::vector<char> scratch;
    // Given mode: zero the whole gradient first (the barrier after this loop orders it before the step rows'
    // writes).
#pragma omp for schedule(static)
    for (int64_t z = 0; z < n_zero_blocks; ++z) {
      const int64_t r0 = z * kZeroRows, rows = std::min(kZeroRows, N - r0);
      std::memset(static_cast<char*>(grad_hidden) + r0 * row_bytes, 0, rows * row_bytes);
    }
#pragma omp for schedule(static)
    for (int64_t g = 0; g < G; ++g) {
      Acc grad[2] = {0, 0};
      int64_t r = g;  // rows mode: step g, on row g
      if (step_index) {
        for (int64_t i = group_start[g]; i < group_start[g + 1]; ++i)
          for (int c = 0; c < C; ++c) grad[c] += grad_logits[order[i] * C + c];
        r = step_index[order[group_start[g]]];
      } else {
        for (int c = 0; c < C; ++c) grad[c] = grad_logits[g * C + c];
      }
      ops.combine_store(static_cast<char*>(grad_hidden) + r * row_bytes, weight, C, grad, H);
    }
#pragma omp for schedule(static)
    for (int64_t sl = 0; sl < n_slices; ++sl) {
      const int64_t h0 = sl * kSlice, len = std::min(kSlice, H - h0);
      for (int64_t k = 0; k < K; ++k)
        ops.accumulate(grad_weight + h0, H, row_slice(hidden, step_row(step_index, k), h0, len, scratch), C,
                       grad_logits + k * C, len);
    }
  }
  for (int c = 0; c < C; ++c) {
    Acc s = 0;
    for (int64_t k = 0; k < K; ++k) s += grad_logits[k * C + c];
    grad_bias[c] = s;
  }
}

template void score_forward<float>(const Rows&, const float*, const float*, int, const int64_t*, int64_t,
                                   const int64_t*, int64_t, int, double, Isa, const ForwardOut<float>&);
template void score_forward<double>(const Rows&, const double*, const double*, int, const int64_t*, int64_t,
                                    const int64_t*, int64_t, int, double, Isa, const ForwardOut<double>&);
template void score_backward<float>(const Rows&, const float*, int, const float*, const int64_t*, int64_t, Isa,
                                    void*, float*, float*);
template void score_backward<double>(const Rows&, const double*, int, const double*, const int64_t*, int64_t, Isa,
                                     void*, double*, double*);

}  // namespace fastprm
