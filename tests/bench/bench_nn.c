/* bench_nn.c — GB/s of the row and elementwise model ops (kernels/nn.cu) at SmolLM2-135M training shapes
 * (B x T = 8 x 2048 = 16384 tokens, hidden 576, intermediate 1536, vocab 49152; bf16 activations, f32
 * weights and weight gradients), against a device-to-device copy measured in the same run. Bytes are
 * the least each op must move (every input read once, every output written once), so "x copy" near 1
 * means the op runs at the copy's bandwidth. Times are GPU times from the kernel-family profiler (CUDA
 * events around each op, as bench_train's profile); the host-timed mean per call (launch overhead
 * included) is printed beside. The GPU is warmed up first (clocks ramp up under load: a cold start made
 * the first rows of an earlier run 3-5x slower than the training profile). The main table runs the
 * RMSNorm variant F2_NORM_VARIANT names at start (kernels/nn.cu; unset: the defaults); a second table
 * then times every variant of each RMSNorm op side by side. Usage: bench_nn [iterations] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "f2.h"

enum { TOKENS = 16384, HIDDEN = 576, INTER = 1536, VOCAB = 49152, HEADS = 9, KV_HEADS = 3, HEAD_DIM = 64,
       BATCH = 8, SEQ = 2048 };

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
  fprintf(stderr, "bench_nn: %s: %s\n", what, f2_last_error());
  exit(1);
}
#define TRY(expr) do { if ((expr) != F2_OK) die(#expr); } while (0)

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Everything the benchmarks touch, made once. */
static struct {
  f2_tensor *x, *a, *b, *sum, *out, *dy, *dx, *w, *dw, *rstd;   /* [TOKENS, HIDDEN] and [HIDDEN] */
  f2_tensor *gate, *up, *act, *dact, *dgate, *dup;              /* [TOKENS, INTER] */
  f2_tensor *q, *k, *cos_t, *sin_t;                             /* [B, T, H, Dh], tables [T, Dh/2] */
  f2_tensor *emb, *demb, *ids_uniform, *ids_zipf, *emb_out;     /* [VOCAB, HIDDEN] f32, ids [TOKENS] */
  f2_tensor *logits, *dlogits, *targets, *loss, *losses;       /* [TOKENS, VOCAB] bf16 */
  f2_tensor *copy_src, *copy_dst;
  f2_tensor *down_w, *down_out;                                 /* [HIDDEN, INTER] bf16, [TOKENS, HIDDEN] */
} T;

typedef void (*bench_fn)(void);
/* GPU ms of one call: iters calls with the profiler on, every family's total over iters (an op may run
 * more than one family, e.g. a copy inside). */
static double device_ms(bench_fn fn, int iters) {
  static char report[1 << 14];
  TRY(f2_cuda_profile_report(report, sizeof report));   /* drops anything recorded before */
  TRY(f2_cuda_profile(1));
  for (int i = 0; i < iters; i++) fn();
  TRY(f2_cuda_profile_report(report, sizeof report));
  TRY(f2_cuda_profile(0));
  double total = 0;
  for (char *line = report; *line;) {
    char name[128];
    long calls;
    double ms;
    if (sscanf(line, "%127s %ld %lf", name, &calls, &ms) == 3) total += ms;
    char *next = strchr(line, '\n');
    if (!next) break;
    line = next + 1;
  }
  return total / iters;
}

/* Median over 5 reps of the mean host time of iters calls (ms), the device synchronized around each
 * rep; *gpu_ms gets the GPU time per call (device_ms). */
static double time_ms(bench_fn fn, int iters, double *gpu_ms) {
  enum { REPS = 5 };
  double t[REPS];
  fn();
  TRY(f2_cuda_synchronize());
  for (int r = 0; r < REPS; r++) {
    double t0 = now();
    for (int i = 0; i < iters; i++) fn();
    TRY(f2_cuda_synchronize());
    t[r] = (now() - t0) * 1e3 / iters;
  }
  qsort(t, REPS, sizeof *t, compare_doubles);
  if (gpu_ms) *gpu_ms = device_ms(fn, iters);
  return t[REPS / 2];
}

