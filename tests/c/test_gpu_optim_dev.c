/* test_gpu_optim_dev.c — the CUDA f2_adamw_step_dev against its CPU reference on fresh random data:
 * f32 and bf16 gradients, sizes that are and are not multiples of the 4-element vectors, tensors at
 * 16-byte aligned and unaligned addresses (the vector and the element path), clipping on and off, a
 * non-finite sumsq that must leave param, m and v untouched, bitwise repeatability. Then the fast
 * f2_sum_squares: many tensors of mixed dtypes and sizes against the CPU's double sum, bitwise
 * repeatable, and the same bits for the same values at an aligned and an unaligned address.
 * F2_BENCH=1 also times both over a SmolLM2-sized flat buffer (F2_BENCH_N elements) and prints GB/s. */
#include <string.h>
#include <time.h>

#include "f2test.h"

static float *fp(const f2_tensor *t) { return (float *)t->data; }

static f2_tensor *to(const f2_tensor *src, int32_t device) {
  f2_tensor *t = f2_tensor_new(src->dtype, device, src->ndim, src->shape);
  if (t && f2_copy(t, src) != F2_OK) {
    f2_tensor_free(t);
    return NULL;
  }
  CHECK(t != NULL, "copy to %s: %s", device == F2_CUDA ? "GPU" : "CPU", f2_last_error());
  return t;
}

/* n elements starting at element off of a fresh buffer on device: off > 0 is not 16-byte aligned. */
static f2_tensor *vec_at(int64_t n, int32_t dtype, int32_t device, int64_t off) {
  int64_t total = n + off;
  f2_tensor *base = f2_tensor_new(dtype, device, 1, &total);
  if (!base) return NULL;
  f2_tensor *v = f2_tensor_narrow(base, 0, off, n);
  f2_tensor_free(base);
  return v;
}

static void set_hparams(float *x, float lr, float b1, float b2, float eps, float wd, int64_t step, float max_norm) {
  x[F2_ADAMW_LR] = lr;
  x[F2_ADAMW_BETA1] = b1;
  x[F2_ADAMW_BETA2] = b2;
  x[F2_ADAMW_EPS] = eps;
  x[F2_ADAMW_WEIGHT_DECAY] = wd;
  x[F2_ADAMW_BC1] = 1.0f - powf(b1, (float)step);
  x[F2_ADAMW_BC2] = 1.0f - powf(b2, (float)step);
  x[F2_ADAMW_MAX_NORM] = max_norm;
}

/* GPU f32 tensor vs CPU f32 tensor: |gpu - cpu| <= rtol * |cpu| + atol everywhere (NaN must match NaN).
 * Prints the worst error, the first bad index and how many elements differ in their bits. */
static void compare(const f2_tensor *gpu, const f2_tensor *cpu, double rtol, double atol, const char *what) {
  f2_tensor *h = to(gpu, F2_CPU);
  if (!h) return;
  int64_t n = f2_tensor_numel(cpu), bad = -1, bits = 0;
  double max_err = 0, max_rel = 0;
  for (int64_t i = 0; i < n; i++) {
    float a = fp(h)[i], b = fp(cpu)[i];
    bits += memcmp(&a, &b, 4) != 0;
    double err = fabs((double)a - b);
    int ok = (isnan(a) && isnan(b)) || err <= atol + rtol * fabs((double)b);
    if (!isnan(err)) {
      max_err = fmax(max_err, err);
      max_rel = fmax(max_rel, err / fmax(fabs((double)b), 1e-30));
    }
    if (!ok && bad < 0) bad = i;
  }
  CHECK(bad < 0, "%s: first bad element %lld: gpu %.9g cpu %.9g (max abs err %.3g, max rel %.3g, %lld of %lld differ "
        "in bits)", what, (long long)bad, bad < 0 ? 0.0 : fp(h)[bad], bad < 0 ? 0.0 : fp(cpu)[bad], max_err, max_rel,
        (long long)bits, (long long)n);
  if (bits) printf("  %s: %lld of %lld elements differ in bits (max rel %.3g)\n", what, (long long)bits, (long long)n,
                   max_rel);
  f2_tensor_free(h);
}

