/* classifier.cu — the LM head fused with softmax cross-entropy on the GPU (f2_lm_head_cross_entropy; CPU
 * reference and argument checks in runtime/classifier.c). Per chunk of rows: logits_c = h_c W^T with
 * cuBLASLt (f2_cuda_matmul; logits in h's dtype, fp32 accumulation), one row kernel (max, sum of exps, loss,
 * then dlogits = (softmax - onehot) * dloss / counted over the logits, in place), then dweight += dlogits_c^T
 * h_c (f32, beta 1) and dh_c = dlogits_c W. Before the chunks a one-block kernel counts the targets that are
 * not ignore_index into device memory, where the row kernels read it: nothing waits for the GPU, so the op
 * can be captured in a CUDA graph. Row losses go to losses (or a scratch [N]) and one block averages them
 * in a fixed order: no float atomics, the same bits on every run. Softmax math is fp32, the loss of a row
 * and the mean in double. */
#include "f2_cuda.cuh"

#include <math.h>

namespace {

constexpr float kLog2e = 1.4426950408889634f;
/* Threads of a row block (a row of V = 49152 bf16 is 12 16-byte vectors per thread at 512), of the
 * one-block count and mean kernels; vectors a thread has in flight in the row kernel's first pass. */
enum { ROW_THREADS = 512, SMALL_ROW_THREADS = 128, SUM_THREADS = 1024, UNROLL = 4 };
/* A row of at most this many bytes is kept in shared memory between the two passes (the second then
 * reads no global memory); two such blocks fit an SM (228 KiB). SmolLM2's bf16 row is 96 KiB. */
constexpr int kStageMaxBytes = 112 << 10;

/* Running max m and sum of exp(x - m) of a set of logits; the empty set is (-inf, 0). */
struct MaxSum {
  float m, s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, 0.0f};   /* both empty (or all -inf): avoid -inf - -inf = NaN */
  return {m, a.s * exp2f((a.m - m) * kLog2e) + b.s * exp2f((b.m - m) * kLog2e)};
}

/* Adds k logits to a thread's running (m, s): one rescale per group, one exp per logit. */
template <int K>
__device__ __forceinline__ void add_logits(MaxSum &acc, const float (&x)[K]) {
  float vmax = x[0];
#pragma unroll
  for (int i = 1; i < K; i++) vmax = fmaxf(vmax, x[i]);
  float m = fmaxf(acc.m, vmax);
  if (m == -INFINITY) return;
  float s = acc.s * exp2f((acc.m - m) * kLog2e);
#pragma unroll
  for (int i = 0; i < K; i++) s += exp2f((x[i] - m) * kLog2e);
  acc = {m, s};
}

/* Every thread gets the block's (m, s); a fixed tree (shuffles, then warp 0), so the same bits each run.
 * blockDim.x is a multiple of 32, at most 1024. */
__device__ MaxSum block_merge(MaxSum v) {
  __shared__ MaxSum warp_part[32];
  __shared__ MaxSum result;
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    v = merge(v, {__shfl_down_sync(0xffffffffu, v.m, o), __shfl_down_sync(0xffffffffu, v.s, o)});
  if (lane == 0) warp_part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? warp_part[lane] : MaxSum{-INFINITY, 0.0f};
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
      v = merge(v, {__shfl_down_sync(0xffffffffu, v.m, o), __shfl_down_sync(0xffffffffu, v.s, o)});
    if (lane == 0) result = v;
  }
  __syncthreads();
  return result;
}

