/* test_ops_cpu.c — every CPU tensor op against a naive loop written here, on fresh random inputs:
 * elementwise ops over random shapes with strided (transposed, narrowed) and broadcast (expanded)
 * operands and mixed float dtypes; reductions over every dim; matmul for all transpose combos,
 * 2-D and batched, against a triple loop in double; rand/fill/arange/copy/contiguous; the dispatch's
 * argument errors. Prints the time of a 512^3 f32 matmul. */
#include <string.h>
#include <time.h>

#include "f2_internal.h"
#include "f2test.h"
#include "f2_rng.h"

static uint64_t rng_state;
static uint64_t next_u64(void) { /* xorshift64*: the test's inputs, independent of f2_rng.h */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545F4914F6CDD1Dull;
}
static int64_t rand_int(int64_t lo, int64_t hi) { return lo + (int64_t)(next_u64() % (uint64_t)(hi - lo + 1)); }
static double rand_unit(void) { return (double)(next_u64() >> 11) * 0x1p-53; }

static const int32_t float_dtypes[3] = {F2_F32, F2_BF16, F2_F16};
static int32_t rand_float_dtype(void) { return float_dtypes[rand_int(0, 2)]; }

/* ---------------------------------------------------------------- element access, done naively */

static int64_t offset_of(const f2_tensor *t, const int64_t *idx) {
  int64_t off = 0;
  for (int i = 0; i < t->ndim; i++) off += idx[i] * t->stride[i];
  return off;
}

static double get(const f2_tensor *t, const int64_t *idx) {
  int64_t o = offset_of(t, idx);
  switch (t->dtype) {
    case F2_F32: return ((float *)t->data)[o];
    case F2_BF16: return f2_bf16_to_f32(((uint16_t *)t->data)[o]);
    case F2_F16: return f2_f16_to_f32(((uint16_t *)t->data)[o]);
    case F2_I32: return ((int32_t *)t->data)[o];
    case F2_I64: return (double)((int64_t *)t->data)[o];
    case F2_U8: return ((uint8_t *)t->data)[o];
    default: return ((int8_t *)t->data)[o];
  }
}

static void set(f2_tensor *t, const int64_t *idx, double v) {
  int64_t o = offset_of(t, idx);
  switch (t->dtype) {
    case F2_F32: ((float *)t->data)[o] = (float)v; break;
    case F2_BF16: ((uint16_t *)t->data)[o] = f2_f32_to_bf16((float)v); break;
    case F2_F16: ((uint16_t *)t->data)[o] = f2_f32_to_f16((float)v); break;
    default: break;
  }
}

/* The value a float output holds after storing v (fp64 -> fp32 -> bf16/f16). */
static double stored(int32_t dtype, double v) {
  float f = (float)v;
  if (dtype == F2_BF16) return f2_bf16_to_f32(f2_f32_to_bf16(f));
  if (dtype == F2_F16) return f2_f16_to_f32(f2_f32_to_f16(f));
  return f;
}

static double rtol_of(int32_t dtype) { return dtype == F2_BF16 ? 1e-2 : dtype == F2_F16 ? 2e-3 : 1e-6; }

static int next_index(int32_t ndim, const int64_t *shape, int64_t *idx) {
  for (int d = ndim - 1; d >= 0; d--) {
    if (++idx[d] < shape[d]) return 1;
    idx[d] = 0;
  }
  return 0;
}

static int close_enough(double got, double want, double rtol, double atol) {
  if (want != want) return got != got;
  if (isinf(want)) return got == want;
  return fabs(got - want) <= atol + rtol * fabs(want);
}

/* ---------------------------------------------------------------- random operands */

enum { LAYOUT_CONTIGUOUS, LAYOUT_TRANSPOSED, LAYOUT_NARROWED, LAYOUT_EXPANDED, LAYOUT_COUNT };

/* A tensor of the given logical shape and a random (or the given) layout, filled with values in
 * [lo, hi); the handle returned is a view (its base storage lives with it). */
