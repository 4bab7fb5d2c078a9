// Runs the portable kernels on a small fixed batch and prints the outputs (compared across architectures).
#include <cstdio>
#include <vector>
#include "score_steps.h"
using namespace fastprm;
int main() {
  const int64_t N = 7, H = 5, C = 2;
  std::vector<float> hidden(N * H), w(C * H), bias{0.1f, -0.2f};
  for (int i = 0; i < N * H; ++i) hidden[i] = 0.1f * ((i * 7) % 11) - 0.5f;
  for (int i = 0; i < C * H; ++i) w[i] = 0.05f * ((i * 3) % 7) - 0.1f;
  std::vector<int64_t> ids{5, 9, 1, 9, 7, 9, 9}, cu{0, 4, 4, 7}, seps{9};
  IntArray idsa{ids.data(), N, true}, cua{cu.data(), 4, true};
  std::vector<int64_t> si, cs(4);
  find_steps(idsa, cua, seps.data(), 1, &si, cs.data());
  const int64_t K = cs[3], B = 3;
  std::vector<float> f(K * C + K + 5 * B);
  std::vector<int64_t> in(3 * B);
  float* per_sequence = f.data() + K * C + K;
  ForwardOut<float> out{f.data(),         f.data() + K * C,     per_sequence,         per_sequence + B,
                        per_sequence + 2 * B, per_sequence + 3 * B, per_sequence + 4 * B, in.data(),
                        in.data() + B,    in.data() + 2 * B};
  Rows rows{hidden.data(), N, H, H, 1, DType::f32};
  score_forward<float>(rows, w.data(), bias.data(), C, si.data(), K, cs.data(), B, 1, 0.5, Isa::portable, out);
  for (float v : f) std::printf("%.6f ", v);
  for (int64_t v : in) std::printf("%lld ", (long long)v);
  std::printf("\n");
}