static int same_bits(const f2_tensor *a_gpu, const f2_tensor *b_gpu) {
  f2_tensor *a = to(a_gpu, F2_CPU), *b = to(b_gpu, F2_CPU);
  int same = a && b && memcmp(a->data, b->data, f2_tensor_nbytes(a)) == 0;
  f2_tensor_free(a);
  f2_tensor_free(b);
  return same;
}

/* AdamW: 4 steps on the GPU and the CPU from the same state; step 2 clips, step 4 has a NaN sumsq. */
static void test_adamw(uint64_t seed, int64_t n, int32_t gdtype, int64_t off_pmv, int64_t off_g) {
  char what[160];
  f2_tensor *p = vec_at(n, F2_F32, F2_CPU, 0), *m = vec_at(n, F2_F32, F2_CPU, 0), *v = vec_at(n, F2_F32, F2_CPU, 0);
  f2_tensor *g = vec_at(n, gdtype, F2_CPU, 0);
  f2_tensor *P = vec_at(n, F2_F32, F2_CUDA, off_pmv), *M = vec_at(n, F2_F32, F2_CUDA, off_pmv);
  f2_tensor *V = vec_at(n, F2_F32, F2_CUDA, off_pmv), *G = vec_at(n, gdtype, F2_CUDA, off_g);
  int64_t one = 1, nh = F2_ADAMW_HPARAMS;
  f2_tensor *h = f2_tensor_new(F2_F32, F2_CPU, 1, &nh), *H = f2_tensor_new(F2_F32, F2_CUDA, 1, &nh);
  f2_tensor *ss = f2_tensor_new(F2_F32, F2_CPU, 1, &one), *SS = f2_tensor_new(F2_F32, F2_CUDA, 1, &one);
  CHECK_OK(f2_rand_normal(p, seed, 0, 1));
  CHECK_OK(f2_rand_uniform(m, seed + 1, -0.01, 0.01));
  CHECK_OK(f2_rand_uniform(v, seed + 2, 0, 1e-4));
  CHECK_OK(f2_copy(P, p));
  CHECK_OK(f2_copy(M, m));
  CHECK_OK(f2_copy(V, v));
  for (int step = 1; step <= 4; step++) {
    CHECK_OK(f2_rand_normal(g, seed * 131 + (uint64_t)step, 0, 0.02));
    CHECK_OK(f2_copy(G, g));
    /* The GPU's own sum of squares; the CPU reference takes the same value. */
    const f2_tensor *list[1] = {G};
    CHECK_OK(f2_sum_squares(SS, list, 1));
    CHECK_OK(f2_copy(ss, SS));
    if (step == 4) { /* a NaN sumsq: both must skip */
      fp(ss)[0] = NAN;
      CHECK_OK(f2_copy(SS, ss));
    }
    float norm = sqrtf(fp(ss)[0]), max_norm = step == 2 ? 0.5f * norm : step == 3 ? 2.0f * norm + 1.0f : 0.0f;
    set_hparams(fp(h), 1e-3f * (float)step, 0.9f, 0.95f, 1e-8f, 0.1f, step, max_norm);
    CHECK_OK(f2_copy(H, h));
    CHECK_OK(f2_adamw_step_dev(p, m, v, g, h, ss));
    CHECK_OK(f2_adamw_step_dev(P, M, V, G, H, SS));
  }
  snprintf(what, sizeof what, "adamw_dev n=%lld grad %s offsets %lld/%lld", (long long)n,
           gdtype == F2_BF16 ? "bf16" : "f32", (long long)off_pmv, (long long)off_g);
  char w2[200];
  snprintf(w2, sizeof w2, "%s param", what);
  compare(P, p, 1e-6, 1e-9, w2);
  snprintf(w2, sizeof w2, "%s m", what);
  compare(M, m, 1e-6, 1e-12, w2);
  snprintf(w2, sizeof w2, "%s v", what);
  compare(V, v, 1e-6, 1e-15, w2);

  /* The NaN step left the state as it was: one more finite step from here on both sides must agree. */
  fp(ss)[0] = 1.0f;
  CHECK_OK(f2_copy(SS, ss));
  set_hparams(fp(h), 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 5, 0.0f);
  CHECK_OK(f2_copy(H, h));
  /* Bitwise repeatable: the same step from the same state twice. */
  f2_tensor *P2 = to(P, F2_CUDA), *M2 = to(M, F2_CUDA), *V2 = to(V, F2_CUDA);
  CHECK_OK(f2_adamw_step_dev(P, M, V, G, H, SS));
  CHECK_OK(f2_adamw_step_dev(P2, M2, V2, G, H, SS));
  CHECK(same_bits(P, P2) && same_bits(M, M2) && same_bits(V, V2), "%s: a repeated step gave other bits", what);
  f2_tensor *list[] = {p, m, v, g, P, M, V, G, h, H, ss, SS, P2, M2, V2};
  for (size_t i = 0; i < sizeof list / sizeof *list; i++) f2_tensor_free(list[i]);
}

