// The varlen attention kernel of attention.h written once over a SIMD vector type, for the x86 ISA files.
//
// V (the ISA's fp32 vector) needs, besides what row_ops_simd.h uses: sub, max, max_of (horizontal max),
// exp2 (0 for -inf) and kTileRows (rows of a register tile). R is the storage element type (F32, BF16, F16).
//
// One work unit is (row, kv head). It widens the row's keys once into a transposed fp32 buffer kt [D, Lk]
// and its values into vc [Lk, D], then runs every query head of the group over them in blocks of kBlockQ
// queries: per tile of kTile keys, S = Q K^T (scores pre-scaled by scale * log2 e so the softmax is 2^x),
// the causal mask on the diagonal tiles, the online-softmax update and O += P V (on a diagonal tile, each
// query over the values it sees only). The micro-kernels keep a kTileRows x 4-vector block of S or O in
// registers. Tiles never start mid-row, so a row's bits depend on the
// row alone.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "attention.h"

namespace fastprm {
namespace simd {

template <class V, class R>
class Attention {
 public:
  static bool supported(int head_dim) { return head_dim > 0 && head_dim % V::kWidth == 0 && head_dim <= 512; }

  static void run(const AttentionArgs& a) {
    const int64_t units = a.rows * a.heads_kv;
#pragma omp parallel num_threads(a.threads) if (a.threads > 1 && units > 1)
    {
      Attention worker(a);
#pragma omp for schedule(dynamic, 1)
      for (int64_t u = 0; u < units; ++u) worker.unit(u / a.heads_kv, static_cast<int>(u % a.heads_kv));
    }
  }

 private:
  using Reg = typename V::Reg;
  using T = typename R::T;
  static constexpr int W = V::kWidth;
  static constexpr int kTile = 4 * W;  // keys per tile: the 4 vectors of a score micro-tile
  static constexpr int RB = V::kTileRows;
  static constexpr int kBlockQ = 32;  // queries per block; a multiple of RB
  static_assert(kBlockQ % RB == 0, "query blocks hold whole register tiles");

  const AttentionArgs& a;
  const int D;
  std::vector<float> kt, vc;  // the unit's keys [D, ldk] and values [ldk, D], fp32, zero past Lk
  std::vector<float> qs, s, o;
  float m[kBlockQ], l[kBlockQ], alpha[kBlockQ];
  const float one_ = 1.f;

  explicit Attention(const AttentionArgs& args)
      : a(args), D(args.head_dim), qs(kBlockQ * D), s(kBlockQ * kTile), o(kBlockQ * D) {}

  static const T* at(const HeadsTensor& t, int64_t token, int head) {
    return static_cast<const T*>(t.data) + token * t.stride_token + head * t.stride_head;
  }

  void unit(int64_t r, int h) {
    const int64_t start = a.cu_seqlens[r], T_ = a.cu_seqlens[r + 1] - start;
    if (T_ <= 0) return;
    const int64_t P = a.prefix_spans ? a.prefix_spans[2 * r + 1] - a.prefix_spans[2 * r] : 0;
    const int64_t Lk = P + T_, ldk = (Lk + kTile - 1) / kTile * kTile;
    widen_keys_values(r, h, P, start, Lk, ldk);
    const int G = a.heads_q / a.heads_kv;
    for (int g = 0; g < G; ++g)
      for (int64_t i0 = 0; i0 < T_; i0 += kBlockQ)
        query_block(h * G + g, start + i0, static_cast<int>(std::min<int64_t>(kBlockQ, T_ - i0)), P + i0, ldk);
  }

