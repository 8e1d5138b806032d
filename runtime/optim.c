/* optim.c — AdamW and the squared-norm reduction behind gradient clipping: argument checks, the one
 * dispatch point, and the plain C reference (kernels/optim.cu is the CUDA twin). */
#include "f2_internal.h"

#include <math.h>

/* The four tensors of an AdamW step (shared by both entry points). */
static int check_adamw_tensors(const char *op, const f2_tensor *p, const f2_tensor *m, const f2_tensor *v,
                               const f2_tensor *g) {
  const f2_tensor *all[4] = {p, m, v, g};
  const char *names[4] = {"param", "m", "v", "grad"};
  for (int i = 0; i < 4; i++) {
    if (!all[i]) return F2_FAIL(F2_ERR_ARG, "%s: %s is NULL", op, names[i]);
    if (!f2_tensor_is_contiguous(all[i])) return F2_FAIL(F2_ERR_ARG, "%s: %s is not contiguous", op, names[i]);
    if (all[i]->device != p->device) return F2_FAIL(F2_ERR_ARG, "%s: %s is on another device", op, names[i]);
    if (f2_tensor_numel(all[i]) != f2_tensor_numel(p))
      return F2_FAIL(F2_ERR_ARG, "%s: %s has %lld elements, param has %lld", op, names[i],
                     (long long)f2_tensor_numel(all[i]), (long long)f2_tensor_numel(p));
    if (all[i]->dtype != F2_F32 && !(i == 3 && g->dtype == F2_BF16))
      return F2_FAIL(F2_ERR_ARG, "%s: %s is %s, expected f32%s", op, names[i], f2_dtype_name(all[i]->dtype),
                     i == 3 ? " or bf16" : "");
  }
  return F2_OK;
}

static int check_adamw(const f2_tensor *p, const f2_tensor *m, const f2_tensor *v, const f2_tensor *g,
                       const f2_adamw_config *c) {
  F2_TRY(check_adamw_tensors("adamw", p, m, v, g));
  if (!c) return F2_FAIL(F2_ERR_ARG, "adamw: config is NULL");
  if (c->step < 1) return F2_FAIL(F2_ERR_ARG, "adamw: step %lld, steps count from 1", (long long)c->step);
  if (!(c->beta1 >= 0 && c->beta1 < 1 && c->beta2 >= 0 && c->beta2 < 1 && c->eps > 0))
    return F2_FAIL(F2_ERR_ARG, "adamw: betas must lie in [0,1) and eps > 0 (got %g, %g, %g)", c->beta1, c->beta2,
                   c->eps);
  return F2_OK;
}

/* hparams and sumsq of f2_adamw_step_dev: f32, contiguous, on the parameter's device. Their values are
 * not checked (on a GPU that would wait for it). */