/* A NaN or infinite sumsq on the GPU: param, m and v keep their bits. */
static void test_skip(uint64_t seed) {
  int64_t n = 4097, one = 1, nh = F2_ADAMW_HPARAMS;
  f2_tensor *P = vec_at(n, F2_F32, F2_CUDA, 0), *M = vec_at(n, F2_F32, F2_CUDA, 0), *V = vec_at(n, F2_F32, F2_CUDA, 0);
  f2_tensor *G = vec_at(n, F2_BF16, F2_CUDA, 0);
  f2_tensor *h = f2_tensor_new(F2_F32, F2_CPU, 1, &nh), *H = f2_tensor_new(F2_F32, F2_CUDA, 1, &nh);
  f2_tensor *ss = f2_tensor_new(F2_F32, F2_CPU, 1, &one), *SS = f2_tensor_new(F2_F32, F2_CUDA, 1, &one);
  CHECK_OK(f2_rand_normal(P, seed, 0, 1));
  CHECK_OK(f2_rand_normal(M, seed + 1, 0, 0.01));
  CHECK_OK(f2_rand_uniform(V, seed + 2, 0, 1e-4));
  CHECK_OK(f2_rand_normal(G, seed + 3, 0, 1));
  f2_tensor *P0 = to(P, F2_CUDA), *M0 = to(M, F2_CUDA), *V0 = to(V, F2_CUDA);
  const float bad[3] = {NAN, INFINITY, -INFINITY};
  for (int k = 0; k < 3; k++) {
    set_hparams(fp(h), 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 1, 1.0f);
    fp(ss)[0] = bad[k];
    CHECK_OK(f2_copy(H, h));
    CHECK_OK(f2_copy(SS, ss));
    CHECK_OK(f2_adamw_step_dev(P, M, V, G, H, SS));
    CHECK(same_bits(P, P0) && same_bits(M, M0) && same_bits(V, V0), "sumsq %g changed the state on the GPU",
          (double)bad[k]);
  }
  f2_tensor *list[] = {P, M, V, G, h, H, ss, SS, P0, M0, V0};
  for (size_t i = 0; i < sizeof list / sizeof *list; i++) f2_tensor_free(list[i]);
}

