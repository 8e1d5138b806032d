/* test_classifier.c — f2_lm_head_cross_entropy on the CPU (runtime/classifier.c) against the unfused ops
 * on fresh random inputs: the whole [N, V] logits from f2_matmul, f2_cross_entropy_forward/backward, then
 * f2_matmul for dh and dweight. f32 and bf16; chunk sizes of 1, ones that do not divide N, N, above N and
 * the default; ignore_index rows, an ignore_index that is a real id, every row ignored; forward only,
 * dweight NULL, losses NULL, dh written over h, h [B, T, D]; no rows; two runs bitwise equal; bad
 * arguments giving clear errors. Plus one loss against a double-precision reference written here.
 * Every compare prints, on failure, the first bad element and the max abs / rel errors. */
#include <string.h>

#include "f2test.h"

static uint64_t rng_state;
static double uniform(void) {   /* SplitMix64 */
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}
static uint64_t next_seed(void) { return (uint64_t)(uniform() * 0x1.0p53); }

static f2_tensor *new_tensor(int32_t dtype, int ndim, const int64_t *shape) {
  f2_tensor *t = f2_tensor_new(dtype, F2_CPU, ndim, shape);
  if (!t) {
    fprintf(stderr, "f2_tensor_new failed: %s\n", f2_last_error());
    exit(1);
  }
  return t;
}
static f2_tensor *randn(int32_t dtype, int ndim, const int64_t *shape, double std) {
  f2_tensor *t = new_tensor(dtype, ndim, shape);
  CHECK_OK(f2_rand_normal(t, next_seed(), 0, std));
  return t;
}
static f2_tensor *copy_of(const f2_tensor *t) {
  f2_tensor *c = new_tensor(t->dtype, t->ndim, t->shape);
  CHECK_OK(f2_copy(c, t));
  return c;
}
static float *as_f32(const f2_tensor *t) {   /* a malloc'd f32 copy of any float tensor's values */
  int64_t n = f2_tensor_numel(t);
  f2_tensor *f = new_tensor(F2_F32, 1, &n), *flat = f2_tensor_reshape(t, 1, &n);
  CHECK_OK(f2_copy(f, flat));
  float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
  memcpy(p, f->data, (size_t)n * sizeof(float));
  f2_tensor_free(f), f2_tensor_free(flat);
  return p;
}

/* got vs want elementwise: |got - want| <= atol_frac * max|want| + rtol * |want|. */
static void compare(const char *what, const f2_tensor *got, const f2_tensor *want, double rtol, double atol_frac) {
  int64_t n = f2_tensor_numel(want);
  CHECK(f2_tensor_numel(got) == n, "%s: %lld elements, want %lld", what, (long long)f2_tensor_numel(got), (long long)n);
  if (f2_tensor_numel(got) != n) return;
  float *g = as_f32(got), *w = as_f32(want);
  double wmax = 0, max_abs = 0, max_rel = 0;
  for (int64_t i = 0; i < n; i++) wmax = fmax(wmax, fabs(w[i]));
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < n; i++) {
    double e = fabs((double)g[i] - w[i]);
    if (!(e <= atol_frac * wmax + rtol * fabs(w[i])) && !(isnan(g[i]) && isnan(w[i]))) {
      if (first < 0) first = i;
      bad++;
    }
    max_abs = fmax(max_abs, e);
    if (w[i] != 0) max_rel = fmax(max_rel, e / fabs(w[i]));
  }
  CHECK(bad == 0, "%s: %lld of %lld bad; first [%lld] got %.9g want %.9g; max abs %.3g (max|want| %.3g), max rel %.3g",
        what, (long long)bad, (long long)n, (long long)first, first >= 0 ? g[first] : 0.0, first >= 0 ? w[first] : 0.0,
        max_abs, wmax, max_rel);
  free(g), free(w);
}

static int bits_equal(const f2_tensor *a, const f2_tensor *b) {
  return f2_tensor_nbytes(a) == f2_tensor_nbytes(b) && memcmp(a->data, b->data, f2_tensor_nbytes(a)) == 0;
}

