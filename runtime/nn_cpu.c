/* nn_cpu.c — the model ops of the Llama/Qwen3 family (embedding, RMSNorm, RoPE, causal GQA attention,
 * SwiGLU, cross-entropy), forward and backward: argument checks, the device dispatch and the plain-C
 * reference. Float inputs f32 or bf16, math in fp32 (sums in double), gradients that accumulate are f32.
 * Every tensor must be contiguous (RoPE's and SwiGLU's may also be row-strided views). When the tensors
 * are on a GPU, the op goes to its CUDA kernel after the checks (kernels/nn.cu, attention.cu). Loops run
 * on OpenMP threads over independent rows, heads or columns, never splitting a sum, so results do not
 * depend on the thread count; attention goes through f2_cpu_matmul (OpenBLAS when built with it). */
#include "f2_internal.h"
#include "ops_cpu.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Head dims up to this fit the attention's on-stack accumulator (no allocation per call). */
enum { ATTN_MAX_HEAD_DIM = 1024 };
/* Elements below which a loop stays on one thread (about a millisecond of work: a parallel region
 * waits for its slowest thread, which on a busy machine can take a scheduler time slice); attention
 * works in blocks of ATTN_BLOCK queries (bounds its per-thread scratch). */
enum { PARALLEL_MIN = 1 << 19, ATTN_BLOCK = 64 };

enum { FLOAT = F2_ARG_FLOAT, F32_ONLY = F2_ARG_F32, I32_ONLY = F2_ARG_I32 };

const char *f2_shape_str(const f2_tensor *t, char *buf, size_t size) {
  int n = snprintf(buf, size, "[");
  for (int i = 0; i < t->ndim && n < (int)size; i++)
    n += snprintf(buf + n, size - n, i ? ",%lld" : "%lld", (long long)t->shape[i]);
  if (n < (int)size) snprintf(buf + n, size - n, "]");
  return buf;
}

/* Every tensor argument passes here: present, contiguous (optional for row-strided arguments, which check
 * their layout apart), of an accepted dtype. */
static int check_arg(const char *op, const char *name, const f2_tensor *t, int kind, int contiguous) {
  if (!t) return F2_FAIL(F2_ERR_ARG, "%s: %s is NULL", op, name);
  if (t->device != F2_CPU && t->device != F2_CUDA)
    return F2_FAIL(F2_ERR_ARG, "%s: %s has unknown device %d", op, name, (int)t->device);
  if (contiguous && !f2_tensor_is_contiguous(t)) return F2_FAIL(F2_ERR_ARG, "%s: %s must be contiguous", op, name);
  int ok = kind == FLOAT ? (t->dtype == F2_F32 || t->dtype == F2_BF16)
           : kind == F32_ONLY ? t->dtype == F2_F32 : t->dtype == F2_I32;
  if (!ok)
    return F2_FAIL(F2_ERR_ARG, "%s: %s has dtype %s, expected %s", op, name, f2_dtype_name(t->dtype),
                   kind == FLOAT ? "f32 or bf16" : kind == F32_ONLY ? "f32" : "i32");
  return F2_OK;
}
int f2_check_arg(const char *op, const char *name, const f2_tensor *t, int kind) {
  return check_arg(op, name, t, kind, 1);
}
/* Short local names for the shared checks (f2_internal.h), used on nearly every line below. */
static int arg(const char *op, const char *name, const f2_tensor *t, int kind) { return f2_check_arg(op, name, t, kind); }

int f2_check_one_device(const char *op, int *gpu, const f2_tensor *const *t, const char *const *names, int n) {
  int dev = -1, first = -1;
  for (int i = 0; i < n; i++) {
    if (!t[i]) continue;
    if (dev < 0) {
      dev = t[i]->device, first = i;
    } else if (t[i]->device != dev) {
      const char *got = t[i]->device == F2_CUDA ? "cuda" : "cpu", *want = dev == F2_CUDA ? "cuda" : "cpu";
      if (names)
        return F2_FAIL(F2_ERR_ARG, "%s: tensors on different devices (%s is on %s, %s on %s)", op, names[i], got,
                       names[first], want);
      return F2_FAIL(F2_ERR_ARG, "%s: tensors on different devices (argument %d is on %s, an earlier one on %s)", op,
                     i + 1, got, want);
    }
  }
  *gpu = dev == F2_CUDA;
  return F2_OK;
}
#define ONE_DEVICE(op, gpu, ...) \
  f2_check_one_device((op), (gpu), (const f2_tensor *const[]){__VA_ARGS__}, NULL, \
             (int)(sizeof((const f2_tensor *const[]){__VA_ARGS__}) / sizeof(const f2_tensor *)))

/* t must have exactly the given shape. */
static int shape_is(const char *op, const char *name, const f2_tensor *t, int ndim, const int64_t *shape) {
  int ok = t->ndim == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
  if (ok) return F2_OK;
  char got[128], want[128];
  f2_tensor want_t = {.ndim = ndim};
  for (int i = 0; i < ndim; i++) want_t.shape[i] = shape[i];
  return F2_FAIL(F2_ERR_ARG, "%s: %s has shape %s, expected %s", op, name, f2_shape_str(t, got, sizeof got),
                 f2_shape_str(&want_t, want, sizeof want));
}

int f2_check_rows_cols(const char *op, const char *name, const f2_tensor *t, int64_t rows, int64_t cols) {
  if (t->ndim >= 1 && t->shape[t->ndim - 1] == cols && f2_tensor_numel(t) == rows * cols) return F2_OK;
  char got[128];
  return F2_FAIL(F2_ERR_ARG, "%s: %s has shape %s, expected %lld rows of %lld", op, name,
                 f2_shape_str(t, got, sizeof got), (long long)rows, (long long)cols);
}
static int rows_cols(const char *op, const char *name, const f2_tensor *t, int64_t rows, int64_t cols) {
  return f2_check_rows_cols(op, name, t, rows, cols);
}

static inline float ld(const f2_tensor *t, int64_t i) {
  return t->dtype == F2_F32 ? ((const float *)t->data)[i] : f2_bf16_to_f32(((const uint16_t *)t->data)[i]);
}
static inline void st(f2_tensor *t, int64_t i, float v) {
  if (t->dtype == F2_F32) ((float *)t->data)[i] = v;
  else ((uint16_t *)t->data)[i] = f2_f32_to_bf16(v);
}
#define F32(t) ((float *)(t)->data)
#define I32(t) ((const int32_t *)(t)->data)

/* ---------------------------------------------------------------- embedding */

static int check_ids(const char *op, const f2_tensor *ids, int64_t vocab) {
  int64_t n = f2_tensor_numel(ids);
  for (int64_t i = 0; i < n; i++)
    if (I32(ids)[i] < 0 || I32(ids)[i] >= vocab)
      return F2_FAIL(F2_ERR_ARG, "%s: ids[%lld] = %d is outside the vocabulary [0, %lld)", op, (long long)i,
                     (int)I32(ids)[i], (long long)vocab);
  return F2_OK;
}

int f2_embedding_forward(f2_tensor *out, const f2_tensor *weight, const f2_tensor *ids) {
  const char *op = "f2_embedding_forward";
  F2_TRY(arg(op, "out", out, FLOAT));
  F2_TRY(arg(op, "weight", weight, FLOAT));
  F2_TRY(arg(op, "ids", ids, I32_ONLY));
  if (weight->ndim != 2) return F2_FAIL(F2_ERR_ARG, "%s: weight must be 2-D [vocab, dim], has %d dims", op, (int)weight->ndim);
  int64_t vocab = weight->shape[0], dim = weight->shape[1], n = f2_tensor_numel(ids);
  F2_TRY(rows_cols(op, "out", out, n, dim));
  int gpu = 0;
  F2_TRY(ONE_DEVICE(op, &gpu, out, weight, ids));
  if (gpu) return F2_PROFILED("embedding", f2_cuda_embedding_forward(out, weight, ids));
  F2_TRY(check_ids(op, ids, vocab));
#pragma omp parallel for schedule(static) if (n * dim >= PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++)
    for (int64_t d = 0; d < dim; d++) st(out, i * dim + d, ld(weight, (int64_t)I32(ids)[i] * dim + d));
  return F2_OK;
}

