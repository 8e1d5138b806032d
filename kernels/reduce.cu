/* reduce.cu — SUM / MEAN / MAX / MIN / NORM (L2) over one dim or over all elements, any strides.
 * fp32 accumulation for float inputs (fp64 for integer inputs). Deterministic: no atomics, and the
 * split into blocks and the reduction tree depend only on the shape, so one input gives the same
 * bits every run, on any GPU. MAX / MIN propagate NaN. */
#include "f2_cuda.cuh"

#include <math.h>

namespace {
/* Outputs with fewer than this many elements to reduce get one thread each (sequential sum). */
const int64_t kThreadPerOutput = 32;
/* A reduction this long per output, with few outputs, is split over several blocks (two passes). */
const int64_t kElementsPerBlock = 32768;
const int64_t kMaxParts = 1024, kFewOutputs = 256;

template <typename A>
struct Reducer {
  int32_t op;
  __device__ __forceinline__ A init() const {
    return op == F2_RED_MAX ? (A)-INFINITY : op == F2_RED_MIN ? (A)INFINITY : (A)0;
  }
  __device__ __forceinline__ A pre(A x) const { return op == F2_RED_NORM ? x * x : x; }
  __device__ __forceinline__ A combine(A a, A b) const {
    if (op == F2_RED_MAX) return (a > b || a != a) ? a : b;
    if (op == F2_RED_MIN) return (a < b || a != a) ? a : b;
    return a + b;
  }
  __device__ __forceinline__ A finish(A acc, int64_t n) const {
    return op == F2_RED_MEAN ? acc / (A)n : op == F2_RED_NORM ? sqrt(acc) : acc;
  }
};

/* A fixed tree over the block: shuffles inside each warp, then warp 0 over the warp results.
 * The result is valid in thread 0. */
template <typename A>
__device__ A block_reduce(const Reducer<A> &red, A v) {
  __shared__ A warp_result[F2_THREADS / 32];
  for (int o = 16; o > 0; o >>= 1) v = red.combine(v, __shfl_down_sync(0xffffffffu, v, o));
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_result[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < F2_THREADS / 32 ? warp_result[lane] : red.init();
    for (int o = 16; o > 0; o >>= 1) v = red.combine(v, __shfl_down_sync(0xffffffffu, v, o));
  }
  __syncthreads(); /* warp_result is reused by the caller's next iteration */
  return v;
}

/* outer walks the outputs (strides of x without the reduced dim, and of out); inner walks the n
 * elements reduced into one output (strides of x). */
template <typename A>
__global__ void reduce_thread_kernel(void *out, int32_t out_dtype, const void *x, int32_t x_dtype, f2_iter outer,
                                     f2_iter inner, int32_t op) {
  Reducer<A> red = {op};
  F2_GRID_STRIDE(o, outer.numel) {
    int64_t off[2];
    f2_iter_offsets<2>(outer, o, off);
    A acc = red.init();
    for (int64_t r = 0; r < inner.numel; r++) {
      int64_t roff[1];
      f2_iter_offsets<1>(inner, r, roff);
      acc = red.combine(acc, red.pre(f2_load<A>(x, x_dtype, off[0] + roff[0])));
    }
    f2_store<A>(out, out_dtype, off[1], red.finish(acc, inner.numel));
  }
}

/* Block b reduces part b % parts of output b / parts: into out when parts == 1, else into partial[b]. */
template <typename A>
__global__ void reduce_block_kernel(void *out, int32_t out_dtype, const void *x, int32_t x_dtype, f2_iter outer,
                                    f2_iter inner, int32_t op, int64_t parts, A *partial) {
  Reducer<A> red = {op};
  int64_t chunk = (inner.numel + parts - 1) / parts;
  for (int64_t b = blockIdx.x; b < outer.numel * parts; b += gridDim.x) {
    int64_t o = b / parts, start = b % parts * chunk, end = min(inner.numel, start + chunk);
    int64_t off[2];
    f2_iter_offsets<2>(outer, o, off);
    A acc = red.init();
    for (int64_t r = start + threadIdx.x; r < end; r += blockDim.x) {
      int64_t roff[1];
      f2_iter_offsets<1>(inner, r, roff);
      acc = red.combine(acc, red.pre(f2_load<A>(x, x_dtype, off[0] + roff[0])));
    }
    acc = block_reduce(red, acc);
    if (threadIdx.x == 0) {
      if (parts == 1) f2_store<A>(out, out_dtype, off[1], red.finish(acc, inner.numel));
      else partial[b] = acc;
    }
  }
}

/* Second pass: one block per output over its parts partial results. */
template <typename A>
__global__ void reduce_parts_kernel(void *out, int32_t out_dtype, const A *partial, f2_iter outer, int64_t n,
                                    int32_t op, int64_t parts) {
  Reducer<A> red = {op};
  for (int64_t o = blockIdx.x; o < outer.numel; o += gridDim.x) {
    A acc = red.init();
    for (int64_t p = threadIdx.x; p < parts; p += blockDim.x) acc = red.combine(acc, partial[o * parts + p]);
    acc = block_reduce(red, acc);
    if (threadIdx.x == 0) {
      int64_t off[2];
      f2_iter_offsets<2>(outer, o, off);
      f2_store<A>(out, out_dtype, off[1], red.finish(acc, n));
    }
  }
}

/* Partial results of split reductions: kFewOutputs * kMaxParts doubles at most, allocated once. */
void *scratch;
const size_t kScratchBytes = kFewOutputs * kMaxParts * sizeof(double);

template <typename A>
int launch(f2_tensor *out, const f2_tensor *x, const f2_iter &outer, const f2_iter &inner, int32_t op) {
  cudaStream_t stream = f2_cuda_stream();
  if (inner.numel < kThreadPerOutput) {
    reduce_thread_kernel<A><<<f2_blocks(outer.numel, F2_THREADS), F2_THREADS, 0, stream>>>(
        out->data, out->dtype, x->data, x->dtype, outer, inner, op);
    F2_CUDA_CHECK_LAUNCH("reduce_thread_kernel");
    return F2_OK;
  }
  int64_t parts = 1;
  if (outer.numel < kFewOutputs) {
    parts = (inner.numel + kElementsPerBlock - 1) / kElementsPerBlock;
    parts = parts > kMaxParts ? kMaxParts : parts;
  }
  if (parts > 1 && !scratch) F2_TRY(f2_cuda_alloc(&scratch, kScratchBytes));
  int64_t blocks = outer.numel * parts;
  reduce_block_kernel<A><<<(unsigned)(blocks < 65535 * 16 ? blocks : 65535 * 16), F2_THREADS, 0, stream>>>(
      out->data, out->dtype, x->data, x->dtype, outer, inner, op, parts, (A *)scratch);
  F2_CUDA_CHECK_LAUNCH("reduce_block_kernel");
  if (parts > 1) {
    reduce_parts_kernel<A><<<(unsigned)outer.numel, F2_THREADS, 0, stream>>>(out->data, out->dtype, (const A *)scratch,
                                                                              outer, inner.numel, op, parts);
    F2_CUDA_CHECK_LAUNCH("reduce_parts_kernel");
  }
  return F2_OK;
}
}  // namespace

