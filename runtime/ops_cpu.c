/* ops_cpu.c — the plain-C reference of every tensor op (ops.c dispatches here for CPU tensors):
 * one strided walker over up to 8 dims shared by all elementwise ops, casts between the 7 dtypes,
 * fill/arange/rand, elementwise math in fp64, reductions accumulated in fp64 in row-major order, and
 * a cache-blocked matmul with fp32 accumulation. Single-threaded and deterministic. */
#include "ops_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "f2_rng.h"

/* Elements converted per step of a run: small enough for the stack, large enough that the
 * per-chunk dtype and op switches cost nothing. */
enum { CHUNK = 256 };

/* ---------------------------------------------------------------- dtype lanes */

static int is_integer(int32_t dtype) { return dtype == F2_I32 || dtype == F2_I64 || dtype == F2_U8 || dtype == F2_I8; }

/* fp64 -> integer as the GPU's cvt.rzi does it: truncate toward zero, saturate, NaN -> 0
 * (a plain C cast is undefined out of range). (double)INT64_MAX is 2^63, so hi is reached first. */
static int64_t to_integer(double v, int64_t lo, int64_t hi) {
  if (v != v) return 0;
  if (v <= (double)lo) return lo;
  if (v >= (double)hi) return hi;
  return (int64_t)v;
}

#define AT(type, i) (*(type *)(p + (i) * step))

static void load_f64(double *out, const char *p, int64_t step, int32_t dtype, int64_t n) {
  int64_t i;
  switch (dtype) {
    case F2_F32: for (i = 0; i < n; i++) out[i] = AT(const float, i); break;
    case F2_BF16: for (i = 0; i < n; i++) out[i] = f2_bf16_to_f32(AT(const uint16_t, i)); break;
    case F2_F16: for (i = 0; i < n; i++) out[i] = f2_f16_to_f32(AT(const uint16_t, i)); break;
    case F2_I32: for (i = 0; i < n; i++) out[i] = AT(const int32_t, i); break;
    case F2_I64: for (i = 0; i < n; i++) out[i] = (double)AT(const int64_t, i); break;
    case F2_U8: for (i = 0; i < n; i++) out[i] = AT(const uint8_t, i); break;
    case F2_I8: for (i = 0; i < n; i++) out[i] = AT(const int8_t, i); break;
  }
}

/* Floats round to fp32 first (as the GPU computes), then bf16/f16 round to nearest even. */
static void store_f64(char *p, int64_t step, int32_t dtype, const double *in, int64_t n) {
  int64_t i;
  switch (dtype) {
    case F2_F32: for (i = 0; i < n; i++) AT(float, i) = (float)in[i]; break;
    case F2_BF16: for (i = 0; i < n; i++) AT(uint16_t, i) = f2_f32_to_bf16((float)in[i]); break;
    case F2_F16: for (i = 0; i < n; i++) AT(uint16_t, i) = f2_f32_to_f16((float)in[i]); break;
    case F2_I32: for (i = 0; i < n; i++) AT(int32_t, i) = (int32_t)to_integer(in[i], INT32_MIN, INT32_MAX); break;
    case F2_I64: for (i = 0; i < n; i++) AT(int64_t, i) = to_integer(in[i], INT64_MIN, INT64_MAX); break;
    case F2_U8: for (i = 0; i < n; i++) AT(uint8_t, i) = (uint8_t)to_integer(in[i], 0, UINT8_MAX); break;
    case F2_I8: for (i = 0; i < n; i++) AT(int8_t, i) = (int8_t)to_integer(in[i], INT8_MIN, INT8_MAX); break;
  }
}

/* Integer to integer copies go through int64 so they are exact (narrowing wraps, as C and CUDA do). */
static void load_i64(int64_t *out, const char *p, int64_t step, int32_t dtype, int64_t n) {
  int64_t i;
  switch (dtype) {
    case F2_I32: for (i = 0; i < n; i++) out[i] = AT(const int32_t, i); break;
    case F2_I64: for (i = 0; i < n; i++) out[i] = AT(const int64_t, i); break;
    case F2_U8: for (i = 0; i < n; i++) out[i] = AT(const uint8_t, i); break;
    case F2_I8: for (i = 0; i < n; i++) out[i] = AT(const int8_t, i); break;
  }
}

