// Gated attention (csrc/attention.cpp): the interface lumina_ops.cpp binds to Python.
#pragma once

#include <cstdint>

namespace lumina_attention {

// Strides are in elements; the head dim of every tensor is contiguous. dtype: 0 float32, 2 bfloat16 (all tensors).
struct Args {
  const void* q = nullptr;  // [B, Nq, Hq, D]
  int64_t q_sb = 0, q_sn = 0, q_sh = 0;
  const void* k = nullptr;  // [B, Nk, Hk, D]
  int64_t k_sb = 0, k_sn = 0, k_sh = 0;
  const void* v = nullptr;  // [B, Nk, Hk, D]
  int64_t v_sb = 0, v_sn = 0, v_sh = 0;
  const uint8_t* mask = nullptr;  // [B, Nk] key mask (1 = attend) or null
  int64_t mask_sb = 0;
  const void* ky = nullptr;  // [B, Ny, Hk, D] caption keys, or null for no cross-attention
  int64_t ky_sb = 0, ky_sn = 0, ky_sh = 0;
  const void* vy = nullptr;  // [B, Ny, Hk, D]
  int64_t vy_sb = 0, vy_sn = 0, vy_sh = 0;
  const uint8_t* ymask = nullptr;  // [B, Ny] or null
  int64_t ymask_sb = 0;
  const float* gate = nullptr;  // [Hq]: tanh of the cross-attention gate
  void* out = nullptr;          // [B, Nq, Hq, D]
  int64_t out_sb = 0, out_sn = 0, out_sh = 0;
  int64_t B = 0, Nq = 0, Nk = 0, Ny = 0, Hq = 0, Hk = 0, D = 0;
  double scale = 1.0;
  int dtype = 0;
  int nthreads = 0;
};

// Whether this CPU has the kernel for `dtype` (float32: AVX-512 F/BW/VL; bfloat16: also AVX512-BF16).
bool cpu_supports(int dtype);

// Runs the attention; std::invalid_argument for a dtype / CPU without a path, odd D, or Hq not a multiple of Hk.
void gated_attention(const Args& a);

}  // namespace lumina_attention
