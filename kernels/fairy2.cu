/* fairy2.cu — Fairy2i quantization on the GPU: split, rebuild, the fused quantize-and-rebuild, and the
 * A8 activation fake-quant. fp32 R in; R_hat f32 or bf16 out; sums in double in the canonical shape of
 * runtime/f2_fairy2.h, so codes, scales and R_hat are the bits of the CPU reference (runtime/fairy2.c).
 *
 * Per-tensor scales (the default) take T + 1 launches per batch of layers: launch t reduces stage t
 * (every entry replays stages < t from the scales already known) and its last block to finish turns the
 * 128 block sums into the stage's scales; the final launch writes codes and R_hat. Stage t cannot start
 * before stage t-1's scales exist, and those are sums over the whole tensor, so T reading passes plus
 * one writing pass is the fewest. Per-row and per-group scales need no grid-wide sum: one launch, a warp
 * per scale group, its T + 1 passes over the group served from L1/L2. No atomics touch a sum: block
 * partial sums land in fixed slots and are reduced in a fixed order (one counter only elects the
 * block that does it). Layers of a batch run in the same launches (blockIdx.y = layer). */
#include "f2_cuda.cuh"
#include "../runtime/f2_fairy2.h"

#include <math.h>

namespace {

enum { MAX_LAYERS = 64, MAX_CALL_LAYERS = 64, GROUP_WARPS = 8 };

struct Layer {
  const float *r;
  void *r_hat;           /* NULL: not written */
  uint8_t *codes;        /* NULL: not written */
  float *scales;         /* (T, 4, groups) */
  uint32_t n, m;         /* complex rows and columns: R is (2n x 2m) */
  uint32_t groups, per_row, width;   /* scale groups; per row (0: per tensor); columns per group */
  int32_t r_hat_bf16;
};

struct Batch {
  Layer layer[MAX_LAYERS];
  int32_t stages;
  double *partials;                /* [MAX_LAYERS][F2Q_BLOCKS][F2Q_ACCS] */
  unsigned *counters;              /* [MAX_LAYERS], zero between launches */
  unsigned long long *first_bad;   /* [layers of this batch] or NULL */
};

/* Device workspace, allocated once (fixed size: it does not grow with T or the layers). */
struct Workspace {
  double *partials = nullptr;
  unsigned *counters = nullptr;
  unsigned long long *first_bad = nullptr;
};
Workspace workspace;

int workspace_ready() {
  if (workspace.partials) return F2_OK;
  void *p = nullptr, *c = nullptr, *b = nullptr;
  F2_TRY(f2_cuda_alloc(&p, sizeof(double) * MAX_LAYERS * F2Q_BLOCKS * F2Q_ACCS));
  F2_TRY(f2_cuda_alloc(&c, sizeof(unsigned) * MAX_LAYERS));
  F2_TRY(f2_cuda_alloc(&b, sizeof(unsigned long long) * MAX_CALL_LAYERS));
  F2_CUDA_CHECK(cudaMemsetAsync(c, 0, sizeof(unsigned) * MAX_LAYERS, f2_cuda_stream()));
  workspace.partials = (double *)p;
  workspace.counters = (unsigned *)c;
  workspace.first_bad = (unsigned long long *)b;
  return F2_OK;
}

struct Entry {
  float r11, r12, r21, r22;
};

__device__ __forceinline__ Entry load_entry(const Layer &L, uint32_t i, uint32_t j) {
  const float *top = L.r + (int64_t)i * 2 * L.m, *bottom = L.r + ((int64_t)L.n + i) * 2 * L.m;
  return Entry{__ldg(top + j), __ldg(top + L.m + j), __ldg(bottom + j), __ldg(bottom + L.m + j)};
}

/* Records the flat index in R of the entry's first non-finite element (the smallest over the layer
 * wins: atomicMin on an index, not on a sum). Returns 1 when there was one. */
__device__ __forceinline__ int note_nonfinite(const Layer &L, Entry x, uint32_t i, uint32_t j,
                                              unsigned long long *first_bad) {
  if (isfinite(x.r11) && isfinite(x.r12) && isfinite(x.r21) && isfinite(x.r22)) return 0;
  if (first_bad) {   /* the four in R's flat order: (i, j), (i, m+j), (n+i, j), (n+i, m+j) */
    int which = !isfinite(x.r11) ? 0 : !isfinite(x.r12) ? 1 : !isfinite(x.r21) ? 2 : 3;
    uint64_t row = which < 2 ? i : (uint64_t)L.n + i, col = which & 1 ? (uint64_t)L.m + j : j;
    atomicMin(first_bad, (unsigned long long)(row * 2 * L.m + col));
  }
  return 1;
}

/* The U and W residuals of an entry after stages [0, t) with scales sc[(tt*4 + c) * stride]. */
__device__ __forceinline__ f2q_uw residual(Entry x, int t, const float *sc, uint32_t stride) {
  f2q_uw v = f2q_split(x.r11, x.r12, x.r21, x.r22);
  float hat[4] = {0, 0, 0, 0};
  for (int tt = 0; tt < t; tt++) {
    const float *s = sc + (size_t)tt * 4 * stride;
    f2q_stage(&v.u_re, &v.u_im, &hat[0], &hat[1], s[0], s[stride]);
    f2q_stage(&v.w_re, &v.w_im, &hat[2], &hat[3], s[2 * stride], s[3 * stride]);
  }
  return v;
}

/* Every stage of one entry; codes and R_hat written where wanted. */
__device__ __forceinline__ void write_entry(const Layer &L, Entry x, uint32_t i, uint32_t j, int stages,
                                            const float *sc, uint32_t stride) {
  f2q_uw v = f2q_split(x.r11, x.r12, x.r21, x.r22), hat = {0, 0, 0, 0};
  size_t plane = (size_t)L.n * L.m, at = (size_t)i * L.m + j;
  for (int t = 0; t < stages; t++) {
    const float *s = sc + (size_t)t * 4 * stride;
    int ku = f2q_stage(&v.u_re, &v.u_im, &hat.u_re, &hat.u_im, s[0], s[stride]);
    int kw = f2q_stage(&v.w_re, &v.w_im, &hat.w_re, &hat.w_im, s[2 * stride], s[3 * stride]);
    if (L.codes) {
      L.codes[2 * t * plane + at] = (uint8_t)ku;
      L.codes[(2 * t + 1) * plane + at] = (uint8_t)kw;
    }
  }
  if (!L.r_hat) return;
  float q[4];
  f2q_rebuild(&q[0], &q[1], &q[2], &q[3], hat);
  size_t cols = 2 * (size_t)L.m, top = (size_t)i * cols + j, bottom = ((size_t)L.n + i) * cols + j;
  size_t where[4] = {top, top + L.m, bottom, bottom + L.m};
  for (int e = 0; e < 4; e++) {
    if (L.r_hat_bf16) ((uint16_t *)L.r_hat)[where[e]] = f2_dev_f32_to_bf16(q[e]);
    else ((float *)L.r_hat)[where[e]] = q[e];
  }
}

/* The canonical block tree over count (<= blockDim.x) lanes of F2Q_ACCS doubles in sm: a[i] += a[i+s]. */
__device__ __forceinline__ void block_tree(double (*sm)[F2Q_LANES], int count) {
  for (int s = count / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s)
      for (int a = 0; a < F2Q_ACCS; a++) sm[a][threadIdx.x] += sm[a][threadIdx.x + s];
    __syncthreads();
  }
}

