/* fairy2.c — Fairy2i quantization (FAIRY2I.md): argument checks, the one dispatch point per op, and the
 * plain C reference (kernels/fairy2.cu is the CUDA twin; f2_fairy2.h holds the per-entry arithmetic both
 * share; docs/fairy2.md explains the choices). fp32 R (2n x 2m) in; R_hat f32 or bf16 out.
 * The CPU passes run on OpenMP threads over rows, or over the canonical reduction's blocks, whose sums
 * never depend on who computes them: the same bits on any thread count, and the same as the GPU. */
#include "f2_internal.h"
#include "f2_fairy2.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Complex entries below which a pass stays on one thread (a parallel region costs microseconds). */
enum { PARALLEL_MIN = 1 << 14 };

/* ---------------------------------------------------------------- argument checks */

static int check_config(const char *op, const f2_quant_config *cfg) {
  if (!cfg) return F2_FAIL(F2_ERR_ARG, "%s: no quantization config", op);
  if (cfg->stages < 1) return F2_FAIL(F2_ERR_ARG, "%s: stages = %d, needs T >= 1", op, (int)cfg->stages);
  if (cfg->granularity < F2_FAIRY2_PER_TENSOR || cfg->granularity > F2_FAIRY2_PER_GROUP)
    return F2_FAIL(F2_ERR_ARG, "%s: granularity %d is none of per tensor (0), per row (1), per group (2)", op,
                   (int)cfg->granularity);
  if (cfg->granularity == F2_FAIRY2_PER_GROUP && cfg->group_size < 1)
    return F2_FAIL(F2_ERR_ARG, "%s: group_size = %d, needs G >= 1 for per-group scales", op, (int)cfg->group_size);
  return F2_OK;
}

/* R: f32, 2-D, contiguous, both dimensions even and non-zero. */
static int check_r(const char *op, const char *name, const f2_tensor *r) {
  if (!r) return F2_FAIL(F2_ERR_ARG, "%s: %s is NULL", op, name);
  if (r->ndim != 2) return F2_FAIL(F2_ERR_ARG, "%s: %s has %d dims, expected a 2-D (out x in) weight", op, name, (int)r->ndim);
  if (r->dtype != F2_F32) return F2_FAIL(F2_ERR_ARG, "%s: %s is %s, expected f32", op, name, f2_dtype_name(r->dtype));
  if (!f2_tensor_is_contiguous(r)) return F2_FAIL(F2_ERR_ARG, "%s: %s is not contiguous", op, name);
  if (r->shape[0] < 2 || r->shape[1] < 2 || r->shape[0] % 2 || r->shape[1] % 2)
    return F2_FAIL(F2_ERR_ARG,
                   "%s: %s is %lldx%lld; Fairy2i needs both dimensions even and non-zero (such a layer stays "
                   "full precision)", op, name, (long long)r->shape[0], (long long)r->shape[1]);
  return F2_OK;
}

/* An output or input of a given dtype, contiguous, exactly this shape, on the device. */
static int check_tensor(const char *op, const char *name, const f2_tensor *t, int32_t dtype, int32_t device,
                        int32_t ndim, const int64_t *shape) {
  if (!t) return F2_FAIL(F2_ERR_ARG, "%s: %s is NULL", op, name);
  if (t->dtype != dtype)
    return F2_FAIL(F2_ERR_ARG, "%s: %s is %s, expected %s", op, name, f2_dtype_name(t->dtype), f2_dtype_name(dtype));
  if (t->device != device) return F2_FAIL(F2_ERR_ARG, "%s: %s is on another device than R", op, name);
  if (!f2_tensor_is_contiguous(t)) return F2_FAIL(F2_ERR_ARG, "%s: %s is not contiguous", op, name);
  int same = t->ndim == ndim;
  for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
  if (!same) {
    char want[96] = "", got[96] = "";
    for (int d = 0; d < ndim; d++)
      snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? "x" : "", (long long)shape[d]);
    for (int d = 0; d < t->ndim; d++)
      snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? "x" : "", (long long)t->shape[d]);
    return F2_FAIL(F2_ERR_ARG, "%s: %s has shape %s, expected %s", op, name, t->ndim ? got : "()", want);
  }
  return F2_OK;
}

