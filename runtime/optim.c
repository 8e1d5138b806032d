/* optim.c — AdamW and the squared-norm reduction behind gradient clipping: argument checks, the one
 * dispatch point, and the plain C reference (kernels/optim.cu is the CUDA twin). */
#include "f2_internal.h"

#include <math.h>

static int check_adamw(const f2_tensor *p, const f2_tensor *m, const f2_tensor *v, const f2_tensor *g,
                       const f2_adamw_config *c) {
  const f2_tensor *all[4] = {p, m, v, g};
  const char *names[4] = {"param", "m", "v", "grad"};
  for (int i = 0; i < 4; i++) {
    if (!f2_tensor_is_contiguous(all[i])) return F2_FAIL(F2_ERR_ARG, "adamw: %s is not contiguous", names[i]);
    if (all[i]->device != p->device) return F2_FAIL(F2_ERR_ARG, "adamw: %s is on another device", names[i]);
    if (f2_tensor_numel(all[i]) != f2_tensor_numel(p))
      return F2_FAIL(F2_ERR_ARG, "adamw: %s has %lld elements, param has %lld", names[i],
                     (long long)f2_tensor_numel(all[i]), (long long)f2_tensor_numel(p));
    if (all[i]->dtype != F2_F32 && !(i == 3 && g->dtype == F2_BF16))
      return F2_FAIL(F2_ERR_ARG, "adamw: %s is %s, expected f32%s", names[i], f2_dtype_name(all[i]->dtype),
                     i == 3 ? " or bf16" : "");
  }
  if (c->step < 1) return F2_FAIL(F2_ERR_ARG, "adamw: step %lld, steps count from 1", (long long)c->step);
  if (!(c->beta1 >= 0 && c->beta1 < 1 && c->beta2 >= 0 && c->beta2 < 1 && c->eps > 0))
    return F2_FAIL(F2_ERR_ARG, "adamw: betas must lie in [0,1) and eps > 0 (got %g, %g, %g)", c->beta1, c->beta2,
                   c->eps);
  return F2_OK;
}

#ifndef F2_HAVE_CUDA
int f2_cuda_adamw_step(f2_tensor *p, f2_tensor *m, f2_tensor *v, const f2_tensor *g, const f2_adamw_config *c) {
  (void)p, (void)m, (void)v, (void)g, (void)c;
  return f2_cuda_require("adamw on a GPU tensor");
}
int f2_cuda_sum_squares(f2_tensor *out, const f2_tensor *const *tensors, int32_t n) {
  (void)out, (void)tensors, (void)n;
  return f2_cuda_require("a GPU reduction");
}
#endif

int f2_adamw_step(f2_tensor *p, f2_tensor *m, f2_tensor *v, const f2_tensor *g, const f2_adamw_config *c) {
  F2_TRY(check_adamw(p, m, v, g, c));
  if (p->device == F2_CUDA) return f2_cuda_adamw_step(p, m, v, g, c);
  /* Same float arithmetic, in the same order, as the CUDA kernel. */
  float *pp = p->data, *mm = m->data, *vv = v->data;
  const float bc1 = 1.0f - powf(c->beta1, (float)c->step), bc2 = 1.0f - powf(c->beta2, (float)c->step);
  const float decay = 1.0f - c->lr * c->weight_decay;
  int64_t n = f2_tensor_numel(p);
  for (int64_t i = 0; i < n; i++) {
    float gi = g->dtype == F2_F32 ? ((const float *)g->data)[i] : f2_bf16_to_f32(((const uint16_t *)g->data)[i]);
    gi *= c->grad_scale;
    float mi = c->beta1 * mm[i] + (1.0f - c->beta1) * gi;
    float vi = c->beta2 * vv[i] + (1.0f - c->beta2) * gi * gi;
    mm[i] = mi;
    vv[i] = vi;
    pp[i] = pp[i] * decay - c->lr * (mi / bc1) / (sqrtf(vi / bc2) + c->eps);
  }
  return F2_OK;
}

int f2_sum_squares(f2_tensor *out, const f2_tensor *const *tensors, int32_t n) {
  if (out->dtype != F2_F32 || f2_tensor_numel(out) != 1)
    return F2_FAIL(F2_ERR_ARG, "sum_squares: out must be one f32 element");
  for (int32_t i = 0; i < n; i++) {
    const f2_tensor *t = tensors[i];
    if (t->device != out->device) return F2_FAIL(F2_ERR_ARG, "sum_squares: tensor %d is on another device", i);
    if (!f2_tensor_is_contiguous(t)) return F2_FAIL(F2_ERR_ARG, "sum_squares: tensor %d is not contiguous", i);
    if (t->dtype != F2_F32 && t->dtype != F2_BF16)
      return F2_FAIL(F2_ERR_ARG, "sum_squares: tensor %d is %s, expected f32 or bf16", i, f2_dtype_name(t->dtype));
  }
  if (out->device == F2_CUDA) return f2_cuda_sum_squares(out, tensors, n);
  double total = 0;
  for (int32_t i = 0; i < n; i++) {
    const f2_tensor *t = tensors[i];
    int64_t len = f2_tensor_numel(t);
    for (int64_t j = 0; j < len; j++) {
      double x = t->dtype == F2_F32 ? ((const float *)t->data)[j] : f2_bf16_to_f32(((const uint16_t *)t->data)[j]);
      total += x * x;
    }
  }
  *(float *)out->data = (float)total;
  return F2_OK;
}
