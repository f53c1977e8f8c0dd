// CPU fused ops of lumina_rt (module lumina_rt._C): the same math as kernels/*.py `*_ref`.
//
// Tensors arrive as raw addresses (Python ints from `Tensor.data_ptr()`) plus sizes / strides in elements and a dtype
// code; the Python wrappers (kernels/cpu.py) check shapes, make inputs contiguous where needed and allocate outputs.
// No torch headers: the build needs only pybind11. Every op releases the GIL, runs OpenMP over rows / tokens with
// `nthreads` threads, and converts float16 / bfloat16 to float32 in its (vectorised) inner loops.
//
// Instruction sets: the file is built for the compiler's baseline target (setup.py passes no -m flags, so one wheel
// runs on any x86-64 or aarch64 CPU). On x86-64 the row kernels of rmsnorm_modulate, gated_residual,
// layernorm_modulate and rope_qk (and the converters, which `convert` exposes to tests) also exist as explicit
// AVX-512 (F, BW, VL) and AVX2 (+ FMA, F16C) code; rope_qk_layernorm, patchify and unpatchify have no explicit vector
// code, and their portable code is compiled for those two targets as well. Each version is compiled for its target
// with `#pragma GCC target`, and each op picks one at run time: the best one CPUID reports, unless `set_isa()` (or
// LUMINA_RT_CPU_ISA, read by kernels/cpu.py) says otherwise. Other architectures get the portable code only.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <omp.h>

#include "attention.h"

#if defined(__x86_64__)
#define LUMINA_X86 1
// GCC 12's AVX-512 headers warn about their own _mm512_undefined_* values (GCC PR 105593); vector arguments of the
// file's internal functions draw ABI notes (-Wpsabi) that concern exported functions only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#pragma GCC diagnostic ignored "-Wpsabi"
#else
#define LUMINA_X86 0
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace py = pybind11;

namespace {

// ------------------------------------------------------------------------------------------------
// Element types and conversions
// ------------------------------------------------------------------------------------------------

enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

// 16-bit storage types; conversions are branchless bit arithmetic so that GCC vectorises them (GCC 12 lowers
// _Float16 conversions to libgcc calls on CPUs without AVX512-FP16).
struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};

inline uint32_t bits_of(float v) { return __builtin_bit_cast(uint32_t, v); }
inline float float_of(uint32_t u) { return __builtin_bit_cast(float, u); }

inline float to_f32(float v) { return v; }
inline float to_f32(bf16 v) { return float_of(static_cast<uint32_t>(v.bits) << 16); }
inline float to_f32(f16 v) {
  const uint32_t h = v.bits;
  const uint32_t em = (h & 0x7FFFu) << 13;  // exponent and mantissa at their float32 positions
  const uint32_t e = em & (0x1Fu << 23);
  const uint32_t normal = em + ((127u - 15u) << 23);
  const uint32_t infnan = em + ((255u - 31u) << 23);
  const uint32_t sub = bits_of(float_of(em + (113u << 23)) - float_of(113u << 23));  // zero and subnormals
  const uint32_t r = e == (0x1Fu << 23) ? infnan : (e == 0 ? sub : normal);
  return float_of(r | ((h & 0x8000u) << 16));
}

template <class T>
inline T from_f32(float v);
template <>
inline float from_f32<float>(float v) {
  return v;
}
template <>
inline bf16 from_f32<bf16>(float v) {  // round to nearest even; NaN stays a quiet NaN
  const uint32_t u = bits_of(v);
  const uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return bf16{static_cast<uint16_t>(v != v ? 0x7FC0u : r)};
}
template <>
inline f16 from_f32<f16>(float v) {  // round to nearest even, overflow to inf, subnormals exact
  const uint32_t sign = bits_of(v) & 0x80000000u;
  const uint32_t u = bits_of(v) ^ sign;
  const uint32_t infnan = u > (255u << 23) ? 0x7E00u : 0x7C00u;
  const float half_magic = float_of(126u << 23);  // 0.5: adding it rounds |v| < 2^-14 to the subnormal grid
  const uint32_t sub = bits_of(float_of(u) + half_magic) - bits_of(half_magic);
  const uint32_t normal = (u + (static_cast<uint32_t>(15 - 127) << 23) + 0xFFFu + ((u >> 13) & 1u)) >> 13;
  const uint32_t r = u >= (143u << 23) ? infnan : (u < (113u << 23) ? sub : normal);
  return f16{static_cast<uint16_t>(r | (sign >> 16))};
}

// v rounded to T's precision, as float (intermediate roundings; NaN-preserving for quiet NaNs)
template <class T>
inline float round_to(float v) {
  return to_f32(from_f32<T>(v));
}
template <>
inline float round_to<float>(float v) {
  return v;
}
template <>
inline float round_to<bf16>(float v) {
  const uint32_t u = bits_of(v);
  return float_of((u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u);
}

[[noreturn]] void bad_dtype(const char* what, int code) {
  throw std::invalid_argument(std::string(what) + ": unsupported dtype code " + std::to_string(code) +
                              " (0 float32, 1 float16, 2 bfloat16)");
}

// Call f(T{}) with T the element type of `code`.
template <class F>
void dispatch(int code, const char* what, F&& f) {
  switch (code) {
    case kF32:
      f(float{});
      break;
    case kF16:
      f(f16{});
      break;
    case kBF16:
      f(bf16{});
      break;
    default:
      bad_dtype(what, code);
  }
}

template <class T>
inline T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

inline int threads(int nthreads) { return nthreads > 0 ? nthreads : omp_get_max_threads(); }

// ------------------------------------------------------------------------------------------------
// Instruction set of the row kernels, chosen at run time
// ------------------------------------------------------------------------------------------------

enum class Isa : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };
constexpr const char* kIsaNames[] = {"portable", "avx2", "avx512"};

const char* name_of(Isa isa) { return kIsaNames[static_cast<int>(isa)]; }

// The ISAs this CPU and build can run, best first. GCC's __builtin_cpu_supports reads CPUID and also checks (XGETBV)
// that the OS saves the AVX / AVX-512 registers.
std::vector<Isa> supported_isas() {
  std::vector<Isa> isas;
#if LUMINA_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    isas.push_back(Isa::kAvx512);
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    isas.push_back(Isa::kAvx2);
#endif
  isas.push_back(Isa::kPortable);
  return isas;
}