int64_t f2_fairy2_scale_groups(const f2_quant_config *cfg, int64_t rows, int64_t cols) {
  if (check_config("fairy2 scale groups", cfg) != F2_OK) return -1;
  if (rows < 2 || cols < 2 || rows % 2 || cols % 2) {
    F2_FAIL(F2_ERR_ARG, "fairy2 scale groups: %lldx%lld is not a (2n x 2m) weight", (long long)rows, (long long)cols);
    return -1;
  }
  int64_t n = rows / 2, m = cols / 2;
  if (cfg->granularity == F2_FAIRY2_PER_TENSOR) return 1;
  if (cfg->granularity == F2_FAIRY2_PER_ROW) return n;
  return n * ((m + cfg->group_size - 1) / cfg->group_size);
}


/* ---------------------------------------------------------------- split and rebuild */

int f2_fairy2_split(f2_tensor *u_re, f2_tensor *u_im, f2_tensor *w_re, f2_tensor *w_im, const f2_tensor *r) {
  const char *op = "fairy2 split";
  F2_TRY(check_r(op, "R", r));
  int64_t n = r->shape[0] / 2, m = r->shape[1] / 2, shape[2] = {n, m};
  f2_tensor *planes[4] = {u_re, u_im, w_re, w_im};
  const char *names[4] = {"U re", "U im", "W re", "W im"};
  for (int p = 0; p < 4; p++) F2_TRY(check_tensor(op, names[p], planes[p], F2_F32, r->device, 2, shape));
  if (r->device == F2_CUDA) return f2_cuda_fairy2_split(u_re, u_im, w_re, w_im, r);
  const float *R = r->data;
  float *ur = u_re->data, *ui = u_im->data, *wr = w_re->data, *wi = w_im->data;
#pragma omp parallel for schedule(static) if (n * m >= PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++) {
    const float *top = R + i * 2 * m, *bottom = R + (n + i) * 2 * m;
    for (int64_t j = 0; j < m; j++) {
      f2q_uw v = f2q_split(top[j], top[m + j], bottom[j], bottom[m + j]);
      int64_t o = i * m + j;
      ur[o] = v.u_re, ui[o] = v.u_im, wr[o] = v.w_re, wi[o] = v.w_im;
    }
  }
  return F2_OK;
}

int f2_fairy2_rebuild(f2_tensor *r, const f2_tensor *u_re, const f2_tensor *u_im, const f2_tensor *w_re,
                      const f2_tensor *w_im) {
  const char *op = "fairy2 rebuild";
  F2_TRY(check_r(op, "R", r));
  int64_t n = r->shape[0] / 2, m = r->shape[1] / 2, shape[2] = {n, m};
  const f2_tensor *planes[4] = {u_re, u_im, w_re, w_im};
  const char *names[4] = {"U re", "U im", "W re", "W im"};
  for (int p = 0; p < 4; p++) F2_TRY(check_tensor(op, names[p], planes[p], F2_F32, r->device, 2, shape));
  if (r->device == F2_CUDA) return f2_cuda_fairy2_rebuild(r, u_re, u_im, w_re, w_im);
  float *R = r->data;
  const float *ur = u_re->data, *ui = u_im->data, *wr = w_re->data, *wi = w_im->data;
#pragma omp parallel for schedule(static) if (n * m >= PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++) {
    float *top = R + i * 2 * m, *bottom = R + (n + i) * 2 * m;
    for (int64_t j = 0; j < m; j++) {
      int64_t o = i * m + j;
      f2q_uw v = {ur[o], ui[o], wr[o], wi[o]};
      f2q_rebuild(&top[j], &top[m + j], &bottom[j], &bottom[m + j], v);
    }
  }
  return F2_OK;
}

/* ---------------------------------------------------------------- quantize: the CPU reference */

/* One layer's geometry and outputs, as the passes below see them. */
typedef struct layer {
  const float *r;
  int64_t n, m;
  float *scales;      /* (T, 4, S) */
  int64_t groups;     /* S */
  int64_t per_row;    /* scale groups per row: 0 per tensor, 1 per row, ceil(m/G) per group */
  int64_t width;      /* columns of a row's group: m, or G */
  uint8_t *codes;     /* (T, 2, n, m) or NULL */
  void *r_hat;        /* R's shape, or NULL */
  int32_t r_hat_dtype;
  int32_t stages;
} layer;

static inline float scale_at(const layer *L, int t, int c, int64_t s) {
  return L->scales[((int64_t)t * 4 + c) * L->groups + s];
}

/* The scale group of entry (i, j). */
static inline int64_t group_of(const layer *L, int64_t i, int64_t j) {
  return L->per_row ? i * L->per_row + j / L->width : 0;
}

