/* elementwise.cu — fill, counter-based rand (uniform, normal), and the generic binary / binary-scalar /
 * unary ops over any strides (stride-0 broadcast inputs included) and any dtype mix.
 * Precision: fp32 math when the output is a float dtype, fp64 when it is an integer dtype (exact
 * integer results up to 2^53; integer outputs truncate toward zero). fill/rand compute in fp64 like
 * the CPU reference, then store (fp32 first, then bf16/f16 RNE). */
#include "f2_cuda.cuh"
#include "../runtime/f2_rng.h"

namespace {
template <typename T> __device__ __forceinline__ T dev_pow(T a, T b) { return pow(a, b); }
template <> __device__ __forceinline__ float dev_pow(float a, float b) { return powf(a, b); }

/* NaN-propagating max/min: a NaN on either side gives NaN, as the CPU reference. */
template <typename T>
__device__ __forceinline__ T binary_op(int32_t op, T a, T b) {
  switch (op) {
    case F2_OP_ADD: return a + b;
    case F2_OP_SUB: return a - b;
    case F2_OP_MUL: return a * b;
    case F2_OP_DIV: return a / b;
    case F2_OP_MAX: return (a > b || a != a) ? a : b;
    case F2_OP_MIN: return (a < b || a != a) ? a : b;
    default: return dev_pow(a, b);
  }
}

template <typename T>
__device__ __forceinline__ T unary_op(int32_t op, T x) {
  const T one = 1;
  switch (op) {
    case F2_OP_NEG: return -x;
    case F2_OP_ABS: return fabs(x);
    case F2_OP_EXP: return exp(x);
    case F2_OP_LOG: return log(x);
    case F2_OP_SQRT: return sqrt(x);
    case F2_OP_RSQRT: return one / sqrt(x);
    case F2_OP_TANH: return tanh(x);
    case F2_OP_SIGMOID: return one / (one + exp(-x));
    case F2_OP_SILU: return x / (one + exp(-x));
    case F2_OP_SQUARE: return x * x;
    default: return x > 0 ? one : x < 0 ? -one : x; /* SIGN: 0 stays 0, NaN stays NaN */
  }
}

/* out = a op b, or a op s when b is NULL. */
template <typename T>
__global__ void binary_kernel(void *out, int32_t out_dtype, const void *a, int32_t a_dtype, const void *b,
                              int32_t b_dtype, T s, int32_t op, f2_iter it) {
  F2_GRID_STRIDE(i, it.numel) {
    int64_t off[3];
    f2_iter_offsets<3>(it, i, off);
    T y = b ? f2_load<T>(b, b_dtype, off[2]) : s;
    f2_store<T>(out, out_dtype, off[0], binary_op<T>(op, f2_load<T>(a, a_dtype, off[1]), y));
  }
}

template <typename T>
__global__ void unary_kernel(void *out, int32_t out_dtype, const void *a, int32_t a_dtype, int32_t op, f2_iter it) {
  F2_GRID_STRIDE(i, it.numel) {
    int64_t off[2];
    f2_iter_offsets<2>(it, i, off);
    f2_store<T>(out, out_dtype, off[0], unary_op<T>(op, f2_load<T>(a, a_dtype, off[1])));
  }
}

__global__ void fill_kernel(void *t, int32_t dtype, double value, f2_iter it) {
  F2_GRID_STRIDE(i, it.numel) {
    int64_t off[1];
    f2_iter_offsets<1>(it, i, off);
    f2_store<double>(t, dtype, off[0], value);
  }
}

/* value = offset + scale * r(seed, i); __dmul_rn/__dadd_rn stop nvcc from fusing them into an FMA,
 * which would round differently from the CPU reference. */
__global__ void rand_kernel(void *t, int32_t dtype, uint64_t seed, double offset, double scale, int normal,
                            f2_iter it) {
  F2_GRID_STRIDE(i, it.numel) {
    int64_t off[1];
    f2_iter_offsets<1>(it, i, off);
    double r = normal ? f2_rng_normal(seed, (uint64_t)i) : f2_rng_uniform(seed, (uint64_t)i);
    f2_store<double>(t, dtype, off[0], __dadd_rn(offset, __dmul_rn(scale, r)));
  }
}

int launch_binary(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, double s, int32_t op) {
  if (op < F2_OP_ADD || op > F2_OP_POW) return F2_FAIL(F2_ERR_ARG, "binary: unknown op %d", (int)op);
  if (a->ndim != out->ndim || (b && b->ndim != out->ndim))
    return F2_FAIL(F2_ERR_ARG, "binary: inputs must be expanded to the output's %d dims", (int)out->ndim);
  f2_iter it = f2_iter_make(out->ndim, out->shape, 3, out->stride, a->stride, b ? b->stride : a->stride);
  if (it.numel == 0) return F2_OK;
  unsigned blocks = f2_blocks(it.numel, F2_THREADS);
  const void *b_data = b ? b->data : nullptr;
  int32_t b_dtype = b ? b->dtype : F2_F32;
  if (f2_host_dtype_is_float(out->dtype))
    binary_kernel<float><<<blocks, F2_THREADS, 0, f2_cuda_stream()>>>(out->data, out->dtype, a->data, a->dtype,
                                                                       b_data, b_dtype, (float)s, op, it);
  else
    binary_kernel<double><<<blocks, F2_THREADS, 0, f2_cuda_stream()>>>(out->data, out->dtype, a->data, a->dtype,
                                                                        b_data, b_dtype, s, op, it);
  F2_CUDA_CHECK_LAUNCH("binary_kernel");
  return F2_OK;
}

int launch_rand(f2_tensor *t, uint64_t seed, double offset, double scale, int normal) {
  f2_iter it = f2_iter_make(t->ndim, t->shape, 1, t->stride, nullptr, nullptr);
  if (it.numel == 0) return F2_OK;
  rand_kernel<<<f2_blocks(it.numel, F2_THREADS), F2_THREADS, 0, f2_cuda_stream()>>>(t->data, t->dtype, seed, offset,
                                                                                    scale, normal, it);
  F2_CUDA_CHECK_LAUNCH("rand_kernel");
  return F2_OK;
}
}  // namespace