static void store_i64(char *p, int64_t step, int32_t dtype, const int64_t *in, int64_t n) {
  int64_t i;
  switch (dtype) {
    case F2_I32: for (i = 0; i < n; i++) AT(int32_t, i) = (int32_t)in[i]; break;
    case F2_I64: for (i = 0; i < n; i++) AT(int64_t, i) = in[i]; break;
    case F2_U8: for (i = 0; i < n; i++) AT(uint8_t, i) = (uint8_t)in[i]; break;
    case F2_I8: for (i = 0; i < n; i++) AT(int8_t, i) = (int8_t)in[i]; break;
  }
}

/* Matmul operands: float dtypes only, into fp32. */
static void load_f32(float *out, const char *p, int64_t step, int32_t dtype, int64_t n) {
  int64_t i;
  switch (dtype) {
    case F2_F32: for (i = 0; i < n; i++) out[i] = AT(const float, i); break;
    case F2_BF16: for (i = 0; i < n; i++) out[i] = f2_bf16_to_f32(AT(const uint16_t, i)); break;
    case F2_F16: for (i = 0; i < n; i++) out[i] = f2_f16_to_f32(AT(const uint16_t, i)); break;
  }
}

static void store_f32(char *p, int64_t step, int32_t dtype, const float *in, int64_t n) {
  int64_t i;
  switch (dtype) {
    case F2_F32: for (i = 0; i < n; i++) AT(float, i) = in[i]; break;
    case F2_BF16: for (i = 0; i < n; i++) AT(uint16_t, i) = f2_f32_to_bf16(in[i]); break;
    case F2_F16: for (i = 0; i < n; i++) AT(uint16_t, i) = f2_f32_to_f16(in[i]); break;
  }
}
#undef AT

/* ---------------------------------------------------------------- the strided walker */

/* fn gets runs of len elements along the innermost (merged) dim: ptr[k] is tensor k's first element
 * of the run, step[k] its byte stride, first the row-major index of the run's first element. */
typedef void (*run_fn)(void *ctx, char *const *ptr, const int64_t *step, int64_t len, int64_t first);

/* Walks ts[0]'s shape in row-major order for n (<= 3) tensors of that shape, any strides. Dims every
 * tensor walks contiguously are merged and size-1 dims dropped (the element order is unchanged, so a
 * contiguous tensor is one run). */
static void walk(int n, const f2_tensor *const *ts, run_fn fn, void *ctx) {
  const f2_tensor *t0 = ts[0];
  int64_t shape[F2_MAX_DIMS], step[3][F2_MAX_DIMS];
  int nd = 0;
  for (int d = 0; d < t0->ndim; d++) {
    if (t0->shape[d] == 0) return;
    if (t0->shape[d] == 1) continue;
    int merge = nd > 0;
    for (int k = 0; k < n && merge; k++)
      merge = ts[k]->stride[d] * (int64_t)f2_dtype_size(ts[k]->dtype) * t0->shape[d] == step[k][nd - 1];
    if (merge) {
      shape[nd - 1] *= t0->shape[d];
    } else {
      shape[nd] = t0->shape[d];
      nd++;
    }
    for (int k = 0; k < n; k++) step[k][nd - 1] = ts[k]->stride[d] * (int64_t)f2_dtype_size(ts[k]->dtype);
  }
  if (nd == 0) { /* one element */
    shape[0] = 1;
    for (int k = 0; k < n; k++) step[k][0] = 0;
    nd = 1;
  }
  char *ptr[3];
  int64_t inner[3], index[F2_MAX_DIMS] = {0}, len = shape[nd - 1], first = 0;
  for (int k = 0; k < n; k++) {
    ptr[k] = ts[k]->data;
    inner[k] = step[k][nd - 1];
  }
  for (;;) {
    fn(ctx, ptr, inner, len, first);
    first += len;
    int d = nd - 2;
    for (; d >= 0; d--) { /* odometer over the outer dims */
      for (int k = 0; k < n; k++) ptr[k] += step[k][d];
      if (++index[d] < shape[d]) break;
      for (int k = 0; k < n; k++) ptr[k] -= step[k][d] * shape[d];
      index[d] = 0;
    }
    if (d < 0) return;
  }
}

