// pybind11 module fastprm._C: the entry points of the CPU kernels.
//
// Arguments arrive as torch tensors and are read through their Python attributes (data_ptr, shape, stride,
// dtype): no libtorch, no copy. Outputs leave as torch tensors over NumPy arrays allocated here
// (torch.from_numpy shares their memory). On a small call this hand-over is most of the cost, and it is cheaper
// than NumPy views made in Python. The Python layer checks arguments for the user's sake; this layer re-checks
// everything it dereferences, so that a bad call raises ValueError instead of reading out of bounds.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "attention.h"
#include "layer_ops.h"
#include "row_ops.h"
#include "score_steps.h"
#include "swiglu_gemm.h"

namespace py = pybind11;
using namespace fastprm;

namespace {

Isa g_isa = Isa::portable;
// FASTPRM_NAN_FILL_OUTPUTS=1 (tests): outputs start as NaN / INT64_MIN, so an element a kernel forgets shows.
bool g_fill_outputs_with_nan = false;

void set_isa(const std::string& name) {
  Isa isa;
  if (!parse_isa(name, &isa))
    throw py::value_error("unknown CPU ISA '" + name + "'; expected portable, avx2, avx512 or avx512_bf16");
  for (Isa s : supported_isas())
    if (s == isa) {
      g_isa = isa;
      return;
    }
  throw py::value_error(std::string("the running CPU does not support the ISA '") + name + "'");
}

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (Isa s : supported_isas()) names.push_back(isa_name(s));
  return names;
}

[[noreturn]] void fail(const std::string& what) { throw py::value_error(what); }

// Element types of the tensors the kernels read; the four float kinds have DType's codes.
enum class Kind : int { f32 = 0, bf16 = 1, f16 = 2, f64 = 3, i32 = 4, i64 = 5, other = 6 };
constexpr int kKnownKinds = 6;

// torch objects, looked up once at import. Never freed: calls use them until the interpreter exits, and Python
// objects must not be destroyed after it has.
struct Torch {
  py::object tensor_type, strided, from_numpy;
  py::object dtypes[kKnownKinds];  // indexed by Kind
  py::str layout{"layout"}, is_cpu{"is_cpu"}, dtype{"dtype"}, shape{"shape"}, stride{"stride"}, data_ptr{"data_ptr"},
      view{"view"};
};
const Torch* g_torch = nullptr;

// A CPU tensor's memory as the kernels see it; sizes and strides in elements.
struct TensorArg {
  char* data;
  int64_t size[3] = {1, 1, 1};
  int64_t stride[3] = {1, 1, 1};
  Kind kind = Kind::other;
};

