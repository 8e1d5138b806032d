/* attention_host.h — what the attention files share on the host side only (no device code, so the plain
 * C++ compiler can build attention_cudnn.cpp against it): the problem's sizes, the backward's operands,
 * and the cuDNN path's entry points. attention.cuh includes it for the CUDA files. */
#pragma once
#include <cuda_runtime_api.h>
#include <stdint.h>

#include "../runtime/f2_internal.h"

namespace f2attn {

struct dims {
  int64_t B, T, H, Hkv, D;
};

/* The backward's operands, for the dQ and dK/dV launchers; stream: where the dQ kernel goes (beside the
 * dK/dV kernel, which stays on f2_cuda_stream()). */
struct bwd_args {
  f2_tensor *dq, *dk, *dv;
  const f2_tensor *dout, *q, *k, *v;
  const float *lse, *dvec;
  dims d;
  float scale;
  cudaStream_t stream;
};

/* attention_cudnn.cpp: the op through cuDNN's fused SDPA unless F2_ATTN_CUDNN=0, where it applies (bf16,
 * head dim 64/128, libcudnn loadable): 1 = done, 0 = not taken (the caller runs its kernels), < 0 = an
 * error. The backward reads a.lse and writes a.dq, a.dk, a.dv; a.dvec is not used. */
int cudnn_forward(f2_tensor *out, f2_tensor *lse, const f2_tensor *q, const f2_tensor *k, const f2_tensor *v,
                  dims d, float scale);
int cudnn_backward(const bwd_args &a, const f2_tensor *out);
/* One line for `fairy2 --version`: whether the cuDNN path is built, and the cuDNN it would use. */
int cudnn_describe(char *buf, size_t size);

}  // namespace f2attn

/* The stream all fairy2 work is queued on (kernels/device.cu; also declared in f2_cuda.cuh). */
cudaStream_t f2_cuda_stream(void);