int f2_embedding_backward(f2_tensor *dweight, const f2_tensor *dout, const f2_tensor *ids) {
  const char *op = "f2_embedding_backward";
  F2_TRY(arg(op, "dweight", dweight, F32_ONLY));
  F2_TRY(arg(op, "dout", dout, FLOAT));
  F2_TRY(arg(op, "ids", ids, I32_ONLY));
  if (dweight->ndim != 2) return F2_FAIL(F2_ERR_ARG, "%s: dweight must be 2-D [vocab, dim], has %d dims", op, (int)dweight->ndim);
  int64_t vocab = dweight->shape[0], dim = dweight->shape[1], n = f2_tensor_numel(ids);
  F2_TRY(rows_cols(op, "dout", dout, n, dim));
  int gpu = 0;
  F2_TRY(ONE_DEVICE(op, &gpu, dweight, dout, ids));
  if (gpu) return F2_PROFILED("embedding_backward", f2_cuda_embedding_backward(dweight, dout, ids));
  F2_TRY(check_ids(op, ids, vocab));
  for (int64_t i = 0; i < n; i++) {
    float *row = F32(dweight) + (int64_t)I32(ids)[i] * dim;
    for (int64_t d = 0; d < dim; d++) row[d] += ld(dout, i * dim + d);
  }
  return F2_OK;
}

/* ---------------------------------------------------------------- RMSNorm over the last dim */

static int rmsnorm_args(const char *op, const f2_tensor *x, const f2_tensor *weight, int64_t *rows, int64_t *dim) {
  F2_TRY(arg(op, "x", x, FLOAT));
  F2_TRY(arg(op, "weight", weight, FLOAT));
  if (weight->ndim != 1) return F2_FAIL(F2_ERR_ARG, "%s: weight must be 1-D, has %d dims", op, (int)weight->ndim);
  *dim = weight->shape[0];
  if (*dim < 1) return F2_FAIL(F2_ERR_ARG, "%s: weight is empty", op);
  *rows = f2_tensor_numel(x) / *dim;
  return rows_cols(op, "x", x, *rows, *dim);
}

int f2_rmsnorm_forward(f2_tensor *out, f2_tensor *rstd, const f2_tensor *x, const f2_tensor *weight, float eps) {
  const char *op = "f2_rmsnorm_forward";
  int64_t rows = 0, dim = 0;
  F2_TRY(rmsnorm_args(op, x, weight, &rows, &dim));
  F2_TRY(arg(op, "out", out, FLOAT));
  F2_TRY(rows_cols(op, "out", out, rows, dim));
  if (rstd) {
    F2_TRY(arg(op, "rstd", rstd, F32_ONLY));
    F2_TRY(shape_is(op, "rstd", rstd, 1, &rows));
  }
  if (!(eps >= 0)) return F2_FAIL(F2_ERR_ARG, "%s: eps = %g must be >= 0", op, (double)eps);
  int gpu = 0;
  F2_TRY(ONE_DEVICE(op, &gpu, out, rstd, x, weight));
  if (gpu) return F2_PROFILED("rmsnorm", f2_cuda_rmsnorm_forward(out, rstd, x, weight, eps));
#pragma omp parallel for schedule(static) if (rows * dim >= PARALLEL_MIN)
  for (int64_t r = 0; r < rows; r++) {
    double ss = 0;
    for (int64_t d = 0; d < dim; d++) {
      double v = ld(x, r * dim + d);
      ss += v * v;
    }
    /* HF: x * rsqrt(mean(x^2) + eps), all fp32, then times the weight. */
    float rs = (float)(1.0 / sqrt(ss / (double)dim + (double)eps));
    for (int64_t d = 0; d < dim; d++) st(out, r * dim + d, ld(weight, d) * (ld(x, r * dim + d) * rs));
    if (rstd) F32(rstd)[r] = rs;
  }
  return F2_OK;
}

/* y = w * x * r, r = (mean x^2 + eps)^-1/2:  dw += sum_rows dy*x*r,  dx = r * (g - xhat * mean(g * xhat))
 * with g = dy * w and xhat = x * r. */
static int rmsnorm_backward(const char *op, f2_tensor *dx, f2_tensor *dweight, const f2_tensor *dy,
                            const f2_tensor *x, const f2_tensor *weight, const f2_tensor *rstd, int accumulate) {
  int64_t rows = 0, dim = 0;
  F2_TRY(rmsnorm_args(op, x, weight, &rows, &dim));
  F2_TRY(arg(op, "dx", dx, FLOAT));
  F2_TRY(rows_cols(op, "dx", dx, rows, dim));
  F2_TRY(arg(op, "dy", dy, FLOAT));
  F2_TRY(rows_cols(op, "dy", dy, rows, dim));
  F2_TRY(arg(op, "rstd", rstd, F32_ONLY));
  F2_TRY(shape_is(op, "rstd", rstd, 1, &rows));
  if (dweight) {
    F2_TRY(arg(op, "dweight", dweight, F32_ONLY));
    F2_TRY(shape_is(op, "dweight", dweight, 1, &dim));
  }
  if (accumulate && dx->data == dy->data) return F2_FAIL(F2_ERR_ARG, "%s: dx must not alias dy", op);
  int gpu = 0;
  F2_TRY(ONE_DEVICE(op, &gpu, dx, dweight, dy, x, weight, rstd));
  if (gpu) return F2_PROFILED("rmsnorm_backward", f2_cuda_rmsnorm_backward(dx, dweight, dy, x, weight, rstd, accumulate));
  int parallel = rows * dim >= PARALLEL_MIN;
  /* dweight first (dx may be dy): each column sums over the rows in row order; spans of 64 columns
   * on threads. */
  if (dweight) {
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t d0 = 0; d0 < dim; d0 += 64)
      for (int64_t r = 0; r < rows; r++) {
        double rs = F32(rstd)[r];
        for (int64_t d = d0; d < d0 + 64 && d < dim; d++)
          F32(dweight)[d] += (float)(ld(dy, r * dim + d) * (ld(x, r * dim + d) * rs));
      }
  }
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < rows; r++) {
    double rs = F32(rstd)[r], dot = 0;
    for (int64_t d = 0; d < dim; d++) dot += (double)ld(dy, r * dim + d) * ld(weight, d) * ld(x, r * dim + d) * rs;
    double mean = dot / (double)dim;
    for (int64_t d = 0; d < dim; d++) {
      double xhat = ld(x, r * dim + d) * rs, g = (double)ld(dy, r * dim + d) * ld(weight, d);
      float v = (float)(rs * (g - xhat * mean));
      st(dx, r * dim + d, accumulate ? ld(dx, r * dim + d) + v : v);
    }
  }
  return F2_OK;
}

int f2_rmsnorm_backward(f2_tensor *dx, f2_tensor *dweight, const f2_tensor *dy, const f2_tensor *x,
                        const f2_tensor *weight, const f2_tensor *rstd) {
  return rmsnorm_backward("f2_rmsnorm_backward", dx, dweight, dy, x, weight, rstd, 0);
}