  void widen_keys_values(int64_t r, int h, int64_t P, int64_t start, int64_t Lk, int64_t ldk) {
    kt.assign(static_cast<size_t>(D) * ldk, 0.f);
    vc.assign(static_cast<size_t>(ldk) * D, 0.f);
    for (int64_t j = 0; j < Lk; ++j) {
      const bool in_prefix = j < P;
      const int64_t token = in_prefix ? a.prefix_spans[2 * r] + j : start + j - P;
      const T* kp = at(in_prefix ? a.prefix_k : a.k, token, h);
      const T* vp = at(in_prefix ? a.prefix_v : a.v, token, h);
      for (int d = 0; d < D; ++d) kt[d * ldk + j] = R::scalar(kp[d]);
      for (int d = 0; d < D; d += W) V::store(&vc[j * D + d], R::load(vp + d));
    }
  }

  // Queries first_token .. first_token + nq - 1 of head hq; the first of them sees keys 0 .. first_key.
  void query_block(int hq, int64_t first_token, int nq, int64_t first_key, int64_t ldk) {
    const int rows = (nq + RB - 1) / RB * RB;
    const Reg c = V::set1(a.scale * 1.4426950408889634f);  // log2(e): exp(x) = 2^(x log2 e)
    for (int i = 0; i < rows; ++i)
      for (int d = 0; d < D; d += W)
        V::store(&qs[i * D + d], i < nq ? V::mul(R::load(at(a.q, first_token + i, hq) + d), c) : V::zero());
    std::fill(o.begin(), o.begin() + rows * D, 0.f);
    std::fill(m, m + kBlockQ, -std::numeric_limits<float>::infinity());
    std::fill(l, l + kBlockQ, 0.f);
    std::fill(alpha, alpha + kBlockQ, 1.f);
    const int64_t last_key = first_key + nq - 1;
    for (int64_t j0 = 0; j0 <= last_key; j0 += kTile) {
      for (int i = 0; i < rows; i += RB) scores(&qs[i * D], &kt[j0], ldk, &s[i * kTile]);
      if (j0 + kTile - 1 > first_key) mask(nq, first_key - j0);
      softmax_update(nq);
      if (j0 + kTile - 1 > first_key) {
        // A diagonal tile: each query reads only the values it sees (p = 0 times a NaN value is NaN). The
        // keys every query of a register tile sees go through the RB-row kernel, each query's few more
        // through the one-row kernel (scale 1: alpha is applied once); per query the same FMAs in the same
        // order as one pass over its keys.
        for (int i = 0; i < rows; i += RB) {
          const int common = visible_keys(first_key + i - j0);
          accumulate<RB>(&s[i * kTile], &vc[j0 * D], &o[i * D], &alpha[i], common);
          for (int r = i; r < std::min(i + RB, nq); ++r) {
            const int more = visible_keys(first_key + r - j0) - common;
            if (more > 0) accumulate<1>(&s[r * kTile + common], &vc[(j0 + common) * D], &o[r * D], &one_, more);
          }
        }
      } else {
        for (int i = 0; i < rows; i += RB) accumulate<RB>(&s[i * kTile], &vc[j0 * D], &o[i * D], &alpha[i], kTile);
      }
    }
    T* out = static_cast<T*>(a.out) + (first_token * a.heads_q + hq) * D;
    for (int i = 0; i < nq; ++i) {
      const Reg inv = V::set1(1.f / l[i]);
      for (int d = 0; d < D; d += W) R::store(out + i * a.heads_q * D + d, V::mul(V::load(&o[i * D + d]), inv));
    }
  }

  // Keys of a tile seen by a query whose last visible key is at `last` within the tile (causal).
  static int visible_keys(int64_t last) { return static_cast<int>(std::clamp<int64_t>(last + 1, 0, kTile)); }