static void run_copy(void) { TRY(f2_copy(T.copy_dst, T.copy_src)); }
static void run_norm(void) { TRY(f2_rmsnorm_forward(T.out, T.rstd, T.x, T.w, 1e-5f)); }
static void run_norm_residual(void) { TRY(f2_rmsnorm_residual_forward(T.sum, T.out, T.rstd, T.a, T.b, T.w, 1e-5f)); }
static void run_norm_backward(void) { TRY(f2_rmsnorm_backward(T.dx, T.dw, T.dy, T.x, T.w, T.rstd)); }
static void run_norm_backward_add(void) { TRY(f2_rmsnorm_backward_add(T.dx, T.dw, T.dy, T.x, T.w, T.rstd)); }
static void run_norm_backward_nodw(void) { TRY(f2_rmsnorm_backward(T.dx, NULL, T.dy, T.x, T.w, T.rstd)); }
static void run_swiglu(void) { TRY(f2_swiglu_forward(T.act, T.gate, T.up)); }
static void run_swiglu_backward(void) { TRY(f2_swiglu_backward(T.dgate, T.dup, T.dact, T.gate, T.up)); }
static void run_rope_q(void) { TRY(f2_rope_forward(T.q, T.q, T.cos_t, T.sin_t)); }
static void run_rope_k(void) { TRY(f2_rope_forward(T.k, T.k, T.cos_t, T.sin_t)); }
static void run_emb(void) { TRY(f2_embedding_forward(T.emb_out, T.emb, T.ids_uniform)); }
static void run_emb_backward(void) { TRY(f2_embedding_backward(T.demb, T.dy, T.ids_uniform)); }
static void run_emb_backward_zipf(void) { TRY(f2_embedding_backward(T.demb, T.dy, T.ids_zipf)); }
static void run_ce(void) { TRY(f2_cross_entropy_forward(T.loss, T.losses, T.logits, T.targets, -100)); }
/* A block's down projection and residual add: h = act @ W^T then h + x (two ops), or one f2_matmul_add. */
static void run_down_then_add(void) {
  TRY(f2_matmul(T.down_out, T.act, T.down_w, 0, 1, 1.0f, 0.0f));
  TRY(f2_binary(T.down_out, T.down_out, T.x, F2_OP_ADD));
}
static void run_down_add(void) { TRY(f2_matmul_add(T.down_out, T.act, T.down_w, 0, 1, 1.0f, T.x, 1.0f)); }
static void run_ce_backward(void) { TRY(f2_cross_entropy_backward(T.dlogits, T.logits, T.targets, -100, 1.0f)); }

static f2_tensor *tensor(int32_t dtype, int ndim, int64_t a, int64_t b, int64_t c, int64_t d) {
  int64_t shape[4] = {a, b, c, d};
  f2_tensor *t = f2_tensor_new(dtype, F2_CUDA, ndim, shape);
  if (!t) die("allocating a tensor");
  return t;
}
static f2_tensor *randn(int32_t dtype, int ndim, int64_t a, int64_t b, int64_t c, int64_t d, uint64_t seed) {
  f2_tensor *t = tensor(dtype, ndim, a, b, c, d);
  TRY(f2_rand_normal(t, seed, 0.0, 1.0));
  return t;
}
static f2_tensor *ids_on_gpu(const int32_t *v, int64_t n) {
  f2_tensor *h = f2_tensor_new(F2_I32, F2_CPU, 1, &n), *g = tensor(F2_I32, 1, n, 0, 0, 0);
  if (!h) die("allocating ids");
  memcpy(h->data, v, (size_t)n * sizeof *v);
  TRY(f2_copy(g, h));
  f2_tensor_free(h);
  return g;
}

