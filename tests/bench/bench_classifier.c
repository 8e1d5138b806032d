/* bench_classifier.c — the fused LM head + cross-entropy (f2_lm_head_cross_entropy) at SmolLM2-135M's
 * training shape, N x D x V = 16384 x 576 x 49152 bf16 (B x T = 8 x 2048), forward + backward and forward
 * only, next to its 3 GEMMs alone (f2_matmul on the same chunks: logits, dh, dweight), each GEMM alone,
 * and the memory floor of the row kernel (2 reads + 1 write of the chunk's bf16 logits at the measured
 * device-to-device copy bandwidth). Then the fused op at other chunk sizes, f32, and Qwen3-4B's head
 * (D = 2560, V = 151936) at 4096 rows. Prints tables. Without a GPU: CPU timing of a small case.
 * Usage: bench_classifier [iterations] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "f2.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
  fprintf(stderr, "bench_classifier: %s: %s\n", what, f2_last_error());
  exit(1);
}
#define TRY(expr) do { if ((expr) != F2_OK) die(#expr); } while (0)

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Median over reps of the mean time of iters calls of fn (ms), the device synchronized around each. */
typedef void (*bench_fn)(void *ctx);
static double time_ms(bench_fn fn, void *ctx, int iters, int gpu) {
  enum { REPS = 5 };
  double t[REPS];
  fn(ctx); /* warm-up (and cuBLASLt's plans) */
  if (gpu) TRY(f2_cuda_synchronize());
  for (int r = 0; r < REPS; r++) {
    double t0 = now();
    for (int i = 0; i < iters; i++) fn(ctx);
    if (gpu) TRY(f2_cuda_synchronize());
    t[r] = (now() - t0) * 1e3 / iters;
  }
  qsort(t, REPS, sizeof *t, compare_doubles);
  return t[REPS / 2];
}

static f2_tensor *tensor(int32_t dtype, int32_t device, int32_t ndim, int64_t a, int64_t b) {
  int64_t shape[2] = {a, b};
  f2_tensor *t = f2_tensor_new(dtype, device, ndim, shape);
  if (!t) die("allocating a tensor");
  return t;
}

/* The op's operands. which: what to run (below). */
enum { FUSED = 0, FUSED_FWD, GEMMS, GEMM_LOGITS, GEMM_DH, GEMM_DWEIGHT };
typedef struct ctx {
  f2_tensor *h, *w, *targets, *loss, *losses, *dh, *dw, *logits;
  int64_t rows, vocab, chunk;
  int which;
} ctx;

/* The GEMMs of the fused op alone, on the same chunks of rows (logits in h's dtype, dweight f32). */
static void gemms(ctx *c, int logits, int dh, int dw) {
  for (int64_t r0 = 0; r0 < c->rows; r0 += c->chunk) {
    int64_t n = c->rows - r0 < c->chunk ? c->rows - r0 : c->chunk;
    f2_tensor *hv = f2_tensor_narrow(c->h, 0, r0, n), *dhv = f2_tensor_narrow(c->dh, 0, r0, n);
    f2_tensor *lv = f2_tensor_narrow(c->logits, 0, 0, n);
    if (!hv || !dhv || !lv) die("narrow");
    if (logits) TRY(f2_matmul(lv, hv, c->w, 0, 1, 1.0f, 0.0f));
    if (dw) TRY(f2_matmul(c->dw, lv, hv, 1, 0, 1.0f, 1.0f));
    if (dh) TRY(f2_matmul(dhv, lv, c->w, 0, 0, 1.0f, 0.0f));
    f2_tensor_free(hv), f2_tensor_free(dhv), f2_tensor_free(lv);
  }
}

static void run(void *p) {
  ctx *c = p;
  switch (c->which) {
    case FUSED:
      TRY(f2_lm_head_cross_entropy(c->loss, c->losses, c->dh, c->dw, c->h, c->w, c->targets, -100, 1.0f, c->chunk));
      break;
    case FUSED_FWD:
      TRY(f2_lm_head_cross_entropy(c->loss, c->losses, NULL, NULL, c->h, c->w, c->targets, -100, 1.0f, c->chunk));
      break;
    case GEMMS: gemms(c, 1, 1, 1); break;
    case GEMM_LOGITS: gemms(c, 1, 0, 0); break;
    case GEMM_DH: gemms(c, 0, 1, 0); break;
    default: gemms(c, 0, 0, 1); break;
  }
}