/* Stage t of per-tensor scales: blockIdx.y = layer, F2Q_BLOCKS blocks of F2Q_LANES lanes each. */
__global__ void __launch_bounds__(F2Q_LANES) reduce_tensor_kernel(Batch b, int t) {
  extern __shared__ float known[];   /* the scales of stages < t, 4 per stage */
  __shared__ double sm[F2Q_ACCS][F2Q_LANES];
  __shared__ int last;
  const Layer &L = b.layer[blockIdx.y];
  for (int q = threadIdx.x; q < 4 * t; q += blockDim.x) known[q] = L.scales[q];
  __syncthreads();
  unsigned long long *first_bad = t == 0 && b.first_bad ? b.first_bad + blockIdx.y : nullptr;
  double acc[F2Q_ACCS];
  for (int a = 0; a < F2Q_ACCS; a++) acc[a] = 0;
  const uint32_t entries = L.n * L.m, lanes = F2Q_LANES * F2Q_BLOCKS;
  for (uint32_t e = blockIdx.x * F2Q_LANES + threadIdx.x; e < entries; e += lanes) {
    uint32_t i = e / L.m, j = e - i * L.m;
    Entry x = load_entry(L, i, j);
    acc[F2Q_NONFINITE] += note_nonfinite(L, x, i, j, first_bad);
    f2q_uw v = residual(x, t, known, 1);
    f2q_accumulate(acc, F2Q_SUM_RE_U, f2q_code(v.u_re, v.u_im), v.u_re, v.u_im);
    f2q_accumulate(acc, F2Q_SUM_RE_W, f2q_code(v.w_re, v.w_im), v.w_re, v.w_im);
  }
  for (int a = 0; a < F2Q_ACCS; a++) sm[a][threadIdx.x] = acc[a];
  __syncthreads();
  block_tree(sm, F2Q_LANES);
  double *slots = b.partials + (size_t)blockIdx.y * F2Q_BLOCKS * F2Q_ACCS;
  if (threadIdx.x == 0) {
    for (int a = 0; a < F2Q_ACCS; a++) slots[blockIdx.x * F2Q_ACCS + a] = sm[a][0];
    __threadfence();   /* the partials are visible before the counter says so */
    last = atomicAdd(&b.counters[blockIdx.y], 1u) == F2Q_BLOCKS - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  /* The last block: the canonical tree over the block sums, in block order. */
  if (threadIdx.x < F2Q_BLOCKS)
    for (int a = 0; a < F2Q_ACCS; a++) sm[a][threadIdx.x] = __ldcg(&slots[threadIdx.x * F2Q_ACCS + a]);
  __syncthreads();
  block_tree(sm, F2Q_BLOCKS);
  if (threadIdx.x == 0) {
    double total[F2Q_ACCS];
    for (int a = 0; a < F2Q_ACCS; a++) total[a] = sm[a][0];
    float four[4];
    f2q_scales_from(four, total, (double)entries);
    for (int c = 0; c < 4; c++) L.scales[t * 4 + c] = four[c];
    b.counters[blockIdx.y] = 0;   /* ready for the next launch */
  }
}

/* The writing pass of per-tensor scales: every stage of every entry, codes and R_hat out. */
__global__ void __launch_bounds__(F2_THREADS) write_tensor_kernel(Batch b) {
  extern __shared__ float known[];
  const Layer &L = b.layer[blockIdx.y];
  for (int q = threadIdx.x; q < 4 * b.stages; q += blockDim.x) known[q] = L.scales[q];
  __syncthreads();
  const uint32_t entries = L.n * L.m;
  for (uint32_t e = blockIdx.x * blockDim.x + threadIdx.x; e < entries; e += gridDim.x * blockDim.x) {
    uint32_t i = e / L.m, j = e - i * L.m;
    write_entry(L, load_entry(L, i, j), i, j, b.stages, known, 1);
  }
}

/* Per-row and per-group scales: a warp per scale group (row i, columns [j0, j1)) does all its passes.
 * Lane l sums the group's entries l, l+32, ...; the warp tree a[i] += a[i+s] (s = 16..1) is what
 * __shfl_down computes. Stage t's scales go to L.scales by lane 0 and are read back by all lanes. */
__global__ void __launch_bounds__(GROUP_WARPS * 32) group_kernel(Batch b) {
  const Layer &L = b.layer[blockIdx.y];
  const uint32_t g = blockIdx.x * GROUP_WARPS + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (g >= L.groups) return;   /* whole warps leave together */
  const uint32_t i = g / L.per_row, j0 = (g % L.per_row) * L.width;
  const uint32_t j1 = j0 + L.width < L.m ? j0 + L.width : L.m, len = j1 - j0;
  unsigned long long *first_bad = b.first_bad ? b.first_bad + blockIdx.y : nullptr;
  float *sc = L.scales + g;   /* scale (t, c) of this group at sc[(t*4 + c) * groups] */
  for (int t = 0; t < b.stages; t++) {
    double acc[F2Q_ACCS];
    for (int a = 0; a < F2Q_ACCS; a++) acc[a] = 0;
    for (uint32_t c = lane; c < len; c += 32) {
      Entry x = load_entry(L, i, j0 + c);
      acc[F2Q_NONFINITE] += note_nonfinite(L, x, i, j0 + c, t == 0 ? first_bad : nullptr);
      f2q_uw v = residual(x, t, sc, L.groups);
      f2q_accumulate(acc, F2Q_SUM_RE_U, f2q_code(v.u_re, v.u_im), v.u_re, v.u_im);
      f2q_accumulate(acc, F2Q_SUM_RE_W, f2q_code(v.w_re, v.w_im), v.w_re, v.w_im);
    }
    for (int s = F2Q_GROUP_LANES / 2; s > 0; s >>= 1)
      for (int a = 0; a < F2Q_ACCS; a++) acc[a] += __shfl_down_sync(0xffffffffu, acc[a], s);
    if (lane == 0) {
      float four[4];
      f2q_scales_from(four, acc, (double)len);
      for (int c = 0; c < 4; c++) sc[(size_t)(t * 4 + c) * L.groups] = four[c];
    }
    __syncwarp();   /* lane 0's scales are visible to the warp */
  }
  for (uint32_t c = lane; c < len; c += 32) write_entry(L, load_entry(L, i, j0 + c), i, j0 + c, b.stages, sc, L.groups);
}

__global__ void split_kernel(float *u_re, float *u_im, float *w_re, float *w_im, const float *r, uint32_t n,
                             uint32_t m) {
  for (uint32_t e = blockIdx.x * blockDim.x + threadIdx.x; e < n * m; e += gridDim.x * blockDim.x) {
    uint32_t i = e / m, j = e - i * m;
    const float *top = r + (size_t)i * 2 * m, *bottom = r + ((size_t)n + i) * 2 * m;
    f2q_uw v = f2q_split(top[j], top[m + j], bottom[j], bottom[m + j]);
    u_re[e] = v.u_re, u_im[e] = v.u_im, w_re[e] = v.w_re, w_im[e] = v.w_im;
  }
}

__global__ void rebuild_kernel(float *r, const float *u_re, const float *u_im, const float *w_re, const float *w_im,
                               uint32_t n, uint32_t m) {
  for (uint32_t e = blockIdx.x * blockDim.x + threadIdx.x; e < n * m; e += gridDim.x * blockDim.x) {
    uint32_t i = e / m, j = e - i * m;
    float *top = r + (size_t)i * 2 * m, *bottom = r + ((size_t)n + i) * 2 * m;
    f2q_uw v = {u_re[e], u_im[e], w_re[e], w_im[e]};
    f2q_rebuild(&top[j], &top[m + j], &bottom[j], &bottom[m + j], v);
  }
}

/* One block per row: absmax (max is exact in any order), then the grid of s = 127 / absmax. */
__global__ void __launch_bounds__(F2_THREADS) fake_quant_kernel(void *out, const void *x, int bf16, int64_t d) {
  __shared__ float partial[F2_THREADS];
  int64_t base = (int64_t)blockIdx.x * d;
  float absmax = 0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    float v = bf16 ? f2_dev_bf16_to_f32(((const uint16_t *)x)[base + j]) : ((const float *)x)[base + j];
    absmax = fmaxf(absmax, fabsf(v));
  }
  partial[threadIdx.x] = absmax;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) partial[threadIdx.x] = fmaxf(partial[threadIdx.x], partial[threadIdx.x + s]);
    __syncthreads();
  }
  float scale = 127.0f / fmaxf(partial[0], 1e-5f);
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
    float v = bf16 ? f2_dev_bf16_to_f32(((const uint16_t *)x)[base + j]) : ((const float *)x)[base + j];
    float q = __fdiv_rn(fminf(fmaxf(rintf(__fmul_rn(v, scale)), -128.0f), 127.0f), scale);
    if (bf16) ((uint16_t *)out)[base + j] = f2_dev_f32_to_bf16(q);
    else ((float *)out)[base + j] = q;
  }
}