static void setup(void) {
  T.x = randn(F2_BF16, 2, TOKENS, HIDDEN, 0, 0, 1);
  T.a = randn(F2_BF16, 2, TOKENS, HIDDEN, 0, 0, 2);
  T.b = randn(F2_BF16, 2, TOKENS, HIDDEN, 0, 0, 3);
  T.dy = randn(F2_BF16, 2, TOKENS, HIDDEN, 0, 0, 4);
  T.sum = tensor(F2_BF16, 2, TOKENS, HIDDEN, 0, 0);
  T.out = tensor(F2_BF16, 2, TOKENS, HIDDEN, 0, 0);
  T.dx = tensor(F2_BF16, 2, TOKENS, HIDDEN, 0, 0);
  TRY(f2_fill(T.dx, 0.0));
  T.w = randn(F2_F32, 1, HIDDEN, 0, 0, 0, 5);
  T.dw = tensor(F2_F32, 1, HIDDEN, 0, 0, 0);
  TRY(f2_fill(T.dw, 0.0));
  T.rstd = tensor(F2_F32, 1, TOKENS, 0, 0, 0);
  T.gate = randn(F2_BF16, 2, TOKENS, INTER, 0, 0, 6);
  T.up = randn(F2_BF16, 2, TOKENS, INTER, 0, 0, 7);
  T.dact = randn(F2_BF16, 2, TOKENS, INTER, 0, 0, 8);
  T.act = tensor(F2_BF16, 2, TOKENS, INTER, 0, 0);
  T.dgate = tensor(F2_BF16, 2, TOKENS, INTER, 0, 0);
  T.dup = tensor(F2_BF16, 2, TOKENS, INTER, 0, 0);
  T.q = randn(F2_BF16, 4, BATCH, SEQ, HEADS, HEAD_DIM, 9);
  T.k = randn(F2_BF16, 4, BATCH, SEQ, KV_HEADS, HEAD_DIM, 10);
  f2_tensor *inv = tensor(F2_F32, 1, HEAD_DIM / 2, 0, 0, 0);
  TRY(f2_rand_uniform(inv, 11, 0.0, 1.0));
  T.cos_t = tensor(F2_F32, 2, SEQ, HEAD_DIM / 2, 0, 0);
  T.sin_t = tensor(F2_F32, 2, SEQ, HEAD_DIM / 2, 0, 0);
  TRY(f2_rope_tables(T.cos_t, T.sin_t, inv));
  f2_tensor_free(inv);
  T.emb = randn(F2_F32, 2, VOCAB, HIDDEN, 0, 0, 12);
  T.demb = tensor(F2_F32, 2, VOCAB, HIDDEN, 0, 0);
  TRY(f2_fill(T.demb, 0.0));
  T.emb_out = tensor(F2_BF16, 2, TOKENS, HIDDEN, 0, 0);
  /* Uniform ids, and Zipf-like ones (id k with weight 1 / (k + 1), so id 0 takes ~9% of the tokens as
   * a frequent word or padding would). */
  static int32_t ids[TOKENS];
  uint64_t s = 12345;
  double h = 0;
  for (int k = 0; k < VOCAB; k++) h += 1.0 / (k + 1);
  for (int i = 0; i < TOKENS; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    ids[i] = (int32_t)((s >> 33) % VOCAB);
  }
  T.ids_uniform = ids_on_gpu(ids, TOKENS);
  for (int i = 0; i < TOKENS; i++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    double u = (double)(s >> 11) * 0x1.0p-53 * h, c = 0;
    int k = 0;
    while (k < VOCAB - 1 && (c += 1.0 / (k + 1)) < u) k++;
    ids[i] = k;
  }
  T.ids_zipf = ids_on_gpu(ids, TOKENS);
  T.logits = randn(F2_BF16, 2, TOKENS, VOCAB, 0, 0, 13);
  T.dlogits = tensor(F2_BF16, 2, TOKENS, VOCAB, 0, 0);
  for (int i = 0; i < TOKENS; i++) ids[i] = i % 50 == 0 ? -100 : (int32_t)((i * 7919) % VOCAB);
  T.targets = ids_on_gpu(ids, TOKENS);
  T.loss = tensor(F2_F32, 1, 1, 0, 0, 0);
  T.losses = tensor(F2_F32, 1, TOKENS, 0, 0, 0);
  T.down_w = randn(F2_BF16, 2, HIDDEN, INTER, 0, 0, 15);
  T.down_out = tensor(F2_BF16, 2, TOKENS, HIDDEN, 0, 0);
  T.copy_src = randn(F2_F32, 1, 128ll << 20, 0, 0, 0, 14);
  T.copy_dst = tensor(F2_F32, 1, 128ll << 20, 0, 0, 0);
}

