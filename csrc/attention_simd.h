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
//
// Element types with bf16 pair dot products (R::kPairDot: bf16 storage on AVX512-BF16) keep the keys, values
// and queries as bf16 instead and run Q K^T and P V as vdpbf16ps dot products over pairs: of head dims for
// the scores (kp [D/2, ldk]), of keys for the output (vp [ldk/2, D]), with P rounded to bf16 as
// transformers' eager bf16 attention and torch's CPU flash attention do; twice the products per instruction
// of fp32 FMAs. The scores are exact products summed in fp32, scaled afterwards; the softmax stays fp32.
// Such an R also has pairs (load 16 pairs), dot (vdpbf16ps with a broadcast pair), first_of_pairs and
// to_pairs (round two fp32 vectors to 16 pairs).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "attention.h"

namespace fastprm {
namespace simd {

template <class R, class = void>
struct PairDot : std::false_type {};
template <class R>
struct PairDot<R, std::void_t<decltype(R::kPairDot)>> : std::bool_constant<R::kPairDot> {};

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
  static constexpr bool kPairs = PairDot<R>::value;
  static constexpr float kLog2e = 1.4426950408889634f;  // exp(x) = 2^(x log2 e)

  const AttentionArgs& a;
  const int D;
  std::vector<float> kt, vc;  // the unit's keys [D, ldk] and values [ldk, D], fp32, zero past Lk
  std::vector<float> qs, s, o;
  // kPairs: keys [D/2, ldk] and values [ldk/2, D] as bf16 pairs, zero past Lk; the block's queries [kBlockQ,
  // D/2] and a tile's probabilities [kBlockQ, kTile/2] as bf16 pairs
  std::vector<uint32_t> kp, vp, qp, pp;
  float m[kBlockQ], l[kBlockQ], alpha[kBlockQ];
  const float one_ = 1.f;

  explicit Attention(const AttentionArgs& args)
      : a(args), D(args.head_dim), qs(kPairs ? 0 : kBlockQ * D), s(kBlockQ * kTile), o(kBlockQ * D),
        qp(kPairs ? kBlockQ * D / 2 : 0), pp(kPairs ? kBlockQ * kTile / 2 : 0) {}

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

  // Key j of row r (its P prefix keys, then its own from token `start`) of kv head h: (key, value) rows.
  std::pair<const T*, const T*> key_value(int64_t r, int h, int64_t P, int64_t start, int64_t j) const {
    const bool in_prefix = j < P;
    const int64_t token = in_prefix ? a.prefix_spans[2 * r] + j : start + j - P;
    return {at(in_prefix ? a.prefix_k : a.k, token, h), at(in_prefix ? a.prefix_v : a.v, token, h)};
  }

  void widen_keys_values(int64_t r, int h, int64_t P, int64_t start, int64_t Lk, int64_t ldk) {
    if constexpr (kPairs) return pair_keys_values(r, h, P, start, Lk, ldk);
    kt.assign(static_cast<size_t>(D) * ldk, 0.f);
    vc.assign(static_cast<size_t>(ldk) * D, 0.f);
    for (int64_t j = 0; j < Lk; ++j) {
      const auto [key, value] = key_value(r, h, P, start, j);
      for (int d = 0; d < D; ++d) kt[d * ldk + j] = R::scalar(key[d]);
      for (int d = 0; d < D; d += W) V::store(&vc[j * D + d], R::load(value + d));
    }
  }

  // The bf16 bits as they are: the key of token j is the pair sequence of its D dims, read as D/2 words.
  void pair_keys_values(int64_t r, int h, int64_t P, int64_t start, int64_t Lk, int64_t ldk) {
    const int pairs = D / 2;
    kp.assign(static_cast<size_t>(pairs) * ldk, 0u);
    vp.assign(static_cast<size_t>(ldk) * pairs, 0u);
    uint16_t* v16 = reinterpret_cast<uint16_t*>(vp.data());
    std::vector<uint32_t> key(pairs);
    for (int64_t j = 0; j < Lk; ++j) {
      const auto [k_row, value] = key_value(r, h, P, start, j);
      std::memcpy(key.data(), k_row, D * sizeof(T));
      for (int d = 0; d < pairs; ++d) kp[d * ldk + j] = key[d];
      uint16_t* row = v16 + (j / 2) * 2 * D + (j % 2);  // keys 2i, 2i + 1 of a dim side by side
      for (int d = 0; d < D; ++d) row[2 * d] = value[d];
    }
  }