/* The chunk the op picks for chunk_rows 0 (runtime/classifier.c): the largest power of two of rows whose
 * logits (h's dtype on a GPU, f32 on the CPU) fit 256 MiB. */
static int64_t default_chunk(int64_t vocab, int64_t elem_bytes) {
  int64_t fit = (256ll << 20) / (vocab * elem_bytes), c = 1;
  while (c * 2 <= fit) c *= 2;
  return c;
}

static void setup(ctx *c, int32_t dtype, int32_t device, int64_t rows, int64_t dim, int64_t vocab, int64_t chunk) {
  memset(c, 0, sizeof *c);
  c->rows = rows, c->vocab = vocab;
  c->chunk = chunk ? chunk : default_chunk(vocab, device == F2_CUDA ? (dtype == F2_F32 ? 4 : 2) : 4);
  if (c->chunk > rows) c->chunk = rows;
  c->h = tensor(dtype, device, 2, rows, dim);
  c->w = tensor(dtype, device, 2, vocab, dim);
  c->dh = tensor(dtype, device, 2, rows, dim);
  c->dw = tensor(F2_F32, device, 2, vocab, dim);
  c->loss = tensor(F2_F32, device, 1, 1, 0);
  c->losses = tensor(F2_F32, device, 1, rows, 0);
  c->logits = tensor(dtype, device, 2, c->chunk, vocab);
  TRY(f2_rand_normal(c->h, 1, 0, 1));
  TRY(f2_rand_normal(c->w, 2, 0, 2.0 / sqrt((double)dim)));
  TRY(f2_fill(c->dw, 0));
  TRY(f2_rand_normal(c->logits, 4, 0, 1e-3));   /* finite values for the GEMM-only runs */
  /* Targets uniform over the vocabulary (the row kernel's work does not depend on them). */
  f2_tensor *t = tensor(F2_I32, F2_CPU, 1, rows, 0);
  for (int64_t i = 0; i < rows; i++) ((int32_t *)t->data)[i] = (int32_t)((i * 2654435761u) % (uint64_t)vocab);
  c->targets = tensor(F2_I32, device, 1, rows, 0);
  TRY(f2_copy(c->targets, t));
  f2_tensor_free(t);
}

static void teardown(ctx *c) {
  f2_tensor *all[] = {c->h, c->w, c->targets, c->loss, c->losses, c->dh, c->dw, c->logits};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) f2_tensor_free(all[i]);
}

static double measure(ctx *c, int which, int iters, int gpu) {
  c->which = which;
  return time_ms(run, c, iters, gpu);
}

typedef struct copy_ctx { f2_tensor *dst, *src; } copy_ctx;
static void run_copy(void *p) {
  copy_ctx *c = p;
  TRY(f2_copy(c->dst, c->src));
}

