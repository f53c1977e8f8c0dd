// Gated attention for the CPU (part of lumina_rt._C; the Python wrapper is kernels/cpu.py `gated_attention`).
//
//   out[b, n, h] = softmax(q k^T / sqrt(Dh) + mask) v  +  tanh(gate[h]) * softmax(q ky^T / sqrt(Dh) + ymask) vy
//
// for q [B, Nq, Hq, Dh] (any token / head / batch strides, Dh contiguous), k, v [B, Nk, Hk, Dh], ky, vy [B, Ny, Hk,
// Dh] (query head h reads key / value head h / (Hq / Hk): GQA without repeating K / V), key masks [B, Nk] / [B, Ny]
// (1 = attend) and out [B, Nq, Hq, Dh] (any strides): the self-attention over the video tokens and the gated
// cross-attention to the caption of one Next-DiT block, written straight into the layout the output projection reads.
//
// Flash-attention style (online softmax over key blocks) with both matrix products as register-blocked micro-kernels:
// - bfloat16: AVX512-BF16 `vdpbf16ps` (pairs of bf16 products accumulated in float32). K is repacked per (batch, kv
//   head) as [Dh/2][Nk][2] and V as [Nk/2][Dh][2], so every B-operand load is one contiguous 64-byte vector and
//   every A operand one broadcast pair; the probabilities P are rounded to bf16 for P·V, as PyTorch's CPU flash
//   attention does. Scores, softmax, running max / sum and the output accumulators are float32.
// - float32: AVX-512 FMA, K repacked as [Dh][Nk], V as [Nk][Dh].
// Only these two paths exist; the wrapper uses the PyTorch reference on other CPUs and dtypes (`attention_isa`).
// A query row whose keys are all masked gets 0 (the reference gives NaN there).

#include "attention.h"

#if defined(__x86_64__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>

namespace lumina_attention {

bool cpu_supports(int dtype) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl");
  if (dtype == 0) return avx512;
  if (dtype == 2) return avx512 && __builtin_cpu_supports("avx512bf16");
#else
  (void)dtype;
#endif
  return false;
}

#if defined(__x86_64__)
namespace {

constexpr int64_t kRows = 6;      // query rows per micro-kernel (6 x 4 accumulators + operands fit 32 registers)
constexpr int64_t kCols = 64;     // keys per QK^T micro-kernel call (4 vectors of 16)
constexpr int64_t kTileQ = 48;    // query rows per work item
constexpr int64_t kBlockK = 512;  // keys per online-softmax block

struct Free {
  void operator()(void* p) const { std::free(p); }
};
template <class T>
using Buffer = std::unique_ptr<T[], Free>;

template <class T>
Buffer<T> alloc(int64_t n) {
  const size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T) + 63) / 64 * 64;
  T* p = static_cast<T*>(std::aligned_alloc(64, bytes));
  if (p == nullptr) throw std::bad_alloc();
  return Buffer<T>(p);
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

inline uint16_t bf16_bits(float v) {  // round to nearest even (NaN stays NaN)
  uint32_t u;
  std::memcpy(&u, &v, 4);
  if (v != v) return 0x7FC0u;
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_value(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}

// Element traits of the two paths: the stored input type, the packed layouts and the micro-kernels.
struct F32 {
  using In = float;
  static constexpr int64_t kPair = 1;
  static float value(In v) { return v; }
  static In store(float v) { return v; }
};
struct BF16 {
  using In = uint16_t;
  static constexpr int64_t kPair = 2;
  static float value(In v) { return bf16_value(v); }
  static In store(float v) { return bf16_bits(v); }
};

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,fma")

// 2^x for x <= 0 (x = -inf and anything below -150 give 0): 2^round(x) * poly(frac), degree-7 Taylor series of
// 2^f on |f| <= 1/2 (relative error < 1e-8 before float32 rounding).
inline __m512 exp2v(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-150.0f));
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(1.525273380405984e-05f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.5403530393381606e-04f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618129107628477e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550410866482158e-02f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402265069591007e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931471805599453e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

inline __m512bh as_bh(__m512i v) { return reinterpret_cast<__m512bh&>(v); }
inline __m512bh bcast_pair(const uint16_t* p) {
  int32_t w;
  std::memcpy(&w, p, 4);
  return as_bh(_mm512_set1_epi32(w));
}

// S[r][0:64] = sum_d q[r][d] * k[j][d] for R rows; kp points at the packed key block (see pack_keys).
template <int R>
void qk_bf16(const uint16_t* __restrict q, int64_t D, const uint16_t* __restrict kp, int64_t kstride,
             float* __restrict s, int64_t sstride) {
  __m512 acc[R][4];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t d2 = 0; d2 < D / 2; ++d2) {
    const uint16_t* kr = kp + d2 * kstride;
    const __m512bh b0 = as_bh(_mm512_loadu_si512(kr)), b1 = as_bh(_mm512_loadu_si512(kr + 32));
    const __m512bh b2 = as_bh(_mm512_loadu_si512(kr + 64)), b3 = as_bh(_mm512_loadu_si512(kr + 96));
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512bh a = bcast_pair(q + r * D + 2 * d2);
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
      acc[r][2] = _mm512_dpbf16_ps(acc[r][2], a, b2);
      acc[r][3] = _mm512_dpbf16_ps(acc[r][3], a, b3);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < 4; ++c) _mm512_storeu_ps(s + r * sstride + 16 * c, acc[r][c]);
}

