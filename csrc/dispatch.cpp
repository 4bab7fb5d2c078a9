// Runtime ISA detection, and the kernels of each ISA.
#include "attention.h"
#include "layer_ops.h"
#include "row_ops.h"

namespace fastprm {

std::vector<Isa> supported_isas() {
  std::vector<Isa> isas{Isa::portable};
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (!avx2) return isas;
  isas.push_back(Isa::avx2);
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl")) {
    isas.push_back(Isa::avx512);
    if (__builtin_cpu_supports("avx512bf16")) isas.push_back(Isa::avx512_bf16);
  }
#endif
  return isas;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx2:
      return "avx2";
    case Isa::avx512:
      return "avx512";
    case Isa::avx512_bf16:
      return "avx512_bf16";
    default:
      return "portable";
  }
}

bool parse_isa(const std::string& name, Isa* out) {
  for (Isa isa : {Isa::portable, Isa::avx2, Isa::avx512, Isa::avx512_bf16}) {
    if (name == isa_name(isa)) {
      *out = isa;
      return true;
    }
  }
  return false;
}

RowOps row_ops(Isa isa, DType dtype) {
  switch (isa) {
#if defined(__x86_64__) || defined(_M_X64)
    case Isa::avx2:
      return avx2::row_ops(dtype);
    case Isa::avx512:
      return avx512::row_ops(dtype, false);
    case Isa::avx512_bf16:
      return avx512::row_ops(dtype, true);
#endif
    default:
      return portable::row_ops(dtype);
  }
}

LayerOps layer_ops(Isa isa) {
  switch (isa) {
#if defined(__x86_64__) || defined(_M_X64)
    case Isa::avx2:
      return avx2::layer_ops();
    case Isa::avx512:
      return avx512::layer_ops(false);
    case Isa::avx512_bf16:
      return avx512::layer_ops(true);
#endif
    default:
      return portable::layer_ops();
  }
}

bool attention_supported(Isa isa, int head_dim) {
  switch (isa) {
#if defined(__x86_64__) || defined(_M_X64)
    case Isa::avx2:
      return avx2::attention_supported(head_dim);
    case Isa::avx512:
    case Isa::avx512_bf16:
      return avx512::attention_supported(head_dim);
#endif
    default:
      return false;
  }
}

void varlen_attention(Isa isa, const AttentionArgs& args) {
  switch (isa) {
#if defined(__x86_64__) || defined(_M_X64)
    case Isa::avx2:
      return avx2::varlen_attention(args);
    case Isa::avx512:
      return avx512::varlen_attention(args, false);
    case Isa::avx512_bf16:
      return avx512::varlen_attention(args, true);
#endif
    default:
      return;
  }
}

}  // namespace fastprm