/* The U and W residuals of entry (i, j) after stages [0, t) of scale group s. */
static inline f2q_uw residual(const layer *L, int64_t i, int64_t j, int64_t s, int t, int *nonfinite) {
  const float *top = L->r + i * 2 * L->m, *bottom = L->r + (L->n + i) * 2 * L->m;
  float r11 = top[j], r12 = top[L->m + j], r21 = bottom[j], r22 = bottom[L->m + j];
  *nonfinite = !(isfinite(r11) && isfinite(r12) && isfinite(r21) && isfinite(r22));
  f2q_uw v = f2q_split(r11, r12, r21, r22);
  float hat[4] = {0, 0, 0, 0};
  for (int tt = 0; tt < t; tt++) {
    f2q_stage(&v.u_re, &v.u_im, &hat[0], &hat[1], scale_at(L, tt, 0, s), scale_at(L, tt, 1, s));
    f2q_stage(&v.w_re, &v.w_im, &hat[2], &hat[3], scale_at(L, tt, 2, s), scale_at(L, tt, 3, s));
  }
  return v;
}

/* a[i] += a[i + s] for s = count/2 .. 1 over count lanes of F2Q_ACCS doubles: the canonical tree. */
static void tree(double *lanes, int count) {
  for (int s = count / 2; s > 0; s /= 2)
    for (int i = 0; i < s; i++)
      for (int a = 0; a < F2Q_ACCS; a++) lanes[i * F2Q_ACCS + a] += lanes[(i + s) * F2Q_ACCS + a];
}

/* Stage t's scales of group s = rows [i0, i1) x cols [j0, j1), reduced in the canonical shape of
 * f2_fairy2.h (lanes_per_block x blocks lanes; entry c of the group, row-major, to lane c mod that). */
static void reduce_group(layer *L, int64_t i0, int64_t i1, int64_t j0, int64_t j1, int64_t s, int t,
                         int lanes_per_block, int blocks) {
  double block_sums[F2Q_BLOCKS * F2Q_ACCS];
  int64_t width = j1 - j0, entries = (i1 - i0) * width, lanes_total = (int64_t)lanes_per_block * blocks;
  /* Blocks are independent (as on the GPU): on threads, each summing its own lanes into its slot. */
#pragma omp parallel for schedule(static) if (blocks > 1 && entries >= PARALLEL_MIN)
  for (int b = 0; b < blocks; b++) {
    double lanes[F2Q_LANES * F2Q_ACCS];
    memset(lanes, 0, sizeof lanes);
    /* Lane l of block b sees entries c = b*lanes_per_block + l + k*lanes_total, k = 0, 1, ...: runs of
     * lanes_per_block consecutive entries, visited in increasing k, so each lane sums in entry order. */
    for (int64_t base = (int64_t)b * lanes_per_block; base < entries; base += lanes_total) {
      int64_t i = i0 + base / width, j = j0 + base % width;
      for (int l = 0; l < lanes_per_block && base + l < entries; l++) {
        double *acc = lanes + l * F2Q_ACCS;
        int nonfinite;
        f2q_uw v = residual(L, i, j, s, t, &nonfinite);
        acc[F2Q_NONFINITE] += nonfinite;
        f2q_accumulate(acc, F2Q_SUM_RE_U, f2q_code(v.u_re, v.u_im), v.u_re, v.u_im);
        f2q_accumulate(acc, F2Q_SUM_RE_W, f2q_code(v.w_re, v.w_im), v.w_re, v.w_im);
        if (++j == j1) j = j0, i++;
      }
    }
    tree(lanes, lanes_per_block);
    memcpy(block_sums + b * F2Q_ACCS, lanes, F2Q_ACCS * sizeof(double));
  }
  tree(block_sums, blocks);
  float four[4];
  f2q_scales_from(four, block_sums, (double)entries);
  for (int c = 0; c < 4; c++) L->scales[((int64_t)t * 4 + c) * L->groups + s] = four[c];
}

/* Rebuilds entry (i, j) of R_hat from the reconstructed U and W. */
static void store_hat(const layer *L, int64_t i, int64_t j, f2q_uw hat) {
  int64_t n = L->n, m = L->m;
  float q[4];
  f2q_rebuild(&q[0], &q[1], &q[2], &q[3], hat);
  int64_t at[4] = {i * 2 * m + j, i * 2 * m + m + j, (n + i) * 2 * m + j, (n + i) * 2 * m + m + j};
  for (int e = 0; e < 4; e++) {
    if (L->r_hat_dtype == F2_F32) ((float *)L->r_hat)[at[e]] = q[e];
    else ((uint16_t *)L->r_hat)[at[e]] = f2_f32_to_bf16(q[e]);
  }
}