static f2_tensor *make_operand(int32_t dtype, int32_t ndim, const int64_t *shape, int layout, double lo, double hi) {
  int64_t base_shape[F2_MAX_DIMS];
  for (int i = 0; i < ndim; i++) base_shape[i] = shape[i];
  f2_tensor *base, *view;
  if (layout == LAYOUT_TRANSPOSED && ndim >= 2) {
    /* Stored with the first and last dims swapped, viewed back. */
    base_shape[0] = shape[ndim - 1], base_shape[ndim - 1] = shape[0];
    base = f2_tensor_new(dtype, F2_CPU, ndim, base_shape);
    view = f2_tensor_transpose(base, 0, ndim - 1);
  } else if (layout == LAYOUT_NARROWED && ndim >= 1) {
    int d = (int)rand_int(0, ndim - 1);
    int64_t pad = rand_int(1, 3);
    base_shape[d] += pad;
    base = f2_tensor_new(dtype, F2_CPU, ndim, base_shape);
    view = f2_tensor_narrow(base, d, rand_int(0, pad), shape[d]);
  } else if (layout == LAYOUT_EXPANDED && ndim >= 1) {
    /* Some dims stored with size 1 (and a missing leading dim) and broadcast back. */
    int lead = ndim > 1 ? (int)rand_int(0, 1) : 0;
    for (int i = 0; i < ndim; i++) base_shape[i] = rand_int(0, 1) ? 1 : shape[i];
    base = f2_tensor_new(dtype, F2_CPU, ndim - lead, base_shape + lead);
    view = f2_tensor_expand(base, ndim, shape);
  } else {
    base = f2_tensor_new(dtype, F2_CPU, ndim, shape);
    view = f2_tensor_view(base);
  }
  int64_t idx[F2_MAX_DIMS] = {0};
  if (f2_tensor_numel(base) > 0) do
      set(base, idx, lo + (hi - lo) * rand_unit());
    while (next_index(base->ndim, base->shape, idx));
  f2_tensor_free(base);
  return view;
}

static int rand_shape(int64_t *shape, int max_dims, int max_size) {
  int ndim = (int)rand_int(0, max_dims);
  for (int i = 0; i < ndim; i++) shape[i] = rand_int(1, max_size);
  return ndim;
}

/* ---------------------------------------------------------------- elementwise */

static double ref_binary(int32_t op, double a, double b) {
  switch (op) {
    case F2_OP_ADD: return a + b;
    case F2_OP_SUB: return a - b;
    case F2_OP_MUL: return a * b;
    case F2_OP_DIV: return a / b;
    case F2_OP_MAX: return a != a || b != b ? NAN : a > b ? a : b;
    case F2_OP_MIN: return a != a || b != b ? NAN : a < b ? a : b;
    default: return exp(b * log(a)); /* a > 0 here */
  }
}

static double ref_unary(int32_t op, double x) {
  switch (op) {
    case F2_OP_NEG: return -x;
    case F2_OP_ABS: return x < 0 ? -x : x;
    case F2_OP_EXP: return exp(x);
    case F2_OP_LOG: return log(x);
    case F2_OP_SQRT: return sqrt(x);
    case F2_OP_RSQRT: return 1 / sqrt(x);
    case F2_OP_TANH: return (exp(2 * x) - 1) / (exp(2 * x) + 1);
    case F2_OP_SIGMOID: return exp(x) / (1 + exp(x));
    case F2_OP_SILU: return x * exp(x) / (1 + exp(x));
    case F2_OP_SQUARE: return x * x;
    default: return (x > 0) - (x < 0);
  }
}

static const char *binary_names[] = {"add", "sub", "mul", "div", "max", "min", "pow"};
static const char *unary_names[] = {"neg", "abs", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "silu", "square", "sign"};