int f2_rmsnorm_backward_add(f2_tensor *dx, f2_tensor *dweight, const f2_tensor *dy, const f2_tensor *x,
                            const f2_tensor *weight, const f2_tensor *rstd) {
  return rmsnorm_backward("f2_rmsnorm_backward_add", dx, dweight, dy, x, weight, rstd, 1);
}

/* sum = a + b (rounded to sum's dtype), then the forward above on sum. */
int f2_rmsnorm_residual_forward(f2_tensor *sum, f2_tensor *out, f2_tensor *rstd, const f2_tensor *a,
                                const f2_tensor *b, const f2_tensor *weight, float eps) {
  const char *op = "f2_rmsnorm_residual_forward";
  int64_t rows = 0, dim = 0;
  F2_TRY(rmsnorm_args(op, a, weight, &rows, &dim));
  F2_TRY(arg(op, "b", b, FLOAT));
  F2_TRY(shape_is(op, "b", b, a->ndim, a->shape));
  F2_TRY(arg(op, "sum", sum, FLOAT));
  F2_TRY(shape_is(op, "sum", sum, a->ndim, a->shape));
  F2_TRY(arg(op, "out", out, FLOAT));
  F2_TRY(rows_cols(op, "out", out, rows, dim));
  if (rstd) {
    F2_TRY(arg(op, "rstd", rstd, F32_ONLY));
    F2_TRY(shape_is(op, "rstd", rstd, 1, &rows));
  }
  if (!(eps >= 0)) return F2_FAIL(F2_ERR_ARG, "%s: eps = %g must be >= 0", op, (double)eps);
  int gpu = 0;
  F2_TRY(ONE_DEVICE(op, &gpu, sum, out, rstd, a, b, weight));
  if (gpu) return F2_PROFILED("rmsnorm", f2_cuda_rmsnorm_residual_forward(sum, out, rstd, a, b, weight, eps));
  int64_t n = rows * dim;
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++) st(sum, i, ld(a, i) + ld(b, i));
  return f2_rmsnorm_forward(out, rstd, sum, weight, eps);
}

/* ---------------------------------------------------------------- RoPE, HF rotate-half convention
 * Pairs are (i, i + Dh/2): out_i = x_i cos - x_{i+h} sin, out_{i+h} = x_{i+h} cos + x_i sin, with the
 * angle pos * inv_freq[i]. Position t of every sequence uses row t of the tables (narrow them for an
 * offset). */

int f2_rope_tables(f2_tensor *cos_table, f2_tensor *sin_table, const f2_tensor *inv_freq) {
  const char *op = "f2_rope_tables";
  F2_TRY(arg(op, "cos", cos_table, F32_ONLY));
  F2_TRY(arg(op, "sin", sin_table, F32_ONLY));
  F2_TRY(arg(op, "inv_freq", inv_freq, F32_ONLY));
  if (inv_freq->ndim != 1) return F2_FAIL(F2_ERR_ARG, "%s: inv_freq must be 1-D", op);
  if (cos_table->ndim != 2) return F2_FAIL(F2_ERR_ARG, "%s: cos must be 2-D [positions, head_dim/2]", op);
  int64_t half = inv_freq->shape[0], positions = cos_table->shape[0], shape[2] = {positions, half};
  F2_TRY(shape_is(op, "cos", cos_table, 2, shape));
  F2_TRY(shape_is(op, "sin", sin_table, 2, shape));
  int gpu = 0;
  F2_TRY(ONE_DEVICE(op, &gpu, cos_table, sin_table, inv_freq));
  if (gpu) return F2_PROFILED("rope", f2_cuda_rope_tables(cos_table, sin_table, inv_freq));
  for (int64_t t = 0; t < positions; t++)
    for (int64_t i = 0; i < half; i++) {
      /* The angle rounded to fp32 as HF computes it (position and inv_freq as floats). */
      float angle = (float)t * F32(inv_freq)[i];
      F32(cos_table)[t * half + i] = (float)cos((double)angle);
      F32(sin_table)[t * half + i] = (float)sin((double)angle);
    }
  return F2_OK;
}

/* ---------------------------------------------------------------- row-strided arguments
 * RoPE and SwiGLU also take views of a wider buffer (the column slices of a fused q/k/v or gate/up
 * projection's output): t's elements must form rows of `inner` contiguous elements (its trailing
 * dims), consecutive rows *row_stride elements apart (its leading dims collapse to that one stride),
 * which is >= inner. */
static int row_strided(const char *op, const char *name, const f2_tensor *t, int64_t inner, int64_t *row_stride) {
  F2_TRY(check_arg(op, name, t, FLOAT, 0));
  int d = t->ndim - 1, ok = 1;
  int64_t prod = 1;
  for (; d >= 0 && prod < inner; d--) { /* the trailing dims: contiguous */
    if (t->shape[d] != 1 && t->stride[d] != prod) ok = 0;
    prod *= t->shape[d];
  }
  if (inner > 0 && prod != inner) ok = 0;
  int64_t stride = inner, next = -1;
  for (; d >= 0; d--) { /* the leading dims: one row stride */
    if (t->shape[d] == 1) continue;
    if (next < 0) stride = t->stride[d];
    else if (t->stride[d] != next) ok = 0;
    next = t->stride[d] * t->shape[d];
  }
  if (next >= 0 && stride < inner) ok = 0; /* rows would overlap */
  if (!ok) {
    char got[128];
    return F2_FAIL(F2_ERR_ARG, "%s: %s (shape %s) must be rows of %lld contiguous elements with one row stride",
                   op, name, f2_shape_str(t, got, sizeof got), (long long)inner);
  }
  *row_stride = stride;
  return F2_OK;
}

/* A copy of the tensor struct with its rows' layout spelled out for the CUDA launchers: 4-D RoPE
 * heads [B,T,H,Dh] get strides {T*ld, ld, Dh, 1}; SwiGLU operands become 2-D [rows, cols] with strides
 * {ld, 1}. Same data, no reference taken (the view lives for the call only). */
static f2_tensor rope_layout(const f2_tensor *t, int64_t ld) {
  f2_tensor v = *t;
  v.stride[3] = 1, v.stride[2] = t->shape[3], v.stride[1] = ld, v.stride[0] = t->shape[1] * ld;
  return v;
}
static f2_tensor rows_layout(const f2_tensor *t, int64_t rows, int64_t cols, int64_t ld) {
  f2_tensor v = *t;
  v.ndim = 2, v.shape[0] = rows, v.shape[1] = cols, v.stride[0] = ld, v.stride[1] = 1;
  return v;
}

/* cos and sin: f32 tables of at least seq positions of half = head_dim/2 entries. */
static int rope_tables_cover(const char *op, const f2_tensor *cos_table, const f2_tensor *sin_table, int64_t seq,
                             int64_t half) {
  F2_TRY(arg(op, "cos", cos_table, F32_ONLY));
  F2_TRY(arg(op, "sin", sin_table, F32_ONLY));
  if (cos_table->ndim != 2 || cos_table->shape[1] != half || cos_table->shape[0] < seq) {
    char got[128];
    return F2_FAIL(F2_ERR_ARG, "%s: cos has shape %s, expected at least %lld positions of head_dim/2 = %lld", op,
                   f2_shape_str(cos_table, got, sizeof got), (long long)seq, (long long)half);
  }
  return shape_is(op, "sin", sin_table, 2, cos_table->shape);
}

/* One head of half pairs (i, i + half) at position t, x at xb into out at ob: rotated by sign * angle
 * (both read before out, which may be x, is written). rope() and qkv_rope() share it, so the fused op
 * has RoPE's bits. */