/* Element access by storage type: float (f32) or uint16_t (bf16 bits). 16-byte vectors of kVec. */
template <typename T>
struct Elem;
template <>
struct Elem<float> {
  static constexpr int kVec = 4;
  static __device__ __forceinline__ float load(const float *p) { return *p; }
  static __device__ __forceinline__ void store(float *p, float v) { *p = v; }
  static __device__ __forceinline__ void unpack(const uint4 &u, float (&x)[4]) {
    x[0] = __uint_as_float(u.x), x[1] = __uint_as_float(u.y), x[2] = __uint_as_float(u.z), x[3] = __uint_as_float(u.w);
  }
  static __device__ __forceinline__ uint4 pack(const float (&x)[4]) {
    return make_uint4(__float_as_uint(x[0]), __float_as_uint(x[1]), __float_as_uint(x[2]), __float_as_uint(x[3]));
  }
};
template <>
struct Elem<uint16_t> {
  static constexpr int kVec = 8;
  static __device__ __forceinline__ float load(const uint16_t *p) { return f2_dev_bf16_to_f32(*p); }
  static __device__ __forceinline__ void store(uint16_t *p, float v) { *p = f2_dev_f32_to_bf16(v); }
  static __device__ __forceinline__ void unpack_word(uint32_t w, float &lo, float &hi) {
    lo = __uint_as_float(w << 16), hi = __uint_as_float(w & 0xffff0000u);   /* little-endian: low half first */
  }
  static __device__ __forceinline__ void unpack(const uint4 &u, float (&x)[8]) {
    unpack_word(u.x, x[0], x[1]), unpack_word(u.y, x[2], x[3]), unpack_word(u.z, x[4], x[5]), unpack_word(u.w, x[6], x[7]);
  }
  static __device__ __forceinline__ uint32_t pack_word(float lo, float hi) {
    return (uint32_t)f2_dev_f32_to_bf16(lo) | (uint32_t)f2_dev_f32_to_bf16(hi) << 16;
  }
  static __device__ __forceinline__ uint4 pack(const float (&x)[8]) {
    return make_uint4(pack_word(x[0], x[1]), pack_word(x[2], x[3]), pack_word(x[4], x[5]), pack_word(x[6], x[7]));
  }
};

/* One block per row of the chunk: loss of the row into row_loss (0 when ignored, NaN for a target outside
 * [0, V)), and with backward the row's dlogits = exp(x - m) * g / s - (c == t ? g : 0), g = dloss / counted,
 * over its logits. VEC: 16-byte loads and stores (V a multiple of kVec, rows 16-byte aligned). STAGE (with
 * VEC): the first pass also keeps the row in dynamic shared memory (V / kVec vectors), which the second
 * reads instead of global memory; each thread reads back only the vectors it stored. */
template <typename T, bool VEC, bool STAGE>
__global__ void __launch_bounds__(ROW_THREADS) row_kernel(T *__restrict__ logits, int64_t vocab,
                                                          const int32_t *__restrict__ targets,
                                                          float *__restrict__ row_loss, const int *__restrict__ counted,
                                                          int32_t ignore_index, float dloss, int backward) {
  constexpr int K = Elem<T>::kVec;
  extern __shared__ uint4 stage[];
  const int64_t r = blockIdx.x;
  T *row = logits + r * vocab;
  const int32_t t = targets[r];
  const int tid = threadIdx.x, nthreads = blockDim.x;
  if (t == ignore_index || t < 0 || t >= vocab) {
    /* Ignored: no loss, no gradient. Outside the vocabulary: a NaN loss and a NaN gradient, so the
     * step's gradient norm is non-finite and the optimizer skips the update. */
    float v = t == ignore_index ? 0.0f : __int_as_float(0x7fc00000);
    if (tid == 0) row_loss[r] = v;
    if (!backward) return;
    if (VEC) {
      float x[K];
#pragma unroll
      for (int k = 0; k < K; k++) x[k] = v;
      uint4 u = Elem<T>::pack(x);
      for (int64_t i = tid; i < vocab / K; i += nthreads) reinterpret_cast<uint4 *>(row)[i] = u;
    } else {
      for (int64_t c = tid; c < vocab; c += nthreads) Elem<T>::store(row + c, v);
    }
    return;
  }
  float xt = tid == 0 ? Elem<T>::load(row + t) : 0.0f;   /* read before any thread overwrites the row */

  /* Pass 1: online max and sum of exps, UNROLL vectors in flight per thread. */
  MaxSum acc = {-INFINITY, 0.0f};
  if (VEC) {
    const uint4 *row4 = reinterpret_cast<const uint4 *>(row);
    const int64_t nvec = vocab / K;
    for (int64_t i0 = tid; i0 < nvec; i0 += (int64_t)UNROLL * nthreads) {
      uint4 u[UNROLL];
#pragma unroll
      for (int j = 0; j < UNROLL; j++)
        if (i0 + (int64_t)j * nthreads < nvec) u[j] = row4[i0 + (int64_t)j * nthreads];
      if (STAGE) {
#pragma unroll
        for (int j = 0; j < UNROLL; j++)
          if (i0 + (int64_t)j * nthreads < nvec) stage[i0 + (int64_t)j * nthreads] = u[j];
      }
#pragma unroll
      for (int j = 0; j < UNROLL; j++)
        if (i0 + (int64_t)j * nthreads < nvec) {
          float x[K];
          Elem<T>::unpack(u[j], x);
          add_logits(acc, x);
        }
    }
  } else {
    for (int64_t c = tid; c < vocab; c += nthreads) {
      float x[1] = {Elem<T>::load(row + c)};
      add_logits(acc, x);
    }
  }
  const MaxSum all = block_merge(acc);   /* its __syncthreads also order xt's read before pass 2's writes */
  if (tid == 0) row_loss[r] = (float)((double)all.m + log((double)all.s) - (double)xt);
  if (!backward) return;

  /* Pass 2: dlogits over the logits (read from shared memory when staged, else mostly still in L2). */
  const int n = *counted;
  const float g = n ? dloss / (float)n : 0.0f, scale = g / all.s, m = all.m;
  if (VEC) {
    uint4 *row4 = reinterpret_cast<uint4 *>(row);
    for (int64_t i = tid; i < vocab / K; i += nthreads) {
      float x[K];
      Elem<T>::unpack(STAGE ? stage[i] : row4[i], x);
#pragma unroll
      for (int k = 0; k < K; k++) x[k] = exp2f((x[k] - m) * kLog2e) * scale - (i * K + k == t ? g : 0.0f);
      row4[i] = Elem<T>::pack(x);
    }
  } else {
    for (int64_t c = tid; c < vocab; c += nthreads)
      Elem<T>::store(row + c, exp2f((Elem<T>::load(row + c) - m) * kLog2e) * scale - (c == t ? g : 0.0f));
  }
}