/* One random case of op (binary: kind 0, scalar: kind 1, unary: kind 2). */
static void elementwise_case(int kind, int32_t op) {
  int64_t shape[F2_MAX_DIMS];
  int ndim = rand_shape(shape, 4, 6);
  int positive = (kind < 2 && op == F2_OP_POW) || (kind == 2 && (op == F2_OP_LOG || op == F2_OP_SQRT || op == F2_OP_RSQRT));
  double lo = positive ? 0.1 : -3, hi = 3;
  int32_t dt_out = rand_float_dtype(), dt_a = rand_float_dtype(), dt_b = rand_float_dtype();
  f2_tensor *a = make_operand(dt_a, ndim, shape, (int)rand_int(0, LAYOUT_COUNT - 1), lo, hi);
  f2_tensor *b = make_operand(dt_b, ndim, shape, (int)rand_int(0, LAYOUT_COUNT - 1), positive ? -2 : lo, hi);
  /* The output is contiguous, transposed or narrowed (never broadcast: it is written). */
  f2_tensor *out = make_operand(dt_out, ndim, shape, (int)rand_int(0, LAYOUT_NARROWED), 0, 1);
  double s = kind == 1 ? (rand_unit() < 0.5 ? -1.5 : 0.75) + rand_unit() : 0;
  if (kind == 1 && op == F2_OP_DIV && fabs(s) < 0.1) s = 0.5;
  int rc = kind == 0 ? f2_binary(out, a, b, op) : kind == 1 ? f2_binary_scalar(out, a, s, op) : f2_unary(out, a, op);
  CHECK_OK(rc);
  int bad = 0;
  double rtol = rtol_of(dt_out) + (op == F2_OP_POW || op == F2_OP_EXP ? 1e-6 : 0);
  int64_t idx[F2_MAX_DIMS] = {0};
  do {
    double x = get(a, idx), want;
    if (kind == 0) want = ref_binary(op, x, get(b, idx));
    else if (kind == 1) want = ref_binary(op, x, s);
    else want = ref_unary(op, x);
    double got = get(out, idx);
    if (!close_enough(got, stored(dt_out, want), rtol, 1e-12) && bad++ < 3)
      fprintf(stderr, "%s %s: got %.9g want %.9g (x %.9g)\n", kind == 2 ? "unary" : kind ? "scalar" : "binary",
              kind == 2 ? unary_names[op] : binary_names[op], got, want, x);
  } while (next_index(ndim, shape, idx));
  CHECK(bad == 0, "%s %s (%s <- %s, %s): %d wrong", kind == 2 ? "unary" : kind ? "scalar" : "binary",
        kind == 2 ? unary_names[op] : binary_names[op], f2_dtype_name(dt_out), f2_dtype_name(dt_a),
        f2_dtype_name(dt_b), bad);
  f2_tensor_free(a), f2_tensor_free(b), f2_tensor_free(out);
}

static void test_elementwise(void) {
  for (int rep = 0; rep < 6; rep++) {
    for (int32_t op = F2_OP_ADD; op <= F2_OP_POW; op++) elementwise_case(0, op), elementwise_case(1, op);
    for (int32_t op = F2_OP_NEG; op <= F2_OP_SIGN; op++) elementwise_case(2, op);
  }
  /* In place, NaN through max/min, sign of zeros. */
  int64_t n = 6;
  f2_tensor *x = f2_tensor_new(F2_F32, F2_CPU, 1, &n), *y = f2_tensor_new(F2_F32, F2_CPU, 1, &n);
  float *xp = x->data, *yp = y->data;
  float xs[6] = {NAN, 1, 2, -0.0f, 0.0f, -5}, ys[6] = {1, NAN, -3, 4, 1, -5};
  memcpy(xp, xs, sizeof xs), memcpy(yp, ys, sizeof ys);
  CHECK_OK(f2_binary(x, x, y, F2_OP_MAX));
  CHECK(xp[0] != xp[0] && xp[1] != xp[1] && xp[2] == 2 && xp[3] == 4 && xp[5] == -5, "max propagates NaN, in place");
  memcpy(xp, xs, sizeof xs);
  CHECK_OK(f2_binary(y, x, y, F2_OP_MIN));
  CHECK(yp[0] != yp[0] && yp[1] != yp[1] && yp[2] == -3 && yp[3] == -0.0f, "min propagates NaN");
  CHECK_OK(f2_unary(y, x, F2_OP_SIGN));
  CHECK(yp[0] != yp[0] && yp[1] == 1 && signbit(yp[3]) && yp[3] == 0 && yp[4] == 0 && yp[5] == -1, "sign");
  f2_tensor_free(x), f2_tensor_free(y);
}

