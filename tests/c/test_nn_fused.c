/* test_nn_fused.c — the fused RMSNorm ops of runtime/nn_cpu.c against plain-C references written here
 * (double math on the values as stored): f2_rmsnorm_residual_forward (sum = a + b rounded to sum's
 * dtype, then the norm of that rounded sum; sum may be a or b) and f2_rmsnorm_backward_add (dx += the
 * norm's gradient, dweight +=), f32 and bf16, on fresh random inputs; plus the argument errors. */
#include <string.h>

#include "f2test.h"

static uint64_t seed_counter;
static uint64_t next_seed(void) { return seed_counter++; }

static f2_tensor *new_tensor(int32_t dtype, int ndim, const int64_t *shape) {
  f2_tensor *t = f2_tensor_new(dtype, F2_CPU, ndim, shape);
  if (!t) {
    fprintf(stderr, "f2_tensor_new failed: %s\n", f2_last_error());
    exit(1);
  }
  return t;
}
/* N(0, std) drawn in f32, cast to dtype. */
static f2_tensor *randn(int32_t dtype, int ndim, const int64_t *shape, double std) {
  f2_tensor *f = new_tensor(F2_F32, ndim, shape), *t = new_tensor(dtype, ndim, shape);
  CHECK_OK(f2_rand_normal(f, next_seed(), 0.0, std));
  CHECK_OK(f2_copy(t, f));
  f2_tensor_free(f);
  return t;
}
static f2_tensor *clone(const f2_tensor *t) {
  f2_tensor *c = new_tensor(t->dtype, t->ndim, t->shape);
  CHECK_OK(f2_copy(c, t));
  return c;
}

/* bf16 decoded and encoded from the definition (round to nearest even), independent of the runtime. */
static double bf16_value(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static double round_bf16(double v) {
  float f = (float)v;
  uint32_t u;
  memcpy(&u, &f, 4);
  u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  memcpy(&f, &u, 4);
  return f;
}
static double get(const f2_tensor *t, int64_t i) {
  return t->dtype == F2_F32 ? ((const float *)t->data)[i] : bf16_value(((const uint16_t *)t->data)[i]);
}
/* Rounding into t's dtype. */
static double round_to(const f2_tensor *t, double v) { return t->dtype == F2_F32 ? (double)(float)v : round_bf16(v); }

/* max |got - want| / max |want| over n elements of got against a double reference. */
static double rel_err(const f2_tensor *got, const double *want, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    num = fmax(num, fabs(get(got, i) - want[i]));
    den = fmax(den, fabs(want[i]));
  }
  return num / (den > 0 ? den : 1e-300);
}
/* Tolerance of one rounding into t's dtype, plus fp32 math. */
static double tol(const f2_tensor *t) { return t->dtype == F2_BF16 ? 8e-3 : 2e-6; }

static const float eps = 1e-6f;

/* Reference norm of rows of x (values as doubles): y = w x r, r = (mean x^2 + eps)^-1/2. */
static void norm_ref(double *y, double *rstd, const double *x, const f2_tensor *w, int64_t rows, int64_t dim) {
  for (int64_t r = 0; r < rows; r++) {
    double ss = 0;
    for (int64_t d = 0; d < dim; d++) ss += x[r * dim + d] * x[r * dim + d];
    rstd[r] = 1.0 / sqrt(ss / (double)dim + eps);
    for (int64_t d = 0; d < dim; d++) y[r * dim + d] = get(w, d) * x[r * dim + d] * rstd[r];
  }
}