/* counted[0] = the number of targets that are not ignore_index (one block; integer sum). */
__global__ void __launch_bounds__(SUM_THREADS) count_kernel(int *counted, const int32_t *targets, int64_t n,
                                                            int32_t ignore_index) {
  __shared__ int part[SUM_THREADS / 32];
  int c = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) c += targets[i] != ignore_index;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) c += __shfl_down_sync(0xffffffffu, c, o);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = c;
  __syncthreads();
  if (threadIdx.x == 0) {
    int total = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) total += part[w];
    counted[0] = total;
  }
}

/* loss[0] = sum of the row losses / counted (0 when none counted): one block, each thread's strided sum
 * in double, then a fixed tree. */
__global__ void __launch_bounds__(SUM_THREADS) mean_kernel(float *loss, const float *row_loss, int64_t n,
                                                           const int *counted) {
  __shared__ double part[SUM_THREADS];
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += row_loss[i];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half >>= 1) {
    if ((int)threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    int c = counted[0];
    loss[0] = c ? (float)(part[0] / (double)c) : 0.0f;
  }
}

/* Scratch from the caching allocator, given back when it goes out of scope (stream-ordered: work queued
 * before the free still sees it). */
struct Scratch {
  void *p = nullptr;
  ~Scratch() { f2_cuda_free(p); }
  int alloc(size_t nbytes) { return f2_cuda_alloc(&p, nbytes > 0 ? nbytes : 1); }
};

/* A 2-D [rows, cols] row-major view at data (on the stack, for f2_cuda_matmul). */
f2_tensor matrix(void *data, int32_t dtype, int64_t rows, int64_t cols) {
  f2_tensor v = {};
  v.data = data, v.dtype = dtype, v.device = F2_CUDA, v.ndim = 2;
  v.shape[0] = rows, v.shape[1] = cols, v.stride[0] = cols, v.stride[1] = 1;
  return v;
}

template <typename T, bool VEC, bool STAGE>
int launch_row_kernel(int threads, size_t smem, void *logits, int64_t rows, int64_t vocab, const int32_t *targets,
                      float *row_loss, const int *counted, int32_t ignore_index, float dloss, int backward) {
  if (STAGE) {   /* the staged row goes beyond the default 48 KiB; two blocks should share an SM. Set on every
                    launch (it is per device, costs microseconds and is allowed while a graph is captured). */
    F2_CUDA_CHECK(cudaFuncSetAttribute(row_kernel<T, VEC, STAGE>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       kStageMaxBytes));
    F2_CUDA_CHECK(cudaFuncSetAttribute(row_kernel<T, VEC, STAGE>, cudaFuncAttributePreferredSharedMemoryCarveout,
                                       (int)cudaSharedmemCarveoutMaxShared));
  }
  row_kernel<T, VEC, STAGE><<<(unsigned)rows, threads, smem, f2_cuda_stream()>>>(
      (T *)logits, vocab, targets, row_loss, counted, ignore_index, dloss, backward);
  F2_CUDA_CHECK_LAUNCH("lm head cross-entropy rows");
  return F2_OK;
}