/* ---------------------------------------------------------------- reductions */

static const char *reduce_names[] = {"sum", "mean", "max", "min", "norm"};

static void reduce_case(int32_t op) {
  int64_t shape[F2_MAX_DIMS];
  int ndim = rand_shape(shape, 4, 7);
  int32_t dim = ndim ? (int32_t)rand_int(-1, ndim - 1) : -1, keep = (int)rand_int(0, 1);
  f2_tensor *x = make_operand(rand_float_dtype(), ndim, shape, (int)rand_int(0, LAYOUT_COUNT - 1), -2, 2);
  int64_t out_shape[F2_MAX_DIMS];
  int out_ndim = 0;
  for (int i = 0; i < ndim; i++) {
    if (i == dim && !keep) continue;
    out_shape[out_ndim++] = dim == -1 || i == dim ? 1 : shape[i];
  }
  if (dim == -1 && !keep) out_ndim = 0;
  int32_t dt_out = rand_float_dtype();
  f2_tensor *out = f2_tensor_new(dt_out, F2_CPU, out_ndim, out_shape);
  CHECK_OK(f2_reduce(out, x, dim, op));
  /* Naive: for each output element, walk the elements of x that map onto it. */
  int bad = 0;
  int64_t oidx[F2_MAX_DIMS] = {0};
  do {
    double sum = 0, abs_sum = 0, best = op == F2_RED_MAX ? -INFINITY : INFINITY;
    int64_t count = 0, xidx[F2_MAX_DIMS] = {0};
    do {
      int match = 1;
      for (int i = 0, j = 0; i < ndim && dim != -1; i++) {
        if (i == dim) { j += keep; continue; }
        match &= xidx[i] == oidx[j++];
      }
      if (!match) continue;
      double v = get(x, xidx);
      sum += op == F2_RED_NORM ? v * v : v;
      abs_sum += op == F2_RED_NORM ? v * v : fabs(v);
      if (op == F2_RED_MAX ? v > best : v < best) best = v;
      count++;
    } while (next_index(ndim, shape, xidx));
    double want = op == F2_RED_SUM ? sum : op == F2_RED_MEAN ? sum / count : op == F2_RED_NORM ? sqrt(sum) : best;
    double scale = op == F2_RED_SUM ? abs_sum : op == F2_RED_MEAN ? abs_sum / count : fabs(want);
    double got = get(out, oidx);
    if (fabs(got - want) > 1e-12 + rtol_of(dt_out) * scale && bad++ < 3)
      fprintf(stderr, "reduce %s: got %.9g want %.9g\n", reduce_names[op], got, want);
  } while (next_index(out_ndim, out_shape, oidx));
  CHECK(bad == 0, "reduce %s dim %d keep %d over %d dims: %d wrong", reduce_names[op], (int)dim, keep, ndim, bad);
  f2_tensor_free(x), f2_tensor_free(out);
}

static void test_reduce(void) {
  for (int rep = 0; rep < 12; rep++)
    for (int32_t op = F2_RED_SUM; op <= F2_RED_NORM; op++) reduce_case(op);
  /* NaN sticks in max/min; empty sums are 0; means of nothing are NaN; determinism. */
  int64_t n = 5, zero = 0;
  f2_tensor *x = f2_tensor_new(F2_F32, F2_CPU, 1, &n), *r = f2_tensor_new(F2_F32, F2_CPU, 0, NULL);
  float *xp = x->data, *rp = r->data;
  for (int i = 0; i < 5; i++) xp[i] = (float)i;
  xp[2] = NAN;
  CHECK_OK(f2_reduce(r, x, -1, F2_RED_MAX));
  CHECK(rp[0] != rp[0], "max with a NaN is NaN");
  CHECK_OK(f2_reduce(r, x, 0, F2_RED_MIN));
  CHECK(rp[0] != rp[0], "min with a NaN is NaN");
  f2_tensor *e = f2_tensor_new(F2_F32, F2_CPU, 1, &zero);
  CHECK_OK(f2_reduce(r, e, -1, F2_RED_SUM));
  CHECK(rp[0] == 0, "empty sum is 0");
  CHECK_OK(f2_reduce(r, e, -1, F2_RED_MEAN));
  CHECK(rp[0] != rp[0], "empty mean is NaN");
  f2_clear_error();
  CHECK(f2_reduce(r, e, -1, F2_RED_MAX) == F2_ERR_ARG && strstr(f2_last_error(), "max over no elements"), "%s",
        f2_last_error());
  f2_tensor_free(x), f2_tensor_free(r), f2_tensor_free(e);
}

