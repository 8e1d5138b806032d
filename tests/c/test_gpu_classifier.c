/* test_gpu_classifier.c — f2_lm_head_cross_entropy on a GPU (kernels/classifier.cu) against the CPU
 * reference (runtime/classifier.c, itself checked against the unfused ops by test_classifier) on fresh
 * random inputs (seed printed): f32 (tight) and bf16 (the logits chunk is bf16 on the GPU, so bf16
 * tolerances); V that misses the 16-byte path, SmolLM2's 49152 and Qwen3's 151936; chunk sizes that do
 * not divide N and the default (which splits at 256 MiB of logits); ignore_index rows, every row ignored,
 * a target outside the vocabulary (NaN loss), forward only, dweight NULL, losses NULL, dh written over h.
 * dweight accumulates: its change is compared. Two runs must give the same bits, and a run captured in a
 * CUDA graph (the op never waits for the GPU) must give them too. A failed compare prints the bad count,
 * the first bad index (got vs want), the max abs / rel errors and the relative Frobenius error. */
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

static f2_tensor *to_device(const f2_tensor *t, int32_t device) {   /* a copy (same dtype and shape) */
  return f2t_copy_as(t, t->dtype, device);
}
static f2_tensor *randn(int32_t dtype, int ndim, const int64_t *shape, double std) {   /* on the CPU */
  f2_tensor *t = f2t_tensor(dtype, F2_CPU, ndim, shape);
  CHECK_OK(f2_rand_normal(t, next_seed(), 0, std));
  return t;
}
static float *values(const f2_tensor *t) {   /* any float tensor on any device -> malloc'd f32 values */
  int64_t n = f2_tensor_numel(t);
  f2_tensor *f = f2t_tensor(F2_F32, F2_CPU, 1, &n), *flat = f2_tensor_reshape(t, 1, &n);
  f2_tensor *same = f2t_tensor(t->dtype, F2_CPU, 1, &n);
  f2t_copy(same, flat);
  f2t_copy(f, same);
  float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
  memcpy(p, f->data, (size_t)n * sizeof(float));
  f2_tensor_free(f), f2_tensor_free(flat), f2_tensor_free(same);
  return p;
}
static int bits_equal(const f2_tensor *a, const f2_tensor *b) {   /* any devices */
  f2_tensor *ha = to_device(a, F2_CPU), *hb = to_device(b, F2_CPU);
  int eq = f2_tensor_nbytes(ha) == f2_tensor_nbytes(hb) && memcmp(ha->data, hb->data, f2_tensor_nbytes(ha)) == 0;
  f2_tensor_free(ha), f2_tensor_free(hb);
  return eq;
}

/* got vs want (n values each): |got - want| <= atol_frac * max|want| + rtol * |want| (NaN matches NaN),
 * and ||got - want|| <= frob * ||want||. */
static void compare_values(const char *what, const float *g, const float *w, int64_t n, double rtol, double atol_frac,
                           double frob) {
  double wmax = 0, max_abs = 0, max_rel = 0, num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) wmax = fmax(wmax, fabs(w[i]));
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < n; i++) {
    double e = fabs((double)g[i] - w[i]);
    int both_nan = isnan(g[i]) && isnan(w[i]);
    if (!(e <= atol_frac * wmax + rtol * fabs(w[i])) && !both_nan) {
      if (first < 0) first = i;
      bad++;
    }
    if (both_nan) continue;
    max_abs = fmax(max_abs, e);
    if (w[i] != 0) max_rel = fmax(max_rel, e / fabs(w[i]));
    num += e * e, den += (double)w[i] * w[i];
  }
  double fro = den > 0 ? sqrt(num / den) : sqrt(num);
  CHECK(bad == 0 && fro <= frob,
        "%s: %lld of %lld bad; first [%lld] got %.9g want %.9g; max abs %.3g (max|want| %.3g), max rel %.3g, "
        "frobenius rel %.3g (limit %.3g)",
        what, (long long)bad, (long long)n, (long long)first, first >= 0 ? g[first] : 0.0, first >= 0 ? w[first] : 0.0,
        max_abs, wmax, max_rel, fro, frob);
}
static void compare(const char *what, const f2_tensor *got, const f2_tensor *want, double rtol, double atol_frac,
                    double frob) {
  int64_t n = f2_tensor_numel(want);
  float *g = values(got), *w = values(want);
  compare_values(what, g, w, n, rtol, atol_frac, frob);
  free(g), free(w);
}
/* The change of dweight (after - before) on both sides: the gradient, without dweight's own values. */
static void compare_delta(const char *what, const f2_tensor *got, const f2_tensor *want, const f2_tensor *before,
                          double rtol, double atol_frac, double frob) {
  int64_t n = f2_tensor_numel(want);
  float *g = values(got), *w = values(want), *b = values(before);
  for (int64_t i = 0; i < n; i++) g[i] -= b[i], w[i] -= b[i];
  compare_values(what, g, w, n, rtol, atol_frac, frob);
  free(g), free(w), free(b);
}