template <int R>
void qk_f32(const float* __restrict q, int64_t D, const float* __restrict kp, int64_t kstride, float* __restrict s,
            int64_t sstride) {
  __m512 acc[R][4];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    const float* kr = kp + d * kstride;
    const __m512 b0 = _mm512_loadu_ps(kr), b1 = _mm512_loadu_ps(kr + 16);
    const __m512 b2 = _mm512_loadu_ps(kr + 32), b3 = _mm512_loadu_ps(kr + 48);
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(q[r * D + d]);
      acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(a, b2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(a, b3, acc[r][3]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < 4; ++c) _mm512_storeu_ps(s + r * sstride + 16 * c, acc[r][c]);
}

// O[r][0:16C] += sum_j P[r][j] * v[j][0:16C] over nb keys (nb even); vp points at the packed value block.
template <int R, int C>
void pv_bf16(const uint16_t* __restrict p, int64_t pstride, const uint16_t* __restrict vp, int64_t vstride,
             int64_t nb, float* __restrict o, int64_t ostride) {
  __m512 acc[R][C];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_loadu_ps(o + r * ostride + 16 * c);
  for (int64_t j2 = 0; j2 < nb / 2; ++j2) {
    __m512bh b[C];
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) b[c] = as_bh(_mm512_loadu_si512(vp + j2 * vstride + 32 * c));
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512bh a = bcast_pair(p + r * pstride + 2 * j2);
      #pragma GCC unroll 8
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], a, b[c]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(o + r * ostride + 16 * c, acc[r][c]);
}