/* ---------------------------------------------------------------- matmul */

static void matmul_case(int nd, int ta, int tb, int64_t M, int64_t N, int64_t K, int32_t dt_in, int32_t dt_out) {
  int64_t batch = nd == 3 ? rand_int(1, 3) : 1;
  int64_t a_shape[3], b_shape[3], o_shape[3];
  int o = nd - 2;
  if (nd == 3) a_shape[0] = b_shape[0] = o_shape[0] = batch;
  a_shape[o] = ta ? K : M, a_shape[o + 1] = ta ? M : K;
  b_shape[o] = tb ? N : K, b_shape[o + 1] = tb ? K : N;
  o_shape[o] = M, o_shape[o + 1] = N;
  /* Operands may be strided; a batched b may be one matrix broadcast over the batch (stride 0). */
  f2_tensor *a = make_operand(dt_in, nd, a_shape, (int)rand_int(0, LAYOUT_NARROWED), -1, 1);
  f2_tensor *b = make_operand(dt_in, nd, b_shape, nd == 3 && rand_int(0, 3) == 0 ? LAYOUT_EXPANDED
                                                                                : (int)rand_int(0, LAYOUT_NARROWED),
                              -1, 1);
  f2_tensor *out = make_operand(dt_out, nd, o_shape, (int)rand_int(0, LAYOUT_NARROWED), -1, 1);
  float alpha = (float)(0.5 + rand_unit()), beta = rand_int(0, 1) ? 0.0f : (float)(rand_unit() - 0.5);
  /* beta = 0 must not read out: poison it. */
  int64_t idx[3] = {0};
  f2_tensor *old = f2_tensor_new(F2_F32, F2_CPU, nd, o_shape);
  do {
    set(old, idx, get(out, idx));
    if (beta == 0.0f) set(out, idx, NAN);
  } while (next_index(nd, o_shape, idx));
  CHECK_OK(f2_matmul(out, a, b, ta, tb, alpha, beta));
  int bad = 0;
  double worst = 0;
  do {
    int64_t bi = nd == 3 ? idx[0] : 0, i = idx[o], j = idx[o + 1];
    double sum = 0, mag = 0;
    for (int64_t k = 0; k < K; k++) {
      int64_t ai[3] = {bi, ta ? k : i, ta ? i : k}, bj[3] = {bi, tb ? j : k, tb ? k : j};
      double av = get(a, nd == 3 ? ai : ai + 1), bv = get(b, nd == 3 ? bj : bj + 1);
      sum += av * bv;
      mag += fabs(av * bv);
    }
    double want = alpha * sum + (beta != 0.0f ? beta * get(old, idx) : 0);
    double scale = fabs(alpha) * mag + fabs(beta * get(old, idx));
    double tol = (dt_out == F2_BF16 ? 1e-2 : 1e-5) * scale + 1e-6, err = fabs(get(out, idx) - want);
    if (!(err <= tol)) bad++;
    if (err > worst) worst = err;
  } while (next_index(nd, o_shape, idx));
  CHECK(bad == 0, "matmul %dD ta %d tb %d %lldx%lldx%lld %s -> %s: %d wrong (max err %.3g)", nd, ta, tb, (long long)M,
        (long long)N, (long long)K, f2_dtype_name(dt_in), f2_dtype_name(dt_out), bad, worst);
  f2_tensor_free(a), f2_tensor_free(b), f2_tensor_free(out), f2_tensor_free(old);
}