/* Loops over a run in chunks: inside, `done` is the chunk's offset and `count` its length. */
#define FOR_CHUNKS(len) \
  for (int64_t done = 0, count; count = (len) - done < CHUNK ? (len) - done : CHUNK, done < (len); done += CHUNK)

/* What an elementwise run needs to know: dtypes of out / a / b, the op and its scalars. */
typedef struct {
  int32_t dtype[3];
  int32_t op;
  double s, t;
  uint64_t seed;
} ew_ctx;

/* ---------------------------------------------------------------- copy, fill, arange, rand */

static void copy_same(char *dst, int64_t dst_step, const char *src, int64_t src_step, size_t size, int64_t len) {
  if (dst_step == (int64_t)size && src_step == (int64_t)size) {
    memcpy(dst, src, (size_t)len * size);
    return;
  }
  for (int64_t i = 0; i < len; i++) {
    switch (size) { /* fixed-size copies compile to single moves */
      case 1: memcpy(dst + i * dst_step, src + i * src_step, 1); break;
      case 2: memcpy(dst + i * dst_step, src + i * src_step, 2); break;
      case 4: memcpy(dst + i * dst_step, src + i * src_step, 4); break;
      default: memcpy(dst + i * dst_step, src + i * src_step, 8); break;
    }
  }
}

static void copy_run(void *ctx, char *const *p, const int64_t *step, int64_t len, int64_t first) {
  const ew_ctx *c = ctx;
  (void)first;
  if (c->dtype[0] == c->dtype[1]) {
    copy_same(p[0], step[0], p[1], step[1], f2_dtype_size(c->dtype[0]), len);
  } else if (is_integer(c->dtype[0]) && is_integer(c->dtype[1])) {
    int64_t buf[CHUNK];
    FOR_CHUNKS(len) {
      load_i64(buf, p[1] + done * step[1], step[1], c->dtype[1], count);
      store_i64(p[0] + done * step[0], step[0], c->dtype[0], buf, count);
    }
  } else {
    double buf[CHUNK];
    FOR_CHUNKS(len) {
      load_f64(buf, p[1] + done * step[1], step[1], c->dtype[1], count);
      store_f64(p[0] + done * step[0], step[0], c->dtype[0], buf, count);
    }
  }
}

int f2_cpu_copy(f2_tensor *dst, const f2_tensor *src) {
  ew_ctx c = {.dtype = {dst->dtype, src->dtype}};
  const f2_tensor *ts[2] = {dst, src};
  walk(2, ts, copy_run, &c);
  return F2_OK;
}

/* Generated values: fill (s), arange (s + i t), uniform (s + t u_i), normal (s + t z_i). */
enum { GEN_FILL, GEN_ARANGE, GEN_UNIFORM, GEN_NORMAL };

static void generate_run(void *ctx, char *const *p, const int64_t *step, int64_t len, int64_t first) {
  const ew_ctx *c = ctx;
  double buf[CHUNK];
  FOR_CHUNKS(len) {
    uint64_t i0 = (uint64_t)(first + done);
    for (int64_t j = 0; j < count; j++) {
      switch (c->op) {
        case GEN_FILL: buf[j] = c->s; break;
        case GEN_ARANGE: buf[j] = c->s + (double)(i0 + (uint64_t)j) * c->t; break;
        case GEN_UNIFORM: buf[j] = c->s + c->t * f2_rng_uniform(c->seed, i0 + (uint64_t)j); break;
        default: buf[j] = c->s + c->t * f2_rng_normal(c->seed, i0 + (uint64_t)j); break;
      }
    }
    store_f64(p[0] + done * step[0], step[0], c->dtype[0], buf, count);
  }
}

