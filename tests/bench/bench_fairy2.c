/* bench_fairy2.c — time to quantize-and-rebuild all 210 linear layers of SmolLM2-135M (fp32 R in, bf16
 * R_hat out, per-tensor scales) for T = 1 and 2, next to the memory-bandwidth floor (from a measured
 * device-to-device copy) and to one training step's GEMM time at 16384 tokens (bf16 f2_matmul: forward,
 * grad-input and grad-weight of every layer). Prints a table. Without a GPU: CPU timing of one block.
 * Usage: bench_fairy2 [iterations] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "f2.h"

enum { BLOCKS = 30, PER_BLOCK = 7, LAYERS = BLOCKS * PER_BLOCK, TOKENS = 16384 };
/* q, k, v, o, gate, up, down as (out, in). */
static const int64_t shapes[PER_BLOCK][2] = {{576, 576}, {192, 576}, {192, 576}, {576, 576},
                                             {1536, 576}, {1536, 576}, {576, 1536}};

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
  fprintf(stderr, "bench_fairy2: %s: %s\n", what, f2_last_error());
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
  fn(ctx); /* warm-up */
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

typedef struct quant_ctx {
  f2_tensor *r[LAYERS], *r_hat[LAYERS], *scales[LAYERS], *codes[LAYERS];
  int32_t count;
  f2_quant_config cfg;
  int per_layer;
} quant_ctx;

static void run_quant(void *p) {
  quant_ctx *q = p;
  if (q->per_layer) {
    for (int32_t l = 0; l < q->count; l++) TRY(f2_fairy2_quantize(q->r_hat[l], q->scales[l], NULL, q->r[l], &q->cfg));
  } else {
    TRY(f2_fairy2_quantize_batch(q->r_hat, q->scales, q->codes, (const f2_tensor *const *)q->r, q->count, &q->cfg));
  }
}

typedef struct copy_ctx { f2_tensor *dst, *src; } copy_ctx;
static void run_copy(void *p) {
  copy_ctx *c = p;
  TRY(f2_copy(c->dst, c->src));
}

typedef struct gemm_ctx {
  f2_tensor *x[PER_BLOCK], *w[PER_BLOCK], *y[PER_BLOCK], *dx[PER_BLOCK], *dw[PER_BLOCK];
} gemm_ctx;
/* One block's forward, grad-input and grad-weight GEMMs (x30 for the model). */
static void run_gemm(void *p) {
  gemm_ctx *g = p;
  for (int k = 0; k < PER_BLOCK; k++) {
    TRY(f2_matmul(g->y[k], g->x[k], g->w[k], 0, 1, 1.0f, 0.0f));    /* y = x W^T */
    TRY(f2_matmul(g->dx[k], g->y[k], g->w[k], 0, 0, 1.0f, 0.0f));   /* dx = dy W */
    TRY(f2_matmul(g->dw[k], g->y[k], g->x[k], 1, 0, 1.0f, 1.0f));   /* dW += dy^T x */
  }
}

static f2_tensor *tensor(int32_t dtype, int32_t device, int32_t ndim, int64_t a, int64_t b, int64_t c) {
  int64_t shape[3] = {a, b, c};
  f2_tensor *t = f2_tensor_new(dtype, device, ndim, shape);
  if (!t) die("allocating a tensor");
  return t;
}

static void setup_quant(quant_ctx *q, int32_t device, int32_t count, int stages) {
  memset(q, 0, sizeof *q);
  q->count = count;
  q->cfg = (f2_quant_config){stages, F2_FAIRY2_PER_TENSOR, 0, 1};
  for (int32_t l = 0; l < count; l++) {
    const int64_t *s = shapes[l % PER_BLOCK];
    q->r[l] = tensor(F2_F32, device, 2, s[0], s[1], 0);
    TRY(f2_rand_normal(q->r[l], 1234 + (uint64_t)l, 0.0, 0.02));
    q->r_hat[l] = tensor(F2_BF16, device, 2, s[0], s[1], 0);
  }
}

static void resize_scales(quant_ctx *q, int32_t device, int stages) {
  q->cfg.stages = stages;
  for (int32_t l = 0; l < q->count; l++) {
    f2_tensor_free(q->scales[l]);
    q->scales[l] = tensor(F2_F32, device, 3, stages, 4, 1);
  }
}