int main(int argc, char **argv) {
  int iters = argc > 1 ? atoi(argv[1]) : 10;
  if (iters < 1) iters = 1;
  static ctx c;
  if (f2_cuda_device_count() < 1) {
    printf("GPU skipped: no usable GPU (%s). CPU reference, 128 x 256 x 4096 f32:\n",
           f2_cuda_compiled() ? "CUDA build" : "built without CUDA");
    setup(&c, F2_F32, F2_CPU, 128, 256, 4096, 0);
    double flops = 2.0 * 128 * 256 * 4096;
    double fused = measure(&c, FUSED, 1, 0), fwd = measure(&c, FUSED_FWD, 1, 0), g = measure(&c, GEMMS, 1, 0);
    printf("| what | ms | GFLOP/s |\n|---|---|---|\n");
    printf("| fused fwd+bwd | %.1f | %.1f |\n| fused fwd | %.1f | %.1f |\n| 3 GEMMs alone | %.1f | %.1f |\n", fused,
           3 * flops / fused / 1e6, fwd, flops / fwd / 1e6, g, 3 * flops / g / 1e6);
    teardown(&c);
    return 0;
  }
  char info[4096];
  f2_build_info(info, sizeof info);
  printf("%s", info);

  /* Copy bandwidth: a 512 MiB f32 device-to-device copy, bytes read + written. */
  copy_ctx cp = {tensor(F2_F32, F2_CUDA, 1, 128ll << 20, 0), tensor(F2_F32, F2_CUDA, 1, 128ll << 20, 0)};
  TRY(f2_fill(cp.src, 1.0));
  double copy_ms = time_ms(run_copy, &cp, iters, 1);
  double bandwidth = 2.0 * (512ll << 20) / (copy_ms * 1e-3);
  f2_tensor_free(cp.dst), f2_tensor_free(cp.src);

  const int64_t N = 16384, D = 576, V = 49152;
  const double flops = 2.0 * N * D * V;   /* one of the 3 GEMMs */
  setup(&c, F2_BF16, F2_CUDA, N, D, V, 0);
  double fused = measure(&c, FUSED, iters, 1), fwd = measure(&c, FUSED_FWD, iters, 1);
  double g3 = measure(&c, GEMMS, iters, 1), gl = measure(&c, GEMM_LOGITS, iters, 1);
  double gdh = measure(&c, GEMM_DH, iters, 1), gdw = measure(&c, GEMM_DWEIGHT, iters, 1);
  double floor_bwd = 3.0 * N * V * 2 / bandwidth * 1e3, floor_fwd = 1.0 * N * V * 2 / bandwidth * 1e3;
  printf("\nSmolLM2-135M LM head: N x D x V = %lld x %lld x %lld bf16, chunks of %lld rows; device-to-device copy "
         "%.0f GB/s\n\n",
         (long long)N, (long long)D, (long long)V, (long long)c.chunk, bandwidth / 1e9);
  printf("| what | ms | TFLOP/s | vs its GEMMs |\n|---|---|---|---|\n");
  printf("| fused fwd+bwd | %.3f | %.0f | %.2fx |\n", fused, 3 * flops / fused / 1e9, fused / g3);
  printf("| 3 GEMMs alone | %.3f | %.0f | |\n", g3, 3 * flops / g3 / 1e9);
  printf("| fused fwd only | %.3f | %.0f | %.2fx |\n", fwd, flops / fwd / 1e9, fwd / gl);
  printf("| logits GEMM (h W^T, bf16 out) | %.3f | %.0f | |\n", gl, flops / gl / 1e9);
  printf("| dh GEMM (dlogits W) | %.3f | %.0f | |\n", gdh, flops / gdh / 1e9);
  printf("| dweight GEMM (+= dlogits^T h, f32) | %.3f | %.0f | |\n", gdw, flops / gdw / 1e9);
  printf("| rest of fwd+bwd (row kernels, count, mean) | %.3f | | floor %.3f (2 reads + 1 write) |\n", fused - g3,
         floor_bwd);
  printf("| rest of fwd only | %.3f | | floor %.3f (1 read) |\n", fwd - gl, floor_fwd);
  teardown(&c);

  printf("\nChunk size (fused fwd+bwd, bf16, same shape):\n\n| chunk rows | logits MiB | ms | TFLOP/s |\n|---|---|---|---|\n");
  const int64_t chunks[] = {512, 1024, 2048, 4096, 8192};
  for (size_t i = 0; i < sizeof chunks / sizeof *chunks; i++) {
    setup(&c, F2_BF16, F2_CUDA, N, D, V, chunks[i]);
    double ms = measure(&c, FUSED, iters, 1);
    printf("| %lld | %.0f | %.3f | %.0f |\n", (long long)chunks[i], chunks[i] * V * 2.0 / (1 << 20), ms,
           3 * flops / ms / 1e9);
    teardown(&c);
  }

  printf("\nOther dtypes and shapes (default chunk):\n\n| what | ms | TFLOP/s | 3 GEMMs alone, ms |\n|---|---|---|---|\n");
  setup(&c, F2_F32, F2_CUDA, 4096, D, V, 0);
  double f32_ms = measure(&c, FUSED, iters, 1), f32_g = measure(&c, GEMMS, iters, 1);
  printf("| SmolLM2 f32, 4096 rows | %.3f | %.1f | %.3f |\n", f32_ms, 3 * 2.0 * 4096 * D * V / f32_ms / 1e9, f32_g);
  teardown(&c);
  const int64_t QN = 4096, QD = 2560, QV = 151936;
  setup(&c, F2_BF16, F2_CUDA, QN, QD, QV, 0);
  double q_ms = measure(&c, FUSED, iters, 1), q_g = measure(&c, GEMMS, iters, 1);
  printf("| Qwen3-4B bf16, %lld x %lld x %lld | %.3f | %.0f | %.3f |\n", (long long)QN, (long long)QD, (long long)QV,
         q_ms, 3 * 2.0 * QN * QD * QV / q_ms / 1e9, q_g);
  teardown(&c);
  return 0;
}