  // s[RB, kTile] = q[RB, D] . kt[:, 0 .. kTile).
  void scores(const float* q, const float* k, int64_t ldk, float* out) const {
    Reg acc[RB][4];
    for (int r = 0; r < RB; ++r)
      for (int c = 0; c < 4; ++c) acc[r][c] = V::zero();
    for (int d = 0; d < D; ++d) {
      const float* kd = k + d * ldk;
      const Reg k0 = V::load(kd), k1 = V::load(kd + W), k2 = V::load(kd + 2 * W), k3 = V::load(kd + 3 * W);
      for (int r = 0; r < RB; ++r) {
        const Reg qb = V::set1(q[r * D + d]);
        acc[r][0] = V::fmadd(qb, k0, acc[r][0]);
        acc[r][1] = V::fmadd(qb, k1, acc[r][1]);
        acc[r][2] = V::fmadd(qb, k2, acc[r][2]);
        acc[r][3] = V::fmadd(qb, k3, acc[r][3]);
      }
    }
    for (int r = 0; r < RB; ++r)
      for (int c = 0; c < 4; ++c) V::store(out + r * kTile + c * W, acc[r][c]);
  }

  // Query i of the block sees the tile's keys 0 .. first_visible + i.
  void mask(int nq, int64_t first_visible) {
    const float neg_inf = -std::numeric_limits<float>::infinity();
    for (int i = 0; i < nq; ++i)
      for (int64_t j = std::max<int64_t>(0, first_visible + i + 1); j < kTile; ++j) s[i * kTile + j] = neg_inf;
  }

  // Turns each row's scores into 2^(s - running max) and rescales its running sum; alpha[i] is the factor the
  // row's partial output must be multiplied by.
  void softmax_update(int nq) {
    for (int i = 0; i < nq; ++i) {
      float* si = &s[i * kTile];
      Reg mx = V::max(V::max(V::load(si), V::load(si + W)), V::max(V::load(si + 2 * W), V::load(si + 3 * W)));
      const float m_new = std::max(m[i], V::max_of(mx));
      alpha[i] = std::exp2(m[i] - m_new);  // 0 on the first tile (m = -inf); m_new is finite: key 0 is visible
      const Reg mv = V::set1(m_new);
      Reg sum = V::zero();
      for (int c = 0; c < 4; ++c) {
        const Reg p = V::exp2(V::sub(V::load(si + c * W), mv));
        V::store(si + c * W, p);
        sum = V::add(sum, p);
      }
      l[i] = l[i] * alpha[i] + V::sum(sum);
      m[i] = m_new;
    }
  }

  // o[ROWS, D] = o * alpha + p[ROWS, :keys] . v[:keys, D], in chunks of up to 4 vectors of D.
  template <int ROWS>
  void accumulate(const float* p, const float* v, float* out, const float* scale, int keys) const {
    int d = 0;
    for (; d + 4 * W <= D; d += 4 * W) accumulate_chunk<ROWS, 4>(p, v + d, out + d, scale, keys);
    switch ((D - d) / W) {
      case 3:
        accumulate_chunk<ROWS, 3>(p, v + d, out + d, scale, keys);
        break;
      case 2:
        accumulate_chunk<ROWS, 2>(p, v + d, out + d, scale, keys);
        break;
      case 1:
        accumulate_chunk<ROWS, 1>(p, v + d, out + d, scale, keys);
        break;
      default:
        break;
    }
  }

  template <int ROWS, int NC>
  void accumulate_chunk(const float* p, const float* v, float* out, const float* scale, int keys) const {
    Reg acc[ROWS][NC];
    for (int r = 0; r < ROWS; ++r)
      for (int c = 0; c < NC; ++c) acc[r][c] = V::mul(V::load(out + r * D + c * W), V::set1(scale[r]));
    for (int j = 0; j < keys; ++j) {
      Reg vj[NC];
      for (int c = 0; c < NC; ++c) vj[c] = V::load(v + j * D + c * W);
      for (int r = 0; r < ROWS; ++r) {
        const Reg pb = V::set1(p[r * kTile + j]);
        for (int c = 0; c < NC; ++c) acc[r][c] = V::fmadd(pb, vj[c], acc[r][c]);
      }
    }
    for (int r = 0; r < ROWS; ++r)
      for (int c = 0; c < NC; ++c) V::store(out + r * D + c * W, acc[r][c]);
  }
};

}  // namespace simd
}  // namespace fastprm