enum { FWD_ONLY = 1, NO_DWEIGHT = 2, NO_LOSSES = 4, DH_IS_H = 8, H_3D = 16, ALL_IGNORED = 32 };

/* One case: the fused op against the unfused ops on the same inputs. */
static void run_case(int32_t dtype, int64_t N, int64_t D, int64_t V, int64_t chunk, int32_t ignore_index, int flags) {
  char what[160];
  snprintf(what, sizeof what, "%s N=%lld D=%lld V=%lld chunk=%lld ignore=%d flags=%d", f2_dtype_name(dtype),
           (long long)N, (long long)D, (long long)V, (long long)chunk, (int)ignore_index, flags);
  int64_t hshape2[2] = {N, D}, wshape[2] = {V, D}, lshape[2] = {N, V}, one = 1;
  int64_t hshape3[3] = {2, N / 2, D};   /* H_3D: N even */
  f2_tensor *h = (flags & H_3D) ? randn(dtype, 3, hshape3, 1.0) : randn(dtype, 2, hshape2, 1.0);
  f2_tensor *h2 = f2_tensor_reshape(h, 2, hshape2);
  /* Logits of std ~2: a softmax neither flat nor one-hot. */
  f2_tensor *w = randn(dtype, 2, wshape, 2.0 / sqrt((double)D));
  f2_tensor *tg = new_tensor(F2_I32, 1, &N);
  int32_t *t = tg->data;
  for (int64_t r = 0; r < N; r++) {
    t[r] = (int32_t)(uniform() * (double)V);
    if (uniform() < 0.2 || (flags & ALL_IGNORED)) t[r] = ignore_index;
  }
  float dloss = (float)(0.5 + 1.5 * uniform());

  /* The unfused reference. */
  f2_tensor *logits = new_tensor(F2_F32, 2, lshape), *loss_ref = new_tensor(F2_F32, 1, &one);
  f2_tensor *losses_ref = new_tensor(F2_F32, 1, &N), *dl = new_tensor(dtype, 2, lshape);
  f2_tensor *dw0 = randn(F2_F32, 2, wshape, 0.1), *dw_ref = copy_of(dw0), *dh_ref = new_tensor(dtype, 2, hshape2);
  CHECK_OK(f2_matmul(logits, h2, w, 0, 1, 1.0f, 0.0f));
  CHECK_OK(f2_cross_entropy_forward(loss_ref, losses_ref, logits, tg, ignore_index));
  CHECK_OK(f2_cross_entropy_backward(dl, logits, tg, ignore_index, dloss));
  CHECK_OK(f2_matmul(dw_ref, dl, h2, 1, 0, 1.0f, 1.0f));
  CHECK_OK(f2_matmul(dh_ref, dl, w, 0, 0, 1.0f, 0.0f));

  /* The fused op. */
  f2_tensor *loss = new_tensor(F2_F32, 1, &one), *losses = new_tensor(F2_F32, 1, &N), *dw = copy_of(dw0);
  f2_tensor *dh = (flags & DH_IS_H) ? copy_of(h) : new_tensor(dtype, h->ndim, h->shape);
  f2_tensor *hin = (flags & DH_IS_H) ? dh : h;
  int fwd_only = flags & FWD_ONLY;
  f2_tensor *dh_arg = fwd_only ? NULL : dh, *dw_arg = fwd_only || (flags & NO_DWEIGHT) ? NULL : dw;
  f2_tensor *losses_arg = (flags & NO_LOSSES) ? NULL : losses;
  int rc = f2_lm_head_cross_entropy(loss, losses_arg, dh_arg, dw_arg, hin, w, tg, ignore_index, dloss, chunk);
  CHECK(rc == F2_OK, "%s: %s", what, f2_last_error());
  if (rc != F2_OK) goto done;
  float got = ((float *)loss->data)[0], want = ((float *)loss_ref->data)[0];
  CHECK(fabs(got - want) <= 1e-6 * fabs(want), "%s: loss %.9g, unfused %.9g", what, got, want);
  if (flags & ALL_IGNORED) CHECK(got == 0, "%s: no counted row gives loss 0, got %g", what, got);
  char name[224];
  if (losses_arg) {
    snprintf(name, sizeof name, "%s losses", what);
    compare(name, losses, losses_ref, 1e-6, 0);
  }
  if (!fwd_only) {
    snprintf(name, sizeof name, "%s dh", what);
    /* bf16: dh is the unfused GEMM's bits up to fp32 rounding before the bf16 one. */
    compare(name, dh, dh_ref, dtype == F2_F32 ? 1e-5 : 1e-2, 1e-6);
    snprintf(name, sizeof name, "%s dweight", what);
    compare(name, dw, (flags & NO_DWEIGHT) ? dw0 : dw_ref, 1e-5, 1e-6);
    if (flags & NO_DWEIGHT) CHECK(bits_equal(dw, dw0), "%s: dweight NULL leaves it alone", what);
  } else {
    CHECK(bits_equal(dw, dw0), "%s: forward only leaves dweight alone", what);
  }
  /* Deterministic: the same call again gives the same bits (dh over h can't be rerun: h is gone). */
  if (!(flags & DH_IS_H)) {
    f2_tensor *loss2 = new_tensor(F2_F32, 1, &one), *losses2 = new_tensor(F2_F32, 1, &N), *dw2 = copy_of(dw0);
    f2_tensor *dh2 = new_tensor(dtype, h->ndim, h->shape);
    CHECK_OK(f2_lm_head_cross_entropy(loss2, losses_arg ? losses2 : NULL, fwd_only ? NULL : dh2, dw_arg ? dw2 : NULL,
                                      h, w, tg, ignore_index, dloss, chunk));
    CHECK(bits_equal(loss, loss2) && (!losses_arg || bits_equal(losses, losses2)) &&
              (fwd_only || bits_equal(dh, dh2)) && (!dw_arg || bits_equal(dw, dw2)),
          "%s: two runs differ", what);
    f2_tensor_free(loss2), f2_tensor_free(losses2), f2_tensor_free(dw2), f2_tensor_free(dh2);
  }
done:;
  f2_tensor *all[] = {h, h2, w, tg, logits, loss_ref, losses_ref, dl, dw0, dw_ref, dh_ref, loss, losses, dw, dh};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) f2_tensor_free(all[i]);
}