// AVX512-BF16 (one instruction rounds 16 floats to bfloat16; the AVX-512 kernels round in software without it).
bool cpu_has_avx512_bf16() {
#if LUMINA_X86
  return supported_isas().front() == Isa::kAvx512 && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

std::string isa_list(const std::vector<Isa>& isas) {
  std::string s;
  for (Isa isa : isas) s += (s.empty() ? "" : ", ") + std::string(name_of(isa));
  return s;
}

// The ISA called `name`, if this CPU and build can run it; else a ValueError naming the value and the choices.
Isa parse_isa(const std::string& name) {
  const std::vector<Isa> ok = supported_isas();
  for (Isa isa : ok)
    if (name == name_of(isa)) return isa;
  const bool known = std::find(std::begin(kIsaNames), std::end(kIsaNames), name) != std::end(kIsaNames);
  throw py::value_error((known ? "ISA '" + name + "' cannot run on this CPU / build"
                               : "unknown ISA '" + name + "' (known: avx512, avx2, portable)") +
                        "; supported here: " + isa_list(ok));
}

// Read once per op call; set from Python (set_isa / set_avx512_bf16), possibly while ops run in other threads.
std::atomic<Isa> g_isa{supported_isas().front()};
std::atomic<bool> g_avx512_bf16{cpu_has_avx512_bf16()};

#if defined(LUMINA_RT_MARCH_NATIVE)
constexpr bool kBuiltNative = true;  // setup.py with LUMINA_RT_MARCH_NATIVE=1: -march=native
#else
constexpr bool kBuiltNative = false;
#endif

// The ISA the whole file was compiled for (its global -m / -march flags): "portable" unless built with -march=native.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
constexpr const char* kBaselineIsa = "avx512";
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
constexpr const char* kBaselineIsa = "avx2";
#else
constexpr const char* kBaselineIsa = "portable";
#endif

// ------------------------------------------------------------------------------------------------
// Row kernels of the norm / modulation family, RoPE and conversion. One row of D elements stays in L1 between its
// passes, so each op reads its inputs from memory once and writes its output once. Three implementations of the row
// math with one signature per op: portable (left to the auto-vectoriser), AVX2 and AVX-512 (explicit vectors,
// hardware fp16 conversions, streaming stores for large outputs). Ops call the one of `g_isa` through a pointer.
// ------------------------------------------------------------------------------------------------

// Outputs at least this large are written with non-temporal stores by the vector kernels (they would only evict the
// inputs from the caches); smaller ones stay in cache for the next op.
constexpr int64_t kStreamBytes = int64_t{16} << 20;

namespace portable {

// Row reductions with kLanes independent partial sums (one vector accumulator would make the loop latency-bound),
// folded pairwise at the end (a serial sum of the lanes would cost as much as the row).
constexpr int64_t kLanes = 64;

inline float fold(float (&acc)[kLanes]) {
  for (int64_t w = kLanes / 2; w >= 8; w /= 2)
#pragma omp simd
    for (int64_t j = 0; j < w; ++j) acc[j] += acc[j + w];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

template <class TI, class F>
inline float row_sum(const TI* __restrict x, int64_t D, F f) {
  float acc[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes)
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) acc[j] += f(to_f32(x[d + j]));
  for (int64_t j = 0; d + j < D; ++j) acc[j] += f(to_f32(x[d + j]));
  return fold(acc);
}

template <class TI>
inline float mean_sq(const TI* __restrict x, int64_t D) {
  return row_sum(x, D, [](float v) { return v * v; }) / static_cast<float>(D);
}

// Mean and biased variance, two passes over the (L1-resident) row.
template <class TI>
inline void mean_var(const TI* __restrict x, int64_t D, float& mean, float& var) {
  mean = row_sum(x, D, [](float v) { return v; }) / static_cast<float>(D);
  const float m = mean;
  var = row_sum(x, D, [m](float v) { return (v - m) * (v - m); }) / static_cast<float>(D);
}

// o = round_TI(x * rstd) * c   (c = weight * (1 + scale[b]))
template <class TI, class TO>
void rmsnorm_row(const TI* __restrict x, const float* __restrict c, TO* __restrict o, int64_t D, float eps, bool) {
  const float rstd = 1.0f / std::sqrt(mean_sq(x, D) + eps);
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) o[d] = from_f32<TO>(round_to<TI>(to_f32(x[d]) * rstd) * c[d]);
}

// o = x + round_TY(y * rstd) * c   (c = tanh(gate[b]) * weight)
template <class TX, class TY, class TO>
void gated_row(const TX* __restrict x, const TY* __restrict y, const float* __restrict c, TO* __restrict o, int64_t D,
               float eps, bool) {
  const float rstd = 1.0f / std::sqrt(mean_sq(y, D) + eps);
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) o[d] = from_f32<TO>(to_f32(x[d]) + round_to<TY>(to_f32(y[d]) * rstd) * c[d]);
}

// o = round_TI((x - mean) * rstd) * m   (m = 1 + scale[b])
template <class TI, class TO>
void layernorm_row(const TI* __restrict x, const float* __restrict m, TO* __restrict o, int64_t D, float eps, bool) {
  float mean, var;
  mean_var(x, D, mean, var);
  const float rstd = 1.0f / std::sqrt(var + eps);
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) o[d] = from_f32<TO>(round_to<TI>((to_f32(x[d]) - mean) * rstd) * m[d]);
}

// RoPE of one head: interleaved pairs (a, b) -> (a c - b s, a s + b c)
template <class T>
void rope_row(const T* __restrict x, T* __restrict o, const float* __restrict c, const float* __restrict s,
              int64_t half, bool) {
#pragma omp simd
  for (int64_t i = 0; i < half; ++i) {
    const float a = to_f32(x[2 * i]), b = to_f32(x[2 * i + 1]);
    o[2 * i] = from_f32<T>(a * c[i] - b * s[i]);
    o[2 * i + 1] = from_f32<T>(a * s[i] + b * c[i]);
  }
}

template <class TS, class TD>
void convert_row(const TS* __restrict a, TD* __restrict b, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) b[i] = from_f32<TD>(to_f32(a[i]));
}

}  // namespace portable

#if LUMINA_X86

// ---- AVX-512 (F, BW, VL): 16 floats per vector, masked tails ----
// kHwBf16: round to bfloat16 with AVX512-BF16's vcvtneps2bf16, written as inline asm so that the region's target needs
// no avx512bf16 and the compiler can emit the instruction nowhere else (Kernels<false> runs on CPUs without it).
// The instruction rounds to nearest even like the software path but flushes float32 subnormals to (signed) zero.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl")
namespace avx512 {

using V = __m512;

template <bool kHwBf16>
struct Kernels {
  static __mmask16 tail_mask(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }  // n in [1, 16)

