// pybind11 module fastprm._C. Tensors arrive as NumPy views of torch storage (zero-copy; bf16 and fp16 as
// int16 words plus a dtype code). The Python layer checks dtypes and shapes; this layer re-checks what it
// dereferences so that a bad call raises instead of reading out of bounds.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "row_ops.h"
#include "score_steps.h"

namespace py = pybind11;
using namespace fastprm;

namespace {

Isa g_isa = Isa::portable;

void set_isa(const std::string& name) {
  Isa isa;
  if (!parse_isa(name, &isa))
    throw py::value_error("unknown CPU ISA '" + name + "'; expected portable, avx2, avx512 or avx512_bf16");
  for (Isa s : supported_isas())
    if (s == isa) {
      g_isa = isa;
      return;
    }
  throw py::value_error(std::string("this CPU does not support the ISA '") + name + "'");
}

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (Isa s : supported_isas()) names.push_back(isa_name(s));
  return names;
}

void require(bool ok, const std::string& what) {
  if (!ok) throw py::value_error(what);
}

template <class T>
T* mutable_ptr(py::array& a, const char* name, int64_t size) {
  require(a.writeable(), std::string(name) + " must be writable");
  require(a.size() == size, std::string(name) + " has " + std::to_string(a.size()) + " elements, expected " +
                                std::to_string(size));
  require(a.itemsize() == sizeof(T) && (a.flags() & py::array::c_style), std::string(name) + " must be contiguous");
  return static_cast<T*>(a.mutable_data());
}

template <class T>
const T* const_ptr(const py::array& a, const char* name, int64_t size) {
  require(a.size() == size, std::string(name) + " has " + std::to_string(a.size()) + " elements, expected " +
                                std::to_string(size));
  require(a.itemsize() == sizeof(T) && (a.flags() & py::array::c_style), std::string(name) + " must be contiguous");
  return static_cast<const T*>(a.data());
}

IntArray int_array(const py::array& a, const char* name) {
  require(a.ndim() == 1, std::string(name) + " must be 1-D");
  require(a.dtype().kind() == 'i' && (a.itemsize() == 4 || a.itemsize() == 8),
          std::string(name) + " must be int32 or int64");
  require(a.flags() & py::array::c_style, std::string(name) + " must be contiguous");
  return {a.data(), static_cast<int64_t>(a.size()), a.itemsize() == 8};
}

Rows rows(const py::array& a, int dtype_code) {
  require(a.ndim() == 2, "hidden must be 2-D [N, H]");
  const DType dt = static_cast<DType>(dtype_code);
  const size_t es = dt == DType::f64 ? 8 : dt == DType::f32 ? 4 : 2;
  require(static_cast<size_t>(a.itemsize()) == es, "hidden's element size does not match its dtype");
  require(a.strides(0) % static_cast<py::ssize_t>(es) == 0 && a.strides(1) % static_cast<py::ssize_t>(es) == 0,
          "hidden's strides must be whole elements");
  require(a.strides(0) >= 0 && a.strides(1) >= 0, "hidden must not have negative strides");
  return {a.data(), a.shape(0), a.shape(1), a.strides(0) / static_cast<int64_t>(es),
          a.strides(1) / static_cast<int64_t>(es), dt};
}

// Returns (step_index [K], cu_steps [B + 1]) as new int64 arrays: count, prefix-sum, fill, in one call.
py::tuple find_steps(const py::array& ids, const py::array& cu, const py::array& seps) {
  const IntArray input_ids = int_array(ids, "input_ids"), cu_seqlens = int_array(cu, "cu_seqlens");
  const int64_t B = cu_seqlens.size - 1;
  require(B >= 0, "cu_seqlens must have at least one element (it is [B + 1])");
  const int64_t* sep = const_ptr<int64_t>(seps, "sep_token_ids", seps.size());
  py::array_t<int64_t> cu_steps(B + 1);
  int64_t* cs = cu_steps.mutable_data();
  std::string err;
  {
    py::gil_scoped_release release;
    err = count_steps(input_ids, cu_seqlens, sep, seps.size(), cs + 1);
  }
  require(err.empty(), err);
  cs[0] = 0;
  for (int64_t b = 0; b < B; ++b) cs[b + 1] += cs[b];
  py::array_t<int64_t> step_index(cs[B]);
  int64_t* out = step_index.mutable_data();
  {
    py::gil_scoped_release release;
    fill_steps(input_ids, cu_seqlens, sep, seps.size(), cs, out);
  }
  return py::make_tuple(step_index, cu_steps);
}

