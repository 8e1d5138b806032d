/* attention.cuh — what the attention kernels share: attention.cu (tensor cores through mma.sync, sm_80+,
 * and the plain fp32 path; the dispatch) and attention_sm90.cu (Hopper warpgroup MMAs, sm_90a). Device
 * helpers (cp.async staging, the softmax's exp2, bf16 packing and stores) and the host side's shapes and
 * backward operands. */
#pragma once
#include "attention_host.h"
#include "f2_cuda.cuh"

extern __shared__ __align__(16) unsigned char attn_smem[];   /* every kernel's dynamic shared memory */

namespace f2attn {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

/* ---------------------------------------------------------------- PTX helpers (sm_80+) */

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool pred) {
  unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  int n = pred ? 16 : 0;   /* 0 source bytes: the 16 bytes are zero-filled */
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async4(void *smem, const void *gmem, bool pred) {
  unsigned s = (unsigned)__cvta_generic_to_shared(smem);
  int n = pred ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

/* 2^x on the SFU (ex2.approx: 2 ulp, -inf -> 0); the softmax's exponentials. */
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}
/* Two floats as a bf16 pair for an MMA operand (lo in the low half = the lower column of a fragment);
 * one cvt instruction, round to nearest even. */
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *(uint32_t *)&v;
}
/* Elements off, off+1 (off even) of an f32 or bf16 tensor (bf16 rounded as the CPU does). */
__device__ __forceinline__ void store2(void *base, int32_t dtype, int64_t off, float a, float b) {
  if (dtype == F2_BF16)
    *(uint32_t *)((uint16_t *)base + off) = (uint32_t)f2_dev_f32_to_bf16(a) | ((uint32_t)f2_dev_f32_to_bf16(b) << 16);
  else
    *(float2 *)((float *)base + off) = make_float2(a, b);
}

/* lse and D of query rows m0 .. m0+BM-1 of one (batch, head), whose rows sit at lse_bh[t], dvec_bh[t], into
 * sL, sD by cp.async: 0 past T (where the causal mask zeroes P anyway). The dK/dV kernels' staging. */
template <int BM, int NT>
__device__ __forceinline__ void stage_row_stats(float *sL, float *sD, const float *lse_bh, const float *dvec_bh,
                                                int m0, int T) {
  for (int i = threadIdx.x; i < BM; i += NT) {
    const int t = m0 + i;
    cp_async4(sL + i, lse_bh + (t < T ? t : 0), t < T);
    cp_async4(sD + i, dvec_bh + (t < T ? t : 0), t < T);
  }
}

/* ---------------------------------------------------------------- host side */

inline const uint16_t *u16(const f2_tensor *t) { return (const uint16_t *)t->data; }

/* Opts a kernel into more than 48 KiB of dynamic shared memory (once per kernel). */
template <typename K>
int smem_opt_in(K kernel, size_t bytes, bool &done) {
  if (!done && bytes > 48 * 1024) {
    F2_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
  }
  done = true;
  return F2_OK;
}

/* attention_sm90.cu: whether this GPU runs the sm_90a kernels (compute capability 9.0 and the binary
 * holds them: checked once per device by a probe kernel, never while a graph is being captured, when
 * it answers false). sm90_dkdv: the dK/dV kernel for head dim 64, variant = a tile shape (kSm90Kv of them;
 * out of range, the last). */
bool sm90_available();
constexpr int kSm90Kv = 2;

int sm90_dkdv(int variant, const bwd_args &a);

}  // namespace f2attn