static int generate(f2_tensor *t, int32_t kind, double s, double scale, uint64_t seed) {
  ew_ctx c = {.dtype = {t->dtype}, .op = kind, .s = s, .t = scale, .seed = seed};
  const f2_tensor *ts[1] = {t};
  walk(1, ts, generate_run, &c);
  return F2_OK;
}

int f2_cpu_fill(f2_tensor *t, double value) { return generate(t, GEN_FILL, value, 0, 0); }
int f2_cpu_arange(f2_tensor *t, double start, double step) { return generate(t, GEN_ARANGE, start, step, 0); }
/* low + (high - low) * u in fp64, exactly as the CUDA kernel (x86-64-v2 has no FMA to fuse it). */
int f2_cpu_rand_uniform(f2_tensor *t, uint64_t seed, double low, double high) {
  return generate(t, GEN_UNIFORM, low, high - low, seed);
}
int f2_cpu_rand_normal(f2_tensor *t, uint64_t seed, double mean, double std) {
  return generate(t, GEN_NORMAL, mean, std, seed);
}

/* ---------------------------------------------------------------- elementwise math (fp64) */

static void binary_math(int32_t op, double *x, const double *y, int64_t n) {
  int64_t i;
  switch (op) {
    case F2_OP_ADD: for (i = 0; i < n; i++) x[i] += y[i]; break;
    case F2_OP_SUB: for (i = 0; i < n; i++) x[i] -= y[i]; break;
    case F2_OP_MUL: for (i = 0; i < n; i++) x[i] *= y[i]; break;
    case F2_OP_DIV: for (i = 0; i < n; i++) x[i] /= y[i]; break;
    /* NaN on either side gives NaN (fmax/fmin would drop it). */
    case F2_OP_MAX: for (i = 0; i < n; i++) x[i] = (x[i] > y[i] || x[i] != x[i]) ? x[i] : y[i]; break;
    case F2_OP_MIN: for (i = 0; i < n; i++) x[i] = (x[i] < y[i] || x[i] != x[i]) ? x[i] : y[i]; break;
    case F2_OP_POW: for (i = 0; i < n; i++) x[i] = pow(x[i], y[i]); break;
  }
}

static void unary_math(int32_t op, double *x, int64_t n) {
  int64_t i;
  switch (op) {
    case F2_OP_NEG: for (i = 0; i < n; i++) x[i] = -x[i]; break;
    case F2_OP_ABS: for (i = 0; i < n; i++) x[i] = fabs(x[i]); break;
    case F2_OP_EXP: for (i = 0; i < n; i++) x[i] = exp(x[i]); break;
    case F2_OP_LOG: for (i = 0; i < n; i++) x[i] = log(x[i]); break;
    case F2_OP_SQRT: for (i = 0; i < n; i++) x[i] = sqrt(x[i]); break;
    case F2_OP_RSQRT: for (i = 0; i < n; i++) x[i] = 1.0 / sqrt(x[i]); break;
    case F2_OP_TANH: for (i = 0; i < n; i++) x[i] = tanh(x[i]); break;
    case F2_OP_SIGMOID: for (i = 0; i < n; i++) x[i] = 1.0 / (1.0 + exp(-x[i])); break;
    case F2_OP_SILU: for (i = 0; i < n; i++) x[i] = x[i] / (1.0 + exp(-x[i])); break;
    case F2_OP_SQUARE: for (i = 0; i < n; i++) x[i] *= x[i]; break;
    /* 0 stays 0 (with its sign), NaN stays NaN. */
    case F2_OP_SIGN: for (i = 0; i < n; i++) x[i] = x[i] > 0 ? 1.0 : x[i] < 0 ? -1.0 : x[i]; break;
  }
}