/* Sum of squares of count tensors (sizes, dtypes and offsets from the seed) vs the CPU. */
static void test_sum_squares(uint64_t seed, int count, int64_t max_len) {
  f2_tensor **cpu = calloc((size_t)count, sizeof *cpu), **gpu = calloc((size_t)count, sizeof *gpu);
  uint64_t r = seed;
  int64_t total = 0;
  for (int i = 0; i < count; i++) {
    r = r * 6364136223846793005ull + 1442695040888963407ull;
    int64_t n = (int64_t)((r >> 24) % (uint64_t)(max_len + 1));
    if (i == 1) n = 0;
    int32_t dtype = (r >> 8) & 1 ? F2_BF16 : F2_F32;
    cpu[i] = vec_at(n, dtype, F2_CPU, 0);
    gpu[i] = vec_at(n, dtype, F2_CUDA, (int64_t)((r >> 12) % 4));
    if (n) CHECK_OK(f2_rand_normal(cpu[i], seed + (uint64_t)i, 0, 1 + i % 5));
    CHECK_OK(f2_copy(gpu[i], cpu[i]));
    total += n;
  }
  int64_t one = 1;
  f2_tensor *out = f2_tensor_new(F2_F32, F2_CPU, 1, &one), *OUT = f2_tensor_new(F2_F32, F2_CUDA, 1, &one);
  CHECK_OK(f2_sum_squares(out, (const f2_tensor *const *)cpu, count));
  CHECK_OK(f2_sum_squares(OUT, (const f2_tensor *const *)gpu, count));
  f2_tensor *a = to(OUT, F2_CPU);
  CHECK_OK(f2_sum_squares(OUT, (const f2_tensor *const *)gpu, count));
  f2_tensor *b = to(OUT, F2_CPU);
  if (a && b) {
    CHECK(memcmp(a->data, b->data, 4) == 0, "sum_squares of %d tensors not repeatable: %.9g vs %.9g", count, fp(a)[0],
          fp(b)[0]);
    CHECK(fabs(fp(a)[0] - fp(out)[0]) <= 1e-5 * fp(out)[0] + 1e-30,
          "sum_squares of %d tensors (%lld elements): gpu %.9g cpu %.9g (rel err %.3g)", count, (long long)total,
          fp(a)[0], fp(out)[0], fabs(fp(a)[0] - fp(out)[0]) / fp(out)[0]);
  }
  f2_tensor_free(a), f2_tensor_free(b), f2_tensor_free(out), f2_tensor_free(OUT);
  for (int i = 0; i < count; i++) f2_tensor_free(cpu[i]), f2_tensor_free(gpu[i]);
  free(cpu);
  free(gpu);
}