extern "C" int f2_cuda_fill(f2_tensor *t, double value) {
  f2_iter it = f2_iter_make(t->ndim, t->shape, 1, t->stride, nullptr, nullptr);
  if (it.numel == 0) return F2_OK;
  if (value == 0 && !signbit(value) && it.ndim == 1 && it.stride[0][0] == 1) {   /* +0, contiguous: bytes 0 */
    F2_CUDA_CHECK(cudaMemsetAsync(t->data, 0, (size_t)it.numel * f2_dtype_size(t->dtype), f2_cuda_stream()));
    return F2_OK;
  }
  fill_kernel<<<f2_blocks(it.numel, F2_THREADS), F2_THREADS, 0, f2_cuda_stream()>>>(t->data, t->dtype, value, it);
  F2_CUDA_CHECK_LAUNCH("fill_kernel");
  return F2_OK;
}

extern "C" int f2_cuda_rand_uniform(f2_tensor *t, uint64_t seed, double low, double high) {
  return launch_rand(t, seed, low, high - low, 0);
}

extern "C" int f2_cuda_rand_normal(f2_tensor *t, uint64_t seed, double mean, double std) {
  return launch_rand(t, seed, mean, std, 1);
}

extern "C" int f2_cuda_binary(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t op) {
  return launch_binary(out, a, b, 0.0, op);
}

extern "C" int f2_cuda_binary_scalar(f2_tensor *out, const f2_tensor *a, double s, int32_t op) {
  return launch_binary(out, a, nullptr, s, op);
}

extern "C" int f2_cuda_unary(f2_tensor *out, const f2_tensor *a, int32_t op) {
  if (op < F2_OP_NEG || op > F2_OP_SIGN) return F2_FAIL(F2_ERR_ARG, "unary: unknown op %d", (int)op);
  if (a->ndim != out->ndim) return F2_FAIL(F2_ERR_ARG, "unary: input has %d dims, output %d", (int)a->ndim, (int)out->ndim);
  f2_iter it = f2_iter_make(out->ndim, out->shape, 2, out->stride, a->stride, nullptr);
  if (it.numel == 0) return F2_OK;
  unsigned blocks = f2_blocks(it.numel, F2_THREADS);
  if (f2_host_dtype_is_float(out->dtype))
    unary_kernel<float><<<blocks, F2_THREADS, 0, f2_cuda_stream()>>>(out->data, out->dtype, a->data, a->dtype, op, it);
  else
    unary_kernel<double><<<blocks, F2_THREADS, 0, f2_cuda_stream()>>>(out->data, out->dtype, a->data, a->dtype, op, it);
  F2_CUDA_CHECK_LAUNCH("unary_kernel");
  return F2_OK;
}
