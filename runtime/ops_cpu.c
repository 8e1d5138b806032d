/* ops_cpu.c — the plain-C reference of every tensor op (ops.c dispatches here for CPU tensors):
 * one strided walker over up to 8 dims shared by all elementwise ops, casts between the 7 dtypes,
 * fill/arange/rand, elementwise math in fp64, reductions accumulated in fp64 in row-major order, and
 * a cache-blocked matmul with fp32 accumulation (f2_cpu_matmul_ref; f2_cpu_matmul goes through OpenBLAS
 * when built with it). Large elementwise walks run on OpenMP threads; results never depend on the
 * thread count. */
#include "ops_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "f2_rng.h"

#include <omp.h>
#ifdef F2_HAVE_BLAS
#include <cblas.h>
#endif

/* F2_THREADS=n sets the threads of the CPU path (OpenMP loops; OpenBLAS runs inside them); unset,
 * OpenMP uses every core. Read once, when the runtime loads. Idle threads wait passively (asleep)
 * unless OMP_WAIT_POLICY says otherwise: spinning threads lose their core to any other busy process
 * and every parallel region then waits a scheduler time slice for them (measured: a training step
 * 24 s spinning, 15 s passive with another process on one of 2 cores). libgomp reads the variable
 * when it initializes, after this constructor (OMP_DISPLAY_ENV=true shows the policy it took). */
__attribute__((constructor)) static void threads_from_env(void) {
  setenv("OMP_WAIT_POLICY", "passive", 0);
  const char *env = getenv("F2_THREADS");
  int n = env ? atoi(env) : 0;
  if (n > 0) omp_set_num_threads(n);
}

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

/* Elements below which a walk stays on one thread, and the longest piece of a run one call of fn
 * gets, so that one long run still spreads over threads. A parallel region costs microseconds on idle
 * cores but up to a scheduler time slice when another process keeps a core busy (it waits for its
 * slowest thread), so only work of about a millisecond or more is split. */
enum { PARALLEL_MIN = 1 << 19, PIECE = 1 << 14 };

/* A walk's merged geometry: nd dims (innermost last), byte steps of up to 3 tensors. */
typedef struct {
  int n, nd;
  int64_t shape[F2_MAX_DIMS], step[3][F2_MAX_DIMS];
  char *base[3];
} walk_plan;

/* Pieces [p0, p1) of the walk, per_run pieces of at most `piece` elements per run: the outer index
 * is decoded once at p0, then advanced like an odometer. */
static void walk_range(const walk_plan *w, run_fn fn, void *ctx, int64_t piece, int64_t per_run, int64_t p0,
                       int64_t p1) {
  int nd = w->nd, n = w->n;
  int64_t len = w->shape[nd - 1], index[F2_MAX_DIMS] = {0}, run = p0 / per_run;
  char *ptr[3];
  int64_t inner[3];
  for (int k = 0; k < n; k++) {
    ptr[k] = w->base[k];
    inner[k] = w->step[k][nd - 1];
  }
  for (int d = nd - 2; d >= 0; d--) { /* decode the run index into the outer dims */
    index[d] = run % w->shape[d];
    run /= w->shape[d];
    for (int k = 0; k < n; k++) ptr[k] += index[d] * w->step[k][d];
  }
  run = p0 / per_run;
  for (int64_t p = p0; p < p1; p++) {
    int64_t start = (p % per_run) * piece, count = len - start < piece ? len - start : piece;
    char *at[3];
    for (int k = 0; k < n; k++) at[k] = ptr[k] + start * inner[k];
    fn(ctx, at, inner, count, run * len + start);
    if (start + count < len) continue;
    run++;
    for (int d = nd - 2; d >= 0; d--) { /* next run: odometer over the outer dims */
      for (int k = 0; k < n; k++) ptr[k] += w->step[k][d];
      if (++index[d] < w->shape[d]) break;
      for (int k = 0; k < n; k++) ptr[k] -= w->step[k][d] * w->shape[d];
      index[d] = 0;
    }
  }
}

/* Walks ts[0]'s shape in row-major order for n (<= 3) tensors of that shape, any strides. Dims every
 * tensor walks contiguously are merged and size-1 dims dropped (the element order is unchanged, so a
 * contiguous tensor is one run). parallel: fn only touches elements of its own run (elementwise ops),
 * so large walks split into contiguous ranges of runs over the OpenMP threads; each element is still
 * computed by the same code from the same inputs, so the result does not depend on the thread count. */