  static V widen_bf16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  static __m256i narrow_bf16(V v) {  // round to nearest even, NaN -> quiet NaN
    if constexpr (kHwBf16) {
      __m256i r;
      asm("vcvtneps2bf16 %1, %0" : "=v"(r) : "v"(v));
      return r;
    } else {
      const __m512i u = _mm512_castps_si512(v);
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
      __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
      r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
      return _mm512_cvtepi32_epi16(r);
    }
  }
  static __m256i narrow_f16(V v) { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

  static const __m256i* m256(const void* p) { return static_cast<const __m256i*>(p); }

  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load(const bf16* p) { return widen_bf16(_mm256_loadu_si256(m256(p))); }
  static V load(const f16* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(m256(p))); }
  static V load(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
  static V load(const bf16* p, __mmask16 m) { return widen_bf16(_mm256_maskz_loadu_epi16(m, p)); }
  static V load(const f16* p, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }

  // Inputs of a full vector are read unmasked; the tail lane mask m selects a masked load.
  template <class T>
  static V load_at(const T* p, int64_t d, __mmask16 m) {
    return m == 0xFFFF ? load(p + d) : load(p + d, m);
  }

  template <class T>
  static V rounded(V v) {  // v rounded to T's precision
    if constexpr (std::is_same_v<T, bf16>) return widen_bf16(narrow_bf16(v));
    else if constexpr (std::is_same_v<T, f16>) return _mm512_cvtph_ps(narrow_f16(v));
    else return v;
  }

  template <bool NT>
  static void store(float* p, V v) {
    if constexpr (NT) _mm512_stream_ps(p, v);
    else _mm512_storeu_ps(p, v);
  }
  template <bool NT>
  static void store16(void* p, __m256i h) {
    if constexpr (NT) _mm256_stream_si256(static_cast<__m256i*>(p), h);
    else _mm256_storeu_si256(static_cast<__m256i*>(p), h);
  }
  template <bool NT>
  static void store(bf16* p, V v) {
    store16<NT>(p, narrow_bf16(v));
  }
  template <bool NT>
  static void store(f16* p, V v) {
    store16<NT>(p, narrow_f16(v));
  }
  static void store(float* p, V v, __mmask16 m) { _mm512_mask_storeu_ps(p, m, v); }
  static void store(bf16* p, V v, __mmask16 m) { _mm256_mask_storeu_epi16(p, m, narrow_bf16(v)); }
  static void store(f16* p, V v, __mmask16 m) { _mm256_mask_storeu_epi16(p, m, narrow_f16(v)); }

  // sum of f(x) over a row of D = 16 k values, with four accumulators (callers add the masked tail)
  template <class TI, class F>
  static float vsum(const TI* __restrict x, int64_t D, F f) {
    V a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t d = 0;
    for (; d + 64 <= D; d += 64) {
      a0 = f(load(x + d), a0);
      a1 = f(load(x + d + 16), a1);
      a2 = f(load(x + d + 32), a2);
      a3 = f(load(x + d + 48), a3);
    }
    for (; d + 16 <= D; d += 16) a0 = f(load(x + d), a0);
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  }

  // bfloat16 rows: 32 values per load, widened by in-lane interleaves with zero (cheaper than vpmovzxwd + shift);
  // the lanes come out permuted, which a sum does not mind.
  template <class F>
  static float vsum(const bf16* __restrict x, int64_t D, F f) {
    const __m512i z = _mm512_setzero_si512();
    V a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t d = 0;
    for (; d + 64 <= D; d += 64) {
      const __m512i u = _mm512_loadu_si512(x + d), w = _mm512_loadu_si512(x + d + 32);
      a0 = f(_mm512_castsi512_ps(_mm512_unpacklo_epi16(z, u)), a0);
      a1 = f(_mm512_castsi512_ps(_mm512_unpackhi_epi16(z, u)), a1);
      a2 = f(_mm512_castsi512_ps(_mm512_unpacklo_epi16(z, w)), a2);
      a3 = f(_mm512_castsi512_ps(_mm512_unpackhi_epi16(z, w)), a3);
    }
    for (; d + 16 <= D; d += 16) a0 = f(load(x + d), a0);
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  }

  template <class TI>
  static float mean_sq(const TI* __restrict x, int64_t D) {
    const int64_t full = D / 16 * 16;
    float total = vsum(x, full, [](V v, V a) { return _mm512_fmadd_ps(v, v, a); });
    if (full < D) {
      const V v = load(x + full, tail_mask(D - full));
      total += _mm512_reduce_add_ps(_mm512_mul_ps(v, v));
    }
    return total / static_cast<float>(D);
  }

  template <class TI>
  static void mean_var(const TI* __restrict x, int64_t D, float& mean, float& var) {
    const int64_t full = D / 16 * 16;
    const __mmask16 m = full < D ? tail_mask(D - full) : 0;
    float total = vsum(x, full, [](V v, V a) { return _mm512_add_ps(v, a); });
    if (m) total += _mm512_reduce_add_ps(load(x + full, m));
    mean = total / static_cast<float>(D);
    const V mv = _mm512_set1_ps(mean);
    float sq = vsum(x, full, [mv](V v, V a) {
      const V c = _mm512_sub_ps(v, mv);
      return _mm512_fmadd_ps(c, c, a);
    });
    if (m) {
      const V c = _mm512_maskz_sub_ps(m, load(x + full, m), mv);
      sq += _mm512_reduce_add_ps(_mm512_mul_ps(c, c));
    }
    var = sq / static_cast<float>(D);
  }

  // o[d] = f(d, mask) for the row, full vectors then a masked tail; streaming stores when NT
  template <class TO, bool NT, class F>
  static void write_row_as(TO* __restrict o, int64_t D, F f) {
    int64_t d = 0;
    for (; d + 16 <= D; d += 16) store<NT>(o + d, f(d, static_cast<__mmask16>(0xFFFF)));
    if (d < D) {
      const __mmask16 m = tail_mask(D - d);
      store(o + d, f(d, m), m);
    }
  }

  template <class TO, class F>
  static void write_row(TO* __restrict o, int64_t D, bool stream, F f) {
    constexpr uintptr_t align = 16 * sizeof(TO);  // one vector store
    if (stream && reinterpret_cast<uintptr_t>(o) % align == 0) write_row_as<TO, true>(o, D, f);
    else write_row_as<TO, false>(o, D, f);
  }

  template <class TI, class TO>
  static void rmsnorm_row(const TI* __restrict x, const float* __restrict c, TO* __restrict o, int64_t D, float eps,
                          bool stream) {
    const V rstd = _mm512_set1_ps(1.0f / std::sqrt(mean_sq(x, D) + eps));
    write_row(o, D, stream, [&](int64_t d, __mmask16 m) {
      return _mm512_mul_ps(rounded<TI>(_mm512_mul_ps(load_at(x, d, m), rstd)), load_at(c, d, m));
    });
  }

  template <class TX, class TY, class TO>
  static void gated_row(const TX* __restrict x, const TY* __restrict y, const float* __restrict c, TO* __restrict o,
                        int64_t D, float eps, bool stream) {
    const V rstd = _mm512_set1_ps(1.0f / std::sqrt(mean_sq(y, D) + eps));
    write_row(o, D, stream, [&](int64_t d, __mmask16 m) {
      return _mm512_fmadd_ps(rounded<TY>(_mm512_mul_ps(load_at(y, d, m), rstd)), load_at(c, d, m), load_at(x, d, m));
    });
  }

  template <class TI, class TO>
  static void layernorm_row(const TI* __restrict x, const float* __restrict m, TO* __restrict o, int64_t D, float eps,
                            bool stream) {
    float mean, var;
    mean_var(x, D, mean, var);
    const V mv = _mm512_set1_ps(mean), rstd = _mm512_set1_ps(1.0f / std::sqrt(var + eps));
    write_row(o, D, stream, [&](int64_t d, __mmask16 k) {
      return _mm512_mul_ps(rounded<TI>(_mm512_mul_ps(_mm512_sub_ps(load_at(x, d, k), mv), rstd)), load_at(m, d, k));
    });
  }

  // 8 pairs per vector: (a, b) * (c, c) -/+ (b, a) * (s, s) with one fmaddsub; leftover pairs go to the portable row.
  template <class T, bool NT>
  static void rotate(const T* __restrict x, T* __restrict o, const float* __restrict c, const float* __restrict s,
                     int64_t half) {
    const __m512i dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    int64_t i = 0;
    for (; i + 8 <= half; i += 8) {
      const V v = load(x + 2 * i);
      const V cd = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(c + i)));
      const V sd = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(s + i)));
      const V swapped = _mm512_permute_ps(v, 0xB1);  // (b, a) in every pair
      store<NT>(o + 2 * i, _mm512_fmaddsub_ps(v, cd, _mm512_mul_ps(swapped, sd)));
    }
    if (i < half) portable::rope_row(x + 2 * i, o + 2 * i, c + i, s + i, half - i, false);
  }

  template <class T>
  static void rope_row(const T* __restrict x, T* __restrict o, const float* __restrict c, const float* __restrict s,
                       int64_t half, bool stream) {
    if (stream && reinterpret_cast<uintptr_t>(o) % (16 * sizeof(T)) == 0) rotate<T, true>(x, o, c, s, half);
    else rotate<T, false>(x, o, c, s, half);
  }

  template <class TS, class TD>
  static void convert_row(const TS* __restrict a, TD* __restrict b, int64_t n) {
    write_row(b, n, false, [&](int64_t d, __mmask16 m) { return load_at(a, d, m); });
  }
};

}  // namespace avx512
#pragma GCC pop_options

// ---- AVX2 + FMA + F16C: 8 floats per vector; tails go through a zeroed 8-element stack buffer ----
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {

using V = __m256;
constexpr int64_t kW = 8;  // floats per vector

inline V widen_bf16(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
inline __m128i narrow_bf16(V v) {  // round to nearest even, NaN -> quiet NaN (as the portable from_f32<bf16>)
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));  // values <= 0xFFFF: exact
}
inline __m128i narrow_f16(V v) { return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

inline const __m128i* m128(const void* p) { return static_cast<const __m128i*>(p); }

inline V load(const float* p) { return _mm256_loadu_ps(p); }
inline V load(const bf16* p) { return widen_bf16(_mm_loadu_si128(m128(p))); }
inline V load(const f16* p) { return _mm256_cvtph_ps(_mm_loadu_si128(m128(p))); }

template <class T>
inline V load_n(const T* p, int64_t n) {  // n in [1, kW), the other lanes 0
  T buf[kW] = {};
  std::memcpy(buf, p, static_cast<size_t>(n) * sizeof(T));
  return load(buf);
}

template <class T>
inline V load_at(const T* p, int64_t d, int64_t n) {
  return n == kW ? load(p + d) : load_n(p + d, n);
}

template <class T>
inline V rounded(V v) {  // v rounded to T's precision
  if constexpr (std::is_same_v<T, bf16>) return widen_bf16(narrow_bf16(v));
  else if constexpr (std::is_same_v<T, f16>) return _mm256_cvtph_ps(narrow_f16(v));
  else return v;
}

template <bool NT>
inline void store(float* p, V v) {
  if constexpr (NT) _mm256_stream_ps(p, v);
  else _mm256_storeu_ps(p, v);
}
template <bool NT>
inline void store16(void* p, __m128i h) {
  if constexpr (NT) _mm_stream_si128(static_cast<__m128i*>(p), h);
  else _mm_storeu_si128(static_cast<__m128i*>(p), h);
}
template <bool NT>
inline void store(bf16* p, V v) {
  store16<NT>(p, narrow_bf16(v));
}
template <bool NT>
inline void store(f16* p, V v) {
  store16<NT>(p, narrow_f16(v));
}

template <class T>
inline void store_n(T* p, V v, int64_t n) {  // the first n in [1, kW) lanes
  T buf[kW];
  store<false>(buf, v);
  std::memcpy(p, buf, static_cast<size_t>(n) * sizeof(T));
}

inline float hsum(V v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// sum of f(x) over a row of D = 8 k values, with four accumulators (callers add the tail)
template <class TI, class F>
inline float vsum(const TI* __restrict x, int64_t D, F f) {
  V a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t d = 0;
  for (; d + 32 <= D; d += 32) {
    a0 = f(load(x + d), a0);
    a1 = f(load(x + d + 8), a1);
    a2 = f(load(x + d + 16), a2);
    a3 = f(load(x + d + 24), a3);
  }
  for (; d + 8 <= D; d += 8) a0 = f(load(x + d), a0);
  return hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

// bfloat16 rows: 16 values per load, widened by in-lane interleaves with zero (lanes permuted; a sum does not mind)
template <class F>
inline float vsum(const bf16* __restrict x, int64_t D, F f) {
  const __m256i z = _mm256_setzero_si256();
  V a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t d = 0;
  for (; d + 32 <= D; d += 32) {
    const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + d));
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + d + 16));
    a0 = f(_mm256_castsi256_ps(_mm256_unpacklo_epi16(z, u)), a0);
    a1 = f(_mm256_castsi256_ps(_mm256_unpackhi_epi16(z, u)), a1);
    a2 = f(_mm256_castsi256_ps(_mm256_unpacklo_epi16(z, w)), a2);
    a3 = f(_mm256_castsi256_ps(_mm256_unpackhi_epi16(z, w)), a3);
  }
  for (; d + 8 <= D; d += 8) a0 = f(load(x + d), a0);
  return hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