template <typename T>
int launch_rows(void *logits, int64_t rows, int64_t vocab, const int32_t *targets, float *row_loss,
                const int *counted, int32_t ignore_index, float dloss, int backward) {
  const int threads = vocab >= 16 * ROW_THREADS ? ROW_THREADS : SMALL_ROW_THREADS;
  const bool vec = vocab % Elem<T>::kVec == 0 && (uintptr_t)logits % 16 == 0;
  const size_t row_bytes = (size_t)vocab * sizeof(T);
  if (vec && backward && row_bytes <= (size_t)kStageMaxBytes)
    return launch_row_kernel<T, true, true>(threads, row_bytes, logits, rows, vocab, targets, row_loss, counted,
                                            ignore_index, dloss, backward);
  if (vec)
    return launch_row_kernel<T, true, false>(threads, 0, logits, rows, vocab, targets, row_loss, counted,
                                             ignore_index, dloss, backward);
  return launch_row_kernel<T, false, false>(threads, 0, logits, rows, vocab, targets, row_loss, counted, ignore_index,
                                            dloss, backward);
}

}  // namespace

extern "C" int f2_cuda_lm_head_cross_entropy(f2_tensor *loss, f2_tensor *losses, f2_tensor *dh, f2_tensor *dweight,
                                             const f2_tensor *h, const f2_tensor *weight, const f2_tensor *targets,
                                             int32_t ignore_index, float dloss, int64_t chunk_rows) {
  const int64_t vocab = weight->shape[0], dim = weight->shape[1], rows = f2_tensor_numel(targets);
  const int32_t dtype = h->dtype;
  const size_t esize = f2_dtype_size(dtype);
  const int backward = dh != nullptr;
  if (rows > 0x7fffffffll)
    return F2_FAIL(F2_ERR_UNSUPPORTED, "f2_lm_head_cross_entropy: %lld rows (at most 2^31 - 1 on a GPU)", (long long)rows);
  const int64_t chunk = chunk_rows < rows ? chunk_rows : rows > 0 ? rows : 1;
  cudaStream_t s = f2_cuda_stream();

  Scratch counted, row_loss_scratch, logits;
  F2_TRY(counted.alloc(sizeof(int)));
  float *row_loss = losses ? (float *)losses->data : nullptr;
  if (!row_loss) {
    F2_TRY(row_loss_scratch.alloc((size_t)rows * sizeof(float)));
    row_loss = (float *)row_loss_scratch.p;
  }
  if (rows > 0) F2_TRY(logits.alloc((size_t)chunk * (size_t)vocab * esize));

  count_kernel<<<1, SUM_THREADS, 0, s>>>((int *)counted.p, (const int32_t *)targets->data, rows, ignore_index);
  F2_CUDA_CHECK_LAUNCH("lm head cross-entropy count");
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
    const int64_t n = rows - r0 < chunk ? rows - r0 : chunk;
    f2_tensor hv = matrix((char *)h->data + r0 * dim * esize, dtype, n, dim);
    f2_tensor lv = matrix(logits.p, dtype, n, vocab);
    F2_TRY(f2_cuda_matmul(&lv, &hv, weight, 0, 1, 1.0f, 0.0f));
    const int32_t *tg = (const int32_t *)targets->data + r0;
    if (dtype == F2_BF16)
      F2_TRY(launch_rows<uint16_t>(logits.p, n, vocab, tg, row_loss + r0, (const int *)counted.p, ignore_index, dloss,
                                   backward));
    else
      F2_TRY(launch_rows<float>(logits.p, n, vocab, tg, row_loss + r0, (const int *)counted.p, ignore_index, dloss,
                                backward));
    if (!backward) continue;
    /* dweight before dh, so dh may be h itself (this chunk's rows of h are read here for the last time). */
    if (dweight) F2_TRY(f2_cuda_matmul(dweight, &lv, &hv, 1, 0, 1.0f, 1.0f));
    f2_tensor dhv = matrix((char *)dh->data + r0 * dim * esize, dtype, n, dim);
    F2_TRY(f2_cuda_matmul(&dhv, &lv, weight, 0, 0, 1.0f, 0.0f));
  }
  mean_kernel<<<1, SUM_THREADS, 0, s>>>((float *)loss->data, row_loss, rows, (const int *)counted.p);
  F2_CUDA_CHECK_LAUNCH("lm head cross-entropy mean");
  return F2_OK;
}