static int check_adamw_dev(const f2_tensor *p, const f2_tensor *m, const f2_tensor *v, const f2_tensor *g,
                           const f2_tensor *hparams, const f2_tensor *sumsq) {
  const char *op = "adamw_step_dev";
  F2_TRY(check_adamw_tensors(op, p, m, v, g));
  const f2_tensor *t[2] = {hparams, sumsq};
  const char *names[2] = {"hparams", "sumsq"};
  const int64_t want[2] = {F2_ADAMW_HPARAMS, 1};
  for (int i = 0; i < 2; i++) {
    if (!t[i]) return F2_FAIL(F2_ERR_ARG, "%s: %s is NULL", op, names[i]);
    if (t[i]->device != p->device)
      return F2_FAIL(F2_ERR_ARG, "%s: %s must be on the parameter's device (%s)", op, names[i],
                     p->device == F2_CUDA ? "cuda" : "cpu");
    if (t[i]->dtype != F2_F32 || f2_tensor_numel(t[i]) != want[i] || !f2_tensor_is_contiguous(t[i]))
      return F2_FAIL(F2_ERR_ARG, "%s: %s must be %lld contiguous f32 (is %s with %lld elements)", op, names[i],
                     (long long)want[i], f2_dtype_name(t[i]->dtype), (long long)f2_tensor_numel(t[i]));
  }
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

/* The update of one element; the CUDA kernels do the same float operations in the same order (without
 * fusing multiply-adds), so CPU and GPU agree to the bit. */
typedef struct adamw_scalars {
  float lr, beta1, beta2, eps, decay, bc1, bc2, grad_scale;
} adamw_scalars;

static inline void adamw_update(float *p, float *m, float *v, float g, const adamw_scalars *s) {
  float gi = g * s->grad_scale;
  float mi = s->beta1 * *m + (1.0f - s->beta1) * gi;
  float vi = s->beta2 * *v + (1.0f - s->beta2) * gi * gi;
  *m = mi;
  *v = vi;
  *p = *p * s->decay - s->lr * (mi / s->bc1) / (sqrtf(vi / s->bc2) + s->eps);
}

static void adamw_cpu(f2_tensor *p, f2_tensor *m, f2_tensor *v, const f2_tensor *g, const adamw_scalars *s) {
  float *pp = p->data, *mm = m->data, *vv = v->data;
  int64_t n = f2_tensor_numel(p);
  if (g->dtype == F2_F32) {
    const float *gg = g->data;
    for (int64_t i = 0; i < n; i++) adamw_update(&pp[i], &mm[i], &vv[i], gg[i], s);
  } else {
    const uint16_t *gg = g->data;
    for (int64_t i = 0; i < n; i++) adamw_update(&pp[i], &mm[i], &vv[i], f2_bf16_to_f32(gg[i]), s);
  }
}

int f2_adamw_step(f2_tensor *p, f2_tensor *m, f2_tensor *v, const f2_tensor *g, const f2_adamw_config *c) {
  F2_TRY(check_adamw(p, m, v, g, c));
  if (p->device == F2_CUDA) return F2_PROFILED("adamw", f2_cuda_adamw_step(p, m, v, g, c));
  adamw_scalars s = {c->lr, c->beta1, c->beta2, c->eps, 1.0f - c->lr * c->weight_decay,
                     1.0f - powf(c->beta1, (float)c->step), 1.0f - powf(c->beta2, (float)c->step), c->grad_scale};
  adamw_cpu(p, m, v, g, &s);
  return F2_OK;
}

int f2_adamw_step_dev(f2_tensor *p, f2_tensor *m, f2_tensor *v, const f2_tensor *g, const f2_tensor *hparams,
                      const f2_tensor *sumsq) {
  F2_TRY(check_adamw_dev(p, m, v, g, hparams, sumsq));
  if (p->device == F2_CUDA) return F2_PROFILED("adamw", f2_cuda_adamw_step_dev(p, m, v, g, hparams, sumsq));
  const float *h = hparams->data, ss = *(const float *)sumsq->data;
  if (!isfinite(ss)) return F2_OK; /* an overflowed or NaN gradient: skip the step */
  /* Clip to the global norm: the same float operations as the kernel. */
  const float norm = sqrtf(ss), max_norm = h[F2_ADAMW_MAX_NORM];
  adamw_scalars s = {h[F2_ADAMW_LR], h[F2_ADAMW_BETA1], h[F2_ADAMW_BETA2], h[F2_ADAMW_EPS],
                     1.0f - h[F2_ADAMW_LR] * h[F2_ADAMW_WEIGHT_DECAY], h[F2_ADAMW_BC1], h[F2_ADAMW_BC2],
                     max_norm > 0 && norm > max_norm ? max_norm / norm : 1.0f};
  adamw_cpu(p, m, v, g, &s);
  return F2_OK;
}

int f2_sum_squares(f2_tensor *out, const f2_tensor *const *tensors, int32_t n) {
  if (!out || n < 0 || (n > 0 && !tensors))
    return F2_FAIL(F2_ERR_ARG, "sum_squares: out is NULL, n < 0, or the tensor list is NULL");
  if (out->dtype != F2_F32 || f2_tensor_numel(out) != 1)
    return F2_FAIL(F2_ERR_ARG, "sum_squares: out must be one f32 element");
  for (int32_t i = 0; i < n; i++) {
    const f2_tensor *t = tensors[i];
    if (!t) return F2_FAIL(F2_ERR_ARG, "sum_squares: tensor %d is NULL", i);
    if (t->device != out->device) return F2_FAIL(F2_ERR_ARG, "sum_squares: tensor %d is on another device", i);
    if (!f2_tensor_is_contiguous(t)) return F2_FAIL(F2_ERR_ARG, "sum_squares: tensor %d is not contiguous", i);
    if (t->dtype != F2_F32 && t->dtype != F2_BF16)
      return F2_FAIL(F2_ERR_ARG, "sum_squares: tensor %d is %s, expected f32 or bf16", i, f2_dtype_name(t->dtype));
  }
  if (out->device == F2_CUDA) return F2_PROFILED("sum_squares", f2_cuda_sum_squares(out, tensors, n));
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