static void walk(int n, const f2_tensor *const *ts, run_fn fn, void *ctx, int parallel) {
  const f2_tensor *t0 = ts[0];
  walk_plan w = {.n = n};
  for (int d = 0; d < t0->ndim; d++) {
    if (t0->shape[d] == 0) return;
    if (t0->shape[d] == 1) continue;
    int merge = w.nd > 0;
    for (int k = 0; k < n && merge; k++)
      merge = ts[k]->stride[d] * (int64_t)f2_dtype_size(ts[k]->dtype) * t0->shape[d] == w.step[k][w.nd - 1];
    if (merge) {
      w.shape[w.nd - 1] *= t0->shape[d];
    } else {
      w.shape[w.nd] = t0->shape[d];
      w.nd++;
    }
    for (int k = 0; k < n; k++) w.step[k][w.nd - 1] = ts[k]->stride[d] * (int64_t)f2_dtype_size(ts[k]->dtype);
  }
  if (w.nd == 0) { /* one element */
    w.shape[0] = 1;
    for (int k = 0; k < n; k++) w.step[k][0] = 0;
    w.nd = 1;
  }
  for (int k = 0; k < n; k++) w.base[k] = ts[k]->data;
  int64_t len = w.shape[w.nd - 1], runs = 1;
  for (int d = 0; d < w.nd - 1; d++) runs *= w.shape[d];
  int threads = parallel && runs * len >= PARALLEL_MIN ? omp_get_max_threads() : 1;
  if (threads <= 1) {
    walk_range(&w, fn, ctx, len, 1, 0, runs);
    return;
  }
  int64_t per_run = (len + PIECE - 1) / PIECE, pieces = runs * per_run;
#pragma omp parallel for num_threads(threads) schedule(static, 1)
  for (int th = 0; th < threads; th++)
    walk_range(&w, fn, ctx, PIECE, per_run, pieces * th / threads, pieces * (th + 1) / threads);
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
  walk(2, ts, copy_run, &c, 1);
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
  walk(1, ts, generate_run, &c, 1);
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
  walk(b ? 3 : 2, ts, binary_run, &c, 1);
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
  walk(2, ts, unary_run, &c, 1);
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

/* p[0] = out, p[1] = x's first element of the reduced dim, for len output elements. Runs may go
 * to several threads at once: each works on its own copy of the context. */
static void reduce_dim_run(void *ctx, char *const *p, const int64_t *step, int64_t len, int64_t first) {
  reduce_ctx local = *(const reduce_ctx *)ctx, *r = &local;
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
    walk(1, ts, reduce_all_run, &r, 0);   /* one sum, in order */
    double v = reduce_result(&r);
    store_f64(out->data, 0, out->dtype, &v, 1);
    return F2_OK;
  }
  /* Walk the kept dims of out and x together; each output element reduces its line of x. */
  f2_tensor xo = without_dim(x, dim), oo = out->ndim == x->ndim ? without_dim(out, dim) : *out;
  r.inner_len = x->shape[dim];
  r.inner_step = x->stride[dim] * (int64_t)f2_dtype_size(x->dtype);
  const f2_tensor *ts[2] = {&oo, &xo};
  walk(2, ts, reduce_dim_run, &r, 1);
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

int f2_cpu_matmul_ref(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t trans_a, int32_t trans_b,
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

/* ---------------------------------------------------------------- matmul through OpenBLAS
 * cblas_sgemm on fp32 operands read in place when their layout maps onto BLAS (one unit stride, the
 * other a valid leading dimension; a column-major operand is a transposed row-major one). Anything
 * else, bf16 and f16 included, is first converted into a contiguous fp32 staging buffer, as is an out
 * BLAS can't write (bf16, odd strides). Each batch item is cut into blocks that run on the threads
 * (sgemm_blocks), so the result does not depend on the thread count. */
#ifdef F2_HAVE_BLAS
/* One stored matrix (rows x cols, element strides s0 and s1) as sgemm reads it. */
typedef struct {
  const float *p;
  int64_t ld;
  int trans;   /* 1: BLAS reads it transposed (CblasTrans) */
} blas_operand;

/* Per-thread staging buffers (a, b, out), grown as needed and kept for the next call. */
static _Thread_local float *stage_buf[3];
static _Thread_local size_t stage_cap[3];

static float *stage(int slot, int64_t rows, int64_t cols) {
  size_t n = (size_t)(rows * cols);
  if (n > stage_cap[slot]) {
    float *p = realloc(stage_buf[slot], n * sizeof(float));
    if (!p) return NULL;
    stage_buf[slot] = p, stage_cap[slot] = n;
  }
  return stage_buf[slot];
}

/* The layout of an f32 matrix if sgemm can read or write it in place; trans is the op asked for. */
static int blas_layout(blas_operand *o, int32_t dtype, int64_t rows, int64_t cols, int64_t s0, int64_t s1,
                       int trans) {
  if (dtype != F2_F32) return 0;
  int64_t wide = cols > 1 ? cols : 1, tall = rows > 1 ? rows : 1;
  if ((s1 == 1 || cols == 1) && (rows == 1 || s0 >= wide)) { /* row-major */
    o->ld = rows == 1 ? wide : s0, o->trans = trans;
    return o->ld <= INT32_MAX;
  }
  if ((s0 == 1 || rows == 1) && (cols == 1 || s1 >= tall)) { /* column-major: the transpose, row-major */
    o->ld = cols == 1 ? tall : s1, o->trans = !trans;
    return o->ld <= INT32_MAX;
  }
  return 0;
}

/* Rows of a strided matrix <-> a contiguous fp32 one, rows split over the threads when large. */
static void stage_in(float *dst, const char *src, int32_t dtype, int64_t rows, int64_t cols, int64_t row_bytes,
                     int64_t col_bytes) {
#pragma omp parallel for schedule(static) if (rows * cols >= PARALLEL_MIN)
  for (int64_t i = 0; i < rows; i++) load_f32(dst + i * cols, src + i * row_bytes, col_bytes, dtype, cols);
}
static void stage_out(char *dst, int32_t dtype, const float *src, int64_t rows, int64_t cols, int64_t row_bytes,
                      int64_t col_bytes) {
#pragma omp parallel for schedule(static) if (rows * cols >= PARALLEL_MIN)
  for (int64_t i = 0; i < rows; i++) store_f32(dst + i * row_bytes, col_bytes, dtype, src + i * cols, cols);
}

/* Operand t (one batch item at p) as sgemm reads it: in place, or staged in slot. */
static int blas_operand_of(blas_operand *o, const f2_tensor *t, const char *p, int trans, int slot) {
  int nd = t->ndim;
  int64_t rows = t->shape[nd - 2], cols = t->shape[nd - 1], s0 = t->stride[nd - 2], s1 = t->stride[nd - 1];
  o->p = (const float *)p;
  if (blas_layout(o, t->dtype, rows, cols, s0, s1, trans)) return F2_OK;
  float *buf = stage(slot, rows, cols);
  if (!buf) return F2_FAIL(F2_ERR_MEM, "matmul: out of host memory staging a %lld x %lld operand", (long long)rows, (long long)cols);
  int64_t e = (int64_t)f2_dtype_size(t->dtype);
  stage_in(buf, p, t->dtype, rows, cols, s0 * e, s1 * e);
  o->p = buf, o->ld = cols > 1 ? cols : 1, o->trans = trans;
  return F2_OK;
}

/* C[P,Q] (row-major, ldc) = alpha op(x)[P,K] op(y)[K,Q] + beta C, as single-threaded sgemm calls on
 * blocks of C's rows or columns (the longer side), the blocks on threads. OpenBLAS's own threading
 * would cut C by the thread count, and its edge kernels round differently from its main ones, so the
 * bits would depend on the thread count; here the blocks depend on the shape alone. */
static void sgemm_blocks(int64_t P, int64_t Q, int64_t K, float alpha, blas_operand x, blas_operand y, float beta,
                         float *C, int64_t ldc) {
  int by_rows = P >= Q;
  int64_t len = by_rows ? P : Q, size = (len + 15) / 16;   /* at most 16 blocks of >= 64, multiples of 16 */
  size = size < 64 ? 64 : (size + 15) / 16 * 16;
  int64_t blocks = (len + size - 1) / size;
  int parallel = blocks > 1 && (double)P * Q * K >= 1 << 21;
#pragma omp parallel num_threads(parallel ? omp_get_max_threads() : 1)
  {
    omp_set_num_threads(1);   /* this task's own ICV: OpenBLAS, which follows it, stays on this thread */
#pragma omp for schedule(dynamic)
    for (int64_t blk = 0; blk < blocks; blk++) {
      int64_t at = blk * size, n = len - at < size ? len - at : size;
      const float *xp = x.p, *yp = y.p;
      float *cp = C;
      if (by_rows) /* rows [at, at+n) of op(x) and C */
        xp += x.trans ? at : at * x.ld, cp += at * ldc;
      else /* columns [at, at+n) of op(y) and C */
        yp += y.trans ? at * y.ld : at, cp += at;
      cblas_sgemm(CblasRowMajor, x.trans ? CblasTrans : CblasNoTrans, y.trans ? CblasTrans : CblasNoTrans,
                  (int)(by_rows ? n : P), (int)(by_rows ? Q : n), (int)K, alpha, xp, (int)x.ld, yp, (int)y.ld, beta,
                  cp, (int)ldc);
    }
  }
}

static int blas_matmul(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t trans_a, int32_t trans_b,
                       float alpha, float beta) {
  int nd = out->ndim;
  int64_t batch = nd == 3 ? out->shape[0] : 1, M = out->shape[nd - 2], N = out->shape[nd - 1];
  int64_t K = trans_a ? a->shape[nd - 2] : a->shape[nd - 1];
  int64_t ea = (int64_t)f2_dtype_size(a->dtype), eb = (int64_t)f2_dtype_size(b->dtype);
  int64_t eo = (int64_t)f2_dtype_size(out->dtype), os0 = out->stride[nd - 2], os1 = out->stride[nd - 1];
  for (int64_t bi = 0; bi < batch; bi++) {
    const char *A = (const char *)a->data + (nd == 3 ? bi * a->stride[0] * ea : 0);
    const char *B = (const char *)b->data + (nd == 3 ? bi * b->stride[0] * eb : 0);
    char *O = (char *)out->data + (nd == 3 ? bi * out->stride[0] * eo : 0);
    blas_operand oa = {0}, ob = {0}, oc = {0};
    F2_TRY(blas_operand_of(&oa, a, A, trans_a, 0));
    F2_TRY(blas_operand_of(&ob, b, B, trans_b, 1));
    /* out written in place: row-major as asked, or column-major as C^T = op(b)^T op(a)^T. */
    int direct = blas_layout(&oc, out->dtype, M, N, os0, os1, 0);
    float *C = (float *)O;
    if (!direct) {
      if (!(C = stage(2, M, N)))
        return F2_FAIL(F2_ERR_MEM, "matmul: out of host memory staging a %lld x %lld output", (long long)M, (long long)N);
      if (beta != 0.0f) stage_in(C, O, out->dtype, M, N, os0 * eo, os1 * eo);
      oc.ld = N, oc.trans = 0;
    }
    if (!oc.trans) {
      sgemm_blocks(M, N, K, alpha, oa, ob, beta, C, oc.ld);
    } else { /* C^T = op(b)^T op(a)^T: each operand read with the opposite transpose */
      ob.trans = !ob.trans, oa.trans = !oa.trans;
      sgemm_blocks(N, M, K, alpha, ob, oa, beta, C, oc.ld);
    }
    if (!direct) stage_out(O, out->dtype, C, M, N, os0 * eo, os1 * eo);
  }
  return F2_OK;
}
#endif

int f2_cpu_matmul(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t trans_a, int32_t trans_b,
                  float alpha, float beta) {
#ifdef F2_HAVE_BLAS
  int nd = out->ndim;
  int64_t M = out->shape[nd - 2], N = out->shape[nd - 1], K = trans_a ? a->shape[nd - 2] : a->shape[nd - 1];
  /* Empty products (out = beta * out) and sizes beyond BLAS's int go to the reference. */
  if (M > 0 && N > 0 && K > 0 && M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX)
    return blas_matmul(out, a, b, trans_a, trans_b, alpha, beta);
#endif
  return f2_cpu_matmul_ref(out, a, b, trans_a, trans_b, alpha, beta);
}