template <class TI>
inline float mean_sq(const TI* __restrict x, int64_t D) {
  const int64_t full = D / kW * kW;
  float total = vsum(x, full, [](V v, V a) { return _mm256_fmadd_ps(v, v, a); });
  for (int64_t d = full; d < D; ++d) total += to_f32(x[d]) * to_f32(x[d]);
  return total / static_cast<float>(D);
}

template <class TI>
inline void mean_var(const TI* __restrict x, int64_t D, float& mean, float& var) {
  const int64_t full = D / kW * kW;
  float total = vsum(x, full, [](V v, V a) { return _mm256_add_ps(v, a); });
  for (int64_t d = full; d < D; ++d) total += to_f32(x[d]);
  mean = total / static_cast<float>(D);
  const V mv = _mm256_set1_ps(mean);
  float sq = vsum(x, full, [mv](V v, V a) {
    const V c = _mm256_sub_ps(v, mv);
    return _mm256_fmadd_ps(c, c, a);
  });
  for (int64_t d = full; d < D; ++d) sq += (to_f32(x[d]) - mean) * (to_f32(x[d]) - mean);
  var = sq / static_cast<float>(D);
}

// o[d] = f(d, n) for the row (n = lanes in use), full vectors then the tail; streaming stores when NT
template <class TO, bool NT, class F>
inline void write_row_as(TO* __restrict o, int64_t D, F f) {
  int64_t d = 0;
  for (; d + kW <= D; d += kW) store<NT>(o + d, f(d, kW));
  if (d < D) store_n(o + d, f(d, D - d), D - d);
}

template <class TO, class F>
inline void write_row(TO* __restrict o, int64_t D, bool stream, F f) {
  constexpr uintptr_t align = kW * sizeof(TO);  // one vector store
  if (stream && reinterpret_cast<uintptr_t>(o) % align == 0) write_row_as<TO, true>(o, D, f);
  else write_row_as<TO, false>(o, D, f);
}

template <class TI, class TO>
void rmsnorm_row(const TI* __restrict x, const float* __restrict c, TO* __restrict o, int64_t D, float eps,
                 bool stream) {
  const V rstd = _mm256_set1_ps(1.0f / std::sqrt(mean_sq(x, D) + eps));
  write_row(o, D, stream, [&](int64_t d, int64_t n) {
    return _mm256_mul_ps(rounded<TI>(_mm256_mul_ps(load_at(x, d, n), rstd)), load_at(c, d, n));
  });
}

template <class TX, class TY, class TO>
void gated_row(const TX* __restrict x, const TY* __restrict y, const float* __restrict c, TO* __restrict o, int64_t D,
               float eps, bool stream) {
  const V rstd = _mm256_set1_ps(1.0f / std::sqrt(mean_sq(y, D) + eps));
  write_row(o, D, stream, [&](int64_t d, int64_t n) {
    return _mm256_fmadd_ps(rounded<TY>(_mm256_mul_ps(load_at(y, d, n), rstd)), load_at(c, d, n), load_at(x, d, n));
  });
}

template <class TI, class TO>
void layernorm_row(const TI* __restrict x, const float* __restrict m, TO* __restrict o, int64_t D, float eps,
                   bool stream) {
  float mean, var;
  mean_var(x, D, mean, var);
  const V mv = _mm256_set1_ps(mean), rstd = _mm256_set1_ps(1.0f / std::sqrt(var + eps));
  write_row(o, D, stream, [&](int64_t d, int64_t n) {
    return _mm256_mul_ps(rounded<TI>(_mm256_mul_ps(_mm256_sub_ps(load_at(x, d, n), mv), rstd)), load_at(m, d, n));
  });
}

// 4 pairs per vector, as the AVX-512 rotate
template <class T, bool NT>
void rotate(const T* __restrict x, T* __restrict o, const float* __restrict c, const float* __restrict s,
            int64_t half) {
  const __m256i dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
  int64_t i = 0;
  for (; i + 4 <= half; i += 4) {
    const V v = load(x + 2 * i);
    const V cd = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(c + i)), dup);
    const V sd = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(s + i)), dup);
    const V swapped = _mm256_permute_ps(v, 0xB1);  // (b, a) in every pair
    store<NT>(o + 2 * i, _mm256_fmaddsub_ps(v, cd, _mm256_mul_ps(swapped, sd)));
  }
  if (i < half) portable::rope_row(x + 2 * i, o + 2 * i, c + i, s + i, half - i, false);
}

template <class T>
void rope_row(const T* __restrict x, T* __restrict o, const float* __restrict c, const float* __restrict s,
              int64_t half, bool stream) {
  if (stream && reinterpret_cast<uintptr_t>(o) % (kW * sizeof(T)) == 0) rotate<T, true>(x, o, c, s, half);
  else rotate<T, false>(x, o, c, s, half);
}

template <class TS, class TD>
void convert_row(const TS* __restrict a, TD* __restrict b, int64_t n) {
  write_row(b, n, false, [&](int64_t d, int64_t k) { return load_at(a, d, k); });
}

}  // namespace avx2
#pragma GCC pop_options

#endif  // LUMINA_X86

// The row kernel `fn<...>` of `isa` (AVX-512 with or without the AVX512-BF16 rounding, as g_avx512_bf16 says).
#if LUMINA_X86
template <class Fn>
Fn pick(Isa isa, Fn portable_fn, Fn avx2_fn, Fn avx512_fn, Fn avx512_bf16_fn) {
  switch (isa) {
    case Isa::kAvx512:
      return g_avx512_bf16.load(std::memory_order_relaxed) ? avx512_bf16_fn : avx512_fn;
    case Isa::kAvx2:
      return avx2_fn;
    default:
      return portable_fn;
  }
}
#define LUMINA_PICK(isa, fn, ...)                                                                       \
  pick(isa, portable::fn<__VA_ARGS__>, avx2::fn<__VA_ARGS__>, avx512::Kernels<false>::fn<__VA_ARGS__>, \
       avx512::Kernels<true>::fn<__VA_ARGS__>)
#else
#define LUMINA_PICK(isa, fn, ...) portable::fn<__VA_ARGS__>
#endif

Isa current_isa() { return g_isa.load(std::memory_order_relaxed); }

// Whether an op of `isa` writing `bytes` streams its stores (the vector kernels only).
bool streams(Isa isa, int64_t bytes) { return isa != Isa::kPortable && bytes >= kStreamBytes; }