int check_sizes(const f2_tensor *r) {
  if (r->shape[0] / 2 * (r->shape[1] / 2) >= (int64_t)1 << 31)
    return F2_FAIL(F2_ERR_UNSUPPORTED, "fairy2 on a GPU: R of %lldx%lld has more than 2^31 complex entries",
                   (long long)r->shape[0], (long long)r->shape[1]);
  return F2_OK;
}

}  // namespace

extern "C" int f2_cuda_fairy2_split(f2_tensor *u_re, f2_tensor *u_im, f2_tensor *w_re, f2_tensor *w_im,
                                    const f2_tensor *r) {
  F2_TRY(check_sizes(r));
  uint32_t n = (uint32_t)(r->shape[0] / 2), m = (uint32_t)(r->shape[1] / 2);
  split_kernel<<<f2_blocks((int64_t)n * m, F2_THREADS), F2_THREADS, 0, f2_cuda_stream()>>>(
      (float *)u_re->data, (float *)u_im->data, (float *)w_re->data, (float *)w_im->data, (const float *)r->data, n, m);
  F2_CUDA_CHECK_LAUNCH("fairy2 split");
  return F2_OK;
}

extern "C" int f2_cuda_fairy2_rebuild(f2_tensor *r, const f2_tensor *u_re, const f2_tensor *u_im, const f2_tensor *w_re,
                                      const f2_tensor *w_im) {
  F2_TRY(check_sizes(r));
  uint32_t n = (uint32_t)(r->shape[0] / 2), m = (uint32_t)(r->shape[1] / 2);
  rebuild_kernel<<<f2_blocks((int64_t)n * m, F2_THREADS), F2_THREADS, 0, f2_cuda_stream()>>>(
      (float *)r->data, (const float *)u_re->data, (const float *)u_im->data, (const float *)w_re->data,
      (const float *)w_im->data, n, m);
  F2_CUDA_CHECK_LAUNCH("fairy2 rebuild");
  return F2_OK;
}