int main(int argc, char **argv) {
  int iters = argc > 1 ? atoi(argv[1]) : 20;
  if (iters < 1) iters = 1;
  if (f2_cuda_device_count() < 1) {
    printf("skipped: no usable GPU (%s)\n", f2_cuda_compiled() ? "CUDA build" : "built without CUDA");
    return 0;
  }
  char info[4096];
  f2_build_info(info, sizeof info);
  printf("%s", info);
  setup();
  TRY(f2_rmsnorm_forward(T.out, T.rstd, T.x, T.w, 1e-5f));   /* rstd for the backwards */

  /* Warm-up: ~1 s of copies, so the clocks are up before anything is timed. */
  double t0 = now();
  while (now() - t0 < 1.0) {
    for (int i = 0; i < 20; i++) run_copy();
    TRY(f2_cuda_synchronize());
  }
  double copy_ms = 0;
  time_ms(run_copy, iters, &copy_ms);
  double copy_gbs = 2.0 * (512ll << 20) / (copy_ms * 1e-3) / 1e9;
  printf("\ndevice-to-device copy (512 MiB): %.0f GB/s (read + write)\n\n", copy_gbs);

  const double nh = (double)TOKENS * HIDDEN, ni = (double)TOKENS * INTER, nq = (double)BATCH * SEQ * HEADS * HEAD_DIM;
  const double nk = nq / HEADS * KV_HEADS, nv = (double)TOKENS * VOCAB, bf = 2, f32 = 4;
  struct {
    const char *op, *shape;
    bench_fn fn;
    double bytes;
  } rows[] = {
      {"rmsnorm forward", "16384x576 bf16, w f32", run_norm, 2 * nh * bf + TOKENS * f32},
      {"rmsnorm residual forward", "16384x576 bf16", run_norm_residual, 4 * nh * bf + TOKENS * f32},
      {"rmsnorm backward (dx, dw)", "16384x576 bf16", run_norm_backward, 3 * nh * bf + TOKENS * f32},
      {"rmsnorm backward (dx only)", "16384x576 bf16", run_norm_backward_nodw, 3 * nh * bf + TOKENS * f32},
      {"rmsnorm backward_add (dx +=, dw)", "16384x576 bf16", run_norm_backward_add, 4 * nh * bf + TOKENS * f32},
      {"swiglu forward", "16384x1536 bf16", run_swiglu, 3 * ni * bf},
      {"swiglu backward", "16384x1536 bf16", run_swiglu_backward, 5 * ni * bf},
      {"rope forward q (in place)", "8x2048x9x64 bf16", run_rope_q, 2 * nq * bf},
      {"rope forward k (in place)", "8x2048x3x64 bf16", run_rope_k, 2 * nk * bf},
      {"embedding forward", "16384 ids, 49152x576 f32 -> bf16", run_emb, nh * (f32 + bf)},
      {"embedding backward, uniform ids", "16384 ids, dout bf16, dw f32", run_emb_backward, nh * (bf + 2 * f32)},
      {"embedding backward, Zipf ids", "16384 ids, dout bf16, dw f32", run_emb_backward_zipf, nh * (bf + 2 * f32)},
      {"cross-entropy forward", "16384x49152 bf16", run_ce, nv * bf},
      {"cross-entropy backward", "16384x49152 bf16", run_ce_backward, 2 * nv * bf},
  };
  printf("| op | shape | GPU us | host us/call | MB (least) | GB/s | x copy |\n|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    double ms = 0, host_ms = time_ms(rows[i].fn, iters, &ms), gbs = rows[i].bytes / (ms * 1e-3) / 1e9;
    printf("| %s | %s | %.1f | %.1f | %.1f | %.0f | %.2f |\n", rows[i].op, rows[i].shape, ms * 1e3, host_ms * 1e3,
           rows[i].bytes / 1e6, gbs, gbs / copy_gbs);
  }

  /* Each RMSNorm op under every variant (F2_NORM_VARIANT set in turn, then restored). */
  enum { FWD_VARIANTS = 2, BWD_VARIANTS = 2 };
  const char *env = getenv("F2_NORM_VARIANT");
  char saved[256];
  snprintf(saved, sizeof saved, "%s", env ? env : "");
  printf("\nRMSNorm variants (F2_NORM_VARIANT fwd=N for the forwards, bwd=N for the backwards; at start \"%s\"): "
         "GPU us (GB/s)\n| op |", saved);
  for (int v = 0; v < BWD_VARIANTS; v++) printf(" %d |", v);
  printf("\n|---|");
  for (int v = 0; v < BWD_VARIANTS; v++) printf("---|");
  printf("\n");
  for (size_t i = 0; i < 5; i++) {   /* the first five rows: the RMSNorm ops */
    int forward = i < 2;
    printf("| %s |", rows[i].op);
    for (int v = 0; v < BWD_VARIANTS; v++) {
      if (forward && v >= FWD_VARIANTS) {
        printf(" - |");
        continue;
      }
      char spec[32];
      snprintf(spec, sizeof spec, forward ? "fwd=%d" : "bwd=%d", v);
      if (setenv("F2_NORM_VARIANT", spec, 1) != 0) {
        fprintf(stderr, "bench_nn: setenv failed\n");
        return 1;
      }
      double ms = 0;
      time_ms(rows[i].fn, iters, &ms);
      printf(" %.1f (%.0f) |", ms * 1e3, rows[i].bytes / (ms * 1e-3) / 1e9);
    }
    printf("\n");
  }
  if (env)
    setenv("F2_NORM_VARIANT", saved, 1);
  else
    unsetenv("F2_NORM_VARIANT");

  double two_ms = 0, one_ms = 0;
  time_ms(run_down_then_add, iters, &two_ms);
  time_ms(run_down_add, iters, &one_ms);
  printf("\ndown projection + residual, [16384, 1536] @ [576, 1536]^T + [16384, 576] bf16: matmul then add %.1f us, "
         "matmul_add %.1f us\n", two_ms * 1e3, one_ms * 1e3);
  return 0;
}