// Orders this thread's streaming stores before the op returns.
inline void fence(bool stream) {
#if LUMINA_X86
  if (stream) _mm_sfence();
#else
  (void)stream;
#endif
}

// Per-batch coefficient rows [B, D] in float32 (tiny next to the [B, N, D] work): weight * (1 + scale[b]),
// tanh(gate[b]) * weight, or 1 + scale[b].
enum class Mod { kScale, kGate };

std::vector<float> modulation(const float* w, const float* s, int64_t B, int64_t D, Mod kind) {
  std::vector<float> coef(static_cast<size_t>(B * D));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t d = 0; d < D; ++d) {
      const float sv = s[b * D + d];
      const float m = kind == Mod::kGate ? std::tanh(sv) : 1.0f + sv;
      coef[b * D + d] = w ? w[d] * m : m;
    }
  return coef;
}

// out = round_TI(x * rstd) * coef[b]   (coef = weight * (1 + scale[b]))
template <class TI, class TO>
void rmsnorm_modulate_impl(uintptr_t x_p, const float* w, const float* s, uintptr_t out_p, int64_t B, int64_t N,
                           int64_t D, int64_t sxb, int64_t sxn, float eps, int nt) {
  const TI* x = ptr<const TI>(x_p);
  TO* out = ptr<TO>(out_p);
  const Isa isa = current_isa();
  const auto row = LUMINA_PICK(isa, rmsnorm_row, TI, TO);
  const bool stream = streams(isa, B * N * D * static_cast<int64_t>(sizeof(TO)));
  const std::vector<float> coef = modulation(w, s, B, D, Mod::kScale);
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < B * N; ++r) {
      const int64_t b = r / N, n = r - b * N;
      row(x + b * sxb + n * sxn, coef.data() + b * D, out + r * D, D, eps, stream);
    }
    fence(stream);
  }
}

// out = x + round_TY(y * rstd) * coef[b]   (coef = tanh(gate[b]) * weight)
template <class TX, class TY, class TO>
void gated_residual_impl(uintptr_t x_p, uintptr_t y_p, const float* w, const float* g, uintptr_t out_p, int64_t B,
                         int64_t N, int64_t D, int64_t sxb, int64_t sxn, int64_t syb, int64_t syn, float eps, int nt) {
  const TX* x = ptr<const TX>(x_p);
  const TY* y = ptr<const TY>(y_p);
  TO* out = ptr<TO>(out_p);
  const Isa isa = current_isa();
  const auto row = LUMINA_PICK(isa, gated_row, TX, TY, TO);
  const bool stream = streams(isa, B * N * D * static_cast<int64_t>(sizeof(TO)));
  const std::vector<float> coef = modulation(w, g, B, D, Mod::kGate);
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < B * N; ++r) {
      const int64_t b = r / N, n = r - b * N;
      row(x + b * sxb + n * sxn, y + b * syb + n * syn, coef.data() + b * D, out + r * D, D, eps, stream);
    }
    fence(stream);
  }
}

// out = round_TI((x - mean) * rstd) * mod[b]   (mod = 1 + scale[b])
template <class TI, class TO>
void layernorm_modulate_impl(uintptr_t x_p, const float* s, uintptr_t out_p, int64_t B, int64_t N, int64_t D,
                             int64_t sxb, int64_t sxn, float eps, int nt) {
  const TI* x = ptr<const TI>(x_p);
  TO* out = ptr<TO>(out_p);
  const Isa isa = current_isa();
  const auto row = LUMINA_PICK(isa, layernorm_row, TI, TO);
  const bool stream = streams(isa, B * N * D * static_cast<int64_t>(sizeof(TO)));
  const std::vector<float> mod = modulation(nullptr, s, B, D, Mod::kScale);
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < B * N; ++r) {
      const int64_t b = r / N, n = r - b * N;
      row(x + b * sxb + n * sxn, mod.data() + b * D, out + r * D, D, eps, stream);
    }
    fence(stream);
  }
}

// ------------------------------------------------------------------------------------------------
// RoPE: interleaved pairs, per token; cos / sin float32 rows of HALF, shared by the token's heads.
// ------------------------------------------------------------------------------------------------

template <class T>
void rope_impl(uintptr_t x_p, uintptr_t o_p, const float* cos, const float* sin, int64_t B, int64_t N, int64_t H,
               int64_t half, int64_t cos_bstride, int nt) {
  const T* x = ptr<const T>(x_p);
  T* o = ptr<T>(o_p);
  const int64_t row = H * 2 * half;
  const Isa isa = current_isa();
  const auto rotate = LUMINA_PICK(isa, rope_row, T);
  const bool stream = streams(isa, B * N * row * static_cast<int64_t>(sizeof(T)));
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < B * N; ++t) {
      const int64_t b = t / N, n = t - b * N;
      const float* c = cos + (b * cos_bstride + n) * half;
      const float* s = sin + (b * cos_bstride + n) * half;
      for (int64_t h = 0; h < H; ++h) rotate(x + t * row + h * 2 * half, o + t * row + h * 2 * half, c, s, half, stream);
    }
    fence(stream);
  }
}

namespace portable {

// LayerNorm (affine, over the whole H*Dh row of one token, rounded to T) then rotate each head.
template <class T>
void ln_rope_token(const T* __restrict xr, T* __restrict orow, const float* __restrict w,
                   const float* __restrict bias, const float* __restrict c, const float* __restrict s, int64_t H,
                   int64_t half, float eps) {
  float mean, var;
  mean_var(xr, H * 2 * half, mean, var);
  const float rstd = 1.0f / std::sqrt(var + eps);
  for (int64_t h = 0; h < H; ++h) {
    const T* __restrict xh = xr + h * 2 * half;
    const float* __restrict wh = w + h * 2 * half;
    const float* __restrict bh = bias + h * 2 * half;
    T* __restrict oh = orow + h * 2 * half;
#pragma omp simd
    for (int64_t i = 0; i < half; ++i) {
      const float a = round_to<T>((to_f32(xh[2 * i]) - mean) * rstd * wh[2 * i] + bh[2 * i]);
      const float e = round_to<T>((to_f32(xh[2 * i + 1]) - mean) * rstd * wh[2 * i + 1] + bh[2 * i + 1]);
      oh[2 * i] = from_f32<T>(a * c[i] - e * s[i]);
      oh[2 * i + 1] = from_f32<T>(a * s[i] + e * c[i]);
    }
  }
}

}  // namespace portable

// ------------------------------------------------------------------------------------------------
// Patchify / unpatchify: pure data movement, so instantiated per element size (U = uint32_t or uint16_t).
// Work item: one row of tokens (b, fi, hi) = Wt tokens x P features, contiguous in the token tensor, built from (or
// scattered to) C*pf*ph latent rows of W contiguous elements; the block stays in L1/L2. For each (ipf, iph) the
// move is a transpose of a [C, W] latent tile into W feature rows of C elements: done in 8 x 8 register tiles
// (GCC vector shuffles, three rounds of interleaves), scalar loops for the edges.
// ------------------------------------------------------------------------------------------------

template <class U>
struct Vec8 {
  typedef U type __attribute__((vector_size(8 * sizeof(U))));
};

// Transpose 8 rows of 8 elements in registers: r[i][j] -> r[j][i].
template <class U>
inline void transpose8(typename Vec8<U>::type (&r)[8]) {
  using V = typename Vec8<U>::type;
  const V lo = {0, 8, 1, 9, 2, 10, 3, 11};
  const V hi = {4, 12, 5, 13, 6, 14, 7, 15};
  for (int round = 0; round < 3; ++round) {
    V t[8];
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = __builtin_shuffle(r[i], r[i + 4], lo);
      t[2 * i + 1] = __builtin_shuffle(r[i], r[i + 4], hi);
    }
    for (int i = 0; i < 8; ++i) r[i] = t[i];
  }
}