static void test_residual_forward(int64_t rows, int64_t dim, int32_t at, int32_t bt, int32_t st, int alias) {
  int64_t shape[2] = {rows, dim}, n = rows * dim;
  f2_tensor *a = randn(at, 2, shape, 1.0), *b = randn(bt, 2, shape, 1.0), *w = randn(F2_F32, 1, &dim, 1.0);
  f2_tensor *out = new_tensor(st, 2, shape), *rstd = new_tensor(F2_F32, 1, &rows);
  f2_tensor *sum = alias == 1 ? a : alias == 2 ? b : new_tensor(st, 2, shape);
  double *s = malloc((size_t)n * sizeof *s), *y = malloc((size_t)n * sizeof *y), *rs = malloc((size_t)rows * sizeof *rs);
  for (int64_t i = 0; i < n; i++) s[i] = round_to(sum, get(a, i) + get(b, i));
  norm_ref(y, rs, s, w, rows, dim);
  CHECK_OK(f2_rmsnorm_residual_forward(sum, out, rstd, a, b, w, eps));
  int exact = 1;
  for (int64_t i = 0; i < n; i++) exact &= get(sum, i) == s[i];
  CHECK(exact, "residual sum [%lld,%lld] %s + %s -> %s (alias %d) is a + b rounded once", (long long)rows,
        (long long)dim, f2_dtype_name(at), f2_dtype_name(bt), f2_dtype_name(st), alias);
  double e = rel_err(out, y, n);
  CHECK(e < tol(out), "residual norm [%lld,%lld] %s (alias %d): rel err %g", (long long)rows, (long long)dim,
        f2_dtype_name(st), alias, e);
  double er = 0;
  for (int64_t r = 0; r < rows; r++) er = fmax(er, fabs(((float *)rstd->data)[r] - rs[r]) / rs[r]);
  CHECK(er < 1e-6, "residual rstd [%lld,%lld] (alias %d): rel err %g", (long long)rows, (long long)dim, alias, er);

  /* Without rstd: the same out. */
  f2_tensor *out2 = new_tensor(st, 2, shape), *sum2 = new_tensor(st, 2, shape);
  f2_tensor *a2 = randn(at, 2, shape, 1.0), *b2 = randn(bt, 2, shape, 1.0);
  CHECK_OK(f2_copy(sum2, sum));
  CHECK_OK(f2_fill(b2, 0.0));
  CHECK_OK(f2_copy(a2, sum));   /* a2 = the rounded sum, b2 = 0: sum2 = sum, out2 = out */
  CHECK_OK(f2_rmsnorm_residual_forward(sum2, out2, NULL, a2, b2, w, eps));
  if (at == st) CHECK(memcmp(out2->data, out->data, f2_tensor_nbytes(out)) == 0, "residual without rstd, same out");
  if (alias == 0) f2_tensor_free(sum);
  f2_tensor_free(a), f2_tensor_free(b), f2_tensor_free(w), f2_tensor_free(out), f2_tensor_free(rstd);
  f2_tensor_free(out2), f2_tensor_free(sum2), f2_tensor_free(a2), f2_tensor_free(b2);
  free(s), free(y), free(rs);
}

/* dx += r (g - xhat mean(g xhat)) with g = dy w, xhat = x r; dweight += sum_rows dy xhat. */
static void test_backward_add(int64_t rows, int64_t dim, int32_t xt, int32_t wt, int with_dweight) {
  int64_t shape[2] = {rows, dim}, n = rows * dim;
  f2_tensor *x = randn(xt, 2, shape, 2.0), *w = randn(wt, 1, &dim, 1.0), *dy = randn(xt, 2, shape, 1.0);
  f2_tensor *dx = randn(xt, 2, shape, 1.0), *dx0 = clone(dx), *rstd = new_tensor(F2_F32, 1, &rows);
  f2_tensor *tmp = new_tensor(xt, 2, shape);
  CHECK_OK(f2_rmsnorm_forward(tmp, rstd, x, w, eps));
  f2_tensor *dw = with_dweight ? randn(F2_F32, 1, &dim, 1.0) : NULL, *dw0 = dw ? clone(dw) : NULL;
  double *want = malloc((size_t)n * sizeof *want), *dw_want = calloc((size_t)dim, sizeof *dw_want);
  for (int64_t r = 0; r < rows; r++) {
    double rs = ((float *)rstd->data)[r], dot = 0;
    for (int64_t d = 0; d < dim; d++) dot += get(dy, r * dim + d) * get(w, d) * get(x, r * dim + d) * rs;
    for (int64_t d = 0; d < dim; d++) {
      double xhat = get(x, r * dim + d) * rs, g = get(dy, r * dim + d) * get(w, d);
      want[r * dim + d] = round_to(dx, get(dx0, r * dim + d) + rs * (g - xhat * dot / (double)dim));
      dw_want[d] += get(dy, r * dim + d) * xhat;
    }
  }
  if (dw)
    for (int64_t d = 0; d < dim; d++) dw_want[d] += get(dw0, d);
  CHECK_OK(f2_rmsnorm_backward_add(dx, dw, dy, x, w, rstd));
  /* Relative to the largest gradient: dx0 + v can cancel. */
  double e = rel_err(dx, want, n);
  CHECK(e < tol(dx), "backward_add dx [%lld,%lld] x %s w %s: rel err %g", (long long)rows, (long long)dim,
        f2_dtype_name(xt), f2_dtype_name(wt), e);
  if (dw) {
    double ew = rel_err(dw, dw_want, dim);
    CHECK(ew < 1e-5, "backward_add dweight [%lld,%lld] x %s: rel err %g", (long long)rows, (long long)dim,
          f2_dtype_name(xt), ew);
  }
  /* The add is the plain backward's dx on top: dx_add - dx0 == plain dx (up to the rounding of the add). */
  f2_tensor *plain = new_tensor(xt, 2, shape);
  CHECK_OK(f2_rmsnorm_backward(plain, NULL, dy, x, w, rstd));
  double worst = 0, scale = 0;
  for (int64_t i = 0; i < n; i++) {
    worst = fmax(worst, fabs(get(dx, i) - round_to(dx, get(dx0, i) + get(plain, i))));
    scale = fmax(scale, fabs(get(dx, i)));
  }
  CHECK(worst <= tol(dx) * scale, "backward_add = dx0 + backward [%lld,%lld] %s: off by %g", (long long)rows,
        (long long)dim, f2_dtype_name(xt), worst);
  f2_tensor_free(x), f2_tensor_free(w), f2_tensor_free(dy), f2_tensor_free(dx), f2_tensor_free(dx0);
  f2_tensor_free(rstd), f2_tensor_free(tmp), f2_tensor_free(dw), f2_tensor_free(dw0), f2_tensor_free(plain);
  free(want), free(dw_want);
}