/* The final pass over group s: every stage with its scales, codes and R_hat written. */
static void write_group(layer *L, int64_t i0, int64_t i1, int64_t j0, int64_t j1, int64_t s) {
  int64_t n = L->n, m = L->m, plane = n * m;
#pragma omp parallel for schedule(static) if (i1 - i0 > 1 && (i1 - i0) * (j1 - j0) >= PARALLEL_MIN)
  for (int64_t i = i0; i < i1; i++)
    for (int64_t j = j0; j < j1; j++) {
      const float *top = L->r + i * 2 * m, *bottom = L->r + (n + i) * 2 * m;
      f2q_uw v = f2q_split(top[j], top[m + j], bottom[j], bottom[m + j]);
      f2q_uw hat = {0, 0, 0, 0};
      for (int t = 0; t < L->stages; t++) {
        int ku = f2q_stage(&v.u_re, &v.u_im, &hat.u_re, &hat.u_im, scale_at(L, t, 0, s), scale_at(L, t, 1, s));
        int kw = f2q_stage(&v.w_re, &v.w_im, &hat.w_re, &hat.w_im, scale_at(L, t, 2, s), scale_at(L, t, 3, s));
        if (L->codes) {
          L->codes[(2 * (int64_t)t) * plane + i * m + j] = (uint8_t)ku;
          L->codes[(2 * (int64_t)t + 1) * plane + i * m + j] = (uint8_t)kw;
        }
      }
      if (L->r_hat) store_hat(L, i, j, hat);
    }
}

/* The flat index of R's first non-finite element, or -1. */
static int64_t first_nonfinite(const float *r, int64_t numel) {
  enum { SPAN = 1 << 16 };   /* spans scanned on threads; the smallest hit wins, as a serial scan finds */
  int64_t first = numel;
#pragma omp parallel for schedule(static) reduction(min : first) if (numel >= 4 * SPAN)
  for (int64_t e0 = 0; e0 < numel; e0 += SPAN) {
    int64_t e1 = e0 + SPAN < numel ? e0 + SPAN : numel;
    for (int64_t e = e0; e < e1 && e < first; e++)
      if (!isfinite(r[e])) first = e;
  }
  return first < numel ? first : -1;
}

/* Passes over R: per tensor, T reductions (stage t needs every scale of stages < t, and each of those
 * is a sum over the whole tensor) and one writing pass; per row or group, the same per group. */
static void cpu_quantize(layer *L) {
  int64_t n = L->n, m = L->m;
  if (!L->per_row) {
    for (int t = 0; t < L->stages; t++) reduce_group(L, 0, n, 0, m, 0, t, F2Q_LANES, F2Q_BLOCKS);
    write_group(L, 0, n, 0, m, 0);
    return;
  }
  /* Per row or group: rows on threads, each group's passes as the serial order has them. */
#pragma omp parallel for schedule(static) if (n * m >= PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++)
    for (int64_t g = 0; g < L->per_row; g++) {
      int64_t j0 = g * L->width, j1 = j0 + L->width < m ? j0 + L->width : m, s = i * L->per_row + g;
      for (int t = 0; t < L->stages; t++) reduce_group(L, i, i + 1, j0, j1, s, t, F2Q_GROUP_LANES, 1);
      write_group(L, i, i + 1, j0, j1, s);
    }
}

/* ---------------------------------------------------------------- quantize: checks and dispatch */

static int check_layer(const char *op, int32_t index, f2_tensor *r_hat, f2_tensor *scales, f2_tensor *codes,
                       const f2_tensor *r, const f2_quant_config *cfg) {
  char name[64];
  snprintf(name, sizeof name, index < 0 ? "R" : "R[%d]", (int)index);
  F2_TRY(check_r(op, name, r));
  int64_t n = r->shape[0] / 2, m = r->shape[1] / 2, groups = f2_fairy2_scale_groups(cfg, r->shape[0], r->shape[1]);
  if (groups < 0) return F2_ERR_ARG;
  int64_t scale_shape[3] = {cfg->stages, 4, groups}, code_shape[4] = {cfg->stages, 2, n, m};
  snprintf(name, sizeof name, index < 0 ? "scales" : "scales[%d]", (int)index);
  F2_TRY(check_tensor(op, name, scales, F2_F32, r->device, 3, scale_shape));
  if (codes) {
    snprintf(name, sizeof name, index < 0 ? "codes" : "codes[%d]", (int)index);
    F2_TRY(check_tensor(op, name, codes, F2_U8, r->device, 4, code_shape));
  }
  if (r_hat) {
    snprintf(name, sizeof name, index < 0 ? "R_hat" : "R_hat[%d]", (int)index);
    F2_TRY(check_tensor(op, name, r_hat, r_hat->dtype == F2_BF16 ? F2_BF16 : F2_F32, r->device, 2, r->shape));
  }
  return F2_OK;
}

