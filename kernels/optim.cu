/* optim.cu — fused AdamW over a contiguous fp32 parameter (one pass: read p, m, v, g; write p, m, v),
 * with its scalars from the host (f2_adamw_step) or from device memory (f2_adamw_step_dev, replayable in
 * a CUDA graph), and the deterministic sum of squares behind global-norm clipping (a fixed tree, no
 * atomics). Both run over the whole flat parameter buffer every step, so both are bandwidth kernels:
 * 16-byte loads and stores when the pointers allow it. AdamW does the float operations of the CPU
 * reference in runtime/optim.c in the same order, rounded one by one (no fused multiply-adds), so CPU
 * and GPU give the same bits. */
#include "f2_cuda.cuh"

namespace {
constexpr int kThreads = 256;

/* ---------------------------------------------------------------- AdamW */

struct Scalars {
  float lr, beta1, beta2, eps, decay, bc1, bc2, grad_scale;
};

/* adamw_update of runtime/optim.c, operation for operation. */
__device__ __forceinline__ void update(float &p, float &m, float &v, float g, const Scalars &s) {
  float gi = __fmul_rn(g, s.grad_scale);
  float mi = __fadd_rn(__fmul_rn(s.beta1, m), __fmul_rn(__fsub_rn(1.0f, s.beta1), gi));
  float vi = __fadd_rn(__fmul_rn(s.beta2, v), __fmul_rn(__fmul_rn(__fsub_rn(1.0f, s.beta2), gi), gi));
  m = mi;
  v = vi;
  float step = __fdiv_rn(__fmul_rn(s.lr, __fdiv_rn(mi, s.bc1)), __fadd_rn(__fsqrt_rn(__fdiv_rn(vi, s.bc2)), s.eps));
  p = __fsub_rn(__fmul_rn(p, s.decay), step);
}

/* The scalars of f2_adamw_step_dev from hparams and sumsq; false when sumsq is not finite (no update). */
__device__ __forceinline__ bool device_scalars(const float *__restrict__ h, const float *__restrict__ sumsq,
                                               Scalars &s) {
  float ss = __ldg(sumsq);
  if (!isfinite(ss)) return false;
  float norm = __fsqrt_rn(ss), max_norm = __ldg(h + F2_ADAMW_MAX_NORM);
  s.lr = __ldg(h + F2_ADAMW_LR);
  s.beta1 = __ldg(h + F2_ADAMW_BETA1);
  s.beta2 = __ldg(h + F2_ADAMW_BETA2);
  s.eps = __ldg(h + F2_ADAMW_EPS);
  s.decay = __fsub_rn(1.0f, __fmul_rn(s.lr, __ldg(h + F2_ADAMW_WEIGHT_DECAY)));
  s.bc1 = __ldg(h + F2_ADAMW_BC1);
  s.bc2 = __ldg(h + F2_ADAMW_BC2);
  s.grad_scale = max_norm > 0.0f && norm > max_norm ? __fdiv_rn(max_norm, norm) : 1.0f;
  return true;
}

__device__ __forceinline__ float grad_at(const float *g, int64_t i) { return g[i]; }
__device__ __forceinline__ float grad_at(const uint16_t *g, int64_t i) { return f2_dev_bf16_to_f32(g[i]); }
/* Gradients 4i .. 4i+3 in one load (16 bytes of f32, 8 of bf16). */
__device__ __forceinline__ float4 grad4_at(const float *g, int64_t i) { return __ldg((const float4 *)g + i); }
__device__ __forceinline__ float4 grad4_at(const uint16_t *g, int64_t i) {
  uint2 u = __ldg((const uint2 *)g + i);
  return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                     __uint_as_float(u.y & 0xffff0000u));
}

/* kDev: scalars from h and sumsq, else s. kVec: p, m, v 16-byte aligned and g aligned to its 4-element
 * load; the n % 4 elements past the last whole vector go one by one. */
template <typename G, bool kDev, bool kVec>
__global__ void __launch_bounds__(kThreads) adamw_kernel(float *__restrict__ p, float *__restrict__ m,
                                                         float *__restrict__ v, const G *__restrict__ g, int64_t n,
                                                         Scalars s, const float *__restrict__ h,
                                                         const float *__restrict__ sumsq) {
  if (kDev && !device_scalars(h, sumsq, s)) return;
  const int64_t first = blockIdx.x * (int64_t)kThreads + threadIdx.x, stride = (int64_t)gridDim.x * kThreads;
  int64_t done = 0;
  if (kVec) {
    const int64_t n4 = n / 4;
    float4 *p4 = (float4 *)p, *m4 = (float4 *)m, *v4 = (float4 *)v;
    for (int64_t i = first; i < n4; i += stride) {
      float4 P = p4[i], M = m4[i], V = v4[i], gg = grad4_at(g, i);
      update(P.x, M.x, V.x, gg.x, s);
      update(P.y, M.y, V.y, gg.y, s);
      update(P.z, M.z, V.z, gg.z, s);
      update(P.w, M.w, V.w, gg.w, s);
      p4[i] = P;
      m4[i] = M;
      v4[i] = V;
    }
    done = n4 * 4;
  }
  for (int64_t i = done + first; i < n; i += stride) update(p[i], m[i], v[i], grad_at(g, i), s);
}