/* The loss of a small f32 case against logits and log-sum-exp in double, written here. */
static void test_double_reference(void) {
  const int64_t N = 9, D = 5, V = 13;
  int64_t hs[2] = {N, D}, ws[2] = {V, D}, one = 1;
  f2_tensor *h = randn(F2_F32, 2, hs, 1.0), *w = randn(F2_F32, 2, ws, 1.0), *tg = new_tensor(F2_I32, 1, &N);
  f2_tensor *loss = new_tensor(F2_F32, 1, &one), *losses = new_tensor(F2_F32, 1, &N);
  const float *H = h->data, *W = w->data;
  int32_t *t = tg->data;
  double total = 0, want[9];
  int counted = 0;
  for (int64_t r = 0; r < N; r++) {
    t[r] = r == 4 ? -1 : (int32_t)(uniform() * V);
    want[r] = 0;
    if (t[r] < 0) continue;
    double x[13], m = -INFINITY, s = 0;
    for (int64_t v = 0; v < V; v++) {
      x[v] = 0;
      for (int64_t d = 0; d < D; d++) x[v] += (double)H[r * D + d] * W[v * D + d];
      m = fmax(m, x[v]);
    }
    for (int64_t v = 0; v < V; v++) s += exp(x[v] - m);
    want[r] = m + log(s) - x[t[r]];
    total += want[r], counted++;
  }
  CHECK_OK(f2_lm_head_cross_entropy(loss, losses, NULL, NULL, h, w, tg, -1, 1.0f, 4));
  CHECK_CLOSE(((float *)loss->data)[0], total / counted, 1e-5, 1e-6);
  for (int64_t r = 0; r < N; r++) CHECK_CLOSE(((float *)losses->data)[r], want[r], 1e-5, 1e-6);
  f2_tensor *all[] = {h, w, tg, loss, losses};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) f2_tensor_free(all[i]);
}

