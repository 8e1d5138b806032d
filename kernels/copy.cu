/* copy.cu — device memcpy and the strided, dtype-casting copy between two GPU tensors.
 * Any strides (up to 8 dims), any of the 7 dtypes each side; casts as the CPU reference does
 * (float -> bf16/f16 RNE with NaN kept; float -> int truncates and saturates, NaN -> 0;
 * int -> int wraps as C does).
 * Typed per (dst, src) pair, so i64 -> i64 and other integer copies are exact. */
#include <type_traits>

#include "f2_cuda.cuh"

namespace {
struct bf16_bits { uint16_t bits; };
struct f16_bits { uint16_t bits; };

template <typename T> constexpr bool is_int = std::is_integral<T>::value;

__device__ __forceinline__ double to_double(bf16_bits v) { return f2_dev_bf16_to_f32(v.bits); }
__device__ __forceinline__ double to_double(f16_bits v) { return f2_dev_f16_to_f32(v.bits); }
template <typename S> __device__ __forceinline__ double to_double(S v) { return (double)v; }

template <typename D> __device__ __forceinline__ D from_double(double v) { return f2_float_to_int<D>(v); }
template <> __device__ __forceinline__ float from_double<float>(double v) { return (float)v; }
template <> __device__ __forceinline__ bf16_bits from_double<bf16_bits>(double v) { return {f2_dev_f32_to_bf16((float)v)}; }
template <> __device__ __forceinline__ f16_bits from_double<f16_bits>(double v) { return {f2_dev_f32_to_f16((float)v)}; }

/* The CPU reference's path: same dtype copies bits, integer to integer wraps, everything else goes
 * through fp64 (exact for every source value) and is stored as f2_store does. */
template <typename D, typename S>
__device__ __forceinline__ D convert(S v) {
  if constexpr (std::is_same<D, S>::value) return v;
  else if constexpr (is_int<D> && is_int<S>) return (D)v;
  else return from_double<D>(to_double(v));
}

template <typename D, typename S>
__global__ void copy_kernel(D *dst, const S *src, f2_iter it) {
  F2_GRID_STRIDE(i, it.numel) {
    int64_t off[2];
    f2_iter_offsets<2>(it, i, off);
    dst[off[0]] = convert<D, S>(src[off[1]]);
  }
}

template <typename D, typename S>
int launch(f2_tensor *dst, const f2_tensor *src, const f2_iter &it) {
  copy_kernel<D, S><<<f2_blocks(it.numel, F2_THREADS), F2_THREADS, 0, f2_cuda_stream()>>>(
      (D *)dst->data, (const S *)src->data, it);
  F2_CUDA_CHECK_LAUNCH("copy_kernel");
  return F2_OK;
}

/* Same dtype, rows of contiguous bytes at a row stride each side (a column slice of a wider tensor, as
 * the fused projections' v): 16 bytes a thread. */
__global__ void copy_rows16_kernel(uint4 *dst, const uint4 *src, int64_t rows, int64_t per_row, int64_t ld_dst,
                                   int64_t ld_src) {
  F2_GRID_STRIDE(i, rows * per_row) {
    const int64_t r = i / per_row, c = i - r * per_row;
    dst[r * ld_dst + c] = src[r * ld_src + c];
  }
}

template <typename D>
int launch_src(f2_tensor *dst, const f2_tensor *src, const f2_iter &it) {
  switch (src->dtype) {
    case F2_F32: return launch<D, float>(dst, src, it);
    case F2_BF16: return launch<D, bf16_bits>(dst, src, it);
    case F2_F16: return launch<D, f16_bits>(dst, src, it);
    case F2_I32: return launch<D, int32_t>(dst, src, it);
    case F2_I64: return launch<D, int64_t>(dst, src, it);
    case F2_U8: return launch<D, uint8_t>(dst, src, it);
    case F2_I8: return launch<D, int8_t>(dst, src, it);
  }
  return F2_FAIL(F2_ERR_ARG, "copy: unknown source dtype %d", (int)src->dtype);
}
}  // namespace

extern "C" int f2_cuda_memcpy(void *dst, const void *src, size_t nbytes, int kind) {
  static const cudaMemcpyKind kinds[] = {cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice};
  if (kind < F2_MEMCPY_H2D || kind > F2_MEMCPY_D2D) return F2_FAIL(F2_ERR_ARG, "memcpy: unknown kind %d", kind);
  if (nbytes == 0) return F2_OK;
  /* H2D from pageable memory is staged before the call returns, so the source may be freed after. */
  F2_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, kinds[kind], f2_cuda_stream()));
  if (kind == F2_MEMCPY_D2H) F2_CUDA_CHECK(cudaStreamSynchronize(f2_cuda_stream()));
  return F2_OK;
}

extern "C" int f2_cuda_copy(f2_tensor *dst, const f2_tensor *src) {
  if (dst->ndim != src->ndim) return F2_FAIL(F2_ERR_ARG, "copy: ndim %d vs %d", (int)dst->ndim, (int)src->ndim);
  f2_iter it = f2_iter_make(dst->ndim, dst->shape, 2, dst->stride, src->stride, nullptr);
  if (it.numel == 0) return F2_OK;
  /* Same dtype, both dense in the same order: one DMA-engine copy. */
  if (dst->dtype == src->dtype && it.ndim == 1 && it.stride[0][0] == 1 && it.stride[1][0] == 1)
    return f2_cuda_memcpy(dst->data, src->data, (size_t)it.numel * f2_dtype_size(dst->dtype), F2_MEMCPY_D2D);
  /* Same dtype, rows of whole 16-byte chunks at 16-byte row strides (the generic kernel's index math and
   * element accesses run at a fifth of the bandwidth there). */
  const int64_t size = f2_dtype_size(dst->dtype);
  if (dst->dtype == src->dtype && it.ndim == 2 && it.stride[0][1] == 1 && it.stride[1][1] == 1 &&
      (it.shape[1] * size) % 16 == 0 && (it.stride[0][0] * size) % 16 == 0 && (it.stride[1][0] * size) % 16 == 0 &&
      (uintptr_t)dst->data % 16 == 0 && (uintptr_t)src->data % 16 == 0) {
    const int64_t per_row = it.shape[1] * size / 16;
    copy_rows16_kernel<<<f2_blocks(it.shape[0] * per_row, F2_THREADS), F2_THREADS, 0, f2_cuda_stream()>>>(
        (uint4 *)dst->data, (const uint4 *)src->data, it.shape[0], per_row, it.stride[0][0] * size / 16,
        it.stride[1][0] * size / 16);
    F2_CUDA_CHECK_LAUNCH("copy_rows16_kernel");
    return F2_OK;
  }
  switch (dst->dtype) {
    case F2_F32: return launch_src<float>(dst, src, it);
    case F2_BF16: return launch_src<bf16_bits>(dst, src, it);
    case F2_F16: return launch_src<f16_bits>(dst, src, it);
    case F2_I32: return launch_src<int32_t>(dst, src, it);
    case F2_I64: return launch_src<int64_t>(dst, src, it);
    case F2_U8: return launch_src<uint8_t>(dst, src, it);
    case F2_I8: return launch_src<int8_t>(dst, src, it);
  }
  return F2_FAIL(F2_ERR_ARG, "copy: unknown destination dtype %d", (int)dst->dtype);
}
