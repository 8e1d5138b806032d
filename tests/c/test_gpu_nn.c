/* test_gpu_nn.c — the model ops of kernels/nn.cu against the CPU reference (runtime/nn_cpu.c) on fresh
 * random inputs (seed printed): embedding forward/backward (repeated and skewed ids, ids outside the
 * vocabulary), RMSNorm forward, fused residual forward and backward (plain and accumulating), RoPE tables
 * and rotation, SwiGLU, cross-entropy (ignore_index, no counted row, bad targets). f32 and bf16, odd
 * shapes that miss the 4-wide path, in-place and aliased arguments, SmolLM2/Qwen3 row sizes. Results
 * that feed the loss (embedding and RMSNorm weight gradients, cross-entropy) must be bitwise the same on
 * a second run. The RMSNorm tests run once per kernel variant (F2_NORM_VARIANT, set here in turn; each
 * compare then names it). A failed compare prints the bad count, the first bad index (got vs want) and
 * the max abs / rel errors. F2_TEST_VERBOSE=1 prints every compare. */
#include <string.h>

#include "f2test.h"

static uint64_t seed_counter, rng_state;
static int verbose;
static char variant_label[96];   /* "[F2_NORM_VARIANT=...] " while the RMSNorm variants run, else "" */
static uint64_t next_seed(void) { return seed_counter++; }
static uint64_t next_u64(void) {   /* SplitMix64, for ids and targets */
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static int64_t below(int64_t n) { return (int64_t)(next_u64() % (uint64_t)n); }

static const int32_t float_dtypes[2] = {F2_F32, F2_BF16};
static const char *dn(int32_t dtype) { return f2_dtype_name(dtype); }
static double dtype_rtol(int32_t dtype) { return dtype == F2_BF16 ? 1e-2 : 1e-5; }

/* ---------------------------------------------------------------- tensors */

/* A copy of t on device (same dtype and shape). */
static f2_tensor *on(int32_t device, const f2_tensor *t) { return f2t_copy_as(t, t->dtype, device); }
/* CPU tensor with N(0, std) entries drawn in f32, cast to dtype. */
static f2_tensor *randn(int32_t dtype, int ndim, const int64_t *shape, double std) {
  f2_tensor *f = f2t_tensor(F2_F32, F2_CPU, ndim, shape), *t = f2t_tensor(dtype, F2_CPU, ndim, shape);
  CHECK_OK(f2_rand_normal(f, next_seed(), 0.0, std));
  f2t_copy(t, f);
  f2_tensor_free(f);
  return t;
}
static f2_tensor *i32_tensor(int64_t n, const int32_t *v) {
  f2_tensor *t = f2t_tensor(F2_I32, F2_CPU, 1, &n);
  memcpy(t->data, v, (size_t)n * sizeof *v);
  return t;
}
static double get(const f2_tensor *t, int64_t i) {   /* CPU, contiguous */
  if (t->dtype == F2_F32) return ((const float *)t->data)[i];
  if (t->dtype == F2_I32) return ((const int32_t *)t->data)[i];
  uint32_t u = (uint32_t)((const uint16_t *)t->data)[i] << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static uint32_t get_bits(const f2_tensor *t, int64_t i) {
  return t->dtype == F2_BF16 ? ((const uint16_t *)t->data)[i] : ((const uint32_t *)t->data)[i];
}
static void free_all(f2_tensor **t, int n) {
  for (int i = 0; i < n; i++) f2_tensor_free(t[i]);
}
#define FREE(...) free_all((f2_tensor *[]){__VA_ARGS__}, (int)(sizeof((f2_tensor *[]){__VA_ARGS__}) / sizeof(f2_tensor *)))

/* ---------------------------------------------------------------- comparisons */

/* got (any device) vs want (CPU): |got - want| <= atol + rtol |want|; NaN matches NaN. */
static int compare(const char *what, const f2_tensor *got, const f2_tensor *want, double rtol, double atol) {
  f2_tensor *g = on(F2_CPU, got);
  int64_t n = f2_tensor_numel(want), bad = 0, first = -1;
  double max_abs = 0, max_rel = 0;
  for (int64_t i = 0; i < n; i++) {
    double a = get(g, i), b = get(want, i), err = fabs(a - b);
    int ok = a == b || (isnan(a) && isnan(b)) || err <= atol + rtol * fabs(b);
    if (!ok && first < 0) first = i;
    bad += !ok;
    if (!isnan(err) && a != b) {
      if (err > max_abs) max_abs = err;
      if (b != 0 && err / fabs(b) > max_rel) max_rel = err / fabs(b);
    }
  }
  if (bad)
    CHECK(bad == 0, "%s%s: %lld of %lld elements off (rtol %g, atol %g); first at %lld: got %.9g want %.9g; "
                    "max abs err %.3g, max rel err %.3g",
          variant_label, what, (long long)bad, (long long)n, rtol, atol, (long long)first, get(g, first), get(want, first), max_abs,
          max_rel);
  else {
    f2t_passed++;
    if (verbose)
      printf("ok %s%s: n=%lld, max abs err %.3g, max rel err %.3g\n", variant_label, what, (long long)n, max_abs,
             max_rel);
  }
  f2_tensor_free(g);
  return bad == 0;
}

/* Bit for bit (both on any device). */
static int compare_bits(const char *what, const f2_tensor *got, const f2_tensor *want) {
  f2_tensor *g = on(F2_CPU, got), *w = on(F2_CPU, want);
  int64_t n = f2_tensor_numel(w), bad = 0, first = -1;
  for (int64_t i = 0; i < n; i++)
    if (get_bits(g, i) != get_bits(w, i)) {
      if (first < 0) first = i;
      bad++;
    }
  if (bad)
    CHECK(bad == 0, "%s%s: %lld of %lld elements differ bitwise; first at %lld: got %.9g (0x%x) want %.9g (0x%x)",
          variant_label, what,
          (long long)bad, (long long)n, (long long)first, get(g, first), get_bits(g, first), get(w, first),
          get_bits(w, first));
  else {
    f2t_passed++;
    if (verbose) printf("ok %s%s: n=%lld bit-exact\n", variant_label, what, (long long)n);
  }
  FREE(g, w);
  return bad == 0;
}

static double max_abs(const f2_tensor *t) {
  f2_tensor *h = on(F2_CPU, t);
  double m = 0;
  for (int64_t i = 0; i < f2_tensor_numel(h); i++) m = fmax(m, fabs(get(h, i)));
  f2_tensor_free(h);
  return m;
}

/* ---------------------------------------------------------------- embedding */

/* ids with repeats: a quarter (or `hot` of every 10 tokens) on one id, the rest uniform. */
static void draw_ids(int32_t *ids, int64_t n, int64_t vocab, int hot) {
  int32_t hot_id = (int32_t)below(vocab);
  for (int64_t i = 0; i < n; i++) ids[i] = below(10) < hot ? hot_id : (int32_t)below(vocab);
}

static void test_embedding_case(int64_t n, int64_t vocab, int64_t dim, int hot) {
  char what[192];
  int64_t wshape[2] = {vocab, dim}, oshape[2] = {n, dim};
  int32_t *ids = malloc((size_t)n * sizeof *ids);
  draw_ids(ids, n, vocab, hot);
  f2_tensor *ids_c = i32_tensor(n, ids), *ids_g = on(F2_CUDA, ids_c);
  for (int wi = 0; wi < 2; wi++)
    for (int oi = 0; oi < 2; oi++) {
      f2_tensor *w = randn(float_dtypes[wi], 2, wshape, 1.0), *wg = on(F2_CUDA, w);
      f2_tensor *out = f2t_tensor(float_dtypes[oi], F2_CPU, 2, oshape), *out_g = f2t_tensor(float_dtypes[oi], F2_CUDA, 2, oshape);
      CHECK_OK(f2_embedding_forward(out, w, ids_c));
      CHECK_OK(f2_embedding_forward(out_g, wg, ids_g));
      snprintf(what, sizeof what, "embedding forward n=%lld V=%lld D=%lld weight %s out %s", (long long)n,
               (long long)vocab, (long long)dim, dn(w->dtype), dn(out->dtype));
      compare_bits(what, out_g, out);
      FREE(w, wg, out, out_g);
    }
  for (int di = 0; di < 2; di++) {
    f2_tensor *dout = randn(float_dtypes[di], 2, oshape, 1.0), *dout_g = on(F2_CUDA, dout);
    f2_tensor *dw = randn(F2_F32, 2, wshape, 1.0), *dw0_g = on(F2_CUDA, dw), *dw_g = on(F2_CUDA, dw);
    CHECK_OK(f2_embedding_backward(dw, dout, ids_c));
    CHECK_OK(f2_embedding_backward(dw_g, dout_g, ids_g));
    snprintf(what, sizeof what, "embedding backward n=%lld V=%lld D=%lld dout %s (hot %d/10)", (long long)n,
             (long long)vocab, (long long)dim, dn(dout->dtype), hot);
    compare_bits(what, dw_g, dw);   /* the same fp32 additions in the same order */
    CHECK_OK(f2_embedding_backward(dw0_g, dout_g, ids_g));
    snprintf(what, sizeof what, "embedding backward deterministic n=%lld D=%lld dout %s", (long long)n, (long long)dim,
             dn(dout->dtype));
    compare_bits(what, dw0_g, dw_g);
    FREE(dout, dout_g, dw, dw0_g, dw_g);
  }
  FREE(ids_c, ids_g);
  free(ids);
}

/* On a GPU an id outside [0, V) reads a zero row and its gradient row is dropped. */
static void test_embedding_bad_ids(void) {
  const int64_t n = 29, vocab = 50, dim = 12;
  int64_t wshape[2] = {vocab, dim}, oshape[2] = {n, dim};
  int32_t ids[29], good[29];
  draw_ids(ids, n, vocab, 3);
  ids[3] = (int32_t)vocab, ids[10] = -1, ids[28] = 1 << 30;
  int64_t n_good = 0;
  for (int64_t i = 0; i < n; i++)
    if (ids[i] >= 0 && ids[i] < vocab) good[n_good++] = ids[i];
  f2_tensor *ids_g = f2_tensor_new(F2_I32, F2_CUDA, 1, &n), *ids_c = i32_tensor(n, ids);
  f2t_copy(ids_g, ids_c);
  f2_tensor *w = randn(F2_F32, 2, wshape, 1.0), *wg = on(F2_CUDA, w), *out_g = f2t_tensor(F2_F32, F2_CUDA, 2, oshape);
  f2_tensor *want = f2t_tensor(F2_F32, F2_CPU, 2, oshape);
  CHECK_OK(f2_embedding_forward(out_g, wg, ids_g));
  for (int64_t i = 0; i < n; i++)
    for (int64_t d = 0; d < dim; d++)
      ((float *)want->data)[i * dim + d] = ids[i] >= 0 && ids[i] < vocab ? ((float *)w->data)[ids[i] * dim + d] : 0.0f;
  compare_bits("embedding forward: ids outside the vocabulary give zero rows", out_g, want);

  f2_tensor *dout = randn(F2_F32, 2, oshape, 1.0), *dout_g = on(F2_CUDA, dout), *dw = randn(F2_F32, 2, wshape, 1.0);
  f2_tensor *dw_g = on(F2_CUDA, dw);
  int64_t gshape[2] = {n_good, dim};
  f2_tensor *dout_good = f2t_tensor(F2_F32, F2_CPU, 2, gshape), *ids_good = i32_tensor(n_good, good);
  for (int64_t i = 0, j = 0; i < n; i++)
    if (ids[i] >= 0 && ids[i] < vocab) memcpy((float *)dout_good->data + j++ * dim, (float *)dout->data + i * dim, dim * 4);
  CHECK_OK(f2_embedding_backward(dw, dout_good, ids_good));
  CHECK_OK(f2_embedding_backward(dw_g, dout_g, ids_g));
  compare_bits("embedding backward: ids outside the vocabulary skipped", dw_g, dw);
  FREE(ids_g, ids_c, w, wg, out_g, want, dout, dout_g, dw, dw_g, dout_good, ids_good);
}

static void test_embedding(void) {
  test_embedding_case(37, 101, 20, 3);
  test_embedding_case(50, 64, 7, 5);      /* odd dim: the scalar path */
  test_embedding_case(100, 5, 130, 0);    /* long runs of each id, dim past one 128-column chunk */
  test_embedding_case(16384, 49152, 576, 3);   /* SmolLM2 training step, a hot id like padding */
  test_embedding_bad_ids();
}

/* ---------------------------------------------------------------- RMSNorm */

/* dim % 8 == 0 up to 4096 (forward) / 1024 (backward) take the register fast path, one shape per
 * lanes x vectors variant (64, 128, 136, 576, 768, 1000, 1024; 2048, 2560, 3072, 4096 forward only); the
 * rest the general kernels. 8500 x 576: several rows per warp, more row groups than the backward's
 * dweight blocks. */
static const int64_t norm_shapes[][2] = {{33, 576}, {1000, 64}, {129, 128}, {17, 2560}, {5, 20}, {9, 7}, {4, 6},
                                         {3, 1}, {3, 5000}, {2, 3001}, {8500, 576}, {40, 136}, {300, 768},
                                         {50, 1000}, {7, 1024}, {6, 2048}, {4, 3072}, {5, 4096}};
enum { NORM_SHAPES = sizeof norm_shapes / sizeof norm_shapes[0] };
static const float norm_eps = 1e-5f;

static void test_rmsnorm_forward(void) {
  char what[192];
  for (int s = 0; s < NORM_SHAPES; s++)
    for (int xi = 0; xi < 2; xi++)
      for (int wi = 0; wi < 2; wi++) {
        int64_t rows = norm_shapes[s][0], dim = norm_shapes[s][1], xshape[2] = {rows, dim};
        int32_t xt = float_dtypes[xi];
        f2_tensor *x = randn(xt, 2, xshape, 2.0), *w = randn(float_dtypes[wi], 1, &dim, 1.0);
        f2_tensor *xg = on(F2_CUDA, x), *wg = on(F2_CUDA, w);
        f2_tensor *out = f2t_tensor(xt, F2_CPU, 2, xshape), *out_g = f2t_tensor(xt, F2_CUDA, 2, xshape);
        f2_tensor *rstd = f2t_tensor(F2_F32, F2_CPU, 1, &rows), *rstd_g = f2t_tensor(F2_F32, F2_CUDA, 1, &rows);
        CHECK_OK(f2_rmsnorm_forward(out, rstd, x, w, norm_eps));
        CHECK_OK(f2_rmsnorm_forward(out_g, rstd_g, xg, wg, norm_eps));
        snprintf(what, sizeof what, "rmsnorm forward [%lld, %lld] x %s weight %s", (long long)rows, (long long)dim,
                 dn(xt), dn(w->dtype));
        compare(what, out_g, out, dtype_rtol(xt), 1e-6);
        snprintf(what, sizeof what, "rmsnorm rstd [%lld, %lld] x %s", (long long)rows, (long long)dim, dn(xt));
        compare(what, rstd_g, rstd, 1e-6, 0);
        /* In place, no rstd. */
        CHECK_OK(f2_rmsnorm_forward(xg, NULL, xg, wg, norm_eps));
        snprintf(what, sizeof what, "rmsnorm forward in place [%lld, %lld] x %s weight %s", (long long)rows,
                 (long long)dim, dn(xt), dn(w->dtype));
        compare(what, xg, out, dtype_rtol(xt), 1e-6);
        FREE(x, w, xg, wg, out, out_g, rstd, rstd_g);
      }
}

/* sum = a + b then the norm; sum may be a new tensor, a or b. */
static void test_rmsnorm_residual(void) {
  char what[192];
  static const char *alias_name[3] = {"new sum", "sum = a", "sum = b"};
  for (int s = 0; s < NORM_SHAPES; s++)
    for (int xi = 0; xi < 2; xi++)
      for (int alias = 0; alias < 3; alias++) {
        int64_t rows = norm_shapes[s][0], dim = norm_shapes[s][1], xshape[2] = {rows, dim};
        int32_t xt = float_dtypes[xi], bt = float_dtypes[(xi + alias) % 2];   /* b's dtype varies too */
        if (alias == 2) bt = xt;   /* sum = b: b has sum's dtype */
        f2_tensor *a = randn(xt, 2, xshape, 1.0), *b = randn(bt, 2, xshape, 1.0), *w = randn(F2_F32, 1, &dim, 1.0);
        f2_tensor *ag = on(F2_CUDA, a), *bg = on(F2_CUDA, b), *wg = on(F2_CUDA, w);
        f2_tensor *sum = f2t_tensor(xt, F2_CPU, 2, xshape), *out = f2t_tensor(xt, F2_CPU, 2, xshape);
        f2_tensor *rstd = f2t_tensor(F2_F32, F2_CPU, 1, &rows), *rstd_g = f2t_tensor(F2_F32, F2_CUDA, 1, &rows);
        f2_tensor *out_g = f2t_tensor(xt, F2_CUDA, 2, xshape), *new_sum = f2t_tensor(xt, F2_CUDA, 2, xshape);
        f2_tensor *sum_g = alias == 0 ? new_sum : alias == 1 ? ag : bg;
        CHECK_OK(f2_rmsnorm_residual_forward(sum, out, rstd, a, b, w, norm_eps));
        CHECK_OK(f2_rmsnorm_residual_forward(sum_g, out_g, rstd_g, ag, bg, wg, norm_eps));
        snprintf(what, sizeof what, "rmsnorm residual sum [%lld, %lld] a %s b %s, %s", (long long)rows,
                 (long long)dim, dn(xt), dn(bt), alias_name[alias]);
        compare_bits(what, sum_g, sum);
        snprintf(what, sizeof what, "rmsnorm residual out [%lld, %lld] a %s b %s, %s", (long long)rows,
                 (long long)dim, dn(xt), dn(bt), alias_name[alias]);
        compare(what, out_g, out, dtype_rtol(xt), 1e-6);
        snprintf(what, sizeof what, "rmsnorm residual rstd [%lld, %lld] %s, %s", (long long)rows, (long long)dim,
                 dn(xt), alias_name[alias]);
        compare(what, rstd_g, rstd, 1e-6, 0);
        FREE(a, b, w, ag, bg, wg, sum, out, rstd, rstd_g, out_g, new_sum);
      }
}

/* dx (overwritten, into dy's own buffer, or accumulated) and dweight += (or NULL). */
static void test_rmsnorm_backward(void) {
  char what[192];
  static const char *mode_name[4] = {"dx =", "dx += (f2_rmsnorm_backward_add)", "dx = into dy", "dx =, no dweight"};
  for (int s = 0; s < NORM_SHAPES; s++)
    for (int xi = 0; xi < 2; xi++)
      for (int mode = 0; mode < 4; mode++) {
        int64_t rows = norm_shapes[s][0], dim = norm_shapes[s][1], xshape[2] = {rows, dim};
        int32_t xt = float_dtypes[xi], wt = float_dtypes[(xi + mode) % 2];
        f2_tensor *x = randn(xt, 2, xshape, 2.0), *w = randn(wt, 1, &dim, 1.0), *dy = randn(xt, 2, xshape, 1.0);
        f2_tensor *rstd = f2t_tensor(F2_F32, F2_CPU, 1, &rows), *tmp = f2t_tensor(xt, F2_CPU, 2, xshape);
        CHECK_OK(f2_rmsnorm_forward(tmp, rstd, x, w, norm_eps));
        f2_tensor *dx = randn(xt, 2, xshape, 1.0), *dw = mode == 3 ? NULL : randn(F2_F32, 1, &dim, 1.0);
        f2_tensor *xg = on(F2_CUDA, x), *wg = on(F2_CUDA, w), *dyg = on(F2_CUDA, dy), *rg = on(F2_CUDA, rstd);
        f2_tensor *dxg = on(F2_CUDA, dx), *dwg = dw ? on(F2_CUDA, dw) : NULL;
        f2_tensor *dx2 = on(F2_CUDA, dx), *dw2 = dw ? on(F2_CUDA, dw) : NULL, *dy2 = on(F2_CUDA, dy);
        if (mode == 1) {
          CHECK_OK(f2_rmsnorm_backward_add(dx, dw, dy, x, w, rstd));
          CHECK_OK(f2_rmsnorm_backward_add(dxg, dwg, dyg, xg, wg, rg));
          CHECK_OK(f2_rmsnorm_backward_add(dx2, dw2, dy2, xg, wg, rg));
        } else if (mode == 2) {
          CHECK_OK(f2_rmsnorm_backward(dx, dw, dy, x, w, rstd));
          CHECK_OK(f2_rmsnorm_backward(dyg, dwg, dyg, xg, wg, rg));
          CHECK_OK(f2_rmsnorm_backward(dy2, dw2, dy2, xg, wg, rg));
          FREE(dxg, dx2);
          dxg = dyg, dx2 = dy2, dyg = dy2 = NULL;
        } else {
          CHECK_OK(f2_rmsnorm_backward(dx, dw, dy, x, w, rstd));
          CHECK_OK(f2_rmsnorm_backward(dxg, dwg, dyg, xg, wg, rg));
          CHECK_OK(f2_rmsnorm_backward(dx2, dw2, dy2, xg, wg, rg));
        }
        snprintf(what, sizeof what, "rmsnorm backward [%lld, %lld] x %s weight %s, %s", (long long)rows,
                 (long long)dim, dn(xt), dn(wt), mode_name[mode]);
        compare(what, dxg, dx, dtype_rtol(xt), 1e-6 * max_abs(dx));
        compare_bits("rmsnorm backward dx deterministic", dx2, dxg);
        if (dw) {
          /* The reference adds rows in fp32 one by one, the GPU by row groups and blocks: a bound that grows
           * with rows. */
          snprintf(what, sizeof what, "rmsnorm backward dweight [%lld, %lld] x %s, %s", (long long)rows,
                   (long long)dim, dn(xt), mode_name[mode]);
          compare(what, dwg, dw, 1e-5, 1e-6 * (double)rows + 1e-6);
          compare_bits("rmsnorm backward dweight deterministic", dw2, dwg);
        }
        FREE(x, w, dy, rstd, tmp, dx, dw, xg, wg, dyg, rg, dxg, dwg, dx2, dw2, dy2);
      }
}

/* Every RMSNorm kernel variant (kernels/nn.cu, F2_NORM_VARIANT: fwd 0..2, bwd 0..6) against the CPU,
 * dx and dweight bitwise the same on a second run; then an out-of-range variant is an error. The
 * variable is restored afterwards. */
static void test_rmsnorm_variants(void) {
  enum { FWD_VARIANTS = 2, BWD_VARIANTS = 2 };
  const char *env = getenv("F2_NORM_VARIANT");
  char saved[256];
  snprintf(saved, sizeof saved, "%s", env ? env : "");
  for (int v = 0; v < BWD_VARIANTS; v++) {
    char spec[64];
    snprintf(spec, sizeof spec, "fwd=%d,bwd=%d", v < FWD_VARIANTS ? v : 0, v);
    if (setenv("F2_NORM_VARIANT", spec, 1) != 0) {
      fprintf(stderr, "setenv F2_NORM_VARIANT failed\n");
      exit(1);
    }
    snprintf(variant_label, sizeof variant_label, "[F2_NORM_VARIANT=%s] ", spec);
    if (v < FWD_VARIANTS) {   /* the forward variants past the list would rerun fwd=0 */
      test_rmsnorm_forward();
      test_rmsnorm_residual();
    }
    test_rmsnorm_backward();
  }
  variant_label[0] = 0;
  int64_t rows = 4, dim = 64, shape[2] = {rows, dim};
  f2_tensor *x = f2t_tensor(F2_BF16, F2_CUDA, 2, shape), *w = f2t_tensor(F2_F32, F2_CUDA, 1, &dim);
  f2_tensor *out = f2t_tensor(F2_BF16, F2_CUDA, 2, shape), *dw = f2t_tensor(F2_F32, F2_CUDA, 1, &dim);
  f2_tensor *rstd = f2t_tensor(F2_F32, F2_CUDA, 1, &rows);
  CHECK_OK(f2_fill(x, 1.0));
  CHECK_OK(f2_fill(w, 1.0));
  CHECK_OK(f2_fill(dw, 0.0));
  setenv("F2_NORM_VARIANT", "bwd=99", 1);
  CHECK(f2_rmsnorm_backward_add(out, dw, x, x, w, rstd) != F2_OK && strstr(f2_last_error(), "F2_NORM_VARIANT"),
        "F2_NORM_VARIANT=bwd=99: expected an error naming the variable, got \"%s\"", f2_last_error());
  setenv("F2_NORM_VARIANT", "fwd=x", 1);
  CHECK(f2_rmsnorm_forward(out, rstd, x, w, norm_eps) != F2_OK && strstr(f2_last_error(), "F2_NORM_VARIANT"),
        "F2_NORM_VARIANT=fwd=x: expected an error naming the variable, got \"%s\"", f2_last_error());
  if (env)
    setenv("F2_NORM_VARIANT", saved, 1);
  else
    unsetenv("F2_NORM_VARIANT");
  FREE(x, w, out, dw, rstd);
}

/* Views that start `offset` elements into their storage: 1 misaligns 4-wide loads (the scalar path
 * although dim is a multiple of 4); 4 misaligns 16-byte loads of bf16 (the RMSNorm 4-wide path) but not
 * of f32 (its fast path). */
static f2_tensor *offset_view(const f2_tensor *base, int ndim, const int64_t *shape, int64_t offset) {
  int64_t stride[8];
  stride[ndim - 1] = 1;
  for (int d = ndim - 2; d >= 0; d--) stride[d] = stride[d + 1] * shape[d + 1];
  f2_tensor *v = f2_tensor_as_strided(base, ndim, shape, stride, offset);
  if (!v) {
    fprintf(stderr, "f2_tensor_as_strided failed: %s\n", f2_last_error());
    exit(1);
  }
  return v;
}

static void test_misaligned(void) {
  char what[192];
  for (int xi = 0; xi < 2; xi++)
    for (int64_t offset = 1; offset <= 4; offset += 3) {
      int32_t xt = float_dtypes[xi];
      int64_t rows = 19, dim = 576, shape[2] = {rows, dim}, flat = rows * dim + offset;
      f2_tensor *x = randn(xt, 2, shape, 1.0), *w = randn(F2_F32, 1, &dim, 1.0), *wg = on(F2_CUDA, w);
      f2_tensor *store_x = f2t_tensor(xt, F2_CUDA, 1, &flat), *store_out = f2t_tensor(xt, F2_CUDA, 1, &flat);
      f2_tensor *xg = offset_view(store_x, 2, shape, offset), *out_g = offset_view(store_out, 2, shape, offset);
      f2t_copy(xg, x);
      f2_tensor *out = f2t_tensor(xt, F2_CPU, 2, shape);
      CHECK_OK(f2_rmsnorm_forward(out, NULL, x, w, norm_eps));
      CHECK_OK(f2_rmsnorm_forward(out_g, NULL, xg, wg, norm_eps));
      snprintf(what, sizeof what, "rmsnorm forward, views at +%lld [%lld, %lld] %s", (long long)offset, (long long)rows,
               (long long)dim, dn(xt));
      compare(what, out_g, out, dtype_rtol(xt), 1e-6);
      CHECK_OK(f2_swiglu_forward(out, x, x));
      CHECK_OK(f2_swiglu_forward(out_g, xg, xg));
      snprintf(what, sizeof what, "swiglu forward, views at +%lld [%lld, %lld] %s", (long long)offset, (long long)rows,
               (long long)dim, dn(xt));
      compare(what, out_g, out, dtype_rtol(xt), 1e-6);
      FREE(x, w, wg, store_x, store_out, xg, out_g, out);
    }
}

/* ---------------------------------------------------------------- RoPE */

static f2_tensor *inv_freq_table(int64_t half) {
  f2_tensor *f = f2t_tensor(F2_F32, F2_CPU, 1, &half);
  for (int64_t i = 0; i < half; i++) ((float *)f->data)[i] = (float)pow(10000.0, -(double)i / (double)half);
  return f;
}

static void test_rope(void) {
  char what[192];
  static const int64_t shapes[][4] = {{2, 5, 3, 64}, {1, 7, 2, 6}, {2, 33, 9, 64}, {1, 3, 2, 128}, {3, 4, 1, 2}};
  for (int s = 0; s < 5; s++) {
    const int64_t *shape = shapes[s];
    int64_t half = shape[3] / 2, positions = shape[1] + 4, tshape[2] = {positions, half};
    f2_tensor *inv = inv_freq_table(half), *inv_g = on(F2_CUDA, inv);
    f2_tensor *cos_t = f2t_tensor(F2_F32, F2_CPU, 2, tshape), *sin_t = f2t_tensor(F2_F32, F2_CPU, 2, tshape);
    f2_tensor *cos_g = f2t_tensor(F2_F32, F2_CUDA, 2, tshape), *sin_g = f2t_tensor(F2_F32, F2_CUDA, 2, tshape);
    CHECK_OK(f2_rope_tables(cos_t, sin_t, inv));
    CHECK_OK(f2_rope_tables(cos_g, sin_g, inv_g));
    snprintf(what, sizeof what, "rope cos table [%lld, %lld]", (long long)positions, (long long)half);
    compare(what, cos_g, cos_t, 1e-6, 1e-7);
    snprintf(what, sizeof what, "rope sin table [%lld, %lld]", (long long)positions, (long long)half);
    compare(what, sin_g, sin_t, 1e-6, 1e-7);
    for (int xi = 0; xi < 2; xi++)
      for (int dir = 0; dir < 2; dir++) {
        int32_t xt = float_dtypes[xi];
        f2_tensor *x = randn(xt, 4, shape, 1.0), *xg = on(F2_CUDA, x);
        f2_tensor *out = f2t_tensor(xt, F2_CPU, 4, shape), *out_g = f2t_tensor(xt, F2_CUDA, 4, shape);
        int (*fn)(f2_tensor *, const f2_tensor *, const f2_tensor *, const f2_tensor *) =
            dir ? f2_rope_backward : f2_rope_forward;
        CHECK_OK(fn(out, x, cos_t, sin_t));
        CHECK_OK(fn(out_g, xg, cos_g, sin_g));
        snprintf(what, sizeof what, "rope %s [%lld,%lld,%lld,%lld] %s", dir ? "backward" : "forward",
                 (long long)shape[0], (long long)shape[1], (long long)shape[2], (long long)shape[3], dn(xt));
        compare(what, out_g, out, dtype_rtol(xt), xt == F2_BF16 ? 1e-2 : 1e-6);
        CHECK_OK(fn(xg, xg, cos_g, sin_g));   /* in place */
        snprintf(what, sizeof what, "rope %s in place [%lld,%lld,%lld,%lld] %s", dir ? "backward" : "forward",
                 (long long)shape[0], (long long)shape[1], (long long)shape[2], (long long)shape[3], dn(xt));
        compare(what, xg, out, dtype_rtol(xt), xt == F2_BF16 ? 1e-2 : 1e-6);
        FREE(x, xg, out, out_g);
      }
    FREE(inv, inv_g, cos_t, sin_t, cos_g, sin_g);
  }
}

/* ---------------------------------------------------------------- SwiGLU */

static void test_swiglu(void) {
  char what[192];
  static const int64_t shapes[][2] = {{3, 1001}, {16, 1536}, {1, 3}, {7, 64}};
  /* (gate, up, out/grads) dtypes. */
  static const int32_t combos[][3] = {{F2_F32, F2_F32, F2_F32}, {F2_BF16, F2_BF16, F2_BF16}, {F2_BF16, F2_F32, F2_F32}};
  for (int s = 0; s < 4; s++)
    for (int k = 0; k < 3; k++) {
      const int64_t *shape = shapes[s];
      int32_t gt = combos[k][0], ut = combos[k][1], ot = combos[k][2];
      f2_tensor *gate = randn(gt, 2, shape, 2.0), *up = randn(ut, 2, shape, 1.0), *dout = randn(ot, 2, shape, 1.0);
      f2_tensor *gg = on(F2_CUDA, gate), *ug = on(F2_CUDA, up), *dg_out = on(F2_CUDA, dout);
      f2_tensor *out = f2t_tensor(ot, F2_CPU, 2, shape), *out_g = f2t_tensor(ot, F2_CUDA, 2, shape);
      CHECK_OK(f2_swiglu_forward(out, gate, up));
      CHECK_OK(f2_swiglu_forward(out_g, gg, ug));
      snprintf(what, sizeof what, "swiglu forward [%lld, %lld] gate %s up %s out %s", (long long)shape[0],
               (long long)shape[1], dn(gt), dn(ut), dn(ot));
      compare(what, out_g, out, dtype_rtol(ot), 1e-6);
      f2_tensor *dgate = f2t_tensor(ot, F2_CPU, 2, shape), *dup = f2t_tensor(ot, F2_CPU, 2, shape);
      f2_tensor *dgate_g = f2t_tensor(ot, F2_CUDA, 2, shape), *dup_g = f2t_tensor(ot, F2_CUDA, 2, shape);
      CHECK_OK(f2_swiglu_backward(dgate, dup, dout, gate, up));
      CHECK_OK(f2_swiglu_backward(dgate_g, dup_g, dg_out, gg, ug));
      snprintf(what, sizeof what, "swiglu backward dgate [%lld, %lld] gate %s up %s grads %s", (long long)shape[0],
               (long long)shape[1], dn(gt), dn(ut), dn(ot));
      compare(what, dgate_g, dgate, dtype_rtol(ot), 1e-6);
      snprintf(what, sizeof what, "swiglu backward dup [%lld, %lld] gate %s up %s grads %s", (long long)shape[0],
               (long long)shape[1], dn(gt), dn(ut), dn(ot));
      compare(what, dup_g, dup, dtype_rtol(ot), 1e-6);
      if (gt == ot && ut == ot) {   /* gradients into gate's and up's own buffers */
        CHECK_OK(f2_swiglu_backward(gg, ug, dg_out, gg, ug));
        snprintf(what, sizeof what, "swiglu backward in place dgate [%lld, %lld] %s", (long long)shape[0],
                 (long long)shape[1], dn(ot));
        compare(what, gg, dgate, dtype_rtol(ot), 1e-6);
        snprintf(what, sizeof what, "swiglu backward in place dup [%lld, %lld] %s", (long long)shape[0],
                 (long long)shape[1], dn(ot));
        compare(what, ug, dup, dtype_rtol(ot), 1e-6);
      }
      FREE(gate, up, dout, gg, ug, dg_out, out, out_g, dgate, dup, dgate_g, dup_g);
    }
}

/* ---------------------------------------------------------------- cross-entropy */

static void test_cross_entropy_case(int64_t rows, int64_t vocab, int32_t lt, int32_t dt, double ignored_share) {
  char what[192];
  const int32_t ignore = -100;
  int64_t shape[2] = {rows, vocab}, one = 1;
  int32_t *targets = malloc((size_t)rows * sizeof *targets);
  int64_t counted = 0;
  for (int64_t r = 0; r < rows; r++) {
    targets[r] = (double)below(1000) < 1000 * ignored_share ? ignore : (int32_t)below(vocab);
    counted += targets[r] != ignore;
  }
  f2_tensor *logits = randn(lt, 2, shape, 3.0), *lg = on(F2_CUDA, logits);
  f2_tensor *tc = i32_tensor(rows, targets), *tg = on(F2_CUDA, tc);
  f2_tensor *loss = f2t_tensor(F2_F32, F2_CPU, 1, &one), *loss_g = f2t_tensor(F2_F32, F2_CUDA, 1, &one);
  f2_tensor *loss2 = f2t_tensor(F2_F32, F2_CUDA, 1, &one), *loss3 = f2t_tensor(F2_F32, F2_CUDA, 1, &one);
  f2_tensor *losses = f2t_tensor(F2_F32, F2_CPU, 1, &rows), *losses_g = f2t_tensor(F2_F32, F2_CUDA, 1, &rows);
  f2_tensor *losses2 = f2t_tensor(F2_F32, F2_CUDA, 1, &rows);
  CHECK_OK(f2_cross_entropy_forward(loss, losses, logits, tc, ignore));
  CHECK_OK(f2_cross_entropy_forward(loss_g, losses_g, lg, tg, ignore));
  CHECK_OK(f2_cross_entropy_forward(loss2, losses2, lg, tg, ignore));
  CHECK_OK(f2_cross_entropy_forward(loss3, NULL, lg, tg, ignore));
  snprintf(what, sizeof what, "cross-entropy loss [%lld, %lld] %s, %lld counted", (long long)rows, (long long)vocab,
           dn(lt), (long long)counted);
  compare(what, loss_g, loss, 1e-5, 1e-6);
  snprintf(what, sizeof what, "cross-entropy losses [%lld, %lld] %s", (long long)rows, (long long)vocab, dn(lt));
  compare(what, losses_g, losses, 1e-5, 1e-5);
  compare_bits("cross-entropy loss deterministic", loss2, loss_g);
  compare_bits("cross-entropy losses deterministic", losses2, losses_g);
  compare_bits("cross-entropy loss without losses", loss3, loss_g);

  const float dloss = 0.75f;
  f2_tensor *dl = f2t_tensor(dt, F2_CPU, 2, shape), *dl_g = f2t_tensor(dt, F2_CUDA, 2, shape);
  f2_tensor *dl2 = f2t_tensor(dt, F2_CUDA, 2, shape);
  CHECK_OK(f2_cross_entropy_backward(dl, logits, tc, ignore, dloss));
  CHECK_OK(f2_cross_entropy_backward(dl_g, lg, tg, ignore, dloss));
  CHECK_OK(f2_cross_entropy_backward(dl2, lg, tg, ignore, dloss));
  double g = counted ? dloss / (double)counted : 0;
  snprintf(what, sizeof what, "cross-entropy dlogits [%lld, %lld] logits %s dlogits %s", (long long)rows,
           (long long)vocab, dn(lt), dn(dt));
  compare(what, dl_g, dl, dt == F2_BF16 ? 1e-2 : 2e-5, (dt == F2_BF16 ? 1e-2 : 1e-6) * g);
  compare_bits("cross-entropy dlogits deterministic", dl2, dl_g);
  FREE(logits, lg, tc, tg, loss, loss_g, loss2, loss3, losses, losses_g, losses2, dl, dl_g, dl2);
  free(targets);
}

/* No counted row: loss 0, dlogits 0. A target outside [0, V) (not ignored): NaN loss for its row and the mean. */
static void test_cross_entropy_edges(void) {
  const int64_t rows = 6, vocab = 37, one = 1, shape[2] = {rows, vocab};
  int32_t all_ignored[6] = {-1, -1, -1, -1, -1, -1}, bad[6] = {3, -1, 40, 5, -7, 0};
  f2_tensor *logits = randn(F2_F32, 2, shape, 1.0), *lg = on(F2_CUDA, logits);
  f2_tensor *tc = i32_tensor(rows, all_ignored), *tg = on(F2_CUDA, tc);
  f2_tensor *loss_g = f2t_tensor(F2_F32, F2_CUDA, 1, &one), *losses_g = f2t_tensor(F2_F32, F2_CUDA, 1, &rows);
  f2_tensor *dl_g = f2t_tensor(F2_F32, F2_CUDA, 2, shape);
  CHECK_OK(f2_fill(loss_g, 5.0));
  CHECK_OK(f2_fill(dl_g, 5.0));
  CHECK_OK(f2_cross_entropy_forward(loss_g, losses_g, lg, tg, -1));
  CHECK_OK(f2_cross_entropy_backward(dl_g, lg, tg, -1, 1.0f));
  f2_tensor *h = on(F2_CPU, loss_g), *dh = on(F2_CPU, dl_g);
  CHECK(get(h, 0) == 0, "cross-entropy with every row ignored: loss %g, expected 0", get(h, 0));
  CHECK(max_abs(dh) == 0, "cross-entropy with every row ignored: dlogits max |%g|, expected 0", max_abs(dh));
  FREE(tc, tg, h, dh);

  tc = i32_tensor(rows, bad), tg = on(F2_CUDA, tc);
  CHECK_OK(f2_cross_entropy_forward(loss_g, losses_g, lg, tg, -1));
  CHECK_OK(f2_cross_entropy_backward(dl_g, lg, tg, -1, 1.0f));
  h = on(F2_CPU, loss_g);
  f2_tensor *lh = on(F2_CPU, losses_g);
  dh = on(F2_CPU, dl_g);
  CHECK(isnan(get(h, 0)), "cross-entropy with a target outside the vocabulary: loss %g, expected NaN", get(h, 0));
  CHECK(isnan(get(lh, 2)) && isnan(get(lh, 4)), "rows 2 and 4 (targets 40, -7): losses %g %g, expected NaN", get(lh, 2),
        get(lh, 4));
  CHECK(get(lh, 1) == 0 && isfinite(get(lh, 0)) && isfinite(get(lh, 3)),
        "ignored row 1: %g (expected 0); rows 0 and 3 finite: %g %g", get(lh, 1), get(lh, 0), get(lh, 3));
  CHECK(isnan(get(dh, 2 * vocab)) && isfinite(get(dh, 0)) && get(dh, vocab) == 0,
        "dlogits: NaN on the bad row (%g), finite on a good one (%g), 0 on the ignored one (%g)", get(dh, 2 * vocab),
        get(dh, 0), get(dh, vocab));
  FREE(logits, lg, tc, tg, loss_g, losses_g, dl_g, h, lh, dh);
}

static void test_cross_entropy(void) {
  test_cross_entropy_case(37, 1000, F2_F32, F2_F32, 0.2);
  test_cross_entropy_case(37, 1000, F2_BF16, F2_BF16, 0.2);
  test_cross_entropy_case(5, 997, F2_F32, F2_F32, 0.0);      /* odd vocabulary: the scalar path */
  test_cross_entropy_case(5, 997, F2_BF16, F2_F32, 0.0);
  test_cross_entropy_case(64, 49152, F2_BF16, F2_BF16, 0.1);  /* SmolLM2 vocabulary */
  test_cross_entropy_case(64, 49152, F2_F32, F2_F32, 0.1);
  test_cross_entropy_case(3, 151936, F2_F32, F2_F32, 0.0);    /* Qwen3 vocabulary */
  test_cross_entropy_case(1000, 3, F2_F32, F2_F32, 0.3);      /* many short rows */
  test_cross_entropy_edges();
}

int main(void) {
  f2t_require_gpu();
  uint64_t seed = f2t_seed();
  seed_counter = seed * 1000003u;
  rng_state = seed;
  verbose = getenv("F2_TEST_VERBOSE") && atoi(getenv("F2_TEST_VERBOSE"));
  test_embedding();
  test_rmsnorm_variants();
  test_misaligned();
  test_rope();
  test_swiglu();
  test_cross_entropy();
  return f2t_done();
}