static void test_errors(void) {
  int64_t shape[2] = {3, 8}, dim = 8, rows = 3, bad_shape[2] = {3, 7};
  f2_tensor *x = randn(F2_F32, 2, shape, 1.0), *w = randn(F2_F32, 1, &dim, 1.0), *dy = randn(F2_F32, 2, shape, 1.0);
  f2_tensor *rstd = new_tensor(F2_F32, 1, &rows), *out = new_tensor(F2_F32, 2, shape), *b = randn(F2_F32, 2, bad_shape, 1.0);
  CHECK_OK(f2_rmsnorm_forward(out, rstd, x, w, eps));
  CHECK(f2_rmsnorm_backward_add(dy, NULL, dy, x, w, rstd) == F2_ERR_ARG && strstr(f2_last_error(), "alias"),
        "backward_add with dx = dy refused: %s", f2_last_error());
  CHECK(f2_rmsnorm_residual_forward(out, out, rstd, x, b, w, eps) == F2_ERR_ARG && strstr(f2_last_error(), "b has shape"),
        "residual with b of another shape refused: %s", f2_last_error());
  CHECK(f2_rmsnorm_residual_forward(out, out, rstd, x, x, w, -1.0f) == F2_ERR_ARG && strstr(f2_last_error(), "eps"),
        "residual with eps < 0 refused: %s", f2_last_error());
  f2_tensor_free(x), f2_tensor_free(w), f2_tensor_free(dy), f2_tensor_free(rstd), f2_tensor_free(out), f2_tensor_free(b);
}

int main(void) {
  seed_counter = f2t_seed() * 1000003u;
  static const int64_t shapes[][2] = {{5, 64}, {3, 576}, {7, 13}, {1, 1}};
  for (int s = 0; s < 4; s++) {
    int64_t rows = shapes[s][0], dim = shapes[s][1];
    for (int alias = 0; alias < 3; alias++) {
      test_residual_forward(rows, dim, F2_F32, F2_F32, F2_F32, alias);
      test_residual_forward(rows, dim, F2_BF16, F2_BF16, F2_BF16, alias);
    }
    test_residual_forward(rows, dim, F2_BF16, F2_F32, F2_BF16, 1);   /* sum = a (bf16), b f32 */
    test_residual_forward(rows, dim, F2_BF16, F2_BF16, F2_F32, 0);   /* bf16 inputs, f32 sum: no rounding */
    test_backward_add(rows, dim, F2_F32, F2_F32, 1);
    test_backward_add(rows, dim, F2_BF16, F2_F32, 1);
    test_backward_add(rows, dim, F2_BF16, F2_BF16, 0);
  }
  test_errors();
  return f2t_done();
}