enum { FWD_ONLY = 1, NO_DWEIGHT = 2, NO_LOSSES = 4, DH_IS_H = 8, ALL_IGNORED = 16, BAD_TARGET = 32 };

/* The op's outputs on one device. */
typedef struct {
  f2_tensor *loss, *losses, *dh, *dw;
} outputs;

static void outputs_free(outputs *o) {
  f2_tensor_free(o->loss), f2_tensor_free(o->losses), f2_tensor_free(o->dh), f2_tensor_free(o->dw);
}

/* Runs the op on `device` with fresh outputs (dweight starts from dw0; dh over a copy of h when DH_IS_H). */
static int run_on(outputs *o, int32_t device, const f2_tensor *h, const f2_tensor *w, const f2_tensor *tg,
                  const f2_tensor *dw0, int32_t ignore_index, float dloss, int64_t chunk, int flags, int graph) {
  int64_t one = 1, rows = f2_tensor_numel(tg);
  f2_tensor *hd = to_device(h, device), *wd = to_device(w, device), *tgd = to_device(tg, device);
  o->loss = f2t_tensor(F2_F32, device, 1, &one);
  o->losses = f2t_tensor(F2_F32, device, 1, &rows);
  o->dw = to_device(dw0, device);
  o->dh = (flags & DH_IS_H) ? to_device(h, device) : f2t_tensor(h->dtype, device, h->ndim, h->shape);
  const f2_tensor *hin = (flags & DH_IS_H) ? o->dh : hd;
  int fwd = flags & FWD_ONLY;
  f2_tensor *dh = fwd ? NULL : o->dh, *dw = fwd || (flags & NO_DWEIGHT) ? NULL : o->dw;
  f2_tensor *losses = (flags & NO_LOSSES) ? NULL : o->losses;
  int rc;
  if (graph) {   /* captured, then replayed once: nothing in the op may wait for the GPU */
    rc = f2_cuda_graph_begin();
    if (rc == F2_OK) {
      int op_rc = f2_lm_head_cross_entropy(o->loss, losses, dh, dw, hin, wd, tgd, ignore_index, dloss, chunk);
      f2_cuda_graph *gr = f2_cuda_graph_end();
      rc = op_rc != F2_OK ? op_rc : gr ? f2_cuda_graph_launch(gr) : F2_ERR_CUDA;
      if (rc == F2_OK) rc = f2_cuda_synchronize();
      f2_cuda_graph_free(gr);
    }
  } else {
    rc = f2_lm_head_cross_entropy(o->loss, losses, dh, dw, hin, wd, tgd, ignore_index, dloss, chunk);
    if (rc == F2_OK && device == F2_CUDA) rc = f2_cuda_synchronize();
  }
  f2_tensor_free(hd), f2_tensor_free(wd), f2_tensor_free(tgd);
  return rc;
}