template <class U>
inline typename Vec8<U>::type load8(const U* p) {
  typename Vec8<U>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <class U>
inline void store8(U* p, const typename Vec8<U>::type& v) {
  std::memcpy(p, &v, sizeof(v));
}

// One call's sizes and strides in elements, shared by its work items.
struct PatchPlan {
  int64_t C, W, pf, ph, pw;
  int64_t C8, W8;   // channels and widths covered by 8 x 8 tiles
  int64_t off[8];   // offsets of the 8 token-tensor rows of a tile
  int64_t sc, sw;   // patchify: latent strides of c and w
  int64_t sf, sh;   // patchify: latent strides of f (0: an image repeated over pf frames) and h
  int64_t P;        // patchify: features per token
  int64_t stn;      // unpatchify: token stride
  int64_t dc, dfh;  // unpatchify: output strides of a channel and a frame (H * W)
};

namespace portable {

// Patchify work item: src = the latent at (b, fi * pf, hi * ph), dst = its row of Wt tokens.
template <class U>
void patchify_item(const PatchPlan& p, const U* __restrict src, U* __restrict dst) {
  for (int64_t ipf = 0; ipf < p.pf; ++ipf)
    for (int64_t iph = 0; iph < p.ph; ++iph) {
      const U* __restrict s = src + ipf * p.sf + iph * p.sh;  // + c * sc + w * sw
      U* __restrict d = dst + (ipf * p.ph + iph) * p.pw * p.C;  // + (w / pw) * P + (w % pw) * C + c
      for (int64_t c0 = 0; c0 < p.C8; c0 += 8) {
        for (int64_t w0 = 0; w0 < p.W8; w0 += 8) {
          typename Vec8<U>::type r[8];
          for (int i = 0; i < 8; ++i) r[i] = load8(s + (c0 + i) * p.sc + w0);
          transpose8<U>(r);
          U* __restrict t = d + (w0 / p.pw) * p.P + c0;
          for (int j = 0; j < 8; ++j) store8(t + p.off[j], r[j]);
        }
        for (int64_t w = p.W8; w < p.W; ++w)
          for (int64_t c = c0; c < c0 + 8; ++c) d[(w / p.pw) * p.P + (w % p.pw) * p.C + c] = s[c * p.sc + w];
      }
      for (int64_t c = p.C8; c < p.C; ++c)
        for (int64_t w = 0; w < p.W; ++w) d[(w / p.pw) * p.P + (w % p.pw) * p.C + c] = s[c * p.sc + w * p.sw];
    }
}

// Unpatchify work item: src = a row of Wt tokens, dst = the output at (b, 0, fi * pf, hi * ph, 0); only the first
// `keep` of the pf computed frames are written (an image keeps frame 0).
template <class U>
void unpatchify_item(const PatchPlan& p, const U* __restrict src, U* __restrict dst, int64_t keep) {
  for (int64_t ipf = 0; ipf < std::min(p.pf, keep); ++ipf)
    for (int64_t iph = 0; iph < p.ph; ++iph) {
      // s + (w / pw) * stn + (w % pw) * C + c  ->  d + c * dc + w
      const U* __restrict s = src + (ipf * p.ph + iph) * p.pw * p.C;
      U* __restrict d = dst + ipf * p.dfh + iph * p.W;
      for (int64_t c0 = 0; c0 < p.C8; c0 += 8) {
        for (int64_t w0 = 0; w0 < p.W8; w0 += 8) {
          typename Vec8<U>::type r[8];
          const U* __restrict s0 = s + (w0 / p.pw) * p.stn + c0;
          for (int j = 0; j < 8; ++j) r[j] = load8(s0 + p.off[j]);
          transpose8<U>(r);
          for (int i = 0; i < 8; ++i) store8(d + (c0 + i) * p.dc + w0, r[i]);
        }
        for (int64_t c = c0; c < c0 + 8; ++c)
          for (int64_t w = p.W8; w < p.W; ++w) d[c * p.dc + w] = s[(w / p.pw) * p.stn + (w % p.pw) * p.C + c];
      }
      for (int64_t c = p.C8; c < p.C; ++c)
        for (int64_t w = 0; w < p.W; ++w) d[c * p.dc + w] = s[(w / p.pw) * p.stn + (w % p.pw) * p.C + c];
    }
}

}  // namespace portable

// ------------------------------------------------------------------------------------------------
// The portable per-token / per-item code above, also compiled for AVX2 and AVX-512: `flatten` inlines all of it into
// a function of the wider target, where the auto-vectoriser uses the wider vectors and hardware fp16 conversions and
// the 8 x 8 tiles move 8 x 4-byte elements in one register (vpermt2d on AVX-512).
// ------------------------------------------------------------------------------------------------

#if LUMINA_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
template <class T>
__attribute__((flatten)) void ln_rope_token(const T* xr, T* orow, const float* w, const float* bias, const float* c,
                                            const float* s, int64_t H, int64_t half, float eps) {
  portable::ln_rope_token(xr, orow, w, bias, c, s, H, half, eps);
}
template <class U>
__attribute__((flatten)) void patchify_item(const PatchPlan& p, const U* src, U* dst) {
  portable::patchify_item(p, src, dst);
}
template <class U>
__attribute__((flatten)) void unpatchify_item(const PatchPlan& p, const U* src, U* dst, int64_t keep) {
  portable::unpatchify_item(p, src, dst, keep);
}
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl")
namespace avx512 {
template <class T>
__attribute__((flatten)) void ln_rope_token(const T* xr, T* orow, const float* w, const float* bias, const float* c,
                                            const float* s, int64_t H, int64_t half, float eps) {
  portable::ln_rope_token(xr, orow, w, bias, c, s, H, half, eps);
}
template <class U>
__attribute__((flatten)) void patchify_item(const PatchPlan& p, const U* src, U* dst) {
  portable::patchify_item(p, src, dst);
}
template <class U>
__attribute__((flatten)) void unpatchify_item(const PatchPlan& p, const U* src, U* dst, int64_t keep) {
  portable::unpatchify_item(p, src, dst, keep);
}
}  // namespace avx512
#pragma GCC pop_options

#define LUMINA_PICK_FLAT(isa, fn, ...) \
  pick(isa, portable::fn<__VA_ARGS__>, avx2::fn<__VA_ARGS__>, avx512::fn<__VA_ARGS__>, avx512::fn<__VA_ARGS__>)
#else
#define LUMINA_PICK_FLAT(isa, fn, ...) portable::fn<__VA_ARGS__>
#endif

template <class T>
void ln_rope_impl(uintptr_t x_p, uintptr_t o_p, const float* w, const float* bias, const float* cos, const float* sin,
                  int64_t B, int64_t N, int64_t H, int64_t half, int64_t cos_bstride, float eps, int nt) {
  const T* x = ptr<const T>(x_p);
  T* o = ptr<T>(o_p);
  const int64_t row = H * 2 * half;
  const auto token = LUMINA_PICK_FLAT(current_isa(), ln_rope_token, T);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < B * N; ++t) {
    const int64_t b = t / N, n = t - b * N;
    token(x + t * row, o + t * row, w, bias, cos + (b * cos_bstride + n) * half, sin + (b * cos_bstride + n) * half, H,
          half, eps);
  }
}

template <class U>
void patchify_impl(uintptr_t x_p, uintptr_t o_p, int64_t B, int64_t C, int64_t Fc, int64_t H, int64_t W, int64_t pf,
                   int64_t ph, int64_t pw, int64_t sb, int64_t sc, int64_t sf, int64_t sh, int64_t sw, int nt) {
  const U* x = ptr<const U>(x_p);
  U* out = ptr<U>(o_p);
  const int64_t Ft = Fc / pf, Ht = H / ph, Wt = W / pw, P = pf * ph * pw * C;
  PatchPlan p{};
  p.C = C, p.W = W, p.pf = pf, p.ph = ph, p.pw = pw, p.sc = sc, p.sw = sw, p.sf = sf, p.sh = sh, p.P = P;
  // 8 x 8 tiles need unit latent stride along W and pw | 8; then the 8 feature rows of a tile sit at off[j]
  p.C8 = (sw == 1 && 8 % pw == 0) ? C / 8 * 8 : 0, p.W8 = W / 8 * 8;
  for (int j = 0; j < 8; ++j) p.off[j] = (j / pw) * P + (j % pw) * C;
  const auto item = LUMINA_PICK_FLAT(current_isa(), patchify_item, U);
#pragma omp parallel for num_threads(nt) schedule(static) collapse(2)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t fh = 0; fh < Ft * Ht; ++fh) {
      const int64_t fi = fh / Ht, hi = fh - fi * Ht;
      item(p, x + b * sb + fi * pf * sf + hi * ph * sh, out + (b * Ft * Ht + fh) * Wt * P);
    }
}