static void test_matmul(void) {
  for (int nd = 2; nd <= 3; nd++)
    for (int ta = 0; ta <= 1; ta++)
      for (int tb = 0; tb <= 1; tb++) {
        matmul_case(nd, ta, tb, rand_int(1, 70), rand_int(1, 300), rand_int(1, 300), F2_F32, F2_F32);
        matmul_case(nd, ta, tb, rand_int(1, 70), rand_int(1, 70), rand_int(1, 70), rand_float_dtype(),
                    rand_int(0, 1) ? F2_F32 : F2_BF16);
      }
  matmul_case(2, 0, 1, 130, 300, 257, F2_BF16, F2_BF16); /* crosses every block edge */
  matmul_case(2, 0, 0, 3, 4, 0, F2_F32, F2_F32);         /* K = 0: out = beta * out */

  /* Timing: 512^3 f32, single-threaded. */
  int64_t s[2] = {512, 512};
  f2_tensor *a = f2_tensor_new(F2_F32, F2_CPU, 2, s), *b = f2_tensor_new(F2_F32, F2_CPU, 2, s);
  f2_tensor *c = f2_tensor_new(F2_F32, F2_CPU, 2, s);
  CHECK_OK(f2_rand_normal(a, 1, 0, 1));
  CHECK_OK(f2_rand_normal(b, 2, 0, 1));
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  CHECK_OK(f2_matmul(c, a, b, 0, 0, 1, 0));
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double sec = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
  printf("matmul 512x512x512 f32: %.1f ms (%.2f GFLOP/s)\n", sec * 1e3, 2.0 * 512 * 512 * 512 / sec * 1e-9);
  f2_tensor_free(a), f2_tensor_free(b), f2_tensor_free(c);
}

/* ---------------------------------------------------------------- generators, copy */

static void test_generators(void) {
  /* rand_uniform into a transposed view: logical element i gets u(seed, i). */
  int64_t shape[2] = {rand_int(50, 200), rand_int(50, 200)};
  int64_t n = shape[0] * shape[1];
  uint64_t seed = next_u64();
  double lo = -2 + rand_unit(), hi = lo + 0.5 + 3 * rand_unit();
  f2_tensor *base = f2_tensor_new(F2_F32, F2_CPU, 2, (int64_t[]){shape[1], shape[0]});
  f2_tensor *t = f2_tensor_transpose(base, 0, 1);
  CHECK_OK(f2_rand_uniform(t, seed, lo, hi));
  int bad = 0, outside = 0;
  double mean = 0, var = 0;
  int64_t idx[2] = {0}, i = 0;
  do {
    double v = get(t, idx);
    bad += (float)v != (float)(lo + (hi - lo) * f2_rng_uniform(seed, (uint64_t)i++));
    outside += !(v >= lo && v <= hi);
    mean += v / (double)n;
  } while (next_index(2, shape, idx));
  do var += (get(t, idx) - mean) * (get(t, idx) - mean) / (double)n;
  while (next_index(2, shape, idx));
  double w = hi - lo;
  CHECK(bad == 0 && outside == 0, "uniform: %d differ from u(seed, i), %d outside [lo, hi]", bad, outside);
  CHECK(fabs(mean - (lo + hi) / 2) < 6 * w / sqrt(12.0 * (double)n), "uniform mean %g vs %g", mean, (lo + hi) / 2);
  CHECK(fabs(var - w * w / 12) < 0.05 * w * w / 12, "uniform variance %g vs %g", var, w * w / 12);

  /* rand_normal: the moments, and the same seed gives the same bits in bf16. */
  CHECK_OK(f2_rand_normal(t, seed, 1.5, 2.0));
  mean = var = 0;
  double m4 = 0;
  do mean += get(t, idx) / (double)n;
  while (next_index(2, shape, idx));
  do {
    double d = get(t, idx) - mean;
    var += d * d / (double)n;
    m4 += d * d * d * d / (double)n;
  } while (next_index(2, shape, idx));
  CHECK(fabs(mean - 1.5) < 6 * 2.0 / sqrt((double)n), "normal mean %g", mean);
  CHECK(fabs(var - 4.0) < 0.1 * 4.0, "normal variance %g", var);
  CHECK(fabs(m4 / (var * var) - 3.0) < 0.5, "normal kurtosis %g", m4 / (var * var));
  f2_tensor *h1 = f2_tensor_new(F2_BF16, F2_CPU, 2, shape), *h2 = f2_tensor_new(F2_BF16, F2_CPU, 2, shape);
  CHECK_OK(f2_rand_normal(h1, seed, 0, 1));
  CHECK_OK(f2_rand_normal(h2, seed, 0, 1));
  CHECK(memcmp(h1->data, h2->data, f2_tensor_nbytes(h1)) == 0, "same seed, same bits");
  CHECK_OK(f2_rand_normal(h2, seed + 1, 0, 1));
  CHECK(memcmp(h1->data, h2->data, f2_tensor_nbytes(h1)) != 0, "another seed, other numbers");

  /* fill and arange, every dtype, through a strided view (arange follows the logical order). */
  for (int32_t dt = 0; dt < F2_DTYPE_COUNT; dt++) {
    f2_tensor *b2 = f2_tensor_new(dt, F2_CPU, 2, (int64_t[]){7, 5}), *v = f2_tensor_transpose(b2, 0, 1);
    CHECK_OK(f2_fill(v, 3.0));
    int64_t j[2] = {0};
    bad = 0;
    do bad += get(v, j) != 3.0;
    while (next_index(2, v->shape, j));
    CHECK(bad == 0, "fill %s", f2_dtype_name(dt));
    CHECK_OK(f2_arange(v, 2, 3));
    bad = 0, i = 0;
    do {
      double want = 2 + 3.0 * (double)i++;
      bad += get(v, j) != (dt == F2_F32 || dt == F2_BF16 || dt == F2_F16 ? stored(dt, want) : want);
    } while (next_index(2, v->shape, j));
    CHECK(bad == 0, "arange %s: %d wrong", f2_dtype_name(dt), bad);
    f2_tensor_free(v), f2_tensor_free(b2);
  }
  CHECK(f2_rand_uniform(t, 1, 2, 1) == F2_ERR_ARG, "low above high");
  CHECK(f2_rand_normal(t, 1, 0, -1) == F2_ERR_ARG, "negative std");
  f2_tensor_free(base), f2_tensor_free(t), f2_tensor_free(h1), f2_tensor_free(h2);
}

