/* cuda_stub_fairy2.c — the Fairy2i CUDA entry points of a build without CUDA: GPU tensors fail cleanly. */
#include "f2_internal.h"

#ifndef F2_HAVE_CUDA
int f2_cuda_fairy2_split(f2_tensor *u_re, f2_tensor *u_im, f2_tensor *w_re, f2_tensor *w_im, const f2_tensor *r) {
  (void)u_re, (void)u_im, (void)w_re, (void)w_im, (void)r;
  return f2_cuda_require("fairy2 split on a GPU tensor");
}
int f2_cuda_fairy2_rebuild(f2_tensor *r, const f2_tensor *u_re, const f2_tensor *u_im, const f2_tensor *w_re,
                           const f2_tensor *w_im) {
  (void)r, (void)u_re, (void)u_im, (void)w_re, (void)w_im;
  return f2_cuda_require("fairy2 rebuild on a GPU tensor");
}
int f2_cuda_fairy2_quantize(f2_tensor *const *r_hat, f2_tensor *const *scales, f2_tensor *const *codes,
                            const f2_tensor *const *r, int32_t count, const f2_quant_config *cfg,
                            int64_t *first_bad) {
  (void)r_hat, (void)scales, (void)codes, (void)r, (void)count, (void)cfg, (void)first_bad;
  return f2_cuda_require("fairy2 quantize on a GPU tensor");
}
int f2_cuda_fake_quant_int8(f2_tensor *out, const f2_tensor *x) {
  (void)out, (void)x;
  return f2_cuda_require("fake quant int8 on a GPU tensor");
}
#endif