/* One case: GPU vs the CPU reference, then a second GPU run (and one replayed from a graph) for the bits. */
static void run_case(int32_t dtype, int64_t N, int64_t D, int64_t V, int64_t chunk, int32_t ignore_index, int flags,
                     int graph) {
  char what[160];
  snprintf(what, sizeof what, "%s N=%lld D=%lld V=%lld chunk=%lld ignore=%d flags=%d", f2_dtype_name(dtype),
           (long long)N, (long long)D, (long long)V, (long long)chunk, (int)ignore_index, flags);
  int64_t hshape[2] = {N, D}, wshape[2] = {V, D};
  f2_tensor *h = randn(dtype, 2, hshape, 1.0), *w = randn(dtype, 2, wshape, 2.0 / sqrt((double)D));
  f2_tensor *dw0 = randn(F2_F32, 2, wshape, 0.1), *tg = f2t_tensor(F2_I32, F2_CPU, 1, &N);
  int32_t *t = tg->data;
  for (int64_t r = 0; r < N; r++) {
    t[r] = (int32_t)(uniform() * (double)V);
    if (uniform() < 0.2 || (flags & ALL_IGNORED)) t[r] = ignore_index;
  }
  if (!(flags & ALL_IGNORED)) t[N / 2] = (int32_t)(V - 1);   /* the last class: the tail of a row */
  if (flags & BAD_TARGET) t[N / 3] = (int32_t)V;
  float dloss = (float)(0.5 + 1.5 * uniform());
  outputs cpu = {0}, gpu = {0}, again = {0};
  if (flags & BAD_TARGET) {   /* the CPU refuses it; the GPU can't check without waiting: NaN loss */
    int rc = run_on(&gpu, F2_CUDA, h, w, tg, dw0, ignore_index, dloss, chunk, flags, 0);
    CHECK(rc == F2_OK, "%s: %s", what, f2_last_error());
    float *l = values(gpu.loss), *ls = values(gpu.losses);
    CHECK(isnan(l[0]), "%s: a target outside the vocabulary gives loss %g, want NaN", what, l[0]);
    CHECK(isnan(ls[N / 3]) && !isnan(ls[N / 2]), "%s: losses[%lld] = %g (want NaN), losses[%lld] = %g", what,
          (long long)(N / 3), ls[N / 3], (long long)(N / 2), ls[N / 2]);
    free(l), free(ls);
    goto done;
  }
  int rc = run_on(&cpu, F2_CPU, h, w, tg, dw0, ignore_index, dloss, chunk, flags, 0);
  CHECK(rc == F2_OK, "%s: CPU: %s", what, f2_last_error());
  rc = run_on(&gpu, F2_CUDA, h, w, tg, dw0, ignore_index, dloss, chunk, flags, 0);
  CHECK(rc == F2_OK, "%s: GPU: %s", what, f2_last_error());
  if (rc != F2_OK) goto done;

  int bf = dtype == F2_BF16, fwd = flags & FWD_ONLY;
  char name[224];
  float *lg = values(gpu.loss), *lc = values(cpu.loss);
  /* bf16: the GPU's logits are rounded to bf16 (|error| <= |x| 2^-9), each row's loss moves by that much. */
  CHECK(fabs(lg[0] - lc[0]) <= (bf ? 3e-3 : 2e-6) * fabs(lc[0]) + 1e-6, "%s: loss GPU %.9g, CPU %.9g", what, lg[0], lc[0]);
  if (flags & ALL_IGNORED) CHECK(lg[0] == 0, "%s: no counted row: loss %g, want 0", what, lg[0]);
  free(lg), free(lc);
  if (!(flags & NO_LOSSES)) {
    snprintf(name, sizeof name, "%s losses", what);
    compare(name, gpu.losses, cpu.losses, bf ? 1e-2 : 1e-5, bf ? 3e-3 : 1e-6, bf ? 3e-3 : 1e-5);
  }
  if (!fwd) {
    snprintf(name, sizeof name, "%s dh", what);
    compare(name, gpu.dh, cpu.dh, bf ? 3e-2 : 1e-4, bf ? 1e-2 : 1e-5, bf ? 1e-2 : 3e-5);
    snprintf(name, sizeof name, "%s dweight change", what);
    compare_delta(name, gpu.dw, cpu.dw, dw0, bf ? 3e-2 : 1e-4, bf ? 1e-2 : 1e-5, bf ? 1e-2 : 3e-5);
  }
  if (fwd || (flags & NO_DWEIGHT) || (flags & ALL_IGNORED))
    CHECK(bits_equal(gpu.dw, dw0), "%s: dweight must stay as it was", what);
  if (flags & ALL_IGNORED) {
    float *d = values(gpu.dh);
    int64_t nonzero = 0;
    for (int64_t i = 0; i < N * D; i++) nonzero += d[i] != 0;
    CHECK(nonzero == 0, "%s: no counted row: %lld non-zero dh", what, (long long)nonzero);
    free(d);
  }

  /* The same bits again: a plain second run, or one replayed from a CUDA graph. */
  rc = run_on(&again, F2_CUDA, h, w, tg, dw0, ignore_index, dloss, chunk, flags, graph);
  CHECK(rc == F2_OK, "%s: %s run: %s", what, graph ? "graph" : "second", f2_last_error());
  if (rc == F2_OK)
    CHECK(bits_equal(gpu.loss, again.loss) && ((flags & NO_LOSSES) || bits_equal(gpu.losses, again.losses)) &&
              (fwd || bits_equal(gpu.dh, again.dh)) && bits_equal(gpu.dw, again.dw),
          "%s: a %s run gives other bits (loss %d, losses %d, dh %d, dweight %d)", what, graph ? "graph" : "second",
          bits_equal(gpu.loss, again.loss), bits_equal(gpu.losses, again.losses), bits_equal(gpu.dh, again.dh),
          bits_equal(gpu.dw, again.dw));
done:
  outputs_free(&cpu), outputs_free(&gpu), outputs_free(&again);
  f2_tensor_free(h), f2_tensor_free(w), f2_tensor_free(dw0), f2_tensor_free(tg);
}