static void test_copy_and_contiguous(void) {
  for (int rep = 0; rep < 20; rep++) {
    int64_t shape[F2_MAX_DIMS];
    int ndim = rand_shape(shape, 5, 5);
    int32_t dt_src = rand_float_dtype(), dt_dst = rand_float_dtype();
    f2_tensor *src = make_operand(dt_src, ndim, shape, (int)rand_int(0, LAYOUT_COUNT - 1), -100, 100);
    f2_tensor *dst = make_operand(dt_dst, ndim, shape, (int)rand_int(0, LAYOUT_NARROWED), 0, 1);
    CHECK_OK(f2_copy(dst, src));
    f2_tensor *c = f2_tensor_contiguous(src);
    CHECK(c && f2_tensor_is_contiguous(c) && c->dtype == dt_src, "contiguous");
    CHECK(!f2_tensor_is_contiguous(src) || c->data == src->data, "contiguous of a contiguous tensor is a view");
    int bad = 0;
    int64_t idx[F2_MAX_DIMS] = {0};
    do bad += get(dst, idx) != stored(dt_dst, get(src, idx)) || get(c, idx) != get(src, idx);
    while (next_index(ndim, shape, idx));
    CHECK(bad == 0, "strided copy %s -> %s over %d dims: %d wrong", f2_dtype_name(dt_src), f2_dtype_name(dt_dst),
          ndim, bad);
    f2_tensor_free(src), f2_tensor_free(dst), f2_tensor_free(c);
  }
}

/* ---------------------------------------------------------------- argument errors */

static int fails_with(int rc, const char *text) {
  int ok = rc != F2_OK && strstr(f2_last_error(), text) != NULL;
  if (!ok) fprintf(stderr, "expected an error with '%s', got rc %d: %s\n", text, rc, f2_last_error());
  f2_clear_error();
  return ok;
}