/* r_hat and codes may be NULL; r may be NULL when only the geometry of shape (2n x 2m) is wanted. */
static void layer_init(layer *L, void *r_hat, int32_t r_hat_dtype, const f2_tensor *scales, const f2_tensor *codes,
                       const float *r, const int64_t *shape, const f2_quant_config *cfg) {
  L->r = r;
  L->n = shape[0] / 2;
  L->m = shape[1] / 2;
  L->scales = scales->data;
  L->groups = scales->shape[2];
  L->width = cfg->granularity == F2_FAIRY2_PER_GROUP && cfg->group_size < L->m ? cfg->group_size : L->m;
  L->per_row = cfg->granularity == F2_FAIRY2_PER_TENSOR ? 0 : (L->m + L->width - 1) / L->width;
  L->codes = codes ? codes->data : NULL;
  L->r_hat = r_hat;
  L->r_hat_dtype = r_hat_dtype;
  L->stages = cfg->stages;
}

static int report_nonfinite(const char *op, int32_t index, const f2_tensor *r, int64_t at) {
  return F2_FAIL(F2_ERR_ARG,
                 "%s: %s has a non-finite value at [%lld, %lld] (set skip_finite_check to quantize it anyway)",
                 op, index < 0 ? "R" : "a layer's R", (long long)(at / r->shape[1]), (long long)(at % r->shape[1]));
}

enum { BATCH_CHUNK = 64 };   /* layers per CUDA call (bounds the stack arrays below) */

int f2_fairy2_quantize_batch(f2_tensor *const *r_hat, f2_tensor *const *scales, f2_tensor *const *codes,
                             const f2_tensor *const *r, int32_t count, const f2_quant_config *cfg) {
  const char *op = "fairy2 quantize";
  F2_TRY(check_config(op, cfg));
  if (count < 0) return F2_FAIL(F2_ERR_ARG, "%s: count = %d", op, (int)count);
  if (count > 0 && (!r_hat || !scales || !codes || !r))
    return F2_FAIL(F2_ERR_ARG, "%s: the arrays of tensors may not be NULL (their entries may, except R and scales)", op);
  for (int32_t l = 0; l < count; l++) {
    F2_TRY(check_layer(op, count == 1 ? -1 : l, r_hat[l], scales[l], codes[l], r[l], cfg));
    if (r[l]->device != r[0]->device) return F2_FAIL(F2_ERR_ARG, "%s: R[%d] is on another device than R[0]", op, (int)l);
  }
  int check = !cfg->skip_finite_check;
  for (int32_t c0 = 0; c0 < count; c0 += BATCH_CHUNK) {
    int32_t chunk = count - c0 < BATCH_CHUNK ? count - c0 : BATCH_CHUNK;
    int64_t bad[BATCH_CHUNK];
    if (r[0]->device == F2_CUDA) {
      F2_TRY(F2_PROFILED("fairy2_quantize", f2_cuda_fairy2_quantize(r_hat + c0, scales + c0, codes + c0, r + c0, chunk, cfg,
                                                                      check ? bad : NULL)));
    } else {
      for (int32_t l = 0; l < chunk; l++) {
        const f2_tensor *R = r[c0 + l];
        bad[l] = check ? first_nonfinite(R->data, f2_tensor_numel(R)) : -1;
        if (bad[l] >= 0) continue;   /* reported below, before anything of this layer is written */
        layer L;
        f2_tensor *out = r_hat[c0 + l];
        layer_init(&L, out ? out->data : NULL, out ? out->dtype : F2_F32, scales[c0 + l], codes[c0 + l], R->data,
                   R->shape, cfg);
        cpu_quantize(&L);
      }
    }
    if (check)
      for (int32_t l = 0; l < chunk; l++)
        if (bad[l] >= 0) return report_nonfinite(op, count == 1 ? -1 : c0 + l, r[c0 + l], bad[l]);
  }
  return F2_OK;
}

