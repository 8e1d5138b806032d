/* optim.cu — fused AdamW over a contiguous fp32 parameter (one pass: read p, m, v, g; write p, m, v)
 * and the deterministic sum of squares behind global-norm clipping (fixed two-level tree, no atomics).
 * Matches the CPU reference in runtime/optim.c to fp32 rounding (the GPU may fuse multiply-adds). */
#include "f2_cuda.cuh"

namespace {
template <typename G>
__device__ __forceinline__ float load_grad(const G *g, int64_t i);
template <>
__device__ __forceinline__ float load_grad<float>(const float *g, int64_t i) { return g[i]; }
template <>
__device__ __forceinline__ float load_grad<__nv_bfloat16>(const __nv_bfloat16 *g, int64_t i) {
  return __bfloat162float(g[i]);
}

template <typename G>
__global__ void adamw_kernel(float *__restrict__ p, float *__restrict__ m, float *__restrict__ v,
                             const G *__restrict__ g, int64_t n, f2_adamw_config c, float bc1, float bc2) {
  const float decay = 1.0f - c.lr * c.weight_decay;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float gi = load_grad(g, i) * c.grad_scale;
    float mi = c.beta1 * m[i] + (1.0f - c.beta1) * gi;
    float vi = c.beta2 * v[i] + (1.0f - c.beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - c.lr * (mi / bc1) / (sqrtf(vi / bc2) + c.eps);
  }
}

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;   /* partial sums per tensor, fixed so the tree is the same every run */

/* Block b of tensor t sums squares of a fixed, strided subset, then reduces in shared memory. */
template <typename T>
__global__ void sum_squares_partial(float *partial, const T *x, int64_t n) {
  __shared__ float buf[kThreads];
  float acc = 0;
  for (int64_t i = blockIdx.x * (int64_t)kThreads + threadIdx.x; i < n; i += (int64_t)gridDim.x * kThreads) {
    float xi = load_grad(x, i);
    acc += xi * xi;
  }
  buf[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}

__global__ void sum_partials(float *out, const float *partial, int n) {
  __shared__ float buf[kThreads];
  float acc = 0;
  for (int i = threadIdx.x; i < n; i += kThreads) acc += partial[i];
  buf[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = buf[0];
}

/* Scratch for partial sums, grown once and kept (no allocation in a steady-state step). */
float *scratch;
int64_t scratch_len;
}  // namespace

extern "C" int f2_cuda_adamw_step(f2_tensor *p, f2_tensor *m, f2_tensor *v, const f2_tensor *g,
                                  const f2_adamw_config *c) {
  int64_t n = f2_tensor_numel(p);
  if (n == 0) return F2_OK;
  float bc1 = 1.0f - powf(c->beta1, (float)c->step), bc2 = 1.0f - powf(c->beta2, (float)c->step);
  unsigned blocks = f2_blocks(n, kThreads);
  if (blocks > 4096) blocks = 4096;
  if (g->dtype == F2_F32)
    adamw_kernel<<<blocks, kThreads, 0, f2_cuda_stream()>>>((float *)p->data, (float *)m->data, (float *)v->data,
                                                             (const float *)g->data, n, *c, bc1, bc2);
  else
    adamw_kernel<<<blocks, kThreads, 0, f2_cuda_stream()>>>((float *)p->data, (float *)m->data, (float *)v->data,
                                                             (const __nv_bfloat16 *)g->data, n, *c, bc1, bc2);
  F2_CUDA_CHECK_LAUNCH("adamw_kernel");
  return F2_OK;
}

extern "C" int f2_cuda_sum_squares(f2_tensor *out, const f2_tensor *const *tensors, int32_t n) {
  int64_t need = (int64_t)n * kMaxBlocks;
  if (need < 1) need = 1;
  if (need > scratch_len) {
    if (scratch) f2_cuda_free(scratch);
    scratch = nullptr;
    scratch_len = 0;
    F2_TRY(f2_cuda_alloc((void **)&scratch, (size_t)need * sizeof(float)));
    scratch_len = need;
  }
  /* Every tensor writes all kMaxBlocks slots (empty blocks write 0), so the final sum has a fixed shape. */
  for (int32_t i = 0; i < n; i++) {
    const f2_tensor *t = tensors[i];
    int64_t len = f2_tensor_numel(t);
    if (t->dtype == F2_F32)
      sum_squares_partial<<<kMaxBlocks, kThreads, 0, f2_cuda_stream()>>>(scratch + (int64_t)i * kMaxBlocks,
                                                                         (const float *)t->data, len);
    else
      sum_squares_partial<<<kMaxBlocks, kThreads, 0, f2_cuda_stream()>>>(
          scratch + (int64_t)i * kMaxBlocks, (const __nv_bfloat16 *)t->data, len);
    F2_CUDA_CHECK_LAUNCH("sum_squares_partial");
  }
  sum_partials<<<1, kThreads, 0, f2_cuda_stream()>>>((float *)out->data, scratch, n * kMaxBlocks);
  F2_CUDA_CHECK_LAUNCH("sum_partials");
  return F2_OK;
}