static void rope_head(f2_tensor *out, int64_t ob, const f2_tensor *x, int64_t xb, const f2_tensor *cos_table,
                      const f2_tensor *sin_table, int64_t t, int64_t half, float sign) {
  for (int64_t i = 0; i < half; i++) {
    float c = F32(cos_table)[t * half + i], s = sign * F32(sin_table)[t * half + i];
    float x1 = ld(x, xb + i), x2 = ld(x, xb + i + half);
    st(out, ob + i, x1 * c - x2 * s);
    st(out, ob + i + half, x2 * c + x1 * s);
  }
}

/* out and x are [B,T,H,Dh], each with its (b, t) rows of H*Dh elements at its own row stride (a
 * contiguous tensor, or a view of the heads inside a fused projection's rows). */
static int rope(const char *op, f2_tensor *out, const f2_tensor *x, const f2_tensor *cos_table,
                const f2_tensor *sin_table, float sign) {
  if (!x) return F2_FAIL(F2_ERR_ARG, "%s: x is NULL", op);
  if (!out) return F2_FAIL(F2_ERR_ARG, "%s: out is NULL", op);
  if (x->ndim != 4) return F2_FAIL(F2_ERR_ARG, "%s: x must be 4-D [batch, seq, heads, head_dim], has %d dims", op, (int)x->ndim);
  int64_t batch = x->shape[0], seq = x->shape[1], heads = x->shape[2], hd = x->shape[3], half = hd / 2;
  if (hd % 2) return F2_FAIL(F2_ERR_ARG, "%s: head_dim %lld is odd", op, (long long)hd);
  F2_TRY(shape_is(op, "out", out, 4, x->shape));
  int64_t ldx = 0, ldo = 0;
  F2_TRY(row_strided(op, "x", x, heads * hd, &ldx));
  F2_TRY(row_strided(op, "out", out, heads * hd, &ldo));
  F2_TRY(rope_tables_cover(op, cos_table, sin_table, seq, half));
  int gpu = 0;
  F2_TRY(ONE_DEVICE(op, &gpu, out, x, cos_table, sin_table));
  if (gpu) {
    f2_tensor o = rope_layout(out, ldo), xv = rope_layout(x, ldx);
    return F2_PROFILED("rope", f2_cuda_rope(&o, &xv, cos_table, sin_table, sign));
  }
#pragma omp parallel for schedule(static) if (batch * seq * heads * hd >= PARALLEL_MIN)
  for (int64_t bt = 0; bt < batch * seq; bt++)   /* rows (b, t) on threads */
    for (int64_t h = 0; h < heads; h++)
      rope_head(out, bt * ldo + h * hd, x, bt * ldx + h * hd, cos_table, sin_table, bt % seq, half, sign);
  return F2_OK;
}

int f2_rope_forward(f2_tensor *out, const f2_tensor *x, const f2_tensor *cos_table, const f2_tensor *sin_table) {
  return rope("f2_rope_forward", out, x, cos_table, sin_table, 1.0f);
}

/* The rotation is orthogonal: its gradient is the rotation by the opposite angle. */
int f2_rope_backward(f2_tensor *dx, const f2_tensor *dout, const f2_tensor *cos_table, const f2_tensor *sin_table) {
  return rope("f2_rope_backward", dx, dout, cos_table, sin_table, -1.0f);
}

/* q/k/v out of (merge 0) or into (merge 1) a fused projection's rows y: f2_qkv_rope_forward/backward. The
 * CPU path is rope()'s arithmetic on each q and k head and a copy of each v head. */
static int qkv_rope(const char *op, f2_tensor *y, f2_tensor *q, f2_tensor *k, f2_tensor *v,
                    const f2_tensor *cos_table, const f2_tensor *sin_table, int merge) {
  const char *names[4] = {merge ? "dy" : "y", merge ? "dq" : "q", merge ? "dk" : "k", merge ? "dv" : "v"};
  f2_tensor *t[4] = {y, q, k, v};
  for (int i = 1; i < 4; i++) F2_TRY(check_arg(op, names[i], t[i], FLOAT, 1));
  F2_TRY(check_arg(op, names[0], y, FLOAT, 0));
  if (q->ndim != 4)
    return F2_FAIL(F2_ERR_ARG, "%s: %s must be 4-D [batch, seq, heads, head_dim], has %d dims", op, names[1], (int)q->ndim);
  const int64_t B = q->shape[0], T = q->shape[1], H = q->shape[2], Dh = q->shape[3], half = Dh / 2;
  if (Dh % 2) return F2_FAIL(F2_ERR_ARG, "%s: head_dim %lld is odd", op, (long long)Dh);
  if (k->ndim != 4 || k->shape[0] != B || k->shape[1] != T || k->shape[3] != Dh) {
    char got[128];
    return F2_FAIL(F2_ERR_ARG, "%s: %s has shape %s, expected [%lld, %lld, kv_heads, %lld]", op, names[2],
                   f2_shape_str(k, got, sizeof got), (long long)B, (long long)T, (long long)Dh);
  }
  const int64_t Hkv = k->shape[2], W = (H + 2 * Hkv) * Dh;
  F2_TRY(shape_is(op, names[3], v, 4, k->shape));
  F2_TRY(rows_cols(op, names[0], y, B * T, W));
  int64_t ldy = 0;
  F2_TRY(row_strided(op, names[0], y, W, &ldy));
  for (int i = 1; i < 4; i++)
    if (t[i]->dtype != y->dtype)
      return F2_FAIL(F2_ERR_ARG, "%s: %s is %s but %s is %s (one dtype)", op, names[i], f2_dtype_name(t[i]->dtype),
                     names[0], f2_dtype_name(y->dtype));
  F2_TRY(rope_tables_cover(op, cos_table, sin_table, T, half));
  int gpu = 0;
  F2_TRY(ONE_DEVICE(op, &gpu, y, q, k, v, cos_table, sin_table));
  if (B * T * W == 0) return F2_OK;
  if (gpu) return F2_PROFILED("qkv_rope", f2_cuda_qkv_rope(y, q, k, v, cos_table, sin_table, ldy, merge));
  const float sign = merge ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static) if (B * T * W >= PARALLEL_MIN)
  for (int64_t bt = 0; bt < B * T; bt++)
    for (int64_t h = 0; h < H + 2 * Hkv; h++) {
      const int64_t t_pos = bt % T, yb = bt * ldy + h * Dh;
      f2_tensor *part = h < H ? q : h < H + Hkv ? k : v;
      const int64_t ph = h < H ? h : h < H + Hkv ? h - H : h - H - Hkv, pb = (bt * part->shape[2] + ph) * Dh;
      f2_tensor *dst = merge ? y : part;
      const f2_tensor *src = merge ? part : y;
      const int64_t sb = merge ? pb : yb, db = merge ? yb : pb;
      if (h < H + Hkv) {
        rope_head(dst, db, src, sb, cos_table, sin_table, t_pos, half, sign);
      } else {
        for (int64_t i = 0; i < Dh; i++) st(dst, db + i, ld(src, sb + i));   /* v: a copy */
      }
    }
  return F2_OK;
}

int f2_qkv_rope_forward(f2_tensor *q, f2_tensor *k, f2_tensor *v, const f2_tensor *y, const f2_tensor *cos_table,
                        const f2_tensor *sin_table) {
  return qkv_rope("f2_qkv_rope_forward", (f2_tensor *)y, q, k, v, cos_table, sin_table, 0);
}

int f2_qkv_rope_backward(f2_tensor *dy, const f2_tensor *dq, const f2_tensor *dk, const f2_tensor *dv,
                         const f2_tensor *cos_table, const f2_tensor *sin_table) {
  return qkv_rope("f2_qkv_rope_backward", dy, (f2_tensor *)dq, (f2_tensor *)dk, (f2_tensor *)dv, cos_table, sin_table,
                  1);
}