static void test_errors(void) {
  int64_t s23[2] = {2, 3}, s32[2] = {3, 2}, s2[1] = {2};
  f2_tensor *a = f2_tensor_new(F2_F32, F2_CPU, 2, s23), *b = f2_tensor_new(F2_F32, F2_CPU, 2, s32);
  f2_tensor *i = f2_tensor_new(F2_I32, F2_CPU, 2, s23), *v = f2_tensor_new(F2_F32, F2_CPU, 1, s2);
  static float fake[6];
  /* A "GPU" tensor over host memory: only the device check may look at it. */
  f2_tensor *g = f2_tensor_wrap(fake, F2_F32, F2_CUDA, 2, s23, NULL, NULL);
  CHECK(fails_with(f2_binary(a, a, b, F2_OP_ADD), "binary: shapes [2,3] and [3,2] differ"), "binary shapes");
  CHECK(fails_with(f2_binary(a, a, g, F2_OP_ADD), "different devices (cpu and cuda)"), "binary devices");
  CHECK(fails_with(f2_binary(a, a, a, 99), "unknown op 99"), "binary op");
  CHECK(fails_with(f2_binary(a, NULL, a, F2_OP_ADD), "binary: a is NULL"), "binary NULL");
  CHECK(fails_with(f2_binary_scalar(a, b, 1, F2_OP_ADD), "binary_scalar: shapes"), "scalar shapes");
  CHECK(fails_with(f2_unary(a, a, 42), "unary: unknown op 42"), "unary op");
  CHECK(fails_with(f2_unary(v, a, F2_OP_EXP), "unary: shapes"), "unary shapes");
  CHECK(fails_with(f2_copy(a, b), "copy: shapes"), "copy shapes");
  CHECK(fails_with(f2_copy(a, NULL), "copy: src is NULL"), "copy NULL");
  if (!f2_cuda_compiled()) CHECK(fails_with(f2_copy(g, a), "needs"), "copy to a GPU without CUDA");
  CHECK(fails_with(f2_fill(NULL, 1), "fill: tensor is NULL"), "fill NULL");
  CHECK(fails_with(f2_reduce(v, a, 2, F2_RED_SUM), "dim 2 out of range"), "reduce dim");
  CHECK(fails_with(f2_reduce(v, a, 0, F2_RED_SUM), "out [2] does not fit x [2,3] reduced over dim 0"), "reduce out");
  CHECK(fails_with(f2_reduce(v, a, -1, F2_RED_SUM), "out must have 1 element"), "reduce all out");
  CHECK(fails_with(f2_reduce(v, a, 1, 7), "unknown op 7"), "reduce op");
  CHECK(fails_with(f2_matmul(a, a, a, 0, 0, 1, 0), "matmul: shapes do not match: out [2,3] = a [2,3] @ b [2,3]"),
        "matmul shapes");
  CHECK(fails_with(f2_matmul(a, a, b, 1, 0, 1, 0), "a^T"), "matmul shapes with transpose");
  CHECK(fails_with(f2_matmul(a, i, b, 0, 0, 1, 0), "not a float dtype"), "matmul int input");
  CHECK(fails_with(f2_matmul(i, a, b, 0, 0, 1, 0), "out dtype i32"), "matmul int output");
  CHECK(fails_with(f2_matmul(v, a, b, 0, 0, 1, 0), "must all be 2-D or all 3-D"), "matmul ranks");
  CHECK(fails_with(f2_matmul(a, g, b, 0, 0, 1, 0), "different devices"), "matmul devices");
  CHECK(f2_tensor_contiguous(NULL) == NULL && fails_with(F2_ERR_ARG, "contiguous: tensor is NULL"), "contiguous NULL");
  f2_tensor_free(a), f2_tensor_free(b), f2_tensor_free(i), f2_tensor_free(v), f2_tensor_free(g);
}

int main(void) {
  rng_state = f2t_seed() | 1;
  test_elementwise();
  test_reduce();
  test_matmul();
  test_generators();
  test_copy_and_contiguous();
  test_errors();
  return f2t_done();
}
