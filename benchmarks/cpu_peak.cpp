// The arithmetic peak behind bench_score's dense ceiling, on the CPU this runs on (bench_cpu_peak.py builds
// and runs it): for each multiply-add instruction the CPU has (AVX2 FMA on 8 fp32, AVX-512 FMA on 16 fp32,
// AVX512-BF16 vdpbf16ps on 16 pairs of bf16), a GEMM register tile (6 rows x 4 vectors, 24 accumulators;
// AVX2 6 x 2) over weights and inputs that stay in L1, weight vectors loaded and inputs broadcast per step as
// fastprm's and oneDNN's kernels do: the most a GEMM kernel built on the instruction can run, before any
// cache miss. (Chains of one instruction over registers alone ran slower than the tile on an AMD EPYC Zen 5.)
// Every OpenMP thread runs its own copy; one JSON line per measurement: {"instruction", "test", "gflops"}.
// Built once per instruction set (-DPEAK_AVX2 with -mavx2 -mfma, -DPEAK_AVX512 with -mavx512f, -DPEAK_BF16
// with -mavx512f -mavx512bf16), so no build runs an instruction its CPU lacks; the driver runs those the CPU
// has.
#include <immintrin.h>
#include <omp.h>

#include <cstdio>

namespace {

constexpr int kSteps = 128;  // steps of the tile kernel: its weights (<= 32 KB) and inputs stay in L1
constexpr long kWork = 1L << 33;  // multiply-adds per thread (x lanes) per measurement

alignas(64) float g_weights[kSteps * 64];  // zeros: no value changes an instruction's timing here
alignas(64) float g_inputs[6 * kSteps];

template <class Body>
double best_gflops(double flops_per_call, long calls, Body body) {
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    const double begin = omp_get_wtime();
    float sink = 0;
#pragma omp parallel reduction(+ : sink)
    for (long i = 0; i < calls; ++i) sink += body();
    const double seconds = omp_get_wtime() - begin;
    if (sink == 1.2345f) std::printf(" ");  // keeps the work
    const double gflops = flops_per_call * calls * omp_get_max_threads() / seconds / 1e9;
    best = gflops > best ? gflops : best;
  }
  return best;
}

void report(const char* instruction, const char* test, double gflops) {
  std::printf("{\"instruction\": \"%s\", \"test\": \"%s\", \"gflops\": %.1f}\n", instruction, test, gflops);
  std::fflush(stdout);
}

// Generates the tile measurement of one instruction. VEC: the vector type; LANES: its fp32
// lanes; FLOPS: FLOPs per lane per instruction; MADD(acc, a, b); ZERO(); LOADW(p); BCAST(p) broadcasts the
// step input at p; SUM(v) to a float; ROWS x VECS: the tile.
#define PEAK_FUNCTION(NAME, LABEL, VEC, LANES, FLOPS, MADD, ZERO, LOADW, BCAST, SUM, ROWS, VECS)                       \
  void NAME() {                                                                                                        \
    const long tile_calls = kWork / (long(ROWS) * VECS * LANES * kSteps);                                              \
    report(LABEL, "gemm tile in L1", best_gflops(double(ROWS) * VECS * LANES * FLOPS * kSteps, tile_calls, [] {        \
             __asm__ volatile("" ::: "memory"); /* each call loads its operands again */                               \
             VEC acc[ROWS][VECS];                                                                                      \
             for (auto& row : acc)                                                                                     \
               for (auto& a : row) a = ZERO();                                                                         \
             for (int s = 0; s < kSteps; ++s) {                                                                        \
               VEC w[VECS];                                                                                            \
               for (int v = 0; v < VECS; ++v) w[v] = LOADW(g_weights + (s * VECS + v) * LANES);                        \
               _Pragma("GCC unroll 6") for (int r = 0; r < ROWS; ++r) {                                                \
                 const VEC x = BCAST(g_inputs + r * kSteps + s);                                                       \
                 for (int v = 0; v < VECS; ++v) acc[r][v] = MADD(acc[r][v], x, w[v]);                                  \
               }                                                                                                       \
             }                                                                                                         \
             float s = 0;                                                                                              \
             for (auto& row : acc)                                                                                     \
               for (auto& a : row) s += SUM(a);                                                                        \
             return s;                                                                                                 \
           }));                                                                                                        \
  }

#if defined(PEAK_AVX2)
#define AVX2_SUM(v) _mm256_cvtss_f32(v)
#define AVX2_BCAST(p) _mm256_broadcast_ss(p)
PEAK_FUNCTION(peak, "AVX2 vfmadd231ps (8 x fp32)", __m256, 8, 2, _mm256_fmadd_ps, _mm256_setzero_ps, _mm256_load_ps,
              AVX2_BCAST, AVX2_SUM, 6, 2)
#elif defined(PEAK_AVX512)
#define AVX512_SUM(v) _mm512_cvtss_f32(v)
#define AVX512_BCAST(p) _mm512_set1_ps(*(p))
PEAK_FUNCTION(peak, "AVX-512 vfmadd231ps (16 x fp32)", __m512, 16, 2, _mm512_fmadd_ps, _mm512_setzero_ps,
              _mm512_load_ps, AVX512_BCAST, AVX512_SUM, 6, 4)
#elif defined(PEAK_BF16)
// A lane's instruction multiplies a pair of bf16 and adds both products (4 FLOPs); the step input is a pair.
#define AVX512_SUM(v) _mm512_cvtss_f32(v)
#define BF16_MADD(a, x, w) _mm512_dpbf16_ps(a, (__m512bh)(x), (__m512bh)(w))
#define BF16_BCAST(p) _mm512_castsi512_ps(_mm512_set1_epi32(*reinterpret_cast<const int*>(p)))
PEAK_FUNCTION(peak, "AVX512-BF16 vdpbf16ps (16 x 2 bf16)", __m512, 16, 4, BF16_MADD, _mm512_setzero_ps,
              _mm512_load_ps, BF16_BCAST, AVX512_SUM, 6, 4)
#else
#error "build with -DPEAK_AVX2, -DPEAK_AVX512 or -DPEAK_BF16"
#endif

}  // namespace

int main() {
  peak();
  return 0;
}