template <int R, int C>
void pv_f32(const float* __restrict p, int64_t pstride, const float* __restrict vp, int64_t vstride, int64_t nb,
            float* __restrict o, int64_t ostride) {
  __m512 acc[R][C];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_loadu_ps(o + r * ostride + 16 * c);
  for (int64_t j = 0; j < nb; ++j) {
    __m512 b[C];
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) b[c] = _mm512_loadu_ps(vp + j * vstride + 16 * c);
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(p[r * pstride + j]);
      #pragma GCC unroll 8
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(a, b[c], acc[r][c]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(o + r * ostride + 16 * c, acc[r][c]);
}

template <class M, int R>
void qk(const typename M::In* q, int64_t D, const typename M::In* kp, int64_t kstride, float* s, int64_t sstride) {
  if constexpr (M::kPair == 2)
    qk_bf16<R>(q, D, kp, kstride, s, sstride);
  else
    qk_f32<R>(q, D, kp, kstride, s, sstride);
}

template <class M, int R, int C>
void pv(const typename M::In* p, int64_t pstride, const typename M::In* vp, int64_t vstride, int64_t nb, float* o,
        int64_t ostride) {
  if constexpr (M::kPair == 2)
    pv_bf16<R, C>(p, pstride, vp, vstride, nb, o, ostride);
  else
    pv_f32<R, C>(p, pstride, vp, vstride, nb, o, ostride);
}

// Runtime row count (1..kRows) -> template.
template <class M>
void qk_rows(int64_t rows, const typename M::In* q, int64_t D, const typename M::In* kp, int64_t kstride, float* s,
             int64_t sstride) {
  switch (rows) {
    case 6: return qk<M, 6>(q, D, kp, kstride, s, sstride);
    case 5: return qk<M, 5>(q, D, kp, kstride, s, sstride);
    case 4: return qk<M, 4>(q, D, kp, kstride, s, sstride);
    case 3: return qk<M, 3>(q, D, kp, kstride, s, sstride);
    case 2: return qk<M, 2>(q, D, kp, kstride, s, sstride);
    default: return qk<M, 1>(q, D, kp, kstride, s, sstride);
  }
}

template <class M, int R>
void pv_cols(int64_t vecs, const typename M::In* p, int64_t pstride, const typename M::In* vp, int64_t vstride,
             int64_t nb, float* o, int64_t ostride) {
  switch (vecs) {
    case 4: return pv<M, R, 4>(p, pstride, vp, vstride, nb, o, ostride);
    case 3: return pv<M, R, 3>(p, pstride, vp, vstride, nb, o, ostride);
    case 2: return pv<M, R, 2>(p, pstride, vp, vstride, nb, o, ostride);
    default: return pv<M, R, 1>(p, pstride, vp, vstride, nb, o, ostride);
  }
}

template <class M>
void pv_rows(int64_t rows, int64_t vecs, const typename M::In* p, int64_t pstride, const typename M::In* vp,
             int64_t vstride, int64_t nb, float* o, int64_t ostride) {
  switch (rows) {
    case 6: return pv_cols<M, 6>(vecs, p, pstride, vp, vstride, nb, o, ostride);
    case 5: return pv_cols<M, 5>(vecs, p, pstride, vp, vstride, nb, o, ostride);
    case 4: return pv_cols<M, 4>(vecs, p, pstride, vp, vstride, nb, o, ostride);
    case 3: return pv_cols<M, 3>(vecs, p, pstride, vp, vstride, nb, o, ostride);
    case 2: return pv_cols<M, 2>(vecs, p, pstride, vp, vstride, nb, o, ostride);
    default: return pv_cols<M, 1>(vecs, p, pstride, vp, vstride, nb, o, ostride);
  }
}

// Keys and values of one (batch, kv head), repacked for the micro-kernels; padding keys are zero and masked.
template <class M>
struct Packed {
  const typename M::In* k;  // bf16: [Dh/2][NkP][2]; f32: [Dh][NkP]
  const typename M::In* v;  // bf16: [NkP/2][DhP][2]; f32: [NkP][DhP]
  const float* bias;        // [NkP]: 0 for keys to attend, -inf for masked and padding keys
};

struct Geometry {
  int64_t n, np, d, dp;  // keys, keys padded to kCols, head dim, head dim padded to 16
};

template <class M>
void pack(const typename M::In* src_k, int64_t ksn, const typename M::In* src_v, int64_t vsn, const uint8_t* mask,
          Geometry g,
          typename M::In* k, typename M::In* v, float* bias) {
  using In = typename M::In;
  constexpr int64_t P = M::kPair;
  std::memset(k, 0, sizeof(In) * g.np * g.d);
  std::memset(v, 0, sizeof(In) * g.np * g.dp);
  for (int64_t j = 0; j < g.n; ++j) {
    const In* kr = src_k + j * ksn;
    const In* vr = src_v + j * vsn;
    for (int64_t d = 0; d < g.d; ++d) {
      // key element (j, d) -> pair d / P of key j; value element (j, d) -> pair j / P of column d
      k[((d / P) * g.np + j) * P + d % P] = kr[d];
      v[((j / P) * g.dp + d) * P + j % P] = vr[d];
    }
  }
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < g.np; ++j) bias[j] = (j < g.n && (mask == nullptr || mask[j] != 0)) ? 0.0f : ninf;
}

// Per-thread state of one query tile against one key set: running max / sum and the float32 output accumulator.
struct Scratch {
  Buffer<float> s, o, m, l;
  Buffer<uint16_t> p16;
  Buffer<float> p32;
  Scratch(int64_t dp)
      : s(alloc<float>(kTileQ * kBlockK)),
        o(alloc<float>(kTileQ * dp)),
        m(alloc<float>(kTileQ)),
        l(alloc<float>(kTileQ)),
        p16(alloc<uint16_t>(kTileQ * kBlockK)),
        p32(alloc<float>(kTileQ * kBlockK)) {}
};