/* ---------------------------------------------------------------- causal GQA attention
 * q [B,T,H,Dh], k and v [B,T,Hkv,Dh]; query head h reads KV head h / (H / Hkv) (HF's repeat_kv).
 * lse [B,H,T] keeps log-sum-exp of the scaled scores of each query for the backward. */

static int attention_args(const char *op, const f2_tensor *q, const f2_tensor *k, const f2_tensor *v,
                          const f2_tensor *out, const f2_tensor *lse) {
  F2_TRY(arg(op, "q", q, FLOAT));
  F2_TRY(arg(op, "k", k, FLOAT));
  F2_TRY(arg(op, "v", v, FLOAT));
  if (q->ndim != 4) return F2_FAIL(F2_ERR_ARG, "%s: q must be 4-D [batch, seq, heads, head_dim], has %d dims", op, (int)q->ndim);
  if (k->ndim != 4) return F2_FAIL(F2_ERR_ARG, "%s: k must be 4-D [batch, seq, kv_heads, head_dim], has %d dims", op, (int)k->ndim);
  int64_t heads = q->shape[2], kv_heads = k->shape[2], hd = q->shape[3];
  int64_t kshape[4] = {q->shape[0], q->shape[1], kv_heads, hd}, lshape[3] = {q->shape[0], heads, q->shape[1]};
  F2_TRY(shape_is(op, "k", k, 4, kshape));
  F2_TRY(shape_is(op, "v", v, 4, kshape));
  if (kv_heads < 1 || heads % kv_heads)
    return F2_FAIL(F2_ERR_ARG, "%s: %lld query heads are not a multiple of %lld KV heads", op, (long long)heads,
                   (long long)kv_heads);
  if (hd > ATTN_MAX_HEAD_DIM) return F2_FAIL(F2_ERR_UNSUPPORTED, "%s: head_dim %lld above %d", op, (long long)hd, ATTN_MAX_HEAD_DIM);
  if (out) {
    F2_TRY(arg(op, "out", out, FLOAT));
    F2_TRY(shape_is(op, "out", out, 4, q->shape));
  }
  if (lse) {
    F2_TRY(arg(op, "lse", lse, F32_ONLY));
    F2_TRY(shape_is(op, "lse", lse, 3, lshape));
  }
  return F2_OK;
}

static inline double dot_rows(const f2_tensor *a, int64_t ia, const f2_tensor *b, int64_t ib, int64_t n) {
  double s = 0;
  for (int64_t d = 0; d < n; d++) s += (double)ld(a, ia + d) * ld(b, ib + d);
  return s;
}

/* The training attention works on (query block x keys) tiles with GEMMs (f2_cpu_matmul): scores
 * S = scale Q K^T, probabilities P in place of S, out = P V; the backward recomputes P from lse. These
 * build the 2-D operands: rows of t from element `at`, row stride `ld` (a head's rows in [B,T,H,Dh]). */
static f2_tensor rows_view(const f2_tensor *t, int64_t at, int64_t rows, int64_t cols, int64_t ld) {
  f2_tensor v = {.data = (char *)t->data + at * (int64_t)f2_dtype_size(t->dtype), .dtype = t->dtype,
                 .device = F2_CPU, .ndim = 2, .shape = {rows, cols}, .stride = {ld, 1}};
  return v;
}
static f2_tensor scratch_view(float *p, int64_t rows, int64_t cols) {
  f2_tensor v = {.data = p, .dtype = F2_F32, .device = F2_CPU, .ndim = 2, .shape = {rows, cols}, .stride = {cols, 1}};
  return v;
}

/* Per-thread scratch of `floats` each for up to `tasks` tasks over the threads; *threads gets how many. */
static float *attention_scratch(const char *op, int64_t floats, int64_t tasks, int *threads) {
  int n = omp_get_max_threads();
  *threads = tasks < n ? (int)tasks : n;
  if (*threads < 1) *threads = 1;
  float *p = malloc((size_t)(floats * *threads) * sizeof(float));
  if (!p) F2_FAIL(F2_ERR_MEM, "%s: out of host memory for %d x %lld floats of scratch", op, *threads, (long long)floats);
  return p;
}

int f2_attention_forward(f2_tensor *out, f2_tensor *lse, const f2_tensor *q, const f2_tensor *k, const f2_tensor *v,
                         float scale) {
  const char *op = "f2_attention_forward";
  if (!out) return F2_FAIL(F2_ERR_ARG, "%s: out is NULL", op);
  F2_TRY(attention_args(op, q, k, v, out, lse));
  int64_t batch = q->shape[0], seq = q->shape[1], heads = q->shape[2], hd = q->shape[3], kvh = k->shape[2];
  int64_t group = heads / kvh, qld = heads * hd, kld = kvh * hd;
  int gpu = 0;
  F2_TRY(ONE_DEVICE(op, &gpu, out, lse, q, k, v));
  if (gpu) return F2_PROFILED("attention", f2_cuda_attention_forward(out, lse, q, k, v, scale));
  if (batch * heads * seq == 0) return F2_OK;
  /* Per thread: the block's scores/probabilities [ATTN_BLOCK, seq], its out [ATTN_BLOCK, hd]. */
  int threads, failed = 0;
  int64_t per_thread = ATTN_BLOCK * (seq + hd);
  float *scratch = attention_scratch(op, per_thread, batch * heads, &threads);
  if (!scratch) return F2_ERR_MEM;
#pragma omp parallel for schedule(dynamic) num_threads(threads)
  for (int64_t bh = 0; bh < batch * heads; bh++) {   /* (batch, head) pairs on threads */
    int64_t b = bh / heads, h = bh % heads, kv0 = (b * seq * kvh + h / group) * hd;
    float *S = scratch + omp_get_thread_num() * per_thread, *O = S + ATTN_BLOCK * seq;
    for (int64_t i0 = 0; i0 < seq; i0 += ATTN_BLOCK) {
      /* Queries i0 .. i0+nq-1 see keys 0 .. nk-1 (causal), masked per row below. */
      int64_t nq = seq - i0 < ATTN_BLOCK ? seq - i0 : ATTN_BLOCK, nk = i0 + nq, q0 = ((b * seq + i0) * heads + h) * hd;
      f2_tensor qv = rows_view(q, q0, nq, hd, qld), kv = rows_view(k, kv0, nk, hd, kld);
      f2_tensor vv = rows_view(v, kv0, nk, hd, kld), sv = scratch_view(S, nq, nk), ov = scratch_view(O, nq, hd);
      int rc = f2_cpu_matmul(&sv, &qv, &kv, 0, 1, scale, 0);
      double inv_l[ATTN_BLOCK];
      for (int64_t r = 0; r < nq; r++) {   /* softmax over keys 0 .. i of row i = i0 + r, sums in double */
        float *row = S + r * nk;
        int64_t i = i0 + r;
        double m = -INFINITY, l = 0;
        for (int64_t j = 0; j <= i; j++) m = row[j] > m ? row[j] : m;
        for (int64_t j = 0; j <= i; j++) {
          double p = exp(row[j] - m);
          row[j] = (float)p;
          l += p;
        }
        for (int64_t j = i + 1; j < nk; j++) row[j] = 0;
        inv_l[r] = 1 / l;
        if (lse) F32(lse)[(b * heads + h) * seq + i] = (float)(m + log(l));
      }
      rc |= f2_cpu_matmul(&ov, &sv, &vv, 0, 0, 1, 0);
      if (rc != F2_OK) {
#pragma omp atomic write
        failed = 1;
      }
      for (int64_t r = 0; r < nq; r++)
        for (int64_t d = 0; d < hd; d++) st(out, q0 + r * qld + d, (float)(O[r * hd + d] * inv_l[r]));
    }
  }
  free(scratch);
  return failed ? F2_FAIL(F2_ERR_MEM, "%s: out of host memory in a GEMM", op) : F2_OK;
}