/* p[0] = out, p[1] = a, p[2] = b; without b (dtype[2] < 0) the scalar s stands in for it. */
static void binary_run(void *ctx, char *const *p, const int64_t *step, int64_t len, int64_t first) {
  const ew_ctx *c = ctx;
  double x[CHUNK], y[CHUNK];
  (void)first;
  FOR_CHUNKS(len) {
    load_f64(x, p[1] + done * step[1], step[1], c->dtype[1], count);
    if (c->dtype[2] >= 0) load_f64(y, p[2] + done * step[2], step[2], c->dtype[2], count);
    else for (int64_t j = 0; j < count; j++) y[j] = c->s;
    binary_math(c->op, x, y, count);
    store_f64(p[0] + done * step[0], step[0], c->dtype[0], x, count);
  }
}

int f2_cpu_binary(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, double s, int32_t op) {
  ew_ctx c = {.dtype = {out->dtype, a->dtype, b ? b->dtype : -1}, .op = op, .s = s};
  const f2_tensor *ts[3] = {out, a, b};
  walk(b ? 3 : 2, ts, binary_run, &c);
  return F2_OK;
}

static void unary_run(void *ctx, char *const *p, const int64_t *step, int64_t len, int64_t first) {
  const ew_ctx *c = ctx;
  double x[CHUNK];
  (void)first;
  FOR_CHUNKS(len) {
    load_f64(x, p[1] + done * step[1], step[1], c->dtype[1], count);
    unary_math(c->op, x, count);
    store_f64(p[0] + done * step[0], step[0], c->dtype[0], x, count);
  }
}

int f2_cpu_unary(f2_tensor *out, const f2_tensor *a, int32_t op) {
  ew_ctx c = {.dtype = {out->dtype, a->dtype}, .op = op};
  const f2_tensor *ts[2] = {out, a};
  walk(2, ts, unary_run, &c);
  return F2_OK;
}

/* ---------------------------------------------------------------- reductions (fp64, in order) */

typedef struct {
  int32_t op, dtype;
  double sum, best; /* sum (of squares for NORM); running max or min */
  int64_t count;
  int64_t inner_len, inner_step; /* reduce over one dim: its length and byte stride in x */
  int32_t out_dtype;
} reduce_ctx;

static void reduce_start(reduce_ctx *r) {
  r->sum = 0;
  r->best = r->op == F2_RED_MIN ? INFINITY : -INFINITY;
  r->count = 0;
}

static void reduce_add(reduce_ctx *r, const double *v, int64_t n) {
  int64_t i;
  switch (r->op) {
    case F2_RED_SUM:
    case F2_RED_MEAN: for (i = 0; i < n; i++) r->sum += v[i]; break;
    case F2_RED_NORM: for (i = 0; i < n; i++) r->sum += v[i] * v[i]; break;
    /* A NaN sticks: nothing compares greater than it, and it replaces any number. */
    case F2_RED_MAX: for (i = 0; i < n; i++) if (v[i] > r->best || v[i] != v[i]) r->best = v[i]; break;
    case F2_RED_MIN: for (i = 0; i < n; i++) if (v[i] < r->best || v[i] != v[i]) r->best = v[i]; break;
  }
  r->count += n;
}

static double reduce_result(const reduce_ctx *r) {
  switch (r->op) {
    case F2_RED_SUM: return r->sum;
    case F2_RED_MEAN: return r->sum / (double)r->count;
    case F2_RED_NORM: return sqrt(r->sum);
    default: return r->best;
  }
}

static void reduce_all_run(void *ctx, char *const *p, const int64_t *step, int64_t len, int64_t first) {
  reduce_ctx *r = ctx;
  double buf[CHUNK];
  (void)first;
  FOR_CHUNKS(len) {
    load_f64(buf, p[0] + done * step[0], step[0], r->dtype, count);
    reduce_add(r, buf, count);
  }
}

/* p[0] = out, p[1] = x's first element of the reduced dim, for len output elements. */
static void reduce_dim_run(void *ctx, char *const *p, const int64_t *step, int64_t len, int64_t first) {
  reduce_ctx *r = ctx;
  double buf[CHUNK];
  (void)first;
  for (int64_t j = 0; j < len; j++) {
    const char *x = p[1] + j * step[1];
    reduce_start(r);
    FOR_CHUNKS(r->inner_len) {
      load_f64(buf, x + done * r->inner_step, r->inner_step, r->dtype, count);
      reduce_add(r, buf, count);
    }
    double v = reduce_result(r);
    store_f64(p[0] + j * step[0], 0, r->out_dtype, &v, 1);
  }
}