int main(int argc, char **argv) {
  int iters = argc > 1 ? atoi(argv[1]) : 20;
  if (iters < 1) iters = 1;
  static quant_ctx q;
  if (f2_cuda_device_count() < 1) {
    printf("GPU skipped: no usable GPU (%s). CPU reference, one block of 7 layers:\n",
           f2_cuda_compiled() ? "CUDA build" : "built without CUDA");
    setup_quant(&q, F2_CPU, PER_BLOCK, 1);
    printf("| T | one block, ms | x30 (all 210 layers), ms |\n|---|---|---|\n");
    for (int t = 1; t <= 2; t++) {
      resize_scales(&q, F2_CPU, t);
      double ms = time_ms(run_quant, &q, 1, 0);
      printf("| %d | %.1f | %.0f |\n", t, ms, 30 * ms);
    }
    return 0;
  }
  char info[4096];
  f2_build_info(info, sizeof info);
  printf("%s", info);

  setup_quant(&q, F2_CUDA, LAYERS, 1);
  double params = 0;
  for (int l = 0; l < LAYERS; l++) params += (double)shapes[l % PER_BLOCK][0] * shapes[l % PER_BLOCK][1];
  double r_bytes = params * 4, hat_bytes = params * 2;

  /* Copy bandwidth: a 512 MiB f32 device-to-device copy, bytes read + written. */
  copy_ctx c = {tensor(F2_F32, F2_CUDA, 1, 128ll << 20, 0, 0), tensor(F2_F32, F2_CUDA, 1, 128ll << 20, 0, 0)};
  TRY(f2_fill(c.src, 1.0));
  double copy_ms = time_ms(run_copy, &c, iters, 1);
  double bandwidth = 2.0 * (512ll << 20) / (copy_ms * 1e-3);
  f2_tensor_free(c.dst), f2_tensor_free(c.src);

  /* One training step's GEMMs at 16384 tokens, bf16 in, f32 out. */
  static gemm_ctx g;
  for (int k = 0; k < PER_BLOCK; k++) {
    int64_t out = shapes[k][0], in = shapes[k][1];
    g.x[k] = tensor(F2_BF16, F2_CUDA, 2, TOKENS, in, 0);
    g.w[k] = tensor(F2_BF16, F2_CUDA, 2, out, in, 0);
    g.y[k] = tensor(F2_BF16, F2_CUDA, 2, TOKENS, out, 0);
    g.dx[k] = tensor(F2_BF16, F2_CUDA, 2, TOKENS, in, 0);
    g.dw[k] = tensor(F2_F32, F2_CUDA, 2, out, in, 0);
    TRY(f2_rand_normal(g.x[k], 7 + (uint64_t)k, 0, 1));
    TRY(f2_rand_normal(g.w[k], 70 + (uint64_t)k, 0, 0.02));
    TRY(f2_fill(g.dw[k], 0));
  }
  double gemm_ms = 30 * time_ms(run_gemm, &g, iters, 1);
  double gemm_flops = 0;
  for (int k = 0; k < PER_BLOCK; k++) gemm_flops += 3 * 2.0 * TOKENS * shapes[k][0] * shapes[k][1];
  gemm_flops *= 30;

  printf("\nSmolLM2-135M: %d linear layers, %.1fM weights; fp32 R in (%.0f MB), bf16 R_hat out (%.0f MB)\n", LAYERS,
         params / 1e6, r_bytes / 1e6, hat_bytes / 1e6);
  printf("device-to-device copy: %.0f GB/s; GEMMs of one step (fwd + 2 bwd, %d tokens): %.2f ms, %.0f TFLOP/s\n\n",
         bandwidth / 1e9, TOKENS, gemm_ms, gemm_flops / (gemm_ms * 1e-3) / 1e12);
  printf("| T | what | ms | floor T reads + 1 write, ms | x floor | floor 1 read + 1 write, ms | share of step GEMMs |\n");
  printf("|---|---|---|---|---|---|---|\n");
  for (int t = 1; t <= 2; t++) {
    resize_scales(&q, F2_CUDA, t);
    double floor_spec = (t * r_bytes + hat_bytes) / bandwidth * 1e3, floor_min = (r_bytes + hat_bytes) / bandwidth * 1e3;
    const char *what[3] = {"batched, no check", "batched, finite check (1 sync)", "210 single calls"};
    for (int v = 0; v < 3; v++) {
      q.per_layer = v == 2;
      q.cfg.skip_finite_check = v != 1;
      double ms = time_ms(run_quant, &q, iters, 1);
      printf("| %d | %s | %.3f | %.3f | %.2f | %.3f | %.1f%% |\n", t, what[v], ms, floor_spec, ms / floor_spec, floor_min,
             100 * ms / gemm_ms);
    }
  }
  return 0;
}