/* With p_ij = exp(s_ij - lse_i) and D_i = dout_i . out_i:  dv_j += p_ij dout_i,
 * ds_ij = p_ij (dout_i . v_j - D_i),  dq_i += scale ds_ij k_j,  dk_j += scale ds_ij q_i. */
int f2_attention_backward(f2_tensor *dq, f2_tensor *dk, f2_tensor *dv, const f2_tensor *dout, const f2_tensor *q,
                          const f2_tensor *k, const f2_tensor *v, const f2_tensor *out, const f2_tensor *lse,
                          float scale) {
  const char *op = "f2_attention_backward";
  if (!out) return F2_FAIL(F2_ERR_ARG, "%s: out is NULL", op);
  if (!lse) return F2_FAIL(F2_ERR_ARG, "%s: lse is NULL", op);
  F2_TRY(attention_args(op, q, k, v, out, lse));
  F2_TRY(arg(op, "dout", dout, FLOAT));
  F2_TRY(shape_is(op, "dout", dout, 4, q->shape));
  int grad_kind = q->device == F2_CUDA ? FLOAT : F32_ONLY;   /* bf16 gradients on a GPU */
  F2_TRY(arg(op, "dq", dq, grad_kind));
  F2_TRY(shape_is(op, "dq", dq, 4, q->shape));
  F2_TRY(arg(op, "dk", dk, grad_kind));
  F2_TRY(shape_is(op, "dk", dk, 4, k->shape));
  F2_TRY(arg(op, "dv", dv, grad_kind));
  F2_TRY(shape_is(op, "dv", dv, 4, v->shape));
  int gpu = 0;
  F2_TRY(ONE_DEVICE(op, &gpu, dq, dk, dv, dout, q, k, v, out, lse));
  if (gpu) return F2_PROFILED("attention_backward", f2_cuda_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, scale));
  int64_t batch = q->shape[0], seq = q->shape[1], heads = q->shape[2], hd = q->shape[3], kvh = k->shape[2];
  int64_t group = heads / kvh, qld = heads * hd, kld = kvh * hd;
  memset(dq->data, 0, f2_tensor_nbytes(dq));
  memset(dk->data, 0, f2_tensor_nbytes(dk));
  memset(dv->data, 0, f2_tensor_nbytes(dv));
  if (batch * heads * seq == 0) return F2_OK;
  /* A task owns one KV head of one sequence: its dk, dv rows and the dq rows of its query heads, so
   * every sum runs in one fixed order (heads, then query blocks) whatever the thread count. Per
   * thread: P and dP/dS [ATTN_BLOCK, seq]. */
  int threads, failed = 0;
  int64_t per_thread = 2 * ATTN_BLOCK * seq;
  float *scratch = attention_scratch(op, per_thread, batch * kvh, &threads);
  if (!scratch) return F2_ERR_MEM;
#pragma omp parallel for schedule(dynamic) num_threads(threads)
  for (int64_t bg = 0; bg < batch * kvh; bg++) {
    int64_t b = bg / kvh, g = bg % kvh, kv0 = (b * seq * kvh + g) * hd;
    float *P = scratch + omp_get_thread_num() * per_thread, *dS = P + ATTN_BLOCK * seq;
    for (int64_t h = g * group; h < (g + 1) * group; h++)
      for (int64_t i0 = 0; i0 < seq; i0 += ATTN_BLOCK) {
        int64_t nq = seq - i0 < ATTN_BLOCK ? seq - i0 : ATTN_BLOCK, nk = i0 + nq, q0 = ((b * seq + i0) * heads + h) * hd;
        f2_tensor qv = rows_view(q, q0, nq, hd, qld), kv = rows_view(k, kv0, nk, hd, kld);
        f2_tensor vv = rows_view(v, kv0, nk, hd, kld), dov = rows_view(dout, q0, nq, hd, qld);
        f2_tensor dqv = rows_view(dq, q0, nq, hd, qld), dkv = rows_view(dk, kv0, nk, hd, kld);
        f2_tensor dvv = rows_view(dv, kv0, nk, hd, kld), pv = scratch_view(P, nq, nk), dsv = scratch_view(dS, nq, nk);
        int rc = f2_cpu_matmul(&pv, &qv, &kv, 0, 1, scale, 0);   /* scores, then P = exp(s - lse) */
        for (int64_t r = 0; r < nq; r++) {
          float *row = P + r * nk;
          int64_t i = i0 + r;
          double lse_i = F32(lse)[(b * heads + h) * seq + i];
          for (int64_t j = 0; j <= i; j++) row[j] = (float)exp(row[j] - lse_i);
          for (int64_t j = i + 1; j < nk; j++) row[j] = 0;
        }
        rc |= f2_cpu_matmul(&dvv, &pv, &dov, 1, 0, 1, 1);     /* dv += P^T dout */
        rc |= f2_cpu_matmul(&dsv, &dov, &vv, 0, 1, 1, 0);     /* dP = dout V^T */
        for (int64_t r = 0; r < nq; r++) {                    /* dS = P (dP - D), D_i = dout_i . out_i */
          float *row = dS + r * nk;
          const float *p = P + r * nk;
          double D = dot_rows(dout, q0 + r * qld, out, q0 + r * qld, hd);
          for (int64_t j = 0; j < nk; j++) row[j] = (float)(p[j] * (row[j] - D));
        }
        rc |= f2_cpu_matmul(&dqv, &dsv, &kv, 0, 0, scale, 0); /* dq = scale dS K */
        rc |= f2_cpu_matmul(&dkv, &dsv, &qv, 1, 0, scale, 1); /* dk += scale dS^T Q */
        if (rc != F2_OK) {
#pragma omp atomic write
          failed = 1;
        }
      }
  }
  free(scratch);
  return failed ? F2_FAIL(F2_ERR_MEM, "%s: out of host memory in a GEMM", op) : F2_OK;
}

/* ---------------------------------------------------------------- SwiGLU: out = silu(gate) * up */

/* Every operand has gate's shape; its rows (the last dim) may sit at any one row stride (a view of the
 * gate or up half of a fused gate/up projection's rows, or of its gradient). ld[i]: operand i's. */
static int swiglu_args(const char *op, const f2_tensor *const *t, const char *const *names, int n, int64_t *ld,
                       int64_t *rows, int64_t *cols) {
  const f2_tensor *gate = t[0];
  if (!gate) return F2_FAIL(F2_ERR_ARG, "%s: gate is NULL", op);
  if (gate->ndim < 1) return F2_FAIL(F2_ERR_ARG, "%s: gate must have at least 1 dim", op);
  *cols = gate->shape[gate->ndim - 1];
  *rows = *cols ? f2_tensor_numel(gate) / *cols : 0;
  for (int i = 0; i < n; i++) {
    if (i > 0) {
      if (!t[i]) return F2_FAIL(F2_ERR_ARG, "%s: %s is NULL", op, names[i]);
      F2_TRY(shape_is(op, names[i], t[i], gate->ndim, gate->shape));
    }
    F2_TRY(row_strided(op, names[i], t[i], *cols, &ld[i]));
  }
  return F2_OK;
}

/* For the CUDA kernels: all operands contiguous is one row of everything (their vector path then needs
 * only numel % 4 == 0, not cols % 4 == 0). */