// o[rows][dp] = softmax(q k^T * scale + bias) v for one query tile (q: rows x d contiguous), unnormalised sums in l.
template <class M>
void attend(const typename M::In* q, int64_t rows, const Packed<M>& kv, Geometry g, float scale_log2e, Scratch& w) {
  using In = typename M::In;
  constexpr int64_t P = M::kPair;
  float* s = w.s.get();
  float* o = w.o.get();
  float* m = w.m.get();
  float* l = w.l.get();
  In* p;
  if constexpr (P == 2)
    p = w.p16.get();
  else
    p = w.p32.get();
  const float ninf = -std::numeric_limits<float>::infinity();
  std::fill(m, m + rows, ninf);
  std::fill(l, l + rows, 0.0f);
  std::fill(o, o + rows * g.dp, 0.0f);
  const __m512 c = _mm512_set1_ps(scale_log2e);
  for (int64_t j0 = 0; j0 < g.np; j0 += kBlockK) {
    const int64_t nb = std::min(kBlockK, g.np - j0);
    for (int64_t jc = 0; jc < nb; jc += kCols)
      for (int64_t r0 = 0; r0 < rows; r0 += kRows)
        qk_rows<M>(std::min(kRows, rows - r0), q + r0 * g.d, g.d, kv.k + (j0 + jc) * P, g.np * P,
                   s + r0 * kBlockK + jc, kBlockK);
    for (int64_t r = 0; r < rows; ++r) {
      float* sr = s + r * kBlockK;
      __m512 mx = _mm512_set1_ps(ninf);
      for (int64_t j = 0; j < nb; j += 16) {
        const __m512 x = _mm512_fmadd_ps(_mm512_loadu_ps(sr + j), c, _mm512_loadu_ps(kv.bias + j0 + j));
        _mm512_storeu_ps(sr + j, x);
        mx = _mm512_max_ps(mx, x);
      }
      const float m_new = std::max(m[r], _mm512_reduce_max_ps(mx));
      In* pr = p + r * kBlockK;
      if (m_new == ninf) {  // every key so far masked: nothing to add
        std::memset(pr, 0, sizeof(In) * nb);
        continue;
      }
      const __m512 mv = _mm512_set1_ps(m_new);
      __m512 sum = _mm512_setzero_ps();
      for (int64_t j = 0; j < nb; j += 32) {
        const __m512 e0 = exp2v(_mm512_sub_ps(_mm512_loadu_ps(sr + j), mv));
        const __m512 e1 = exp2v(_mm512_sub_ps(_mm512_loadu_ps(sr + j + 16), mv));
        sum = _mm512_add_ps(sum, _mm512_add_ps(e0, e1));
        if constexpr (P == 2) {
          __m512bh pair = _mm512_cvtne2ps_pbh(e1, e0);
          _mm512_storeu_si512(pr + j, reinterpret_cast<__m512i&>(pair));
        } else {
          _mm512_storeu_ps(pr + j, e0);
          _mm512_storeu_ps(pr + j + 16, e1);
        }
      }
      const float alpha = m[r] == ninf ? 0.0f : std::exp2(m[r] - m_new);
      l[r] = l[r] * alpha + _mm512_reduce_add_ps(sum);
      m[r] = m_new;
      if (alpha != 1.0f) {
        const __m512 av = _mm512_set1_ps(alpha);
        float* orow = o + r * g.dp;
        for (int64_t d = 0; d < g.dp; d += 16) _mm512_storeu_ps(orow + d, _mm512_mul_ps(_mm512_loadu_ps(orow + d), av));
      }
    }
    const int64_t vecs = g.dp / 16;
    for (int64_t r0 = 0; r0 < rows; r0 += kRows)
      for (int64_t v0 = 0; v0 < vecs; v0 += 4)
        pv_rows<M>(std::min(kRows, rows - r0), std::min<int64_t>(4, vecs - v0), p + r0 * kBlockK, kBlockK,
                   kv.v + (j0 / P) * g.dp * P + v0 * 16 * P, g.dp * P, nb, o + r0 * g.dp + v0 * 16, g.dp);
  }
}

#pragma GCC pop_options