/* Drops dim d of t's geometry (a stack copy: walked, never freed). */
static f2_tensor without_dim(const f2_tensor *t, int32_t d) {
  f2_tensor v = *t;
  for (int i = d; i < t->ndim - 1; i++) {
    v.shape[i] = t->shape[i + 1];
    v.stride[i] = t->stride[i + 1];
  }
  v.ndim--;
  return v;
}

int f2_cpu_reduce(f2_tensor *out, const f2_tensor *x, int32_t dim, int32_t op) {
  reduce_ctx r = {.op = op, .dtype = x->dtype, .out_dtype = out->dtype};
  if (dim < 0) {
    reduce_start(&r);
    const f2_tensor *ts[1] = {x};
    walk(1, ts, reduce_all_run, &r);
    double v = reduce_result(&r);
    store_f64(out->data, 0, out->dtype, &v, 1);
    return F2_OK;
  }
  /* Walk the kept dims of out and x together; each output element reduces its line of x. */
  f2_tensor xo = without_dim(x, dim), oo = out->ndim == x->ndim ? without_dim(out, dim) : *out;
  r.inner_len = x->shape[dim];
  r.inner_step = x->stride[dim] * (int64_t)f2_dtype_size(x->dtype);
  const f2_tensor *ts[2] = {&oo, &xo};
  walk(2, ts, reduce_dim_run, &r);
  return F2_OK;
}

/* ---------------------------------------------------------------- matmul (fp32 accumulation) */

/* Blocking: a panel of op(b) (all K rows x NC columns) and a block of op(a) (MC rows x all K) are
 * converted to contiguous fp32, then each row of the MC x NC accumulator block takes KC-long slices
 * of k in order, so every output element sums its K products in the order k = 0, 1, ... . */
enum { MM_MC = 64, MM_NC = 256, MM_KC = 128 };

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* c[4][nc] (row stride nc) += a[4][k0:k1] (row stride lda) @ b[k0:k1][nc], k in order. Columns go
 * in 4x8 tiles held in registers across the k loop (8 accumulator vectors, 2 of b, 4 of a), so each
 * b element loaded serves four rows; the sums and their order are those of the plain loop. */
static void tile_4rows(float *c, int64_t nc, const float *a, int64_t lda, const float *b, int64_t k0, int64_t k1) {
  int64_t j = 0;
  for (; j + 8 <= nc; j += 8) {
    float t[4][8];
    for (int r = 0; r < 4; r++)
      for (int x = 0; x < 8; x++) t[r][x] = c[r * nc + j + x];
    for (int64_t k = k0; k < k1; k++) {
      const float *bk = b + k * nc + j;
      float a0 = a[k], a1 = a[lda + k], a2 = a[2 * lda + k], a3 = a[3 * lda + k];
      for (int x = 0; x < 8; x++) {
        t[0][x] += a0 * bk[x];
        t[1][x] += a1 * bk[x];
        t[2][x] += a2 * bk[x];
        t[3][x] += a3 * bk[x];
      }
    }
    for (int r = 0; r < 4; r++)
      for (int x = 0; x < 8; x++) c[r * nc + j + x] = t[r][x];
  }
  for (int r = 0; r < 4; r++) /* the last nc % 8 columns */
    for (int64_t k = k0; k < k1; k++)
      for (int64_t x = j; x < nc; x++) c[r * nc + x] += a[r * lda + k] * b[k * nc + x];
}