static void swiglu_one_row(int n, int64_t *ld, int64_t *rows, int64_t *cols) {
  int contiguous = 1;
  for (int i = 0; i < n; i++) contiguous = contiguous && ld[i] == *cols;
  if (!contiguous || *rows <= 1) return;
  *cols *= *rows, *rows = 1;
  for (int i = 0; i < n; i++) ld[i] = *cols;
}

int f2_swiglu_forward(f2_tensor *out, const f2_tensor *gate, const f2_tensor *up) {
  const char *op = "f2_swiglu_forward";
  const f2_tensor *t[3] = {gate, up, out};
  const char *names[3] = {"gate", "up", "out"};
  int64_t l[3], rows, cols;
  F2_TRY(swiglu_args(op, t, names, 3, l, &rows, &cols));
  int gpu = 0;
  F2_TRY(ONE_DEVICE(op, &gpu, out, gate, up));
  if (gpu) {
    swiglu_one_row(3, l, &rows, &cols);
    f2_tensor g = rows_layout(gate, rows, cols, l[0]), u = rows_layout(up, rows, cols, l[1]),
              o = rows_layout(out, rows, cols, l[2]);
    return F2_PROFILED("swiglu", f2_cuda_swiglu_forward(&o, &g, &u));
  }
#pragma omp parallel for schedule(static) if (rows * cols >= PARALLEL_MIN)
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) {
      float g = ld(gate, r * l[0] + c);
      st(out, r * l[2] + c, g / (1.0f + expf(-g)) * ld(up, r * l[1] + c));
    }
  return F2_OK;
}

/* silu'(g) = s (1 + g (1 - s)) with s = sigmoid(g). dgate and dup may be the very views of gate and up. */
int f2_swiglu_backward(f2_tensor *dgate, f2_tensor *dup, const f2_tensor *dout, const f2_tensor *gate,
                       const f2_tensor *up) {
  const char *op = "f2_swiglu_backward";
  const f2_tensor *t[5] = {gate, up, dout, dgate, dup};
  const char *names[5] = {"gate", "up", "dout", "dgate", "dup"};
  int64_t l[5], rows, cols;
  F2_TRY(swiglu_args(op, t, names, 5, l, &rows, &cols));
  int gpu = 0;
  F2_TRY(ONE_DEVICE(op, &gpu, dgate, dup, dout, gate, up));
  if (gpu) {
    swiglu_one_row(5, l, &rows, &cols);
    f2_tensor g = rows_layout(gate, rows, cols, l[0]), u = rows_layout(up, rows, cols, l[1]),
              dy = rows_layout(dout, rows, cols, l[2]), dg = rows_layout(dgate, rows, cols, l[3]),
              du = rows_layout(dup, rows, cols, l[4]);
    return F2_PROFILED("swiglu_backward", f2_cuda_swiglu_backward(&dg, &du, &dy, &g, &u));
  }
#pragma omp parallel for schedule(static) if (rows * cols >= PARALLEL_MIN)
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) {
      float g = ld(gate, r * l[0] + c), u = ld(up, r * l[1] + c), dy = ld(dout, r * l[2] + c);
      float s = 1.0f / (1.0f + expf(-g));
      st(dgate, r * l[3] + c, dy * u * s * (1.0f + g * (1.0f - s)));
      st(dup, r * l[4] + c, dy * g * s);
    }
  return F2_OK;
}

/* ---------------------------------------------------------------- cross-entropy with ignore_index
 * logits [..., V] as N rows; loss = mean over rows whose target is not ignore_index of
 * lse(row) - row[target]. With no counted row the loss and its gradient are 0 (torch gives NaN). */

static int ce_args(const char *op, const f2_tensor *logits, const f2_tensor *targets, int32_t ignore_index,
                   int64_t *rows, int64_t *vocab, int64_t *counted) {
  F2_TRY(arg(op, "logits", logits, FLOAT));
  F2_TRY(arg(op, "targets", targets, I32_ONLY));
  if (logits->ndim < 1 || logits->shape[logits->ndim - 1] < 1)
    return F2_FAIL(F2_ERR_ARG, "%s: logits must have a last (vocabulary) dim", op);
  *vocab = logits->shape[logits->ndim - 1];
  *rows = f2_tensor_numel(targets);
  F2_TRY(rows_cols(op, "logits", logits, *rows, *vocab));
  *counted = 0;
  if (targets->device == F2_CUDA) return F2_OK;   /* counted on the GPU */
  for (int64_t r = 0; r < *rows; r++) {
    int32_t t = I32(targets)[r];
    if (t == ignore_index) continue;
    if (t < 0 || t >= *vocab)
      return F2_FAIL(F2_ERR_ARG, "%s: targets[%lld] = %d is outside [0, %lld) and not ignore_index %d", op,
                     (long long)r, (int)t, (long long)*vocab, (int)ignore_index);
    (*counted)++;
  }
  return F2_OK;
}

/* The row's max (NaN ignored, as fmax does; a comparison, which compiles to one instruction). */
static double row_max(const f2_tensor *logits, int64_t base, int64_t vocab) {
  double m = -INFINITY;
  for (int64_t c = 0; c < vocab; c++) {
    double v = ld(logits, base + c);
    m = v > m ? v : m;
  }
  return m;
}

static double row_lse(const f2_tensor *logits, int64_t base, int64_t vocab) {
  double m = row_max(logits, base, vocab), s = 0;
  for (int64_t c = 0; c < vocab; c++) s += exp(ld(logits, base + c) - m);
  return m + log(s);
}

int f2_cross_entropy_forward(f2_tensor *loss, f2_tensor *losses, const f2_tensor *logits, const f2_tensor *targets,
                             int32_t ignore_index) {
  const char *op = "f2_cross_entropy_forward";
  int64_t rows = 0, vocab = 0, counted = 0;
  F2_TRY(ce_args(op, logits, targets, ignore_index, &rows, &vocab, &counted));
  F2_TRY(arg(op, "loss", loss, F32_ONLY));
  if (f2_tensor_numel(loss) != 1) return F2_FAIL(F2_ERR_ARG, "%s: loss must have one element", op);
  if (losses) {
    F2_TRY(arg(op, "losses", losses, F32_ONLY));
    F2_TRY(shape_is(op, "losses", losses, 1, &rows));
  }
  int gpu = 0;
  F2_TRY(ONE_DEVICE(op, &gpu, loss, losses, logits, targets));
  if (gpu) return F2_PROFILED("cross_entropy", f2_cuda_cross_entropy_forward(loss, losses, logits, targets, ignore_index));
  /* Rows on threads into row_loss, then the mean summed in row order (the same bits on any thread count). */
  double *row_loss = malloc((size_t)(rows > 0 ? rows : 1) * sizeof(double));
  if (!row_loss) return F2_FAIL(F2_ERR_MEM, "%s: out of host memory for %lld row losses", op, (long long)rows);
#pragma omp parallel for schedule(static) if (rows * vocab >= PARALLEL_MIN)
  for (int64_t r = 0; r < rows; r++) {
    int32_t t = I32(targets)[r];
    row_loss[r] = t == ignore_index ? 0 : row_lse(logits, r * vocab, vocab) - ld(logits, r * vocab + t);
  }
  double total = 0;
  for (int64_t r = 0; r < rows; r++) {
    total += row_loss[r];
    if (losses) F32(losses)[r] = (float)row_loss[r];
  }
  free(row_loss);
  F32(loss)[0] = counted ? (float)(total / (double)counted) : 0.0f;
  return F2_OK;
}

