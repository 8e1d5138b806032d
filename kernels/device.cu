/* device.cu — GPU discovery, selection, the fairy2 stream, and version information.
 * A machine without a usable GPU reports 0 devices; asking for one then fails with a message. */
#include "attention_host.h"
#include "f2_cuda.cuh"

#include <cublasLt.h>
#include <nccl.h>
#include <stdio.h>

static int device_count = -1;
static cudaStream_t stream;

extern "C" int f2_cuda_compiled(void) { return 1; }

extern "C" int f2_cuda_device_count(void) {
  if (device_count < 0) {
    int n = 0;
    device_count = cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
    cudaGetLastError(); /* clear the sticky "no device" error */
  }
  return device_count;
}

extern "C" int f2_cuda_require(const char *what) {
  if (f2_cuda_device_count() > 0) return F2_OK;
  return F2_FAIL(F2_ERR_NO_DEVICE, "%s needs a GPU, but no usable CUDA device was found", what);
}

extern "C" int f2_cuda_set_device(int32_t index) {
  F2_TRY(f2_cuda_require("selecting a GPU"));
  if (index < 0 || index >= device_count)
    return F2_FAIL(F2_ERR_ARG, "GPU %d does not exist (%d visible)", (int)index, device_count);
  int current = 0;
  F2_CUDA_CHECK(cudaGetDevice(&current));
  /* The stream and the cached memory belong to the device they were made on: choose the device
   * before the first GPU work (one process per GPU). */
  if (stream && index != current)
    return F2_FAIL(F2_ERR_ARG, "GPU %d selected after work began on GPU %d: select the GPU first", (int)index, current);
  F2_CUDA_CHECK(cudaSetDevice(index));
  return F2_OK;
}

/* Created on first use, on the current device. Should creation fail, the stream stays NULL (the
 * legacy default stream): work is still correct and ordered, only not capturable. */
cudaStream_t f2_cuda_stream(void) {
  if (!stream && cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) {
    cudaGetLastError();
    stream = nullptr;
  }
  return stream;
}

extern "C" int f2_cuda_synchronize(void) {
  F2_TRY(f2_cuda_require("synchronizing a GPU"));
  F2_CUDA_CHECK(cudaStreamSynchronize(f2_cuda_stream()));
  return F2_OK;
}

extern "C" int f2_cuda_build_info(char *buf, size_t size) {
  int runtime = 0, driver = 0, nccl = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);
  ncclGetVersion(&nccl);
  size_t cublas = cublasLtGetVersion();
  int n = snprintf(buf, size,
                   "CUDA runtime %d.%d, driver %d.%d, cuBLASLt %zu.%zu.%zu, NCCL %d.%d.%d\n",
                   runtime / 1000, runtime % 1000 / 10, driver / 1000, driver % 1000 / 10,
                   cublas / 10000, cublas / 100 % 100, cublas % 100, nccl / 10000, nccl / 100 % 100,
                   nccl % 100);
  if (n < (int)size) n += f2attn::cudnn_describe(buf + n, size - n);
  int count = f2_cuda_device_count();
  if (count == 0) n += snprintf(buf + n, n < (int)size ? size - n : 0, "GPUs: none usable\n");
  for (int i = 0; i < count && n < (int)size; i++) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    n += snprintf(buf + n, size - n, "GPU %d: %s, sm_%d%d, %.1f GiB\n", i, prop.name, prop.major, prop.minor,
                  prop.totalGlobalMem / 1073741824.0);
  }
  return F2_OK;
}