/* No rows at all: loss 0, nothing else touched. */
static void test_no_rows(void) {
  int64_t zero = 0, hs[2] = {0, 6}, ws[2] = {11, 6}, one = 1;
  f2_tensor *h = new_tensor(F2_F32, 2, hs), *dh = new_tensor(F2_F32, 2, hs), *w = randn(F2_F32, 2, ws, 1.0);
  f2_tensor *dw = randn(F2_F32, 2, ws, 1.0), *dw0 = copy_of(dw), *tg = new_tensor(F2_I32, 1, &zero);
  f2_tensor *loss = new_tensor(F2_F32, 1, &one), *losses = new_tensor(F2_F32, 1, &zero);
  ((float *)loss->data)[0] = 123;
  CHECK_OK(f2_lm_head_cross_entropy(loss, losses, dh, dw, h, w, tg, -100, 1.0f, 0));
  CHECK(((float *)loss->data)[0] == 0, "no rows: loss %g, want 0", ((float *)loss->data)[0]);
  CHECK(bits_equal(dw, dw0), "no rows: dweight unchanged");
  f2_tensor *all[] = {h, dh, w, dw, dw0, tg, loss, losses};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) f2_tensor_free(all[i]);
}

#define EXPECT_ERR(call, code, text)                                                                        \
  do {                                                                                                      \
    int rc_ = (call);                                                                                       \
    CHECK(rc_ == (code) && strstr(f2_last_error(), (text)), "%s gave %d \"%s\", want %d naming \"%s\"", #call, \
          rc_, f2_last_error(), (int)(code), (text));                                                       \
  } while (0)