template <class M>
void run(const Args& a) {
  using In = typename M::In;
  const int64_t B = a.B, Hq = a.Hq, Hk = a.Hk, D = a.D, rep = a.Hq / a.Hk;
  const bool cross = a.ky != nullptr;
  const Geometry gx{a.Nk, round_up(a.Nk, kCols), D, round_up(D, 16)};
  const Geometry gy{a.Ny, round_up(std::max<int64_t>(a.Ny, 1), kCols), D, round_up(D, 16)};
  const int nt = a.nthreads > 0 ? a.nthreads : omp_get_max_threads();

  // Pack K / V (and the caption's) once per (batch, kv head).
  Buffer<In> kx = alloc<In>(B * Hk * gx.np * gx.d), vx = alloc<In>(B * Hk * gx.np * gx.dp);
  Buffer<float> bx = alloc<float>(B * Hk * gx.np);
  Buffer<In> ky = alloc<In>(cross ? B * Hk * gy.np * gy.d : 1), vy = alloc<In>(cross ? B * Hk * gy.np * gy.dp : 1);
  Buffer<float> by = alloc<float>(cross ? B * Hk * gy.np : 1);
  const In* k = static_cast<const In*>(a.k);
  const In* v = static_cast<const In*>(a.v);
  const In* kyi = static_cast<const In*>(a.ky);
  const In* vyi = static_cast<const In*>(a.vy);
#pragma omp parallel for num_threads(nt) schedule(static) collapse(2)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hk; ++h) {
      const int64_t i = b * Hk + h;
      pack<M>(k + b * a.k_sb + h * a.k_sh, a.k_sn, v + b * a.v_sb + h * a.v_sh, a.v_sn,
              a.mask ? a.mask + b * a.mask_sb : nullptr, gx, kx.get() + i * gx.np * gx.d,
              vx.get() + i * gx.np * gx.dp, bx.get() + i * gx.np);
      if (cross)
        pack<M>(kyi + b * a.ky_sb + h * a.ky_sh, a.ky_sn, vyi + b * a.vy_sb + h * a.vy_sh, a.vy_sn,
                a.ymask ? a.ymask + b * a.ymask_sb : nullptr, gy, ky.get() + i * gy.np * gy.d,
                vy.get() + i * gy.np * gy.dp, by.get() + i * gy.np);
    }

  const float c = static_cast<float>(a.scale / std::log(2.0));
  const int64_t tiles = (a.Nq + kTileQ - 1) / kTileQ;
  const In* q = static_cast<const In*>(a.q);
  In* out = static_cast<In*>(a.out);
#pragma omp parallel num_threads(nt)
  {
    Scratch w(gx.dp);
    Buffer<float> oself = alloc<float>(kTileQ * gx.dp);
    Buffer<float> lself = alloc<float>(kTileQ);
    Buffer<In> qt = alloc<In>(kTileQ * D);
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < B * Hq * tiles; ++item) {
      const int64_t b = item / (Hq * tiles), h = item / tiles % Hq, t = item % tiles;
      const int64_t n0 = t * kTileQ, rows = std::min(kTileQ, a.Nq - n0);
      const int64_t i = b * Hk + h / rep;
      for (int64_t r = 0; r < rows; ++r)
        std::memcpy(qt.get() + r * D, q + b * a.q_sb + h * a.q_sh + (n0 + r) * a.q_sn, sizeof(In) * D);
      attend<M>(qt.get(), rows, Packed<M>{kx.get() + i * gx.np * gx.d, vx.get() + i * gx.np * gx.dp,
                                          bx.get() + i * gx.np},
                gx, c, w);
      float gate = 0.0f;
      if (cross) {
        std::memcpy(oself.get(), w.o.get(), sizeof(float) * rows * gx.dp);
        std::memcpy(lself.get(), w.l.get(), sizeof(float) * rows);
        attend<M>(qt.get(), rows, Packed<M>{ky.get() + i * gy.np * gy.d, vy.get() + i * gy.np * gy.dp,
                                            by.get() + i * gy.np},
                  gy, c, w);
        gate = a.gate[h];
      }
      const float* os = cross ? oself.get() : w.o.get();
      const float* ls = cross ? lself.get() : w.l.get();
      for (int64_t r = 0; r < rows; ++r) {
        In* orow = out + b * a.out_sb + h * a.out_sh + (n0 + r) * a.out_sn;
        const float inv = ls[r] > 0.0f ? 1.0f / ls[r] : 0.0f;
        const float ginv = cross && w.l[r] > 0.0f ? gate / w.l[r] : 0.0f;
        for (int64_t d = 0; d < D; ++d) {
          float val = os[r * gx.dp + d] * inv;
          if (cross) val += w.o[r * gx.dp + d] * ginv;
          orow[d] = M::store(val);
        }
      }
    }
  }
}

}  // namespace
#endif

void gated_attention(const Args& a) {
#if defined(__x86_64__)
  if (!cpu_supports(a.dtype)) throw std::invalid_argument("gated_attention: no AVX-512 path for this CPU and dtype");
  if (a.D % 2 != 0) throw std::invalid_argument("gated_attention: head dim must be even");
  if (a.Hk <= 0 || a.Hq % a.Hk != 0) throw std::invalid_argument("gated_attention: Hq must be a multiple of Hk");
  if (a.dtype == 2)
    run<BF16>(a);
  else
    run<F32>(a);
#else
  (void)a;
  throw std::invalid_argument("gated_attention: no vector path on this architecture");
#endif
}

}  // namespace lumina_attention