int f2_fairy2_quantize(f2_tensor *r_hat, f2_tensor *scales, f2_tensor *codes, const f2_tensor *r,
                       const f2_quant_config *cfg) {
  return f2_fairy2_quantize_batch(&r_hat, &scales, &codes, &r, 1, cfg);
}

/* ---------------------------------------------------------------- dequantize, pack, unpack */

int f2_fairy2_dequantize(f2_tensor *r_hat, const f2_tensor *scales, const f2_tensor *codes,
                         const f2_quant_config *cfg) {
  const char *op = "fairy2 dequantize";
  F2_TRY(check_config(op, cfg));
  if (!r_hat) return F2_FAIL(F2_ERR_ARG, "%s: R_hat is NULL", op);
  if (r_hat->dtype != F2_F32 && r_hat->dtype != F2_BF16)
    return F2_FAIL(F2_ERR_ARG, "%s: R_hat is %s, expected f32 or bf16", op, f2_dtype_name(r_hat->dtype));
  if (r_hat->device != F2_CPU) return F2_FAIL(F2_ERR_UNSUPPORTED, "%s runs on the CPU; R_hat is on a GPU", op);
  if (r_hat->ndim != 2 || r_hat->shape[0] % 2 || r_hat->shape[1] % 2 || r_hat->shape[0] < 2 || r_hat->shape[1] < 2 ||
      !f2_tensor_is_contiguous(r_hat))
    return F2_FAIL(F2_ERR_ARG, "%s: R_hat must be a contiguous (2n x 2m) matrix", op);
  int64_t n = r_hat->shape[0] / 2, m = r_hat->shape[1] / 2;
  int64_t groups = f2_fairy2_scale_groups(cfg, r_hat->shape[0], r_hat->shape[1]);
  int64_t scale_shape[3] = {cfg->stages, 4, groups}, code_shape[4] = {cfg->stages, 2, n, m};
  F2_TRY(check_tensor(op, "scales", scales, F2_F32, F2_CPU, 3, scale_shape));
  F2_TRY(check_tensor(op, "codes", codes, F2_U8, F2_CPU, 4, code_shape));
  const uint8_t *k = codes->data;
  for (int64_t e = 0; e < f2_tensor_numel(codes); e++)
    if (k[e] > 3) return F2_FAIL(F2_ERR_ARG, "%s: codes[%lld] = %d, codes are 0..3", op, (long long)e, k[e]);
  layer L;
  layer_init(&L, r_hat->data, r_hat->dtype, scales, NULL, NULL, r_hat->shape, cfg);
  int64_t plane = n * m;
#pragma omp parallel for schedule(static) if (plane >= PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < m; j++) {
      int64_t s = group_of(&L, i, j);
      f2q_uw hat = {0, 0, 0, 0};
      for (int t = 0; t < cfg->stages; t++) {
        f2q_add(&hat.u_re, &hat.u_im, k[2 * t * plane + i * m + j], scale_at(&L, t, 0, s), scale_at(&L, t, 1, s));
        f2q_add(&hat.w_re, &hat.w_im, k[(2 * t + 1) * plane + i * m + j], scale_at(&L, t, 2, s), scale_at(&L, t, 3, s));
      }
      store_hat(&L, i, j, hat);
    }
  return F2_OK;
}

/* codes (..., m) and packed (..., ceil(m/4)): u8, contiguous, CPU, equal leading dims. */
static int check_packing(const char *op, const f2_tensor *codes, const f2_tensor *packed) {
  const f2_tensor *both[2] = {codes, packed};
  const char *names[2] = {"codes", "packed"};
  for (int b = 0; b < 2; b++) {
    if (!both[b]) return F2_FAIL(F2_ERR_ARG, "%s: %s is NULL", op, names[b]);
    if (both[b]->dtype != F2_U8) return F2_FAIL(F2_ERR_ARG, "%s: %s is %s, expected u8", op, names[b], f2_dtype_name(both[b]->dtype));
    if (both[b]->device != F2_CPU) return F2_FAIL(F2_ERR_UNSUPPORTED, "%s runs on the CPU; %s is on a GPU", op, names[b]);
    if (!f2_tensor_is_contiguous(both[b])) return F2_FAIL(F2_ERR_ARG, "%s: %s is not contiguous", op, names[b]);
    if (both[b]->ndim < 1) return F2_FAIL(F2_ERR_ARG, "%s: %s is a scalar", op, names[b]);
  }
  int same = codes->ndim == packed->ndim;
  for (int d = 0; same && d < codes->ndim - 1; d++) same = codes->shape[d] == packed->shape[d];
  int64_t m = codes->shape[codes->ndim - 1];
  if (!same || packed->shape[packed->ndim - 1] != (m + 3) / 4)
    return F2_FAIL(F2_ERR_ARG, "%s: packed must have codes' shape with the last dim %lld -> %lld bytes", op,
                   (long long)m, (long long)((m + 3) / 4));
  return F2_OK;
}