// t.<name>(), without the bound-method object that attr(name)() would create first.
py::object call_method(py::handle t, const py::str& name) {
  PyObject* result = PyObject_CallMethodNoArgs(t.ptr(), name.ptr());
  if (result == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(result);
}

TensorArg tensor_arg(py::handle t, const char* name, int ndim) {
  const Torch& torch = *g_torch;
  if (!py::isinstance(t, torch.tensor_type)) fail(std::string(name) + " must be a torch.Tensor");
  if (t.attr(torch.layout).ptr() != torch.strided.ptr()) fail(std::string(name) + " must be a dense (strided) tensor");
  if (!t.attr(torch.is_cpu).cast<bool>()) fail(std::string(name) + " must be on the CPU");
  const py::tuple shape = t.attr(torch.shape);
  if (static_cast<int>(shape.size()) != ndim)
    fail(std::string(name) + " must be " + std::to_string(ndim) + "-D, got " + std::to_string(shape.size()) + "-D");
  const py::tuple strides = call_method(t, torch.stride);
  TensorArg a;
  for (int d = 0; d < ndim; ++d) {
    a.size[d] = shape[d].cast<int64_t>();
    a.stride[d] = strides[d].cast<int64_t>();
  }
  const py::object dtype = t.attr(torch.dtype);
  for (int k = 0; k < kKnownKinds; ++k)
    if (dtype.is(torch.dtypes[k])) a.kind = static_cast<Kind>(k);
  a.data = reinterpret_cast<char*>(call_method(t, torch.data_ptr).cast<uintptr_t>());
  return a;
}

bool is_float(Kind k) { return k == Kind::f32 || k == Kind::bf16 || k == Kind::f16 || k == Kind::f64; }

Rows float_rows(py::handle t, const char* name) {
  const TensorArg a = tensor_arg(t, name, 2);
  if (!is_float(a.kind)) fail(std::string(name) + " must be float32, bfloat16, float16 or float64");
  return {a.data, a.size[0], a.size[1], a.stride[0], a.stride[1], static_cast<DType>(a.kind)};
}

// A 1-D int32 / int64 tensor with contiguous elements.
IntArray int_vector(py::handle t, const char* name) {
  const TensorArg a = tensor_arg(t, name, 1);
  if (a.kind != Kind::i32 && a.kind != Kind::i64) fail(std::string(name) + " must be int32 or int64");
  if (a.size[0] > 1 && a.stride[0] != 1) fail(std::string(name) + " must be contiguous");
  return {a.data, a.size[0], a.kind == Kind::i64};
}

const int64_t* int64_vector(py::handle t, const char* name, int64_t* size) {
  const IntArray a = int_vector(t, name);
  if (!a.is64) fail(std::string(name) + " must be int64");
  *size = a.size;
  return static_cast<const int64_t*>(a.data);
}

// step_index [K] int64, or null with K = N for None (rows mode: hidden holds exactly the step rows).
const int64_t* step_rows(py::handle step_index, const Rows& hidden, int64_t* K) {
  if (step_index.is_none()) {
    *K = hidden.n;
    return nullptr;
  }
  // An empty tensor's data_ptr may be 0, which the kernels would take for rows mode: give them a non-null
  // pointer that nothing reads (K = 0).
  static const int64_t no_steps = 0;
  const int64_t* si = int64_vector(step_index, "step_index", K);
  return si ? si : &no_steps;
}

double element(const char* p, DType dt) {
  switch (dt) {
    case DType::f32: {
      float v;
      std::memcpy(&v, p, sizeof v);
      return v;
    }
    case DType::f64: {
      double v;
      std::memcpy(&v, p, sizeof v);
      return v;
    }
    default: {
      uint16_t v;
      std::memcpy(&v, p, sizeof v);
      return dt == DType::bf16 ? bf16_to_float(v) : f16_to_float(v);
    }
  }
}

template <class Acc>
constexpr DType accumulator_dtype() {
  return std::is_same<Acc, double>::value ? DType::f64 : DType::f32;
}

// The head as a contiguous [C, H] matrix of the accumulator type: the weight's own memory when it already is
// one, else a copy in `storage` (a bf16 head is widened once per call rather than once per step row).
template <class Acc>
const Acc* head_matrix(py::handle weight, int64_t H, int* C, std::vector<Acc>& storage) {
  const Rows w = float_rows(weight, "weight");
  if (w.h != H || (w.n != 1 && w.n != 2))
    fail("weight must be [C, H] with C in {1, 2} and H = hidden.shape[1] = " + std::to_string(H) + ", got [" +
         std::to_string(w.n) + ", " + std::to_string(w.h) + "]");
  *C = static_cast<int>(w.n);
  const bool contiguous = (w.stride_h == 1 || H <= 1) && (w.stride_n == H || w.n == 1);
  if (w.dtype == accumulator_dtype<Acc>() && contiguous) return static_cast<const Acc*>(w.data);
  storage.resize(w.n * H);
  const size_t es = element_size(w.dtype);
  for (int64_t c = 0; c < w.n; ++c) {
    const char* row = static_cast<const char*>(w.data) + c * w.stride_n * es;
    Acc* out = storage.data() + c * H;
    if (std::is_same<Acc, float>::value && w.dtype != DType::f64 && w.stride_h == 1) {
      row_ops(g_isa, w.dtype).widen(row, H, reinterpret_cast<float*>(out));
      continue;
    }
    for (int64_t h = 0; h < H; ++h) out[h] = static_cast<Acc>(element(row + h * w.stride_h * es, w.dtype));
  }
  return storage.data();
}

// Reads bias [C] into out; false when bias is None.
template <class Acc>
bool read_bias(const py::object& bias, int C, Acc* out) {
  if (bias.is_none()) return false;
  const TensorArg a = tensor_arg(bias, "bias", 1);
  if (!is_float(a.kind)) fail("bias must be float32, bfloat16, float16 or float64");
  if (a.size[0] != C) fail("bias must be [C] = [" + std::to_string(C) + "], got [" + std::to_string(a.size[0]) + "]");
  const DType dt = static_cast<DType>(a.kind);
  for (int c = 0; c < C; ++c) out[c] = static_cast<Acc>(element(a.data + c * a.stride[0] * element_size(dt), dt));
  return true;
}

template <class T>
py::array_t<T> new_output(std::vector<py::ssize_t> shape) {
  py::array_t<T> a(shape);
  if (g_fill_outputs_with_nan) {
    // uint16 words hold bf16 / fp16 values, and 0xffff is a NaN in both.
    const T fill = std::is_floating_point<T>::value ? std::numeric_limits<T>::quiet_NaN()
                   : std::is_signed<T>::value       ? std::numeric_limits<T>::min()
                                                    : std::numeric_limits<T>::max();
    std::fill(a.mutable_data(), a.mutable_data() + a.size(), fill);
  }
  return a;
}

py::object as_tensor(const py::array& a) { return g_torch->from_numpy(a); }

// Returns (step_index [K], cu_steps [B + 1]) int64.
py::tuple find_steps_op(py::handle input_ids, py::handle cu_seqlens, py::handle sep_token_ids) {
  const IntArray ids = int_vector(input_ids, "input_ids"), cu = int_vector(cu_seqlens, "cu_seqlens");
  int64_t n_sep;
  const int64_t* seps = int64_vector(sep_token_ids, "sep_token_ids", &n_sep);
  if (cu.size < 1) fail("cu_seqlens must have at least one element (it is [B + 1])");
  if (n_sep < 1) fail("sep_token_ids must name at least one separator id");
  py::array_t<int64_t> cu_steps = new_output<int64_t>({cu.size});
  int64_t* cs = cu_steps.mutable_data();
  std::vector<int64_t> rows;
  std::string err;
  {
    py::gil_scoped_release release;
    err = find_steps(ids, cu, seps, n_sep, &rows, cs);
  }
  if (!err.empty()) fail(err);
  const int64_t K = static_cast<int64_t>(rows.size());
  py::array_t<int64_t> step_index = new_output<int64_t>({K});
  std::copy(rows.begin(), rows.end(), step_index.mutable_data());
  return py::make_tuple(as_tensor(step_index), as_tensor(cu_steps));
}

// The outputs of fastprm::score_steps_forward, in its order.
template <class Acc>
py::tuple forward(const Rows& hidden, py::handle weight, const py::object& bias, py::handle step_index,
                  py::handle cu_steps, int positive_class, double threshold) {
  if (positive_class != 0 && positive_class != 1) fail("positive_class must be 0 or 1");
  std::vector<Acc> head_storage;
  int C;
  const Acc* w = head_matrix<Acc>(weight, hidden.h, &C, head_storage);
  Acc b[2];
  const bool has_bias = read_bias(bias, C, b);
  int64_t K, n_offsets;
  const int64_t* si = step_rows(step_index, hidden, &K);
  const int64_t* cs = int64_vector(cu_steps, "cu_steps", &n_offsets);
  if (n_offsets < 1) fail("cu_steps must have at least one element (it is [B + 1])");
  const int64_t B = n_offsets - 1;
  const std::string err = validate_steps(si, K, cs, B, hidden.n);
  if (!err.empty()) fail(err);

  py::array_t<Acc> logits = new_output<Acc>({K, C}), probs = new_output<Acc>({K});
  py::array_t<Acc> min = new_output<Acc>({B}), log_prod = new_output<Acc>({B}), prod = new_output<Acc>({B}),
                   mean = new_output<Acc>({B}), last = new_output<Acc>({B});
  py::array_t<int64_t> first_error = new_output<int64_t>({B}), num_steps = new_output<int64_t>({B}),
                       argmin = new_output<int64_t>({B});
  const ForwardOut<Acc> out{logits.mutable_data(), probs.mutable_data(),       min.mutable_data(),
                            log_prod.mutable_data(), prod.mutable_data(),      mean.mutable_data(),
                            last.mutable_data(),   first_error.mutable_data(), num_steps.mutable_data(),
                            argmin.mutable_data()};
  {
    py::gil_scoped_release release;
    score_forward<Acc>(hidden, w, has_bias ? b : nullptr, C, si, K, cs, B, positive_class, threshold, g_isa, out);
  }
  return py::make_tuple(as_tensor(logits), as_tensor(probs), as_tensor(min), as_tensor(log_prod), as_tensor(prod),
                        as_tensor(mean), as_tensor(last), as_tensor(first_error), as_tensor(num_steps),
                        as_tensor(argmin));
}

py::tuple score_forward_op(py::handle hidden, py::handle weight, const py::object& bias, py::handle step_index,
                           py::handle cu_steps, int positive_class, double threshold) {
  const Rows h = float_rows(hidden, "hidden");
  if (h.dtype == DType::f64) return forward<double>(h, weight, bias, step_index, cu_steps, positive_class, threshold);
  return forward<float>(h, weight, bias, step_index, cu_steps, positive_class, threshold);
}

// (grad_hidden [N, H] in hidden's dtype, grad_weight [C, H], grad_bias [C]) from grad_step_logits [K, C].
template <class Acc>
py::tuple backward(py::handle grad_step_logits, const Rows& hidden, py::handle weight, py::handle step_index) {
  std::vector<Acc> head_storage;
  int C;
  const Acc* w = head_matrix<Acc>(weight, hidden.h, &C, head_storage);
  int64_t K;
  const int64_t* si = step_rows(step_index, hidden, &K);
  if (si)
    for (int64_t k = 0; k < K; ++k)
      if (si[k] < 0 || si[k] >= hidden.n) fail("step_index[" + std::to_string(k) + "] is out of range");
  const TensorArg g = tensor_arg(grad_step_logits, "grad_step_logits", 2);
  if (g.kind != static_cast<Kind>(accumulator_dtype<Acc>()) || g.size[0] != K || g.size[1] != C ||
      (K > 1 && g.stride[0] != C) || (K > 0 && C > 1 && g.stride[1] != 1))
    fail("grad_step_logits must be a contiguous [K, C] tensor of the accumulator dtype");

  const int64_t N = hidden.n, H = hidden.h;
  const bool half = hidden.dtype == DType::bf16 || hidden.dtype == DType::f16;
  py::array grad_hidden = half                          ? py::array(new_output<uint16_t>({N, H}))
                          : hidden.dtype == DType::f64 ? py::array(new_output<double>({N, H}))
                                                       : py::array(new_output<float>({N, H}));
  py::array_t<Acc> grad_weight = new_output<Acc>({C, H}), grad_bias = new_output<Acc>({C});
  {
    py::gil_scoped_release release;
    score_backward<Acc>(hidden, w, C, reinterpret_cast<const Acc*>(g.data), si, K, g_isa,
                        grad_hidden.mutable_data(), grad_weight.mutable_data(), grad_bias.mutable_data());
  }
  py::object grad_hidden_tensor = as_tensor(grad_hidden);
  if (half)  // 16-bit floats travel as uint16 words: reinterpret them as the hidden dtype
    grad_hidden_tensor = grad_hidden_tensor.attr(g_torch->view)(g_torch->dtypes[static_cast<int>(hidden.dtype)]);
  return py::make_tuple(grad_hidden_tensor, as_tensor(grad_weight), as_tensor(grad_bias));
}

py::tuple score_backward_op(py::handle grad_step_logits, py::handle hidden, py::handle weight,
                            py::handle step_index) {
  const Rows h = float_rows(hidden, "hidden");
  if (h.dtype == DType::f64) return backward<double>(grad_step_logits, h, weight, step_index);
  return backward<float>(grad_step_logits, h, weight, step_index);
}

// A [tokens, heads, head_dim] float tensor whose head_dim elements are contiguous.
HeadsTensor heads_tensor(py::handle t, const char* name, const TensorArg& like, int64_t* tokens, int64_t* heads) {
  const TensorArg a = tensor_arg(t, name, 3);
  if (a.kind != like.kind) fail(std::string(name) + " must have the dtype of q");
  if (a.size[2] != like.size[2]) fail(std::string(name) + " must have q's head_dim");
  if (a.size[2] > 1 && a.stride[2] != 1) fail(std::string(name) + "'s head_dim elements must be contiguous");
  *tokens = a.size[0];
  *heads = a.size[1];
  return {a.data, a.stride[0], a.stride[1]};
}

py::object varlen_attention_op(py::handle q, py::handle k, py::handle v, py::handle cu_seqlens, double scale,
                               py::handle prefix_k, py::handle prefix_v, py::handle prefix_spans, int threads) {
  const TensorArg qa = tensor_arg(q, "q", 3);
  if (qa.kind != Kind::f32 && qa.kind != Kind::bf16 && qa.kind != Kind::f16)
    fail("q must be float32, bfloat16 or float16");
  const int64_t N = qa.size[0], Hq = qa.size[1], D = qa.size[2];
  if (D > 1 && qa.stride[2] != 1) fail("q's head_dim elements must be contiguous");
  AttentionArgs args{};
  args.dtype = static_cast<DType>(qa.kind);
  args.q = {qa.data, qa.stride[0], qa.stride[1]};
  int64_t n, Hkv, n2, h2;
  args.k = heads_tensor(k, "k", qa, &n, &Hkv);
  args.v = heads_tensor(v, "v", qa, &n2, &h2);
  if (n != N || n2 != N || h2 != Hkv) fail("k and v must be [tokens, heads_kv, head_dim] with q's tokens");
  if (Hkv < 1 || Hq % Hkv != 0) fail("q's heads must be a multiple of k's heads");
  if (!attention_supported(g_isa, static_cast<int>(D)))
    fail("no attention kernel for head_dim " + std::to_string(D) + " on the ISA " + isa_name(g_isa));
  int64_t B1;
  const int64_t* cu = int64_vector(cu_seqlens, "cu_seqlens", &B1);
  if (B1 < 1 || cu[0] != 0 || cu[B1 - 1] != N) fail("cu_seqlens must start at 0 and end at q's token count");
  for (int64_t r = 0; r + 1 < B1; ++r)
    if (cu[r + 1] < cu[r]) fail("cu_seqlens must be non-decreasing");
  if (prefix_spans.is_none() != prefix_k.is_none() || prefix_k.is_none() != prefix_v.is_none())
    fail("prefix_k, prefix_v and prefix_spans go together");
  if (!prefix_spans.is_none()) {
    int64_t P, ph, P2, ph2;
    args.prefix_k = heads_tensor(prefix_k, "prefix_k", qa, &P, &ph);
    args.prefix_v = heads_tensor(prefix_v, "prefix_v", qa, &P2, &ph2);
    if (P2 != P || ph != Hkv || ph2 != Hkv) fail("prefix_k and prefix_v must be [prefix_tokens, heads_kv, head_dim]");
    const TensorArg sp = tensor_arg(prefix_spans, "prefix_spans", 2);
    if (sp.kind != Kind::i64 || sp.size[0] != B1 - 1 || sp.size[1] != 2 || (sp.size[0] > 0 && sp.stride[0] != 2) ||
        sp.stride[1] != 1)
      fail("prefix_spans must be a contiguous int64 [rows, 2] tensor");
    args.prefix_spans = reinterpret_cast<const int64_t*>(sp.data);
    for (int64_t r = 0; r + 1 < B1; ++r)
      if (args.prefix_spans[2 * r] < 0 || args.prefix_spans[2 * r + 1] < args.prefix_spans[2 * r] ||
          args.prefix_spans[2 * r + 1] > P)
        fail("prefix_spans[" + std::to_string(r) + "] is not a span of the prefix tokens");
  }
  args.heads_q = static_cast<int>(Hq);
  args.heads_kv = static_cast<int>(Hkv);
  args.head_dim = static_cast<int>(D);
  args.scale = static_cast<float>(scale);
  args.rows = B1 - 1;
  args.cu_seqlens = cu;
  args.threads = std::max(1, threads);
  const bool half = qa.kind != Kind::f32;
  py::array out = half ? py::array(new_output<uint16_t>({N, Hq, D})) : py::array(new_output<float>({N, Hq, D}));
  args.out = out.mutable_data();
  {
    py::gil_scoped_release release;
    varlen_attention(g_isa, args);
  }
  py::object result = as_tensor(out);
  if (half) result = result.attr(g_torch->view)(g_torch->dtypes[static_cast<int>(qa.kind)]);
  return result;
}


// The dtype of a decoder-layer kernel's tensor (float32, bfloat16 or float16), which must be `like`'s when given.
Kind layer_kind(const TensorArg& a, const char* name, const char* like_name = nullptr, Kind like = Kind::other) {
  if (a.kind != Kind::f32 && a.kind != Kind::bf16 && a.kind != Kind::f16)
    fail(std::string(name) + " must be float32, bfloat16 or float16");
  if (like_name != nullptr && a.kind != like) fail(std::string(name) + " must have the dtype of " + like_name);
  return a.kind;
}

// A 2-D tensor's rows; its last dimension must be contiguous.
RowMatrix row_matrix(const TensorArg& a, const char* name) {
  if (a.size[1] > 1 && a.stride[1] != 1) fail(std::string(name) + "'s last dimension must be contiguous");
  return {a.data, a.stride[0]};
}

// An uninitialised (NaN-filled under FASTPRM_NAN_FILL_OUTPUTS) output of this float kind.
py::array float_output(Kind kind, std::vector<py::ssize_t> shape) {
  if (kind == Kind::f32) return new_output<float>(std::move(shape));
  return new_output<uint16_t>(std::move(shape));
}

py::object float_tensor(const py::array& a, Kind kind) {
  py::object t = as_tensor(a);
  if (kind != Kind::f32)  // 16-bit floats travel as uint16 words
    t = t.attr(g_torch->view)(g_torch->dtypes[static_cast<int>(kind)]);
  return t;
}

py::object rms_norm_op(py::handle x, py::handle weight, double eps, py::handle residual, int threads) {
  const TensorArg xa = tensor_arg(x, "x", 2);
  const Kind kind = layer_kind(xa, "x");
  const int64_t N = xa.size[0], H = xa.size[1];
  const TensorArg wa = tensor_arg(weight, "weight", 1);
  layer_kind(wa, "weight", "x", kind);
  if (wa.size[0] != H) fail("weight must be [" + std::to_string(H) + "] (x's last dimension), got [" +
                             std::to_string(wa.size[0]) + "]");
  if (H > 1 && wa.stride[0] != 1) fail("weight must be contiguous");
  if (!(eps >= 0.0) || !std::isfinite(eps)) fail("eps must be a finite number >= 0");
  RmsNormArgs args{};
  args.dtype = static_cast<DType>(kind);
  args.rows = N;
  args.width = H;
  args.eps = static_cast<float>(eps);
  args.x = row_matrix(xa, "x");
  args.weight = wa.data;
  args.threads = std::max(1, threads);
  py::array out = float_output(kind, {N, H});
  args.out = out.mutable_data();
  py::array sum;
  if (!residual.is_none()) {
    const TensorArg ra = tensor_arg(residual, "residual", 2);
    layer_kind(ra, "residual", "x", kind);
    if (ra.size[0] != N || ra.size[1] != H) fail("residual must have x's shape");
    args.residual = row_matrix(ra, "residual");
    sum = float_output(kind, {N, H});
    args.sum_out = sum.mutable_data();
  }
  {
    py::gil_scoped_release release;
    layer_ops(g_isa).rms_norm(args);
  }
  if (residual.is_none()) return float_tensor(out, kind);
  return py::make_tuple(float_tensor(sum, kind), float_tensor(out, kind));
}

py::object silu_mul_op(py::handle gate_up, int threads) {
  const TensorArg ga = tensor_arg(gate_up, "gate_up", 2);
  const Kind kind = layer_kind(ga, "gate_up");
  if (ga.size[1] % 2) fail("gate_up must be [rows, 2 * I], got an odd last dimension");
  SiluMulArgs args{};
  args.dtype = static_cast<DType>(kind);
  args.rows = ga.size[0];
  args.width = ga.size[1] / 2;
  args.gate_up = row_matrix(ga, "gate_up");
  args.threads = std::max(1, threads);
  py::array out = float_output(kind, {args.rows, args.width});
  args.out = out.mutable_data();
  {
    py::gil_scoped_release release;
    layer_ops(g_isa).silu_mul(args);
  }
  return float_tensor(out, kind);
}

void rotary_op(py::handle x, py::handle cos, py::handle sin, int threads) {
  const TensorArg xa = tensor_arg(x, "x", 3);
  const Kind kind = layer_kind(xa, "x");
  const int64_t T = xa.size[0], Hh = xa.size[1], D = xa.size[2];
  if (D % 2) fail("x's head_dim must be even");
  if (D > 1 && xa.stride[2] != 1) fail("x's head_dim elements must be contiguous");
  // Rotated in place: no two (token, head) rows may share memory. Sorting the two outer dimensions by stride,
  // the inner one must step over a whole head row and the outer one over all the inner rows.
  int64_t inner_n = T, inner_s = xa.stride[0], outer_n = Hh, outer_s = xa.stride[1];
  if (outer_n > 1 && (inner_n <= 1 || outer_s < inner_s)) {
    std::swap(inner_n, outer_n);
    std::swap(inner_s, outer_s);
  }
  if ((inner_n > 1 && inner_s < D) || (outer_n > 1 && inner_n > 0 && outer_s < inner_n * inner_s) ||
      (outer_n > 1 && inner_n <= 1 && outer_s < D))
    fail("x's (token, head) rows overlap in memory; it is rotated in place");
  RotaryArgs args{};
  args.dtype = static_cast<DType>(kind);
  args.tokens = T;
  args.heads = Hh;
  args.head_dim = D;
  args.x = xa.data;
  args.stride_token = xa.stride[0];
  args.stride_head = xa.stride[1];
  const char* names[2] = {"cos", "sin"};
  RowMatrix* tables[2] = {&args.cos, &args.sin};
  py::handle given[2] = {cos, sin};
  for (int i = 0; i < 2; ++i) {
    const TensorArg ta = tensor_arg(given[i], names[i], 2);
    layer_kind(ta, names[i], "x", kind);
    if (ta.size[0] != T || ta.size[1] != D)
      fail(std::string(names[i]) + " must be [" + std::to_string(T) + ", " + std::to_string(D) +
           "] (x's tokens and head_dim)");
    *tables[i] = row_matrix(ta, names[i]);
  }
  args.threads = std::max(1, threads);
  py::gil_scoped_release release;
  layer_ops(g_isa).rotary(args);
}

// Whether the selected ISA runs the SwiGLU GEMM in this float kind: fp32 on AVX-512, bf16 on AVX512-BF16.
bool swiglu_gemm_runs(Kind kind) {
  if (kind == Kind::f32) return g_isa == Isa::avx512 || g_isa == Isa::avx512_bf16;
  return kind == Kind::bf16 && g_isa == Isa::avx512_bf16;
}

std::vector<std::string> swiglu_gemm_dtypes() {
  std::vector<std::string> names;
  for (Kind kind : {Kind::f32, Kind::bf16})
    if (swiglu_gemm_runs(kind)) names.push_back(kind == Kind::f32 ? "float32" : "bfloat16");
  return names;
}

// A 2-D fp32 / bf16 tensor for the SwiGLU GEMM that the selected ISA runs, its last dimension contiguous.
TensorArg swiglu_matrix(py::handle t, const char* name) {
  const TensorArg a = tensor_arg(t, name, 2);
  if (a.kind != Kind::f32 && a.kind != Kind::bf16) fail(std::string(name) + " must be float32 or bfloat16");
  if (!swiglu_gemm_runs(a.kind))
    fail(std::string("the SwiGLU GEMM needs ") + (a.kind == Kind::f32 ? "AVX-512" : "AVX512-BF16") +
         " for this dtype (selected ISA: " + isa_name(g_isa) + ")");
  row_matrix(a, name);
  return a;
}

py::object swiglu_gemm_pack_op(py::handle gate, py::handle up) {
  const TensorArg ga = swiglu_matrix(gate, "gate"), ua = swiglu_matrix(up, "up");
  if (ua.kind != ga.kind) fail("up must have gate's dtype");
  if (ua.size[0] != ga.size[0] || ua.size[1] != ga.size[1]) fail("up must have gate's shape [I, K]");
  if (ga.size[0] < 1 || ga.size[1] < 1) fail("gate must be [I, K] with I, K >= 1");
  const DType dtype = static_cast<DType>(ga.kind);
  SwigluGemmPackArgs args{dtype, ga.size[0], ga.size[1], ga.data, ua.data, ga.stride[0], ua.stride[0], nullptr};
  py::array packed = float_output(ga.kind, {static_cast<py::ssize_t>(swiglu_gemm_packed_size(dtype, ga.size[0], ga.size[1]))});
  args.packed = packed.mutable_data();
#if defined(__x86_64__) || defined(_M_X64)
  {
    py::gil_scoped_release release;
    avx512::swiglu_gemm_pack(args);
  }
#endif
  return float_tensor(packed, ga.kind);
}

py::object swiglu_gemm_op(py::handle x, py::handle packed, int64_t intermediate, int64_t hidden, int threads) {
  const TensorArg xa = swiglu_matrix(x, "x");
  if (intermediate < 1 || hidden < 1) fail("intermediate and hidden must be >= 1");
  if (xa.size[1] != hidden) fail("x must be [M, hidden] = [M, " + std::to_string(hidden) + "], got [" +
                                 std::to_string(xa.size[0]) + ", " + std::to_string(xa.size[1]) + "]");
  const TensorArg pa = tensor_arg(packed, "packed", 1);
  if (pa.kind != xa.kind || (pa.size[0] > 1 && pa.stride[0] != 1))
    fail("packed must be a contiguous vector of x's dtype");
  const DType dtype = static_cast<DType>(xa.kind);
  if (pa.size[0] != swiglu_gemm_packed_size(dtype, intermediate, hidden))
    fail("packed does not hold [" + std::to_string(intermediate) + ", " + std::to_string(hidden) +
         "] weights (pack them with swiglu_gemm_pack)");
  SwigluGemmArgs args{dtype, xa.size[0], intermediate, hidden, xa.data, xa.stride[0], pa.data, nullptr,
                      std::max(1, threads)};
  py::array out = float_output(xa.kind, {xa.size[0], static_cast<py::ssize_t>(intermediate)});
  args.out = out.mutable_data();
#if defined(__x86_64__) || defined(_M_X64)
  if (args.rows > 0) {
    py::gil_scoped_release release;
    avx512::swiglu_gemm(args);
  }
#endif
  return float_tensor(out, xa.kind);
}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastprm CPU kernels (no libtorch: torch tensors are read through their Python attributes)";
  const py::module_ torch = py::module_::import("torch");
  Torch* t = new Torch;
  t->tensor_type = torch.attr("Tensor");
  t->strided = torch.attr("strided");
  t->from_numpy = torch.attr("from_numpy");
  const char* dtype_names[kKnownKinds] = {"float32", "bfloat16", "float16", "float64", "int32", "int64"};
  for (int k = 0; k < kKnownKinds; ++k) t->dtypes[k] = torch.attr(dtype_names[k]);
  g_torch = t;
  g_isa = supported_isas().back();

  m.def("available_isas", &available_isas, "ISAs the running CPU supports, best last");
  m.def("set_isa", &set_isa, py::arg("name"), "Force the ISA used by every kernel (as FASTPRM_CPU_ISA does)");
  m.def("selected_isa", [] { return std::string(isa_name(g_isa)); });
  m.def(
      "set_fill_outputs_with_nan", [](bool fill) { g_fill_outputs_with_nan = fill; }, py::arg("fill"),
      "Start every output as NaN / INT64_MIN (tests: an element a kernel forgets to write shows)");
  m.def("find_steps", &find_steps_op, py::arg("input_ids"), py::arg("cu_seqlens"), py::arg("sep_token_ids"),
        "(step_index [K], cu_steps [B + 1]) int64: the separator rows of each sequence");
  m.def("score_forward", &score_forward_op, py::arg("hidden"), py::arg("weight"), py::arg("bias"),
        py::arg("step_index"), py::arg("cu_steps"), py::arg("positive_class"), py::arg("threshold"),
        "The outputs of fastprm::score_steps_forward (step_index None: rows mode)");
  m.def("score_backward", &score_backward_op, py::arg("grad_step_logits"), py::arg("hidden"), py::arg("weight"),
        py::arg("step_index"),
        "(grad_hidden, grad_weight, grad_bias) of fastprm::score_steps_backward (step_index None: rows mode)");
  m.def("attention_supported", [](int head_dim) { return attention_supported(g_isa, head_dim); },
        py::arg("head_dim"), "Whether the selected ISA has a varlen attention kernel for this head_dim");
  m.def("varlen_attention", &varlen_attention_op, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("cu_seqlens"),
        py::arg("scale"), py::arg("prefix_k"), py::arg("prefix_v"), py::arg("prefix_spans"), py::arg("threads"),
        "Causal varlen attention (inference) of fastprm::varlen_attention: out [tokens, heads_q, head_dim]");
  m.def("rms_norm", &rms_norm_op, py::arg("x"), py::arg("weight"), py::arg("eps"), py::arg("residual"),
        py::arg("threads"),
        "transformers' RMSNorm of x [N, H] (residual None) or (x + residual, RMSNorm(x + residual))");
  m.def("silu_mul", &silu_mul_op, py::arg("gate_up"), py::arg("threads"),
        "silu(gate) * up [N, I] of a merged gate/up projection [N, 2I]");
  m.def("rotary", &rotary_op, py::arg("x"), py::arg("cos"), py::arg("sin"), py::arg("threads"),
        "Rotary embedding (transformers' half-rotation layout) of x [tokens, heads, head_dim] in place");
  m.def("swiglu_gemm_dtypes", &swiglu_gemm_dtypes,
        "The dtypes the selected ISA runs the SwiGLU GEMM in (float32: AVX-512, bfloat16: AVX512-BF16)");
  m.def("swiglu_gemm_pack", &swiglu_gemm_pack_op, py::arg("gate"), py::arg("up"),
        "Gate and up weights [I, K] (fp32 or bf16) packed for swiglu_gemm (a vector of their dtype)");
  m.def("swiglu_gemm", &swiglu_gemm_op, py::arg("x"), py::arg("packed"), py::arg("intermediate"), py::arg("hidden"),
        py::arg("threads"), "silu(x Wg^T) * (x Wu^T) [M, I] of x [M, K] and packed weights, rounded once to x's dtype");
}