int f2_cpu_matmul(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t trans_a, int32_t trans_b,
                  float alpha, float beta) {
  int nd = out->ndim;
  int64_t batch = nd == 3 ? out->shape[0] : 1, M = out->shape[nd - 2], N = out->shape[nd - 1];
  int64_t K = trans_a ? a->shape[nd - 2] : a->shape[nd - 1];
  int64_t ea = (int64_t)f2_dtype_size(a->dtype), eb = (int64_t)f2_dtype_size(b->dtype);
  int64_t eo = (int64_t)f2_dtype_size(out->dtype);
  /* Byte steps of op(a)[i, k], op(b)[k, j] and out[i, j] along their rows and columns. */
  int64_t a_row = (trans_a ? a->stride[nd - 1] : a->stride[nd - 2]) * ea;
  int64_t a_col = (trans_a ? a->stride[nd - 2] : a->stride[nd - 1]) * ea;
  int64_t b_row = (trans_b ? b->stride[nd - 1] : b->stride[nd - 2]) * eb;
  int64_t b_col = (trans_b ? b->stride[nd - 2] : b->stride[nd - 1]) * eb;
  int64_t o_row = out->stride[nd - 2] * eo, o_col = out->stride[nd - 1] * eo;
  int64_t a_batch = nd == 3 ? a->stride[0] * ea : 0, b_batch = nd == 3 ? b->stride[0] * eb : 0;
  int64_t o_batch = nd == 3 ? out->stride[0] * eo : 0;
  if (M == 0 || N == 0 || batch == 0) return F2_OK;

  size_t k_alloc = (size_t)(K > 0 ? K : 1);
  float *panel = malloc(k_alloc * MM_NC * sizeof(float));
  float *block = malloc(k_alloc * MM_MC * sizeof(float));
  float *acc = malloc((size_t)MM_MC * MM_NC * sizeof(float));
  float *row = malloc((size_t)MM_NC * sizeof(float));
  if (!panel || !block || !acc || !row) {
    free(panel), free(block), free(acc), free(row);
    return F2_FAIL(F2_ERR_MEM, "matmul: out of host memory for %lld x %d staging buffers", (long long)K, MM_NC);
  }
  for (int64_t bi = 0; bi < batch; bi++) {
    const char *A = (const char *)a->data + bi * a_batch, *B = (const char *)b->data + bi * b_batch;
    char *O = (char *)out->data + bi * o_batch;
    for (int64_t j0 = 0; j0 < N; j0 += MM_NC) {
      int64_t nc = min64(MM_NC, N - j0);
      for (int64_t k = 0; k < K; k++) load_f32(panel + k * nc, B + k * b_row + j0 * b_col, b_col, b->dtype, nc);
      for (int64_t i0 = 0; i0 < M; i0 += MM_MC) {
        int64_t mc = min64(MM_MC, M - i0);
        for (int64_t i = 0; i < mc; i++) load_f32(block + i * K, A + (i0 + i) * a_row, a_col, a->dtype, K);
        memset(acc, 0, (size_t)(mc * nc) * sizeof(float));
        for (int64_t k0 = 0; k0 < K; k0 += MM_KC) {
          int64_t k1 = min64(K, k0 + MM_KC);
          int64_t i = 0;
          for (; i + 4 <= mc; i += 4) tile_4rows(acc + i * nc, nc, block + i * K, K, panel, k0, k1);
          for (; i < mc; i++) {
            float *c = acc + i * nc;
            for (int64_t k = k0; k < k1; k++) {
              float av = block[i * K + k];
              const float *brow = panel + k * nc;
              for (int64_t j = 0; j < nc; j++) c[j] += av * brow[j];
            }
          }
        }
        for (int64_t i = 0; i < mc; i++) {
          char *orow = O + (i0 + i) * o_row + j0 * o_col;
          const float *c = acc + i * nc;
          /* beta == 0 never reads out (BLAS convention: NaN garbage there does not leak in). */
          if (beta != 0.0f) {
            load_f32(row, orow, o_col, out->dtype, nc);
            for (int64_t j = 0; j < nc; j++) row[j] = alpha * c[j] + beta * row[j];
          } else {
            for (int64_t j = 0; j < nc; j++) row[j] = alpha * c[j];
          }
          store_f32(orow, o_col, out->dtype, row, nc);
        }
      }
    }
  }
  free(panel), free(block), free(acc), free(row);
  return F2_OK;
}
