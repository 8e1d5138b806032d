/* cuda_stub_nn.c — the CUDA entry points of the model ops, the optimizer's device-side step and CUDA
 * graphs in a build without CUDA: every one fails cleanly (the dispatch only calls them for GPU
 * tensors, which such a build cannot make). */
#include "f2_internal.h"

#ifndef F2_HAVE_CUDA
#define NO_CUDA(what) F2_FAIL(F2_ERR_NO_DEVICE, "%s needs CUDA, but this fairy2 was built without it", what)
int f2_cuda_embedding_forward(f2_tensor *o, const f2_tensor *w, const f2_tensor *i) { (void)o, (void)w, (void)i; return NO_CUDA("embedding"); }
int f2_cuda_embedding_backward(f2_tensor *dw, const f2_tensor *d, const f2_tensor *i) { (void)dw, (void)d, (void)i; return NO_CUDA("embedding"); }
int f2_cuda_rmsnorm_forward(f2_tensor *o, f2_tensor *r, const f2_tensor *x, const f2_tensor *w, float e) {
  (void)o, (void)r, (void)x, (void)w, (void)e;
  return NO_CUDA("RMSNorm");
}
int f2_cuda_rmsnorm_residual_forward(f2_tensor *s, f2_tensor *o, f2_tensor *r, const f2_tensor *a, const f2_tensor *b,
                                     const f2_tensor *w, float e) {
  (void)s, (void)o, (void)r, (void)a, (void)b, (void)w, (void)e;
  return NO_CUDA("RMSNorm");
}
int f2_cuda_rmsnorm_backward(f2_tensor *dx, f2_tensor *dw, const f2_tensor *dy, const f2_tensor *x, const f2_tensor *w,
                             const f2_tensor *r, int acc) {
  (void)dx, (void)dw, (void)dy, (void)x, (void)w, (void)r, (void)acc;
  return NO_CUDA("RMSNorm");
}
int f2_cuda_rope_tables(f2_tensor *c, f2_tensor *s, const f2_tensor *f) { (void)c, (void)s, (void)f; return NO_CUDA("RoPE"); }
int f2_cuda_rope(f2_tensor *o, const f2_tensor *x, const f2_tensor *c, const f2_tensor *s, float sign) {
  (void)o, (void)x, (void)c, (void)s, (void)sign;
  return NO_CUDA("RoPE");
}
int f2_cuda_qkv_rope(f2_tensor *y, f2_tensor *q, f2_tensor *k, f2_tensor *v, const f2_tensor *c, const f2_tensor *s,
                     int64_t ldy, int merge) {
  (void)y, (void)q, (void)k, (void)v, (void)c, (void)s, (void)ldy, (void)merge;
  return NO_CUDA("RoPE");
}
int f2_cuda_swiglu_forward(f2_tensor *o, const f2_tensor *g, const f2_tensor *u) { (void)o, (void)g, (void)u; return NO_CUDA("SwiGLU"); }
int f2_cuda_swiglu_backward(f2_tensor *dg, f2_tensor *du, const f2_tensor *d, const f2_tensor *g, const f2_tensor *u) {
  (void)dg, (void)du, (void)d, (void)g, (void)u;
  return NO_CUDA("SwiGLU");
}
int f2_cuda_cross_entropy_forward(f2_tensor *l, f2_tensor *ls, const f2_tensor *x, const f2_tensor *t, int32_t ig) {
  (void)l, (void)ls, (void)x, (void)t, (void)ig;
  return NO_CUDA("cross-entropy");
}
int f2_cuda_cross_entropy_backward(f2_tensor *d, const f2_tensor *x, const f2_tensor *t, int32_t ig, float dl) {
  (void)d, (void)x, (void)t, (void)ig, (void)dl;
  return NO_CUDA("cross-entropy");
}
int f2_cuda_attention_forward(f2_tensor *o, f2_tensor *l, const f2_tensor *q, const f2_tensor *k, const f2_tensor *v,
                              float s) {
  (void)o, (void)l, (void)q, (void)k, (void)v, (void)s;
  return NO_CUDA("attention");
}
int f2_cuda_attention_backward(f2_tensor *dq, f2_tensor *dk, f2_tensor *dv, const f2_tensor *d, const f2_tensor *q,
                               const f2_tensor *k, const f2_tensor *v, const f2_tensor *o, const f2_tensor *l, float s) {
  (void)dq, (void)dk, (void)dv, (void)d, (void)q, (void)k, (void)v, (void)o, (void)l, (void)s;
  return NO_CUDA("attention");
}
int f2_cuda_attention_decode(f2_tensor *o, const f2_tensor *q, const f2_tensor *k, const f2_tensor *v, int64_t n,
                             float s) {
  (void)o, (void)q, (void)k, (void)v, (void)n, (void)s;
  return NO_CUDA("attention");
}
int f2_cuda_lm_head_cross_entropy(f2_tensor *l, f2_tensor *ls, f2_tensor *dh, f2_tensor *dw, const f2_tensor *h,
                                  const f2_tensor *w, const f2_tensor *t, int32_t ig, float dl, int64_t c) {
  (void)l, (void)ls, (void)dh, (void)dw, (void)h, (void)w, (void)t, (void)ig, (void)dl, (void)c;
  return NO_CUDA("the LM head");
}
int f2_cuda_adamw_step_dev(f2_tensor *p, f2_tensor *m, f2_tensor *v, const f2_tensor *g, const f2_tensor *h,
                           const f2_tensor *s) {
  (void)p, (void)m, (void)v, (void)g, (void)h, (void)s;
  return NO_CUDA("AdamW");
}
int f2_cuda_graph_begin(void) { return NO_CUDA("a CUDA graph"); }
f2_cuda_graph *f2_cuda_graph_end(void) { return F2_FAIL_NULL(F2_ERR_NO_DEVICE, "a CUDA graph needs CUDA, but this fairy2 was built without it"); }
int f2_cuda_graph_launch(const f2_cuda_graph *g) { (void)g; return NO_CUDA("a CUDA graph"); }
void f2_cuda_graph_free(f2_cuda_graph *g) { (void)g; }
int f2_cuda_is_capturing(void) { return 0; }
#endif

#ifndef F2_HAVE_CUDA
int f2_prof_begin(const char *name) { (void)name; return -1; }
int f2_prof_end(int slot, int rc) { (void)slot; return rc; }
int f2_cuda_profile(int32_t on) { (void)on; return NO_CUDA("profiling"); }
int f2_cuda_profile_report(char *buf, size_t size) {
  if (size) buf[0] = 0;
  return NO_CUDA("profiling");
}
#endif
