/* f2_cuda.cuh — what every CUDA file in kernels/ shares: checked CUDA calls, the stream ops run on,
 * launch helpers. Every CUDA / cuBLAS call goes through a check that records file:line. */
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
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

/* The stream all fairy2 work is queued on (created on first use; capturable as a graph). */
cudaStream_t f2_cuda_stream(void);

static inline unsigned f2_blocks(int64_t n, int threads) {
  int64_t b = (n + threads - 1) / threads;
  return (unsigned)(b < 1 ? 1 : (b > 65535 * 16 ? 65535 * 16 : b));
}