/* dlogits = dloss / counted * (softmax(row) - onehot(target)); 0 on ignored rows. */
int f2_cross_entropy_backward(f2_tensor *dlogits, const f2_tensor *logits, const f2_tensor *targets,
                              int32_t ignore_index, float dloss) {
  const char *op = "f2_cross_entropy_backward";
  int64_t rows = 0, vocab = 0, counted = 0;
  F2_TRY(ce_args(op, logits, targets, ignore_index, &rows, &vocab, &counted));
  F2_TRY(arg(op, "dlogits", dlogits, FLOAT));
  F2_TRY(rows_cols(op, "dlogits", dlogits, rows, vocab));
  int gpu = 0;
  F2_TRY(ONE_DEVICE(op, &gpu, dlogits, logits, targets));
  if (gpu) return F2_PROFILED("cross_entropy", f2_cuda_cross_entropy_backward(dlogits, logits, targets, ignore_index, dloss));
  double g = counted ? (double)dloss / (double)counted : 0;
  /* Rows on threads. Each row takes one exp per logit: exp(x - max) kept in a per-thread row of
   * scratch, then scaled by 1 / sum. */
  int threads = omp_get_max_threads();
  float *scratch = malloc((size_t)(threads * vocab) * sizeof(float));
  if (!scratch) return F2_FAIL(F2_ERR_MEM, "%s: out of host memory for %d rows of %lld", op, threads, (long long)vocab);
#pragma omp parallel for schedule(static) if (rows * vocab >= PARALLEL_MIN)
  for (int64_t r = 0; r < rows; r++) {
    int32_t t = I32(targets)[r];
    int64_t base = r * vocab;
    if (t == ignore_index) {
      for (int64_t c = 0; c < vocab; c++) st(dlogits, base + c, 0.0f);
      continue;
    }
    float *e = scratch + omp_get_thread_num() * vocab;
    double m = row_max(logits, base, vocab), sum = 0;
    for (int64_t c = 0; c < vocab; c++) {
      double p = exp(ld(logits, base + c) - m);
      e[c] = (float)p;
      sum += p;
    }
    double scale = g / sum;
    for (int64_t c = 0; c < vocab; c++) st(dlogits, base + c, (float)(scale * e[c] - (c == t ? g : 0)));
  }
  free(scratch);
  return F2_OK;
}

/* ---------------------------------------------------------------- attention against a KV cache
 * Incremental decoding: queries q [B,Tq,H,Dh] at positions n_past.., keys and values from the cache
 * [B,Tmax,Hkv,Dh]. The same tiles as f2_attention_forward (GEMMs for the scores and for P V, the softmax
 * in double), shifted by n_past: query i of a block sees keys 0 .. n_past+i. So a decoded row matches the
 * full forward's row up to the GEMMs' summation order. */
int f2_attention_decode(f2_tensor *out, const f2_tensor *q, const f2_tensor *k_cache, const f2_tensor *v_cache,
                        int64_t n_past, float scale) {
  const char *op = "f2_attention_decode";
  F2_TRY(arg(op, "out", out, FLOAT));
  F2_TRY(arg(op, "q", q, FLOAT));
  F2_TRY(arg(op, "k_cache", k_cache, FLOAT));
  F2_TRY(arg(op, "v_cache", v_cache, FLOAT));
  if (q->ndim != 4) return F2_FAIL(F2_ERR_ARG, "%s: q must be 4-D [batch, seq, heads, head_dim], has %d dims", op, (int)q->ndim);
  if (k_cache->ndim != 4)
    return F2_FAIL(F2_ERR_ARG, "%s: k_cache must be 4-D [batch, max_len, kv_heads, head_dim], has %d dims", op,
                   (int)k_cache->ndim);
  F2_TRY(shape_is(op, "out", out, 4, q->shape));
  int64_t batch = q->shape[0], seq = q->shape[1], heads = q->shape[2], hd = q->shape[3];
  int64_t max_len = k_cache->shape[1], kvh = k_cache->shape[2];
  int64_t kshape[4] = {batch, max_len, kvh, hd};
  F2_TRY(shape_is(op, "k_cache", k_cache, 4, kshape));
  F2_TRY(shape_is(op, "v_cache", v_cache, 4, kshape));
  if (kvh < 1 || heads % kvh)
    return F2_FAIL(F2_ERR_ARG, "%s: %lld query heads are not a multiple of %lld KV heads", op, (long long)heads,
                   (long long)kvh);
  if (n_past < 0 || n_past + seq > max_len)
    return F2_FAIL(F2_ERR_ARG, "%s: n_past %lld + %lld new positions do not fit the cache of %lld", op,
                   (long long)n_past, (long long)seq, (long long)max_len);
  int gpu = 0;
  F2_TRY(ONE_DEVICE(op, &gpu, out, q, k_cache, v_cache));
  if (gpu) return F2_PROFILED("attention_decode", f2_cuda_attention_decode(out, q, k_cache, v_cache, n_past, scale));
  if (batch * heads * seq == 0) return F2_OK;
  int64_t group = heads / kvh, qld = heads * hd, kld = kvh * hd, block = seq < ATTN_BLOCK ? seq : ATTN_BLOCK;
  /* Per thread: a block's scores/probabilities [block, n_past + seq] and its out [block, hd]. */
  int threads, failed = 0;
  int64_t per_thread = block * (n_past + seq + hd);
  float *scratch = attention_scratch(op, per_thread, batch * heads, &threads);
  if (!scratch) return F2_ERR_MEM;
#pragma omp parallel for schedule(dynamic) num_threads(threads)
  for (int64_t bh = 0; bh < batch * heads; bh++) {   /* (batch, head) pairs on threads */
    int64_t b = bh / heads, h = bh % heads, kv0 = (b * max_len * kvh + h / group) * hd;
    float *S = scratch + omp_get_thread_num() * per_thread, *O = S + block * (n_past + seq);
    for (int64_t i0 = 0; i0 < seq; i0 += block) {
      int64_t nq = seq - i0 < block ? seq - i0 : block, nk = n_past + i0 + nq, q0 = ((b * seq + i0) * heads + h) * hd;
      f2_tensor qv = rows_view(q, q0, nq, hd, qld), kv = rows_view(k_cache, kv0, nk, hd, kld);
      f2_tensor vv = rows_view(v_cache, kv0, nk, hd, kld), sv = scratch_view(S, nq, nk), ov = scratch_view(O, nq, hd);
      int rc = f2_cpu_matmul(&sv, &qv, &kv, 0, 1, scale, 0);
      double inv_l[ATTN_BLOCK];
      for (int64_t r = 0; r < nq; r++) {   /* softmax over keys 0 .. n_past+i0+r, sums in double */
        float *row = S + r * nk;
        int64_t last = n_past + i0 + r;
        double m = -INFINITY, l = 0;
        for (int64_t j = 0; j <= last; j++) m = row[j] > m ? row[j] : m;
        for (int64_t j = 0; j <= last; j++) {
          double p = exp(row[j] - m);
          row[j] = (float)p;
          l += p;
        }
        for (int64_t j = last + 1; j < nk; j++) row[j] = 0;
        inv_l[r] = 1 / l;
      }
      rc |= f2_cpu_matmul(&ov, &sv, &vv, 0, 0, 1, 0);
      if (rc != F2_OK) {
#pragma omp atomic write
        failed = 1;
      }
      for (int64_t r = 0; r < nq; r++)
        for (int64_t d = 0; d < hd; d++) st(out, q0 + r * qld + d, (float)(O[r * hd + d] * inv_l[r]));
    }
  }
  free(scratch);
  return failed ? F2_FAIL(F2_ERR_MEM, "%s: out of host memory in a GEMM", op) : F2_OK;
}