template <class U>
void unpatchify_impl(uintptr_t t_p, uintptr_t o_p, int64_t B, int64_t C, int64_t frames, int64_t Fc, int64_t H,
                     int64_t W, int64_t pf, int64_t ph, int64_t pw, int64_t stb, int64_t stn, int nt) {
  const U* tok = ptr<const U>(t_p);
  U* out = ptr<U>(o_p);
  const int64_t Ft = Fc / pf, Ht = H / ph, Wt = W / pw;
  PatchPlan p{};
  p.C = C, p.W = W, p.pf = pf, p.ph = ph, p.pw = pw, p.stn = stn, p.dc = frames * H * W, p.dfh = H * W;
  p.C8 = 8 % pw == 0 ? C / 8 * 8 : 0, p.W8 = W / 8 * 8;
  for (int j = 0; j < 8; ++j) p.off[j] = (j / pw) * stn + (j % pw) * C;
  const auto item = LUMINA_PICK_FLAT(current_isa(), unpatchify_item, U);
#pragma omp parallel for num_threads(nt) schedule(static) collapse(2)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t fh = 0; fh < Ft * Ht; ++fh) {
      const int64_t fi = fh / Ht, hi = fh - fi * Ht;
      item(p, tok + b * stb + fh * Wt * stn, out + ((b * C * frames + fi * pf) * H + hi * ph) * W, frames - fi * pf);
    }
}

template <class F>
void dispatch_size(int code, const char* what, F&& f) {
  switch (code) {
    case kF32:
      f(uint32_t{});
      break;
    case kF16:
    case kBF16:
      f(uint16_t{});
      break;
    default:
      bad_dtype(what, code);
  }
}

// ------------------------------------------------------------------------------------------------
// Python entry points (addresses as ints; the wrappers in kernels/cpu.py own all checks)
// ------------------------------------------------------------------------------------------------

void rmsnorm_modulate(uintptr_t x, int x_dtype, uintptr_t weight, uintptr_t scale, uintptr_t out, int out_dtype,
                      int64_t B, int64_t N, int64_t D, int64_t sxb, int64_t sxn, double eps, int nthreads) {
  dispatch(x_dtype, "rmsnorm_modulate x", [&](auto ti) {
    dispatch(out_dtype, "rmsnorm_modulate out", [&](auto to) {
      rmsnorm_modulate_impl<decltype(ti), decltype(to)>(x, ptr<const float>(weight), ptr<const float>(scale), out, B,
                                                        N, D, sxb, sxn, static_cast<float>(eps), threads(nthreads));
    });
  });
}

void gated_residual(uintptr_t x, int x_dtype, uintptr_t y, int y_dtype, uintptr_t weight, uintptr_t gate,
                    uintptr_t out, int out_dtype, int64_t B, int64_t N, int64_t D, int64_t sxb, int64_t sxn,
                    int64_t syb, int64_t syn, double eps, int nthreads) {
  dispatch(x_dtype, "gated_residual x", [&](auto tx) {
    dispatch(y_dtype, "gated_residual y", [&](auto ty) {
      dispatch(out_dtype, "gated_residual out", [&](auto to) {
        gated_residual_impl<decltype(tx), decltype(ty), decltype(to)>(x, y, ptr<const float>(weight),
                                                                      ptr<const float>(gate), out, B, N, D, sxb, sxn,
                                                                      syb, syn, static_cast<float>(eps),
                                                                      threads(nthreads));
      });
    });
  });
}

void layernorm_modulate(uintptr_t x, int x_dtype, uintptr_t scale, uintptr_t out, int out_dtype, int64_t B,
                        int64_t N, int64_t D, int64_t sxb, int64_t sxn, double eps, int nthreads) {
  dispatch(x_dtype, "layernorm_modulate x", [&](auto ti) {
    dispatch(out_dtype, "layernorm_modulate out", [&](auto to) {
      layernorm_modulate_impl<decltype(ti), decltype(to)>(x, ptr<const float>(scale), out, B, N, D, sxb, sxn,
                                                          static_cast<float>(eps), threads(nthreads));
    });
  });
}

void rope_qk(uintptr_t q, uintptr_t k, uintptr_t q_out, uintptr_t k_out, int q_dtype, int k_dtype, uintptr_t cos,
             uintptr_t sin, int64_t B, int64_t N, int64_t Hq, int64_t Hk, int64_t Dh, int64_t cos_bstride,
             int nthreads) {
  const float* c = ptr<const float>(cos);
  const float* s = ptr<const float>(sin);
  const int nt = threads(nthreads);
  dispatch(q_dtype, "rope_qk q", [&](auto t) { rope_impl<decltype(t)>(q, q_out, c, s, B, N, Hq, Dh / 2, cos_bstride, nt); });
  dispatch(k_dtype, "rope_qk k", [&](auto t) { rope_impl<decltype(t)>(k, k_out, c, s, B, N, Hk, Dh / 2, cos_bstride, nt); });
}

void rope_qk_layernorm(uintptr_t q, uintptr_t k, uintptr_t q_out, uintptr_t k_out, int q_dtype, int k_dtype,
                       uintptr_t cos, uintptr_t sin, uintptr_t q_w, uintptr_t q_b, uintptr_t k_w, uintptr_t k_b,
                       int64_t B, int64_t N, int64_t Hq, int64_t Hk, int64_t Dh, int64_t cos_bstride, double eps,
                       int nthreads) {
  const float* c = ptr<const float>(cos);
  const float* s = ptr<const float>(sin);
  const int nt = threads(nthreads);
  const float e = static_cast<float>(eps);
  dispatch(q_dtype, "rope_qk_layernorm q", [&](auto t) {
    ln_rope_impl<decltype(t)>(q, q_out, ptr<const float>(q_w), ptr<const float>(q_b), c, s, B, N, Hq, Dh / 2,
                              cos_bstride, e, nt);
  });
  dispatch(k_dtype, "rope_qk_layernorm k", [&](auto t) {
    ln_rope_impl<decltype(t)>(k, k_out, ptr<const float>(k_w), ptr<const float>(k_b), c, s, B, N, Hk, Dh / 2,
                              cos_bstride, e, nt);
  });
}

void patchify(uintptr_t x, uintptr_t out, int dtype, int64_t B, int64_t C, int64_t Fc, int64_t H, int64_t W,
              int64_t pf, int64_t ph, int64_t pw, int64_t sb, int64_t sc, int64_t sf, int64_t sh, int64_t sw,
              int nthreads) {
  dispatch_size(dtype, "patchify x", [&](auto t) {
    patchify_impl<decltype(t)>(x, out, B, C, Fc, H, W, pf, ph, pw, sb, sc, sf, sh, sw, threads(nthreads));
  });
}

void unpatchify(uintptr_t tokens, uintptr_t out, int dtype, int64_t B, int64_t C, int64_t frames, int64_t Fc,
                int64_t H, int64_t W, int64_t pf, int64_t ph, int64_t pw, int64_t stb, int64_t stn, int nthreads) {
  dispatch_size(dtype, "unpatchify tokens", [&](auto t) {
    unpatchify_impl<decltype(t)>(tokens, out, B, C, frames, Fc, H, W, pf, ph, pw, stb, stn, threads(nthreads));
  });
}

// Element-wise dtype conversion with the converters of `isa` (for tests: every converter checked exhaustively).
void convert(uintptr_t src, int src_dtype, uintptr_t dst, int dst_dtype, int64_t n, const std::string& isa_name) {
  const Isa isa = parse_isa(isa_name);
  py::gil_scoped_release nogil;
  dispatch(src_dtype, "convert src", [&](auto ts) {
    dispatch(dst_dtype, "convert dst", [&](auto td) {
      using TS = decltype(ts);
      using TD = decltype(td);
      LUMINA_PICK(isa, convert_row, TS, TD)(ptr<const TS>(src), ptr<TD>(dst), n);
    });
  });
}

// q, k, v, ky, vy, out: (address, batch stride, token stride, head stride); masks: (address or 0, batch stride).
using View = std::vector<int64_t>;