/* The same values at an aligned and at an unaligned address give the same bits. */
static void test_sum_squares_alignment(uint64_t seed, int32_t dtype) {
  int64_t n = 1000003, one = 1;
  f2_tensor *a = vec_at(n, dtype, F2_CUDA, 0), *b = vec_at(n, dtype, F2_CUDA, 1);
  f2_tensor *A = f2_tensor_new(F2_F32, F2_CUDA, 1, &one), *B = f2_tensor_new(F2_F32, F2_CUDA, 1, &one);
  CHECK_OK(f2_rand_normal(a, seed, 0, 1));
  CHECK_OK(f2_copy(b, a));
  const f2_tensor *la[1] = {a}, *lb[1] = {b};
  CHECK_OK(f2_sum_squares(A, la, 1));
  CHECK_OK(f2_sum_squares(B, lb, 1));
  f2_tensor *x = to(A, F2_CPU), *y = to(B, F2_CPU);
  if (x && y)
    CHECK(memcmp(x->data, y->data, 4) == 0, "sum_squares %s: aligned %.9g vs unaligned %.9g",
          dtype == F2_BF16 ? "bf16" : "f32", fp(x)[0], fp(y)[0]);
  f2_tensor *list[] = {a, b, A, B, x, y};
  for (size_t i = 0; i < sizeof list / sizeof *list; i++) f2_tensor_free(list[i]);
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Times reps calls (after one warm-up) and prints GB/s for bytes per call. */
#define TIME(label, bytes, call)                                                                      \
  do {                                                                                                \
    CHECK_OK(call);                                                                                   \
    CHECK_OK(f2_cuda_synchronize());                                                                  \
    double t0_ = now();                                                                               \
    for (int r_ = 0; r_ < reps; r_++) call;                                                           \
    CHECK_OK(f2_cuda_synchronize());                                                                  \
    double ms_ = (now() - t0_) / reps * 1e3;                                                          \
    printf("  %-34s %8.3f ms  %7.0f GB/s\n", label, ms_, (double)(bytes) / (ms_ * 1e-3) / 1e9);       \
  } while (0)

static void bench(int64_t n) {
  const int reps = 20;
  int64_t one = 1, nh = F2_ADAMW_HPARAMS;
  printf("bench over %lld parameters:\n", (long long)n);
  f2_tensor *P = vec_at(n, F2_F32, F2_CUDA, 0), *M = vec_at(n, F2_F32, F2_CUDA, 0), *V = vec_at(n, F2_F32, F2_CUDA, 0);
  f2_tensor *G = vec_at(n, F2_F32, F2_CUDA, 0), *Gb = vec_at(n, F2_BF16, F2_CUDA, 0);
  f2_tensor *h = f2_tensor_new(F2_F32, F2_CPU, 1, &nh), *H = f2_tensor_new(F2_F32, F2_CUDA, 1, &nh);
  f2_tensor *SS = f2_tensor_new(F2_F32, F2_CUDA, 1, &one);
  if (!P || !M || !V || !G || !Gb) {
    CHECK(0, "bench: could not allocate %lld parameters: %s", (long long)n, f2_last_error());
    return;
  }
  CHECK_OK(f2_rand_normal(P, 1, 0, 1));
  CHECK_OK(f2_fill(M, 0));
  CHECK_OK(f2_fill(V, 0));
  CHECK_OK(f2_rand_normal(G, 2, 0, 1e-3));
  CHECK_OK(f2_copy(Gb, G));
  set_hparams(fp(h), 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 10, 1.0f);
  CHECK_OK(f2_copy(H, h));
  const f2_tensor *lg[1] = {G}, *lgb[1] = {Gb};
  TIME("sum_squares f32", 4 * n, f2_sum_squares(SS, lg, 1));
  TIME("sum_squares bf16", 2 * n, f2_sum_squares(SS, lgb, 1));
  TIME("adamw_step_dev grad f32", 28 * n, f2_adamw_step_dev(P, M, V, G, H, SS));
  TIME("adamw_step_dev grad bf16", 26 * n, f2_adamw_step_dev(P, M, V, Gb, H, SS));
  f2_adamw_config c = {.lr = 1e-4f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                       .grad_scale = 1.0f, .step = 10};
  TIME("adamw_step (host scalars) grad f32", 28 * n, f2_adamw_step(P, M, V, G, &c));
  /* Unaligned: the element path. */
  f2_tensor *Pu = f2_tensor_narrow(P, 0, 1, n - 1), *Mu = f2_tensor_narrow(M, 0, 1, n - 1);
  f2_tensor *Vu = f2_tensor_narrow(V, 0, 1, n - 1), *Gu = f2_tensor_narrow(G, 0, 1, n - 1);
  const f2_tensor *lgu[1] = {Gu};
  TIME("sum_squares f32 unaligned", 4 * n, f2_sum_squares(SS, lgu, 1));
  TIME("adamw_step_dev f32 unaligned", 28 * n, f2_adamw_step_dev(Pu, Mu, Vu, Gu, H, SS));
  f2_tensor *list[] = {P, M, V, G, Gb, h, H, SS, Pu, Mu, Vu, Gu};
  for (size_t i = 0; i < sizeof list / sizeof *list; i++) f2_tensor_free(list[i]);
}

int main(void) {
  f2t_require_gpu();
  uint64_t seed = f2t_seed();
  const int64_t sizes[] = {1, 3, 4, 5, 1000, 4099, 123457, (1 << 20) + 3};
  const int64_t offsets[3][2] = {{0, 0}, {1, 1}, {0, 1}}; /* param/m/v, grad: aligned, all unaligned, grad only */
  for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++)
    for (int gd = 0; gd < 2; gd++)
      for (int o = 0; o < 3; o++)
        test_adamw(seed + si * 10 + (uint64_t)gd, sizes[si], gd ? F2_BF16 : F2_F32, offsets[o][0], offsets[o][1]);
  test_skip(seed);

  test_sum_squares(seed, 1, 5000000);
  test_sum_squares(seed + 1, 3, 100);
  test_sum_squares(seed + 2, 70, 40000);   /* three launches of up to 32 tensors */
  test_sum_squares(seed + 3, 33, 700000);
  test_sum_squares(seed + 4, 0, 1);         /* no tensors: 0 */
  test_sum_squares_alignment(seed, F2_F32);
  test_sum_squares_alignment(seed, F2_BF16);

  const char *b = getenv("F2_BENCH");
  if (b && *b && strcmp(b, "0") != 0) {
    const char *ns = getenv("F2_BENCH_N");
    bench(ns ? strtoll(ns, NULL, 10) : 134515008); /* SmolLM2-135M's parameters */
  }
  return f2t_done();
}