/* The default chunk splits N = 4096 rows of V = 49152 bf16 logits (384 MiB) in two: its outputs must
 * match a single-chunk GPU run's, and its first 256 row losses the CPU's (which is slow at this size). */
static void test_default_chunk(void) {
  const int64_t N = 4096, D = 64, V = 49152, S = 256;
  int64_t hshape[2] = {N, D}, wshape[2] = {V, D};
  f2_tensor *h = randn(F2_BF16, 2, hshape, 1.0), *w = randn(F2_BF16, 2, wshape, 2.0 / sqrt((double)D));
  f2_tensor *dw0 = randn(F2_F32, 2, wshape, 0.1), *tg = f2t_tensor(F2_I32, F2_CPU, 1, &N);
  for (int64_t r = 0; r < N; r++) ((int32_t *)tg->data)[r] = uniform() < 0.1 ? -100 : (int32_t)(uniform() * V);
  f2_tensor *h_s = f2_tensor_narrow(h, 0, 0, S), *tg_s = f2_tensor_narrow(tg, 0, 0, S);
  outputs cpu = {0}, split = {0}, whole = {0};
  CHECK_OK(run_on(&cpu, F2_CPU, h_s, w, tg_s, dw0, -100, 1.0f, 0, FWD_ONLY, 0));
  CHECK_OK(run_on(&split, F2_CUDA, h, w, tg, dw0, -100, 1.0f, 0, 0, 0));
  CHECK_OK(run_on(&whole, F2_CUDA, h, w, tg, dw0, -100, 1.0f, N, 0, 0));
  f2_tensor *first = f2_tensor_narrow(split.losses, 0, 0, S);
  compare("default chunk: first rows' losses vs CPU", first, cpu.losses, 1e-2, 3e-3, 3e-3);
  f2_tensor_free(first);
  float *ls = values(split.loss), *lw = values(whole.loss);
  CHECK(fabs(ls[0] - lw[0]) <= 1e-3 * fabs(lw[0]), "default chunk: loss %.9g, one chunk %.9g", ls[0], lw[0]);
  free(ls), free(lw);
  /* The same math per row either way; only cuBLASLt's choice for the chunk's M may differ. */
  compare("default chunk vs one chunk: losses", split.losses, whole.losses, 1e-2, 1e-3, 1e-3);
  compare("default chunk vs one chunk: dh", split.dh, whole.dh, 2e-2, 1e-2, 1e-2);
  compare_delta("default chunk vs one chunk: dweight change", split.dw, whole.dw, dw0, 2e-2, 1e-2, 1e-2);
  outputs_free(&cpu), outputs_free(&split), outputs_free(&whole);
  f2_tensor_free(h), f2_tensor_free(w), f2_tensor_free(dw0), f2_tensor_free(tg), f2_tensor_free(h_s), f2_tensor_free(tg_s);
}