int f2_fairy2_pack(f2_tensor *packed, const f2_tensor *codes) {
  const char *op = "fairy2 pack";
  F2_TRY(check_packing(op, codes, packed));
  int64_t m = codes->shape[codes->ndim - 1], bytes = (m + 3) / 4, rows = m ? f2_tensor_numel(codes) / m : 0;
  const uint8_t *k = codes->data;
  uint8_t *p = packed->data;
  for (int64_t e = 0; e < f2_tensor_numel(codes); e++)
    if (k[e] > 3) return F2_FAIL(F2_ERR_ARG, "%s: codes[%lld] = %d, codes are 0..3", op, (long long)e, k[e]);
  for (int64_t row = 0; row < rows; row++) {
    const uint8_t *src = k + row * m;
    uint8_t *dst = p + row * bytes;
    memset(dst, 0, (size_t)bytes);
    for (int64_t j = 0; j < m; j++) dst[j / 4] |= (uint8_t)(src[j] << (2 * (j % 4)));
  }
  return F2_OK;
}

int f2_fairy2_unpack(f2_tensor *codes, const f2_tensor *packed) {
  const char *op = "fairy2 unpack";
  F2_TRY(check_packing(op, codes, packed));
  int64_t m = codes->shape[codes->ndim - 1], bytes = (m + 3) / 4, rows = m ? f2_tensor_numel(codes) / m : 0;
  const uint8_t *p = packed->data;
  uint8_t *k = codes->data;
  if (m % 4) { /* the padding of each row's last byte must be zero, so pack(unpack(p)) == p */
    uint8_t used = (uint8_t)((1u << (2 * (m % 4))) - 1);
    for (int64_t row = 0; row < rows; row++)
      if (p[row * bytes + bytes - 1] & ~used)
        return F2_FAIL(F2_ERR_FORMAT, "%s: row %lld has non-zero padding bits in its last byte", op, (long long)row);
  }
  for (int64_t row = 0; row < rows; row++)
    for (int64_t j = 0; j < m; j++) k[row * m + j] = (uint8_t)((p[row * bytes + j / 4] >> (2 * (j % 4))) & 3u);
  return F2_OK;
}

/* ---------------------------------------------------------------- diagnostics */