extern "C" int f2_cuda_fairy2_quantize(f2_tensor *const *r_hat, f2_tensor *const *scales, f2_tensor *const *codes,
                                       const f2_tensor *const *r, int32_t count, const f2_quant_config *cfg,
                                       int64_t *first_bad) {
  if (count > MAX_CALL_LAYERS)
    return F2_FAIL(F2_ERR_ARG, "fairy2 quantize on a GPU: %d layers in one call, at most %d", (int)count,
                   MAX_CALL_LAYERS);
  const int T = cfg->stages;
  if ((size_t)T * 4 * sizeof(float) > 48 * 1024)
    return F2_FAIL(F2_ERR_UNSUPPORTED, "fairy2 quantize on a GPU: T = %d stages, at most %d", T, 48 * 1024 / 16);
  for (int32_t l = 0; l < count; l++) F2_TRY(check_sizes(r[l]));
  F2_TRY(workspace_ready());
  cudaStream_t stream = f2_cuda_stream();
  /* Finding non-finite input means waiting for the GPU, which a graph capture cannot do: skipped then
   * (the poisoned scales still show it). */
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  F2_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  int check = first_bad && capture == cudaStreamCaptureStatusNone;
  if (check) F2_CUDA_CHECK(cudaMemsetAsync(workspace.first_bad, 0xff, sizeof(unsigned long long) * count, stream));

  /* One batch per MAX_LAYERS layers: fewer, larger launches. Batches sized to a third of L2 (to serve
   * the T re-reads from L2) measured 0.78 / 1.23 ms for T = 1 / 2 over SmolLM2's 210 layers on an H200,
   * one batch per 64 layers 0.60 / 0.90 ms; both are bound by instructions, not DRAM (ncu: ~30% of DRAM
   * bandwidth, ~60% SM throughput). docs/performance.md has the table. */
  for (int32_t c0 = 0, k = 0; c0 < count; c0 += k) {
    k = count - c0 < MAX_LAYERS ? count - c0 : MAX_LAYERS;
    Batch b = {};
    b.stages = T;
    b.partials = workspace.partials;
    b.counters = workspace.counters;
    b.first_bad = check ? workspace.first_bad + c0 : nullptr;
    uint32_t max_entries = 0, max_groups = 0;
    for (int32_t l = 0; l < k; l++) {
      const f2_tensor *R = r[c0 + l], *H = r_hat[c0 + l], *S = scales[c0 + l], *K = codes[c0 + l];
      Layer &L = b.layer[l];
      L.r = (const float *)R->data;
      L.r_hat = H ? H->data : nullptr;
      L.r_hat_bf16 = H && H->dtype == F2_BF16;
      L.codes = K ? (uint8_t *)K->data : nullptr;
      L.scales = (float *)S->data;
      L.n = (uint32_t)(R->shape[0] / 2);
      L.m = (uint32_t)(R->shape[1] / 2);
      L.groups = (uint32_t)S->shape[2];
      L.width = cfg->granularity == F2_FAIRY2_PER_GROUP && (uint32_t)cfg->group_size < L.m ? (uint32_t)cfg->group_size : L.m;
      L.per_row = cfg->granularity == F2_FAIRY2_PER_TENSOR ? 0 : (L.m + L.width - 1) / L.width;
      max_entries = L.n * L.m > max_entries ? L.n * L.m : max_entries;
      max_groups = L.groups > max_groups ? L.groups : max_groups;
    }
    if (cfg->granularity == F2_FAIRY2_PER_TENSOR) {
      for (int t = 0; t < T; t++) {
        reduce_tensor_kernel<<<dim3(F2Q_BLOCKS, k), F2Q_LANES, 4 * t * sizeof(float), stream>>>(b, t);
        F2_CUDA_CHECK_LAUNCH("fairy2 reduce");
      }
      unsigned blocks = f2_blocks(max_entries, F2_THREADS);
      blocks = blocks > 2048 ? 2048 : blocks;
      write_tensor_kernel<<<dim3(blocks, k), F2_THREADS, 4 * T * sizeof(float), stream>>>(b);
      F2_CUDA_CHECK_LAUNCH("fairy2 write");
    } else {
      group_kernel<<<dim3((max_groups + GROUP_WARPS - 1) / GROUP_WARPS, k), GROUP_WARPS * 32, 0, stream>>>(b);
      F2_CUDA_CHECK_LAUNCH("fairy2 grouped quantize");
    }
  }
  if (first_bad) {
    unsigned long long found[MAX_CALL_LAYERS];
    if (check) {
      F2_CUDA_CHECK(cudaMemcpyAsync(found, workspace.first_bad, sizeof(unsigned long long) * count,
                                    cudaMemcpyDeviceToHost, stream));
      F2_CUDA_CHECK(cudaStreamSynchronize(stream));
    }
    for (int32_t l = 0; l < count; l++) first_bad[l] = check && found[l] != ~0ull ? (int64_t)found[l] : -1;
  }
  return F2_OK;
}

extern "C" int f2_cuda_fake_quant_int8(f2_tensor *out, const f2_tensor *x) {
  int64_t d = x->shape[x->ndim - 1], rows = d ? f2_tensor_numel(x) / d : 0;
  if (rows == 0) return F2_OK;
  if (rows > 0x7fffffff) return F2_FAIL(F2_ERR_UNSUPPORTED, "fake quant int8 on a GPU: %lld rows", (long long)rows);
  fake_quant_kernel<<<(unsigned)rows, F2_THREADS, 0, f2_cuda_stream()>>>(out->data, x->data, x->dtype == F2_BF16, d);
  F2_CUDA_CHECK_LAUNCH("fake quant int8");
  return F2_OK;
}