/* Tensors on two devices are refused before anything runs. */
static void test_mixed_devices(void) {
  int64_t N = 4, hs[2] = {4, 8}, ws[2] = {16, 8}, one = 1;
  f2_tensor *h = randn(F2_F32, 2, hs, 1.0), *w = randn(F2_F32, 2, ws, 1.0), *tg = f2t_tensor(F2_I32, F2_CPU, 1, &N);
  for (int r = 0; r < 4; r++) ((int32_t *)tg->data)[r] = r;
  f2_tensor *wg = to_device(w, F2_CUDA), *loss = f2t_tensor(F2_F32, F2_CPU, 1, &one);
  int rc = f2_lm_head_cross_entropy(loss, NULL, NULL, NULL, h, wg, tg, -100, 1.0f, 0);
  CHECK(rc == F2_ERR_ARG && strstr(f2_last_error(), "different devices"), "mixed devices: %d %s", rc, f2_last_error());
  f2_tensor_free(h), f2_tensor_free(w), f2_tensor_free(tg), f2_tensor_free(wg), f2_tensor_free(loss);
}

/* No rows: loss 0 (whatever it held), dweight untouched. */
static void test_no_rows(void) {
  int64_t zero = 0, hs[2] = {0, 8}, ws[2] = {16, 8}, one = 1;
  f2_tensor *h = f2t_tensor(F2_BF16, F2_CUDA, 2, hs), *dh = f2t_tensor(F2_BF16, F2_CUDA, 2, hs);
  f2_tensor *w = f2t_tensor(F2_BF16, F2_CUDA, 2, ws), *dw = f2t_tensor(F2_F32, F2_CUDA, 2, ws);
  f2_tensor *tg = f2t_tensor(F2_I32, F2_CUDA, 1, &zero), *loss = f2t_tensor(F2_F32, F2_CUDA, 1, &one);
  CHECK_OK(f2_fill(w, 1.0));
  CHECK_OK(f2_fill(dw, 2.0));
  CHECK_OK(f2_fill(loss, 123.0));
  CHECK_OK(f2_lm_head_cross_entropy(loss, NULL, dh, dw, h, w, tg, -100, 1.0f, 0));
  float *l = values(loss), *d = values(dw);
  CHECK(l[0] == 0, "no rows: loss %g, want 0", l[0]);
  int64_t changed = 0;
  for (int64_t i = 0; i < 16 * 8; i++) changed += d[i] != 2.0f;
  CHECK(changed == 0, "no rows: %lld dweight entries changed", (long long)changed);
  free(l), free(d);
  f2_tensor *all[] = {h, dh, w, dw, tg, loss};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) f2_tensor_free(all[i]);
}

int main(void) {
  f2t_require_gpu();
  rng_state = f2t_seed();
  test_mixed_devices();
  test_no_rows();
  const int32_t dtypes[2] = {F2_F32, F2_BF16};
  for (int k = 0; k < 2; k++) {
    int32_t dt = dtypes[k];
    run_case(dt, 37, 24, 101, 5, -100, 0, 0);         /* V misses the 16-byte path; chunks of 5 */
    run_case(dt, 37, 24, 101, 0, -100, 0, 1);         /* default chunk (one), replayed from a graph */
    run_case(dt, 300, 64, 4096, 128, -100, 0, 1);     /* 16-byte path; 128 doesn't divide 300 */
    run_case(dt, 300, 64, 4100, 77, -100, 0, 0);      /* V = 4 mod 8: bf16 scalar, f32 vector */
    run_case(dt, 96, 40, 1000, 32, 7, 0, 0);          /* ignore_index a real id */
    run_case(dt, 64, 32, 512, 16, -100, ALL_IGNORED, 0);
    run_case(dt, 64, 32, 512, 24, -100, FWD_ONLY, 1);
    run_case(dt, 64, 32, 512, 24, -100, FWD_ONLY | NO_LOSSES, 0);
    run_case(dt, 64, 32, 512, 24, -100, NO_DWEIGHT, 0);
    run_case(dt, 64, 32, 512, 24, -100, NO_LOSSES, 1);   /* row-loss scratch allocated inside the capture */
    run_case(dt, 7, 16, 64, 1, -100, 0, 0);           /* chunks of one row */
    run_case(dt, 64, 32, 512, 24, -100, DH_IS_H, 0);
    run_case(dt, 64, 32, 512, 24, -100, BAD_TARGET, 0);
    run_case(dt, 32, 576, 49152, 12, -100, 0, 0);     /* SmolLM2's head, chunks that don't divide N */
  }
  run_case(F2_BF16, 64, 576, 49152, 0, -100, 0, 1);   /* SmolLM2, default chunk, graph */
  run_case(F2_BF16, 48, 128, 151936, 20, -100, 0, 0); /* Qwen3's vocabulary */
  test_default_chunk();
  return f2t_done();
}