extern "C" int f2_cuda_reduce(f2_tensor *out, const f2_tensor *x, int32_t dim, int32_t op) {
  if (op < F2_RED_SUM || op > F2_RED_NORM) return F2_FAIL(F2_ERR_ARG, "reduce: unknown op %d", (int)op);
  if (dim < -1 || dim >= x->ndim) return F2_FAIL(F2_ERR_ARG, "reduce: dim %d outside -1..%d", (int)dim, (int)x->ndim - 1);
  int keepdim = dim >= 0 && out->ndim == x->ndim;
  if (dim >= 0 && !keepdim && out->ndim != x->ndim - 1)
    return F2_FAIL(F2_ERR_ARG, "reduce: output has %d dims, input %d", (int)out->ndim, (int)x->ndim);
  int64_t shape[F2_MAX_DIMS], x_stride[F2_MAX_DIMS], out_stride[F2_MAX_DIMS];
  int n = 0;
  if (dim >= 0) {
    for (int i = 0; i < x->ndim; i++) {
      if (i == dim) continue;
      int o = keepdim || i < dim ? i : i - 1;
      if (out->shape[o] != x->shape[i])
        return F2_FAIL(F2_ERR_ARG, "reduce: output dim %d is %lld, expected %lld", o, (long long)out->shape[o],
                       (long long)x->shape[i]);
      shape[n] = x->shape[i];
      x_stride[n] = x->stride[i];
      out_stride[n++] = out->stride[o];
    }
  }
  f2_iter outer = f2_iter_make(n, shape, 2, x_stride, out_stride, nullptr);
  f2_iter inner = dim >= 0 ? f2_iter_make(1, &x->shape[dim], 1, &x->stride[dim], nullptr, nullptr)
                           : f2_iter_make(x->ndim, x->shape, 1, x->stride, nullptr, nullptr);
  if (outer.numel == 0) return F2_OK;
  return f2_host_dtype_is_float(x->dtype) ? launch<float>(out, x, outer, inner, op)
                                          : launch<double>(out, x, outer, inner, op);
}