void check_steps(const py::array& step_index, const py::array& cu_steps, int64_t n_rows) {
  const int64_t K = step_index.size(), B = cu_steps.size() - 1;
  require(B >= 0, "cu_steps must have at least one element (it is [B + 1])");
  const std::string err = validate_steps(const_ptr<int64_t>(step_index, "step_index", K), K,
                                         const_ptr<int64_t>(cu_steps, "cu_steps", B + 1), B, n_rows);
  require(err.empty(), err);
}

// Outputs arrive as two buffers: floats = [logits K*C | probs K | min B | log_prod B | mean B | last B] and
// ints = [first_error B | argmin B].
template <class Acc>
void forward(const py::array& hidden, int dtype_code, const py::array& weight, const py::object& bias,
             const py::array& step_index, const py::array& cu_steps, int positive_class, double threshold,
             py::array& floats, py::array& ints) {
  const Rows h = rows(hidden, dtype_code);
  check_steps(step_index, cu_steps, h.n);
  const int64_t K = step_index.size(), B = cu_steps.size() - 1;
  require(weight.ndim() == 2 && weight.shape(1) == h.h && (weight.shape(0) == 1 || weight.shape(0) == 2),
          "weight must be [C, H] with C in {1, 2} and H = hidden.shape[1]");
  const int C = static_cast<int>(weight.shape(0));
  const Acc* w = const_ptr<Acc>(weight, "weight", C * h.h);
  const Acc* b = bias.is_none() ? nullptr : const_ptr<Acc>(bias.cast<py::array>(), "bias", C);
  Acc* f = mutable_ptr<Acc>(floats, "float outputs", K * C + K + 4 * B);
  int64_t* i = mutable_ptr<int64_t>(ints, "int outputs", 2 * B);
  const ForwardOut<Acc> out{f, f + K * C, f + K * C + K, f + K * C + K + B, f + K * C + K + 2 * B,
                            f + K * C + K + 3 * B, i, i + B};
  const int64_t* si = const_ptr<int64_t>(step_index, "step_index", K);
  const int64_t* cs = const_ptr<int64_t>(cu_steps, "cu_steps", B + 1);
  py::gil_scoped_release release;
  score_forward<Acc>(h, w, b, C, si, K, cs, B, positive_class, threshold, g_isa, out);
}

template <class Acc>
void backward(const py::array& hidden, int dtype_code, const py::array& weight, const py::array& grad_logits,
              const py::array& step_index, py::array& grad_hidden, py::array& grad_weight, py::array& grad_bias) {
  const Rows h = rows(hidden, dtype_code);
  const int64_t K = step_index.size();
  require(weight.ndim() == 2 && weight.shape(1) == h.h && (weight.shape(0) == 1 || weight.shape(0) == 2),
          "weight must be [C, H] with C in {1, 2} and H = hidden.shape[1]");
  const int C = static_cast<int>(weight.shape(0));
  const int64_t* si = const_ptr<int64_t>(step_index, "step_index", K);
  for (int64_t k = 0; k < K; ++k)
    require(si[k] >= 0 && si[k] < h.n, "step_index[" + std::to_string(k) + "] is out of range");
  require(grad_hidden.itemsize() == hidden.itemsize(), "grad_hidden must have hidden's dtype");
  void* gh = grad_hidden.mutable_data();
  require(grad_hidden.size() == h.n * h.h && (grad_hidden.flags() & py::array::c_style),
          "grad_hidden must be a contiguous [N, H] buffer");
  const Acc* w = const_ptr<Acc>(weight, "weight", C * h.h);
  const Acc* gl = const_ptr<Acc>(grad_logits, "grad_logits", K * C);
  Acc* gw = mutable_ptr<Acc>(grad_weight, "grad_weight", C * h.h);
  Acc* gb = mutable_ptr<Acc>(grad_bias, "grad_bias", C);
  py::gil_scoped_release release;
  score_backward<Acc>(h, w, C, gl, si, K, g_isa, gh, gw, gb);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastprm CPU kernels (no libtorch; NumPy views of torch tensors cross zero-copy)";
  g_isa = supported_isas().back();
  m.def("available_isas", &available_isas, "ISAs this CPU can run, best last");
  m.def("set_isa", &set_isa, py::arg("name"), "Force the ISA used by every kernel (as FASTPRM_CPU_ISA does)");
  m.def("selected_isa", [] { return std::string(isa_name(g_isa)); });
  m.def("find_steps", &find_steps, py::arg("input_ids"), py::arg("cu_seqlens"), py::arg("sep_token_ids"));
  m.def("score_forward_f32", &forward<float>);
  m.def("score_forward_f64", &forward<double>);
  m.def("score_backward_f32", &backward<float>);
  m.def("score_backward_f64", &backward<double>);
}
