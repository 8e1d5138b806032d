/* f2_cuda.cuh — what every CUDA file in kernels/ shares: checked CUDA and cuBLAS calls, the stream ops
 * run on, launch helpers, dtype loads/stores that match the CPU reference bit for bit, and the strided
 * iterator (up to 8 dims, up to 3 tensors) the generic elementwise/copy/reduce kernels walk. */
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <limits>
#include "../runtime/f2_internal.h"

#define F2_CUDA_CHECK(expr)                                                                  \
  do {                                                                                       \
    cudaError_t f2_e_ = (expr);                                                              \
    if (f2_e_ != cudaSuccess)                                                                \
      return F2_FAIL(F2_ERR_CUDA, "%s failed: %s", #expr, cudaGetErrorString(f2_e_));        \
  } while (0)
/* After a kernel launch: launch-configuration errors surface here. */
#define F2_CUDA_CHECK_LAUNCH(name)                                                           \
  do {                                                                                       \
    cudaError_t f2_e_ = cudaGetLastError();                                                  \
    if (f2_e_ != cudaSuccess)                                                                \
      return F2_FAIL(F2_ERR_CUDA, "launch of %s failed: %s", name, cudaGetErrorString(f2_e_)); \
  } while (0)
/* cuBLAS / cuBLASLt calls (include cublasLt.h before this header's users call it). */
#define F2_CUBLAS_CHECK(expr)                                                                \
  do {                                                                                       \
    cublasStatus_t f2_s_ = (expr);                                                           \
    if (f2_s_ != CUBLAS_STATUS_SUCCESS)                                                      \
      return F2_FAIL(F2_ERR_CUDA, "%s failed: %s (%s)", #expr, cublasLtGetStatusName(f2_s_), \
                     cublasLtGetStatusString(f2_s_));                                        \
  } while (0)

/* The stream all fairy2 work is queued on (created on first use; capturable as a graph).
 * NULL only when creating it failed; launches then fail and report it. */
cudaStream_t f2_cuda_stream(void);

enum { F2_THREADS = 256 };

/* Blocks for a grid-stride loop over n items: enough to fill any GPU, never more than needed. */
static inline unsigned f2_blocks(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  return (unsigned)(b < 1 ? 1 : (b > 65535 * 16 ? 65535 * 16 : b));
}

/* ---------------------------------------------------------------- dtypes on the device */

static inline int f2_host_dtype_is_float(int32_t dtype) {
  return dtype == F2_F32 || dtype == F2_BF16 || dtype == F2_F16;
}

/* The same bits as f2_f32_to_bf16 in f2_internal.h (RNE; NaN stays a quiet NaN with its sign). */
__device__ __forceinline__ uint16_t f2_dev_f32_to_bf16(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
__device__ __forceinline__ float f2_dev_bf16_to_f32(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }
/* RNE by the hardware; a NaN keeps its sign and top payload bits, as f2_f32_to_f16 in runtime/half.c. */
__device__ __forceinline__ uint16_t f2_dev_f32_to_f16(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)(((u >> 16) & 0x8000u) | 0x7e00u | ((u >> 13) & 0x1ffu));
  return __half_as_ushort(__float2half_rn(f));
}
__device__ __forceinline__ float f2_dev_f16_to_f32(uint16_t h) { return __half2float(__ushort_as_half(h)); }

/* Loads element off of a tensor of any dtype as T (float or double). Float dtypes widen exactly;
 * integers convert as C does. The switch is uniform across a launch, so it costs no divergence. */
template <typename T>
__device__ __forceinline__ T f2_load(const void *base, int32_t dtype, int64_t off) {
  switch (dtype) {
    case F2_F32: return (T)((const float *)base)[off];
    case F2_BF16: return (T)f2_dev_bf16_to_f32(((const uint16_t *)base)[off]);
    case F2_F16: return (T)f2_dev_f16_to_f32(((const uint16_t *)base)[off]);
    case F2_I32: return (T)((const int32_t *)base)[off];
    case F2_I64: return (T)((const int64_t *)base)[off];
    case F2_U8: return (T)((const uint8_t *)base)[off];
    default: return (T)((const int8_t *)base)[off];
  }
}

/* Float to integer as f2.h says: truncate toward zero, saturate at the type's range, NaN -> 0. */
template <typename I>
__device__ __forceinline__ I f2_float_to_int(double v) {
  const I lo = std::numeric_limits<I>::min(), hi = std::numeric_limits<I>::max();
  return v != v ? (I)0 : v <= (double)lo ? lo : v >= (double)hi ? hi : (I)v;
}

/* Stores v (float or double) into element off: bf16/f16 round to nearest even from fp32 (a double
 * is first rounded to fp32, as the CPU reference does), integers as f2_float_to_int. */
template <typename T>
__device__ __forceinline__ void f2_store(void *base, int32_t dtype, int64_t off, T v) {
  switch (dtype) {
    case F2_F32: ((float *)base)[off] = (float)v; break;
    case F2_BF16: ((uint16_t *)base)[off] = f2_dev_f32_to_bf16((float)v); break;
    case F2_F16: ((uint16_t *)base)[off] = f2_dev_f32_to_f16((float)v); break;
    case F2_I32: ((int32_t *)base)[off] = f2_float_to_int<int32_t>(v); break;
    case F2_I64: ((int64_t *)base)[off] = f2_float_to_int<int64_t>(v); break;
    case F2_U8: ((uint8_t *)base)[off] = f2_float_to_int<uint8_t>(v); break;
    default: ((int8_t *)base)[off] = f2_float_to_int<int8_t>(v); break;
  }
}

/* ---------------------------------------------------------------- strided iteration */

/* A logical shape walked in row-major order, with each tensor's strides (in elements) over it.
 * Passed to kernels by value. */
struct f2_iter {
  int32_t ndim;
  int32_t ntensors;
  int64_t numel;
  int64_t shape[F2_MAX_DIMS];
  int64_t stride[3][F2_MAX_DIMS];
};

/* Builds the iterator over shape for up to 3 tensors' strides, merging dims that every tensor walks
 * contiguously and dropping size-1 dims: the row-major order of the elements is unchanged (so the
 * counter RNG sees the same index i), and a contiguous op becomes one dim with no index division. */
static inline f2_iter f2_iter_make(int32_t ndim, const int64_t *shape, int32_t ntensors, const int64_t *s0,
                                   const int64_t *s1, const int64_t *s2) {
  const int64_t *strides[3] = {s0, s1, s2};
  f2_iter it = {};
  it.ntensors = ntensors;
  it.numel = 1;
  for (int d = 0; d < ndim; d++) it.numel *= shape[d];
  for (int d = 0; d < ndim; d++) {
    if (shape[d] == 1) continue;
    int merge = it.ndim > 0;
    for (int k = 0; k < ntensors && merge; k++)
      merge = strides[k][d] * shape[d] == it.stride[k][it.ndim - 1];
    if (merge) {
      it.shape[it.ndim - 1] *= shape[d];
      for (int k = 0; k < ntensors; k++) it.stride[k][it.ndim - 1] = strides[k][d];
    } else {
      it.shape[it.ndim] = shape[d];
      for (int k = 0; k < ntensors; k++) it.stride[k][it.ndim] = strides[k][d];
      it.ndim++;
    }
  }
  if (it.ndim == 0) { /* a single element (or all dims of size 1) */
    it.ndim = 1;
    it.shape[0] = it.numel;
  }
  return it;
}

/* Offsets of linear element i for the first N tensors. 32-bit division when the index fits (64-bit
 * division is emulated and several times slower). Unrolled so the kernel parameters stay in
 * constant space. */
template <int N>
__device__ __forceinline__ void f2_iter_offsets(const f2_iter &it, int64_t i, int64_t (&off)[N]) {
#pragma unroll
  for (int k = 0; k < N; k++) off[k] = 0;
  if (it.numel <= 0xffffffffll) {
    uint32_t r = (uint32_t)i;
#pragma unroll
    for (int d = F2_MAX_DIMS - 1; d > 0; d--) {
      if (d < it.ndim) {
        uint32_t size = (uint32_t)it.shape[d], q = r / size, idx = r - q * size;
        r = q;
#pragma unroll
        for (int k = 0; k < N; k++) off[k] += (int64_t)idx * it.stride[k][d];
      }
    }
#pragma unroll
    for (int k = 0; k < N; k++) off[k] += (int64_t)r * it.stride[k][0];
  } else {
#pragma unroll
    for (int d = F2_MAX_DIMS - 1; d > 0; d--) {
      if (d < it.ndim) {
        int64_t q = i / it.shape[d], idx = i - q * it.shape[d];
        i = q;
#pragma unroll
        for (int k = 0; k < N; k++) off[k] += idx * it.stride[k][d];
      }
    }
#pragma unroll
    for (int k = 0; k < N; k++) off[k] += i * it.stride[k][0];
  }
}

#define F2_GRID_STRIDE(i, n) \
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)