static void test_errors(void) {
  const int64_t N = 6, D = 4, V = 10;
  int64_t hs[2] = {N, D}, ws[2] = {V, D}, one = 1, two = 2, bad_hs[2] = {N, D + 1}, bad_ws[2] = {V + 1, D};
  f2_tensor *h = randn(F2_F32, 2, hs, 1.0), *w = randn(F2_F32, 2, ws, 1.0), *tg = new_tensor(F2_I32, 1, &N);
  f2_tensor *loss = new_tensor(F2_F32, 1, &one), *loss2 = new_tensor(F2_F32, 1, &two), *losses = new_tensor(F2_F32, 1, &N);
  f2_tensor *dh = new_tensor(F2_F32, 2, hs), *dw = new_tensor(F2_F32, 2, ws), *hb = randn(F2_BF16, 2, hs, 1.0);
  f2_tensor *h_bad = randn(F2_F32, 2, bad_hs, 1.0), *dw_bad = new_tensor(F2_F32, 2, bad_ws), *w1 = randn(F2_F32, 1, &V, 1.0);
  f2_tensor *tf = new_tensor(F2_F32, 1, &N), *ht = f2_tensor_transpose(h, 0, 1), *dhb = new_tensor(F2_BF16, 2, hs);
  f2_tensor *losses_bad = new_tensor(F2_F32, 1, &V);
  for (int64_t r = 0; r < N; r++) ((int32_t *)tg->data)[r] = (int32_t)r;
  const char *op = "f2_lm_head_cross_entropy";
  CHECK_OK(f2_lm_head_cross_entropy(loss, losses, dh, dw, h, w, tg, -100, 1.0f, 0));
  EXPECT_ERR(f2_lm_head_cross_entropy(loss, NULL, NULL, NULL, NULL, w, tg, -100, 1.0f, 0), F2_ERR_ARG, "h is NULL");
  EXPECT_ERR(f2_lm_head_cross_entropy(NULL, NULL, NULL, NULL, h, w, tg, -100, 1.0f, 0), F2_ERR_ARG, "loss is NULL");
  EXPECT_ERR(f2_lm_head_cross_entropy(loss, NULL, NULL, NULL, h, w1, tg, -100, 1.0f, 0), F2_ERR_ARG,
             "weight must be 2-D");
  EXPECT_ERR(f2_lm_head_cross_entropy(loss, NULL, NULL, NULL, h_bad, w, tg, -100, 1.0f, 0), F2_ERR_ARG,
             "h has shape [6,5], expected 6 rows of 4");
  EXPECT_ERR(f2_lm_head_cross_entropy(loss, NULL, NULL, NULL, hb, w, tg, -100, 1.0f, 0), F2_ERR_ARG,
             "h is bf16 but weight is f32");
  EXPECT_ERR(f2_lm_head_cross_entropy(loss, NULL, NULL, NULL, h, w, tf, -100, 1.0f, 0), F2_ERR_ARG,
             "targets has dtype f32, expected i32");
  EXPECT_ERR(f2_lm_head_cross_entropy(loss2, NULL, NULL, NULL, h, w, tg, -100, 1.0f, 0), F2_ERR_ARG,
             "loss must have one element");
  EXPECT_ERR(f2_lm_head_cross_entropy(loss, losses_bad, NULL, NULL, h, w, tg, -100, 1.0f, 0), F2_ERR_ARG,
             "losses has shape [10], expected [6]");
  EXPECT_ERR(f2_lm_head_cross_entropy(loss, NULL, dhb, NULL, h, w, tg, -100, 1.0f, 0), F2_ERR_ARG,
             "dh is bf16 but h is f32");
  EXPECT_ERR(f2_lm_head_cross_entropy(loss, NULL, dh, dw_bad, h, w, tg, -100, 1.0f, 0), F2_ERR_ARG,
             "dweight has shape [11,4], expected [10,4]");
  EXPECT_ERR(f2_lm_head_cross_entropy(loss, NULL, NULL, dw, h, w, tg, -100, 1.0f, 0), F2_ERR_ARG,
             "dweight given without dh");
  EXPECT_ERR(f2_lm_head_cross_entropy(loss, NULL, dh, dw, ht, w, tg, -100, 1.0f, 0), F2_ERR_ARG,
             "h must be contiguous");
  EXPECT_ERR(f2_lm_head_cross_entropy(loss, NULL, dh, dw, h, w, tg, -100, 1.0f, -1), F2_ERR_ARG,
             "chunk_rows = -1 must be >= 0");
  ((int32_t *)tg->data)[3] = (int32_t)V;
  EXPECT_ERR(f2_lm_head_cross_entropy(loss, NULL, dh, dw, h, w, tg, -100, 1.0f, 0), F2_ERR_ARG,
             "targets[3] = 10 is outside [0, 10)");
  ((int32_t *)tg->data)[3] = -5;
  EXPECT_ERR(f2_lm_head_cross_entropy(loss, NULL, dh, dw, h, w, tg, -100, 1.0f, 0), F2_ERR_ARG, "targets[3] = -5");
  CHECK(strstr(f2_last_error(), op) != NULL, "errors name the op: %s", f2_last_error());
  f2_tensor *all[] = {h, w, tg, loss, loss2, losses, dh, dw, hb, h_bad, dw_bad, w1, tf, ht, dhb, losses_bad};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) f2_tensor_free(all[i]);
}

int main(void) {
  rng_state = f2t_seed();
  test_double_reference();
  test_no_rows();
  test_errors();
  const int32_t dtypes[2] = {F2_F32, F2_BF16};
  for (int k = 0; k < 2; k++) {
    int32_t dt = dtypes[k];
    const int64_t chunks[] = {0, 1, 5, 16, 37, 100};   /* N = 37: 1, two that don't divide it, N, above N */
    for (size_t c = 0; c < sizeof chunks / sizeof *chunks; c++) run_case(dt, 37, 24, 101, chunks[c], -100, 0);
    run_case(dt, 64, 16, 256, 7, -100, H_3D);
    run_case(dt, 40, 8, 50, 16, 3, 0);                 /* ignore_index a real id: rows with target 3 ignored */
    run_case(dt, 33, 12, 64, 8, -100, ALL_IGNORED);
    run_case(dt, 33, 12, 64, 8, -100, FWD_ONLY);
    run_case(dt, 33, 12, 64, 10, -100, FWD_ONLY | NO_LOSSES);
    run_case(dt, 33, 12, 64, 10, -100, NO_DWEIGHT);
    run_case(dt, 33, 12, 64, 10, -100, NO_LOSSES);
    run_case(dt, 48, 12, 64, 10, -100, DH_IS_H | H_3D);
    run_case(dt, 200, 40, 1000, 64, -100, 0);
  }
  return f2t_done();
}