bool attention_supported(int dtype) {
  return current_isa() == Isa::kAvx512 && lumina_attention::cpu_supports(dtype);
}

void gated_attention(const View& q, const View& k, const View& v, const View& mask, const View& ky, const View& vy,
                     const View& ymask, uintptr_t gate, const View& out, int64_t B, int64_t Nq, int64_t Nk,
                     int64_t Ny, int64_t Hq, int64_t Hk, int64_t D, double scale, int dtype, int nthreads) {
  if (!attention_supported(dtype))
    throw py::value_error(std::string("gated_attention: no kernel for dtype code ") + std::to_string(dtype) +
                          " with ISA " + name_of(current_isa()) + " on this CPU (needs avx512, and AVX512-BF16 for "
                          "bfloat16)");
  for (const View* t : {&q, &k, &v, &ky, &vy, &out})
    if (t->size() != 4) throw py::value_error("gated_attention: tensor views are (address, sb, sn, sh)");
  lumina_attention::Args a;
  auto p = [](int64_t addr) { return reinterpret_cast<const void*>(static_cast<uintptr_t>(addr)); };
  a.q = p(q[0]), a.q_sb = q[1], a.q_sn = q[2], a.q_sh = q[3];
  a.k = p(k[0]), a.k_sb = k[1], a.k_sn = k[2], a.k_sh = k[3];
  a.v = p(v[0]), a.v_sb = v[1], a.v_sn = v[2], a.v_sh = v[3];
  a.mask = static_cast<const uint8_t*>(p(mask.at(0))), a.mask_sb = mask.at(1);
  a.ky = p(ky[0]), a.ky_sb = ky[1], a.ky_sn = ky[2], a.ky_sh = ky[3];
  a.vy = p(vy[0]), a.vy_sb = vy[1], a.vy_sn = vy[2], a.vy_sh = vy[3];
  a.ymask = static_cast<const uint8_t*>(p(ymask.at(0))), a.ymask_sb = ymask.at(1);
  a.gate = reinterpret_cast<const float*>(gate);
  a.out = const_cast<void*>(p(out[0])), a.out_sb = out[1], a.out_sn = out[2], a.out_sh = out[3];
  a.B = B, a.Nq = Nq, a.Nk = Nk, a.Ny = Ny, a.Hq = Hq, a.Hk = Hk, a.D = D, a.scale = scale, a.dtype = dtype;
  a.nthreads = threads(nthreads);
  py::gil_scoped_release nogil;
  lumina_attention::gated_attention(a);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lumina_rt fused CPU ops (OpenMP); call through lumina_rt.kernels.cpu, which checks the inputs";
  using py::arg;
  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("rmsnorm_modulate", &rmsnorm_modulate, nogil, arg("x"), arg("x_dtype"), arg("weight"), arg("scale"),
        arg("out"), arg("out_dtype"), arg("B"), arg("N"), arg("D"), arg("sxb"), arg("sxn"), arg("eps"),
        arg("nthreads"));
  m.def("gated_residual", &gated_residual, nogil, arg("x"), arg("x_dtype"), arg("y"), arg("y_dtype"), arg("weight"),
        arg("gate"), arg("out"), arg("out_dtype"), arg("B"), arg("N"), arg("D"), arg("sxb"), arg("sxn"), arg("syb"),
        arg("syn"), arg("eps"), arg("nthreads"));
  m.def("layernorm_modulate", &layernorm_modulate, nogil, arg("x"), arg("x_dtype"), arg("scale"), arg("out"),
        arg("out_dtype"), arg("B"), arg("N"), arg("D"), arg("sxb"), arg("sxn"), arg("eps"), arg("nthreads"));
  m.def("rope_qk", &rope_qk, nogil, arg("q"), arg("k"), arg("q_out"), arg("k_out"), arg("q_dtype"), arg("k_dtype"),
        arg("cos"), arg("sin"), arg("B"), arg("N"), arg("Hq"), arg("Hk"), arg("Dh"), arg("cos_bstride"),
        arg("nthreads"));
  m.def("rope_qk_layernorm", &rope_qk_layernorm, nogil, arg("q"), arg("k"), arg("q_out"), arg("k_out"),
        arg("q_dtype"), arg("k_dtype"), arg("cos"), arg("sin"), arg("q_w"), arg("q_b"), arg("k_w"), arg("k_b"),
        arg("B"), arg("N"), arg("Hq"), arg("Hk"), arg("Dh"), arg("cos_bstride"), arg("eps"), arg("nthreads"));
  m.def("patchify", &patchify, nogil, arg("x"), arg("out"), arg("dtype"), arg("B"), arg("C"), arg("Fc"), arg("H"),
        arg("W"), arg("pf"), arg("ph"), arg("pw"), arg("sb"), arg("sc"), arg("sf"), arg("sh"), arg("sw"),
        arg("nthreads"));
  m.def("unpatchify", &unpatchify, nogil, arg("tokens"), arg("out"), arg("dtype"), arg("B"), arg("C"),
        arg("frames"), arg("Fc"), arg("H"), arg("W"), arg("pf"), arg("ph"), arg("pw"), arg("stb"), arg("stn"),
        arg("nthreads"));
  m.def("convert", &convert, arg("src"), arg("src_dtype"), arg("dst"), arg("dst_dtype"), arg("n"),
        arg("isa") = "portable",
        "element conversion (float32 / float16 / bfloat16, round to nearest even) with the converters of `isa`, for "
        "tests");

  m.def("gated_attention", &gated_attention, arg("q"), arg("k"), arg("v"), arg("mask"), arg("ky"), arg("vy"),
        arg("ymask"), arg("gate"), arg("out"), arg("B"), arg("Nq"), arg("Nk"), arg("Ny"), arg("Hq"), arg("Hk"),
        arg("D"), arg("scale"), arg("dtype"), arg("nthreads"),
        "self-attention + tanh-gated cross-attention (csrc/attention.cpp); ky = (0, ...) for no cross-attention");
  m.def("attention_supported", &attention_supported, arg("dtype"),
        "whether gated_attention has a kernel for the dtype code with the current ISA on this CPU");
  m.def("isa", []() { return name_of(current_isa()); }, "the instruction set the row kernels use now");
  m.def("supported_isas", []() {
    std::vector<std::string> names;
    for (Isa isa : supported_isas()) names.push_back(name_of(isa));
    return names;
  }, "the instruction sets this CPU and build can run, best first (the first is the default)");
  m.def("set_isa", [](const std::string& name) { g_isa = parse_isa(name); }, arg("name"),
        "use the row kernels of `name` (one of supported_isas()); ValueError otherwise");
  m.def("avx512_bf16", []() { return g_avx512_bf16.load(); },
        "whether the AVX-512 kernels round to bfloat16 with AVX512-BF16 (default where the CPU has it)");
  m.def("set_avx512_bf16", [](bool on) {
    if (on && !cpu_has_avx512_bf16())
      throw py::value_error("set_avx512_bf16(True): this CPU has no AVX-512 with AVX512-BF16");
    g_avx512_bf16 = on;
  }, arg("on"), "round to bfloat16 with AVX512-BF16 (True) or in software (False) in the AVX-512 kernels");
  m.def("build_info", []() {
    return py::dict(arg("march_native") = kBuiltNative, arg("baseline_isa") = kBaselineIsa);
  }, "how the extension was compiled: march_native (LUMINA_RT_MARCH_NATIVE=1 at build time) and baseline_isa, the "
     "ISA its global flags assume (\"portable\" unless -march=native on a vector CPU)");
  // Compatibility with the former AVX-512-or-portable switch.
  m.def("simd_available", []() { return supported_isas().front() != Isa::kPortable; },
        "whether a vector ISA (AVX2 or AVX-512) can run here");
  m.def("set_simd", [](bool on) { g_isa = on ? supported_isas().front() : Isa::kPortable; }, arg("on"),
        "use the best vector ISA (True) or the portable row kernels (False)");
  m.def("get_simd", []() { return current_isa() != Isa::kPortable; });
  m.attr("DTYPE_CODES") = py::dict(py::arg("float32") = static_cast<int>(kF32), py::arg("float16") = static_cast<int>(kF16),
                                   py::arg("bfloat16") = static_cast<int>(kBF16));
}