  // Queries first_token .. first_token + nq - 1 of head hq; the first of them sees keys 0 .. first_key.
  void query_block(int hq, int64_t first_token, int nq, int64_t first_key, int64_t ldk) {
    const int rows = (nq + RB - 1) / RB * RB;
    if constexpr (kPairs) {
      for (int i = 0; i < rows; ++i) {
        uint32_t* qi = &qp[i * D / 2];
        if (i < nq)
          std::memcpy(qi, at(a.q, first_token + i, hq), D * sizeof(T));
        else
          std::fill(qi, qi + D / 2, 0u);
      }
    } else {
      const Reg c = V::set1(a.scale * kLog2e);
      for (int i = 0; i < rows; ++i)
        for (int d = 0; d < D; d += W)
          V::store(&qs[i * D + d], i < nq ? V::mul(R::load(at(a.q, first_token + i, hq) + d), c) : V::zero());
    }
    std::fill(o.begin(), o.begin() + rows * D, 0.f);
    std::fill(m, m + kBlockQ, -std::numeric_limits<float>::infinity());
    std::fill(l, l + kBlockQ, 0.f);
    std::fill(alpha, alpha + kBlockQ, 1.f);
    const int64_t last_key = first_key + nq - 1;
    for (int64_t j0 = 0; j0 <= last_key; j0 += kTile) {
      for (int i = 0; i < rows; i += RB) scores(i, j0, ldk);
      if (j0 + kTile - 1 > first_key) mask(nq, first_key - j0);
      softmax_update(nq);
      if constexpr (kPairs)  // P rounded to bf16 pairs
        for (int i = 0; i < rows * kTile; i += 2 * W) R::to_pairs(&pp[i / 2], V::load(&s[i]), V::load(&s[i + W]));
      if (j0 + kTile - 1 > first_key) {
        // A diagonal tile: each query reads only the values it sees (p = 0 times a NaN value is NaN). The
        // keys every query of a register tile sees go through the RB-row kernel, each query's few more
        // through the one-row kernel (scale 1: alpha is applied once); per query the same FMAs in the same
        // order as one pass over its keys. Pairs: the RB-row kernel takes whole pairs, a query's odd last
        // key goes alone.
        for (int i = 0; i < rows; i += RB) {
          int common = visible_keys(first_key + i - j0);
          if constexpr (kPairs) common -= common % 2;
          accumulate<RB>(i, j0, 0, common, &alpha[i]);
          for (int r = i; r < std::min(i + RB, nq); ++r) {
            const int more = visible_keys(first_key + r - j0) - common;
            if (more > 0) accumulate<1>(r, j0, common, more, &one_);
          }
        }
      } else {
        for (int i = 0; i < rows; i += RB) accumulate<RB>(i, j0, 0, kTile, &alpha[i]);
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

  // The scores of the block's queries i .. i + RB over the tile's keys j0 .. j0 + kTile: s[RB, kTile].
  void scores(int i, int64_t j0, int64_t ldk) {
    if constexpr (kPairs)
      pair_scores(&qp[i * D / 2], &kp[j0], ldk, &s[i * kTile]);
    else
      fma_scores(&qs[i * D], &kt[j0], ldk, &s[i * kTile]);
  }

  // s[RB, kTile] = q[RB, D] . kt[:, 0 .. kTile).
  void fma_scores(const float* q, const float* k, int64_t ldk, float* out) const {
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

  // s[RB, kTile] = (q[RB, D/2 pairs] . kp[:, 0 .. kTile)) * scale * log2 e.
  void pair_scores(const uint32_t* q, const uint32_t* k, int64_t ldk, float* out) const {
    Reg acc[RB][4];
    for (int r = 0; r < RB; ++r)
      for (int c = 0; c < 4; ++c) acc[r][c] = V::zero();
    for (int d = 0; d < D / 2; ++d) {
      const uint32_t* kd = k + d * ldk;
      const Reg k0 = R::pairs(kd), k1 = R::pairs(kd + W), k2 = R::pairs(kd + 2 * W), k3 = R::pairs(kd + 3 * W);
      for (int r = 0; r < RB; ++r) {
        const uint32_t qd = q[r * D / 2 + d];
        acc[r][0] = R::dot(acc[r][0], qd, k0);
        acc[r][1] = R::dot(acc[r][1], qd, k1);
        acc[r][2] = R::dot(acc[r][2], qd, k2);
        acc[r][3] = R::dot(acc[r][3], qd, k3);
      }
    }
    const Reg c = V::set1(a.scale * kLog2e);
    for (int r = 0; r < RB; ++r)
      for (int k4 = 0; k4 < 4; ++k4) V::store(out + r * kTile + k4 * W, V::mul(acc[r][k4], c));
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

  // o[i .. i + ROWS, D] = o * scale + p[i .. i + ROWS, key0 .. key0 + keys] . v[j0 + key0 .., D], in chunks of
  // up to 4 vectors of D. Pairs: key0 is even.
  template <int ROWS>
  void accumulate(int i, int64_t j0, int key0, int keys, const float* scale) {
    float* out = &o[i * D];
    const auto* p = kPairs ? static_cast<const void*>(&pp[(i * kTile + key0) / 2]) : &s[i * kTile + key0];
    const auto* v = kPairs ? static_cast<const void*>(&vp[(j0 + key0) / 2 * D]) : &vc[(j0 + key0) * D];
    int d = 0;
    for (; d + 4 * W <= D; d += 4 * W) accumulate_chunk<ROWS, 4>(p, v, d, out + d, scale, keys);
    switch ((D - d) / W) {
      case 3:
        accumulate_chunk<ROWS, 3>(p, v, d, out + d, scale, keys);
        break;
      case 2:
        accumulate_chunk<ROWS, 2>(p, v, d, out + d, scale, keys);
        break;
      case 1:
        accumulate_chunk<ROWS, 1>(p, v, d, out + d, scale, keys);
        break;
      default:
        break;
    }
  }

  // Dims d .. d + NC W of the output; p and v as accumulate's (fp32, or bf16 pairs).
  template <int ROWS, int NC>
  void accumulate_chunk(const void* p_, const void* v_, int d, float* out, const float* scale, int keys) const {
    Reg acc[ROWS][NC];
    for (int r = 0; r < ROWS; ++r)
      for (int c = 0; c < NC; ++c) acc[r][c] = V::mul(V::load(out + r * D + c * W), V::set1(scale[r]));
    if constexpr (kPairs) {
      const auto* p = static_cast<const uint32_t*>(p_);
      const auto* v = static_cast<const uint32_t*>(v_) + d;
      for (int j = 0; 2 * j < keys; ++j) {
        // An odd last key goes alone: its partner is a key these queries do not see, whose p is 0 but whose
        // value may be NaN, so the partner's value is zeroed.
        const bool alone = 2 * j + 1 == keys;
        Reg vj[NC];
        for (int c = 0; c < NC; ++c) {
          const Reg pair = R::pairs(v + j * D + c * W);
          vj[c] = alone ? R::first_of_pairs(pair) : pair;
        }
        for (int r = 0; r < ROWS; ++r) {
          const uint32_t pr = p[r * kTile / 2 + j];
          for (int c = 0; c < NC; ++c) acc[r][c] = R::dot(acc[r][c], pr, vj[c]);
        }
      }
    } else {
      const auto* p = static_cast<const float*>(p_);
      const auto* v = static_cast<const float*>(v_) + d;
      for (int j = 0; j < keys; ++j) {
        Reg vj[NC];
        for (int c = 0; c < NC; ++c) vj[c] = V::load(v + j * D + c * W);
        for (int r = 0; r < ROWS; ++r) {
          const Reg pb = V::set1(p[r * kTile + j]);
          for (int c = 0; c < NC; ++c) acc[r][c] = V::fmadd(pb, vj[c], acc[r][c]);
        }
      }
    }
    for (int r = 0; r < ROWS; ++r)
      for (int c = 0; c < NC; ++c) V::store(out + r * D + c * W, acc[r][c]);
  }
};

}  // namespace simd
}  // namespace fastprm