bool aligned(const void *ptr, uintptr_t bytes) { return (uintptr_t)ptr % bytes == 0; }

template <typename G, bool kDev>
int launch_adamw(f2_tensor *p, f2_tensor *m, f2_tensor *v, const f2_tensor *g, const Scalars &s, const float *h,
                 const float *sumsq) {
  const int64_t n = f2_tensor_numel(p);
  if (n == 0) return F2_OK;
  const bool vec = aligned(p->data, 16) && aligned(m->data, 16) && aligned(v->data, 16) &&
                   aligned(g->data, 4 * sizeof(G));
  /* One 4-element vector (or element) per thread and enough blocks for all of them: the loads of
   * different warps overlap, which is what a bandwidth-bound kernel needs. */
  const unsigned blocks = f2_blocks(vec ? (n + 3) / 4 : n, kThreads);
  float *P = (float *)p->data, *M = (float *)m->data, *V = (float *)v->data;
  const G *gg = (const G *)g->data;
  if (vec) adamw_kernel<G, kDev, true><<<blocks, kThreads, 0, f2_cuda_stream()>>>(P, M, V, gg, n, s, h, sumsq);
  else adamw_kernel<G, kDev, false><<<blocks, kThreads, 0, f2_cuda_stream()>>>(P, M, V, gg, n, s, h, sumsq);
  F2_CUDA_CHECK_LAUNCH("adamw_kernel");
  return F2_OK;
}

template <bool kDev>
int adamw(f2_tensor *p, f2_tensor *m, f2_tensor *v, const f2_tensor *g, const Scalars &s, const float *h,
          const float *sumsq) {
  return g->dtype == F2_F32 ? launch_adamw<float, kDev>(p, m, v, g, s, h, sumsq)
                            : launch_adamw<uint16_t, kDev>(p, m, v, g, s, h, sumsq);
}

/* ---------------------------------------------------------------- sum of squares
 * Tensor t gets blocks_t blocks (by its size, at most kMaxBlocks); thread j of its block b adds the
 * squares of 4-element chunks b*kThreads + j + k*(blocks_t*kThreads), k = 0, 1, ..., into four
 * accumulators by k % 4; a fixed tree sums the block into one partial; one block sums the partials of
 * all tensors in order. The chunking depends only on the sizes, and a chunk gives the same float
 * whether it is read as one vector or element by element, so the result is the same bits for the same
 * values wherever they lie in memory. Up to kBatch tensors go in one launch (their descriptors are
 * kernel arguments), so many small gradients cost few launches. */
constexpr int kMaxBlocks = 1024;
constexpr int64_t kChunksPerThread = 4;   /* a tensor gets another block only for this much work per thread */
constexpr int kBatch = 32;

struct SumSqTensor {
  const void *data;
  int64_t n;
  int64_t first_block;   /* of this launch */
  int32_t blocks;
  int32_t flags;         /* 1: bf16 (else f32); 2: aligned for vector loads */
};
struct SumSqBatch {
  SumSqTensor t[kBatch];
  int32_t count;
};

/* Chunk c (elements 4c .. 4c+3; those at or past n count as 0) as four floats, element by element. */
template <typename T>
__device__ __forceinline__ float4 chunk(const T *x, int64_t c, int64_t n) {
  float4 r;
  r.x = 4 * c < n ? grad_at(x, 4 * c) : 0.0f;
  r.y = 4 * c + 1 < n ? grad_at(x, 4 * c + 1) : 0.0f;
  r.z = 4 * c + 2 < n ? grad_at(x, 4 * c + 2) : 0.0f;
  r.w = 4 * c + 3 < n ? grad_at(x, 4 * c + 3) : 0.0f;
  return r;
}
__device__ __forceinline__ float squares(float4 a) {
  return __fmaf_rn(a.w, a.w, __fmaf_rn(a.z, a.z, __fmaf_rn(a.y, a.y, __fmul_rn(a.x, a.x))));
}

/* Chunk c + k*stride goes to acc[k % 4], in increasing k, on both paths: the vector path only loads
 * whole chunks 4 at a time (4 loads in flight per thread) and leaves the rest to the element path. */
template <typename T>
__device__ float thread_sum(const T *x, int64_t n, int64_t local_block, int64_t blocks, bool vec) {
  const int64_t chunks = (n + 3) / 4, whole = n / 4, stride = blocks * kThreads;
  int64_t c = local_block * kThreads + threadIdx.x;
  float acc[4] = {0, 0, 0, 0};
  if (vec) {
    for (; c + 3 * stride < whole; c += 4 * stride) {
      float4 a[4];
#pragma unroll
      for (int u = 0; u < 4; u++) a[u] = grad4_at(x, c + u * stride);
#pragma unroll
      for (int u = 0; u < 4; u++) acc[u] = __fadd_rn(acc[u], squares(a[u]));
    }
  }
  for (; c + 3 * stride < chunks; c += 4 * stride) {
#pragma unroll
    for (int u = 0; u < 4; u++) acc[u] = __fadd_rn(acc[u], squares(chunk(x, c + u * stride, n)));
  }
#pragma unroll
  for (int u = 0; u < 4; u++)
    if (c + u * stride < chunks) acc[u] = __fadd_rn(acc[u], squares(chunk(x, c + u * stride, n)));
  return __fadd_rn(__fadd_rn(acc[0], acc[1]), __fadd_rn(acc[2], acc[3]));
}