int f2_fairy2_stats(f2_fairy2_stage_stats *out, const f2_tensor *r, const f2_quant_config *cfg) {
  const char *op = "fairy2 stats";
  F2_TRY(check_config(op, cfg));
  F2_TRY(check_r(op, "R", r));
  if (!out) return F2_FAIL(F2_ERR_ARG, "%s: out is NULL", op);
  int T = cfg->stages;
  int64_t rows = r->shape[0], cols = r->shape[1], n = rows / 2, m = cols / 2, plane = n * m;
  int64_t groups = f2_fairy2_scale_groups(cfg, rows, cols);
  int64_t shape_r[2] = {rows, cols}, shape_s[3] = {T, 4, groups}, shape_c[4] = {T, 2, n, m};
  f2_tensor *host = NULL, *scales = f2_tensor_new(F2_F32, F2_CPU, 3, shape_s);
  f2_tensor *codes = f2_tensor_new(F2_U8, F2_CPU, 4, shape_c);
  double *err2 = calloc((size_t)T, sizeof(double));
  int rc = scales && codes && err2 ? F2_OK : F2_FAIL(F2_ERR_MEM, "%s: out of host memory", op);
  const f2_tensor *src = r;
  if (rc == F2_OK && r->device == F2_CUDA) {
    host = f2_tensor_new(F2_F32, F2_CPU, 2, shape_r);
    rc = host ? f2_cuda_memcpy(host->data, r->data, f2_tensor_nbytes(r), F2_MEMCPY_D2H) : F2_ERR_MEM;
    src = host;
  }
  if (rc == F2_OK) rc = f2_fairy2_quantize(NULL, scales, codes, src, cfg);
  if (rc == F2_OK) {
    layer L;
    layer_init(&L, NULL, F2_F32, scales, codes, src->data, src->shape, cfg);
    const uint8_t *k = codes->data;
    double norm2 = 0;
    for (int t = 0; t < T; t++) out[t] = (f2_fairy2_stage_stats){0};
    for (int64_t i = 0; i < n; i++)
      for (int64_t j = 0; j < m; j++) {
        const float *top = L.r + i * 2 * m, *bottom = L.r + (n + i) * 2 * m;
        float orig[4] = {top[j], top[m + j], bottom[j], bottom[m + j]};
        for (int e = 0; e < 4; e++) norm2 += (double)orig[e] * orig[e];
        int64_t s = group_of(&L, i, j);
        f2q_uw hat = {0, 0, 0, 0};
        for (int t = 0; t < T; t++) {
          int ku = k[2 * t * plane + i * m + j], kw = k[(2 * t + 1) * plane + i * m + j];
          out[t].real_share_u += (ku & 1) == 0;
          out[t].real_share_w += (kw & 1) == 0;
          f2q_add(&hat.u_re, &hat.u_im, ku, scale_at(&L, t, 0, s), scale_at(&L, t, 1, s));
          f2q_add(&hat.w_re, &hat.w_im, kw, scale_at(&L, t, 2, s), scale_at(&L, t, 3, s));
          float q[4];
          f2q_rebuild(&q[0], &q[1], &q[2], &q[3], hat);
          for (int e = 0; e < 4; e++) err2[t] += ((double)orig[e] - q[e]) * ((double)orig[e] - q[e]);
        }
      }
    const float *sc = scales->data;
    for (int t = 0; t < T; t++) {
      out[t].rel_error = norm2 > 0 ? sqrt(err2[t] / norm2) : 0;
      out[t].real_share_u /= (double)plane;
      out[t].real_share_w /= (double)plane;
      for (int c = 0; c < 4; c++) {
        double sum = 0;
        for (int64_t s = 0; s < groups; s++) sum += sc[((int64_t)t * 4 + c) * groups + s];
        out[t].scale_mean[c] = sum / (double)groups;
      }
    }
  }
  free(err2);
  f2_tensor_free(codes);
  f2_tensor_free(scales);
  f2_tensor_free(host);
  return rc;
}

/* ---------------------------------------------------------------- A8 activation fake-quantization */

int f2_fake_quant_int8(f2_tensor *out, const f2_tensor *x) {
  const char *op = "fake quant int8";
  if (!out || !x) return F2_FAIL(F2_ERR_ARG, "%s: NULL tensor", op);
  if (x->dtype != F2_F32 && x->dtype != F2_BF16)
    return F2_FAIL(F2_ERR_ARG, "%s: x is %s, expected f32 or bf16", op, f2_dtype_name(x->dtype));
  if (x->ndim < 1) return F2_FAIL(F2_ERR_ARG, "%s: x is a scalar; rows run along the last dim", op);
  F2_TRY(check_tensor(op, "out", out, x->dtype, x->device, x->ndim, x->shape));
  if (!f2_tensor_is_contiguous(x)) return F2_FAIL(F2_ERR_ARG, "%s: x is not contiguous", op);
  if (x->device == F2_CUDA) return f2_cuda_fake_quant_int8(out, x);
  int64_t d = x->shape[x->ndim - 1], rows = d ? f2_tensor_numel(x) / d : 0;
  int bf16 = x->dtype == F2_BF16;
#pragma omp parallel for schedule(static) if (rows * d >= PARALLEL_MIN)
  for (int64_t row = 0; row < rows; row++) {
    float absmax = 0;
    for (int64_t j = 0; j < d; j++) {
      int64_t e = row * d + j;
      float v = bf16 ? f2_bf16_to_f32(((const uint16_t *)x->data)[e]) : ((const float *)x->data)[e];
      absmax = fmaxf(absmax, fabsf(v));
    }
    float s = 127.0f / fmaxf(absmax, 1e-5f);
    for (int64_t j = 0; j < d; j++) {
      int64_t e = row * d + j;
      float v = bf16 ? f2_bf16_to_f32(((const uint16_t *)x->data)[e]) : ((const float *)x->data)[e];
      float q = fminf(fmaxf(rintf(v * s), -128.0f), 127.0f) / s;
      if (bf16) ((uint16_t *)out->data)[e] = f2_f32_to_bf16(q);
      else ((float *)out->data)[e] = q;
    }
  }
  return F2_OK;
}