/* Fixed tree over the block: shuffles within each warp, then the first warp over the warp sums.
 * Valid in thread 0. */
__device__ float block_sum(float v) {
  __shared__ float warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_down_sync(0xffffffffu, v, o));
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_down_sync(0xffffffffu, v, o));
  }
  return v;
}

__global__ void __launch_bounds__(kThreads) sum_squares_partial(float *__restrict__ partial, SumSqBatch batch) {
  int j = 0;
  while (j + 1 < batch.count && blockIdx.x >= batch.t[j + 1].first_block) j++;
  const SumSqTensor &t = batch.t[j];
  const int64_t local = blockIdx.x - t.first_block;
  const bool vec = t.flags & 2;
  float acc = t.flags & 1 ? thread_sum((const uint16_t *)t.data, t.n, local, t.blocks, vec)
                          : thread_sum((const float *)t.data, t.n, local, t.blocks, vec);
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void __launch_bounds__(kThreads) sum_partials(float *out, const float *__restrict__ partial, int64_t n) {
  float acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) acc = __fadd_rn(acc, partial[i]);
  acc = block_sum(acc);
  if (threadIdx.x == 0) *out = acc;
}

int32_t blocks_for(int64_t n) {
  int64_t chunks = (n + 3) / 4, b = (chunks + kThreads * kChunksPerThread - 1) / (kThreads * kChunksPerThread);
  return (int32_t)(b < 1 ? 1 : b > kMaxBlocks ? kMaxBlocks : b);
}

/* Partial sums, grown when a call needs more and kept (no allocation in a steady-state step). A
 * smaller old buffer is never freed: a CUDA graph captured earlier may still write it on replay, so it
 * must not be handed to anyone else (it is at most half the size of the new one). */
float *scratch;
int64_t scratch_len;
}  // namespace

extern "C" int f2_cuda_adamw_step(f2_tensor *p, f2_tensor *m, f2_tensor *v, const f2_tensor *g,
                                  const f2_adamw_config *c) {
  Scalars s = {c->lr, c->beta1, c->beta2, c->eps, 1.0f - c->lr * c->weight_decay,
               1.0f - powf(c->beta1, (float)c->step), 1.0f - powf(c->beta2, (float)c->step), c->grad_scale};
  return adamw<false>(p, m, v, g, s, nullptr, nullptr);
}

extern "C" int f2_cuda_adamw_step_dev(f2_tensor *p, f2_tensor *m, f2_tensor *v, const f2_tensor *g,
                                      const f2_tensor *hparams, const f2_tensor *sumsq) {
  return adamw<true>(p, m, v, g, Scalars{}, (const float *)hparams->data, (const float *)sumsq->data);
}

extern "C" int f2_cuda_sum_squares(f2_tensor *out, const f2_tensor *const *tensors, int32_t n) {
  int64_t need = 1;
  for (int32_t i = 0; i < n; i++) need += blocks_for(f2_tensor_numel(tensors[i]));
  if (need > scratch_len) {
    int64_t len = need > 2 * scratch_len ? need : 2 * scratch_len;
    float *grown = nullptr;
    F2_TRY(f2_cuda_alloc((void **)&grown, (size_t)len * sizeof(float)));
    scratch = grown; /* the old buffer is kept, see above */
    scratch_len = len;
  }
  cudaStream_t stream = f2_cuda_stream();
  int64_t partials = 0;
  for (int32_t i0 = 0; i0 < n; i0 += kBatch) {
    SumSqBatch batch = {};
    batch.count = n - i0 < kBatch ? n - i0 : kBatch;
    int64_t blocks = 0;
    for (int32_t j = 0; j < batch.count; j++) {
      const f2_tensor *t = tensors[i0 + j];
      SumSqTensor &d = batch.t[j];
      const int bf16 = t->dtype == F2_BF16;
      d.data = t->data;
      d.n = f2_tensor_numel(t);
      d.first_block = blocks;
      d.blocks = blocks_for(d.n);
      d.flags = bf16 | (aligned(t->data, bf16 ? 8 : 16) ? 2 : 0);
      blocks += d.blocks;
    }
    sum_squares_partial<<<(unsigned)blocks, kThreads, 0, stream>>>(scratch + partials, batch);
    F2_CUDA_CHECK_LAUNCH("sum_squares_partial");
    partials += blocks;
  }
  sum_partials<<<1, kThreads, 0, stream>>>((float *)out->data, scratch, partials);
  F2_CUDA_CHECK_LAUNCH("sum_partials");
  return F2_OK;
}
