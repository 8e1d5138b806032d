/* bench_attention.c — causal GQA flash attention on CUDA (kernels/attention.cu), bf16 in and out, at the
 * training shapes: SmolLM2-135M (H 9 / Hkv 3, Dh 64) at B x T = 8 x 2048 and 32 x 512, Qwen3-4B (H 32 /
 * Hkv 8, Dh 128) at 1 x 2048. Forward (out + lse) and backward (dq dk dv, bf16) each: the median over
 * samples of the mean time of back-to-back calls (device synchronized around each sample), and TFLOP/s
 * counted causal (forward 2*2*B*H*T*T*Dh/2, backward 2.5x that). The baseline row is a bf16 cuBLAS GEMM
 * (f2_matmul, 4096^3) in the same run: what the tensor cores give a plain GEMM here.
 * Usage: bench_attention [samples (20)] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "f2.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
  fprintf(stderr, "bench_attention: %s: %s\n", what, f2_last_error());
  exit(1);
}
#define TRY(expr) do { if ((expr) != F2_OK) die(#expr); } while (0)

static f2_tensor *gpu_tensor(int32_t dtype, int ndim, const int64_t *shape) {
  f2_tensor *t = f2_tensor_new(dtype, F2_CUDA, ndim, shape);
  if (!t) die("f2_tensor_new");
  return t;
}

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

typedef struct attn_ctx {
  f2_tensor *q, *k, *v, *out, *lse, *dout, *dq, *dk, *dv;
  float scale;
  f2_tensor *a, *b, *c;   /* the GEMM baseline */
} attn_ctx;

static void run_forward(attn_ctx *x) { TRY(f2_attention_forward(x->out, x->lse, x->q, x->k, x->v, x->scale)); }
static void run_backward(attn_ctx *x) {
  TRY(f2_attention_backward(x->dq, x->dk, x->dv, x->dout, x->q, x->k, x->v, x->out, x->lse, x->scale));
}
static void run_gemm(attn_ctx *x) { TRY(f2_matmul(x->c, x->a, x->b, 0, 1, 1.0f, 0.0f)); }

/* Median over samples of the mean ms of `calls` back-to-back calls; two warm-up calls first. */
static double time_ms(void (*fn)(attn_ctx *), attn_ctx *x, int samples, int calls) {
  double t[256];
  if (samples > 256) samples = 256;
  fn(x);
  fn(x);
  TRY(f2_cuda_synchronize());
  for (int s = 0; s < samples; s++) {
    double t0 = now();
    for (int i = 0; i < calls; i++) fn(x);
    TRY(f2_cuda_synchronize());
    t[s] = (now() - t0) * 1e3 / calls;
  }
  qsort(t, samples, sizeof *t, compare_doubles);
  return t[samples / 2];
}

int main(int argc, char **argv) {
  int samples = argc > 1 ? atoi(argv[1]) : 20;
  if (samples < 1) samples = 1;
  if (f2_cuda_device_count() < 1) {
    printf("skipped: no usable GPU (%s)\n", f2_cuda_compiled() ? "CUDA build" : "built without CUDA");
    return 77;
  }
  static const struct {
    const char *name;
    int64_t B, T, H, Hkv, D;
  } shapes[] = {
      {"SmolLM2 8x2048", 8, 2048, 9, 3, 64},
      {"SmolLM2 32x512", 32, 512, 9, 3, 64},
      {"Qwen3-4B 1x2048", 1, 2048, 32, 8, 128},
      {"Qwen3-4B 4x2048", 4, 2048, 32, 8, 128},
  };
  printf("%-18s %-9s %10s %10s\n", "shape", "pass", "ms", "TFLOP/s");

  attn_ctx g = {0};
  int64_t gs[2] = {4096, 4096};
  g.a = gpu_tensor(F2_BF16, 2, gs);
  g.b = gpu_tensor(F2_BF16, 2, gs);
  g.c = gpu_tensor(F2_BF16, 2, gs);
  TRY(f2_rand_normal(g.a, 1, 0, 1));
  TRY(f2_rand_normal(g.b, 2, 0, 1));
  double gemm_ms = time_ms(run_gemm, &g, samples, 10);
  printf("%-18s %-9s %10.3f %10.1f\n", "GEMM 4096^3", "baseline", gemm_ms, 2.0 * 4096 * 4096 * 4096 / (gemm_ms * 1e9));
  f2_tensor_free(g.a);
  f2_tensor_free(g.b);
  f2_tensor_free(g.c);

  for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
    int64_t B = shapes[i].B, T = shapes[i].T, H = shapes[i].H, Hkv = shapes[i].Hkv, D = shapes[i].D;
    int64_t qs[4] = {B, T, H, D}, ks[4] = {B, T, Hkv, D}, ls[3] = {B, H, T};
    attn_ctx x = {0};
    x.q = gpu_tensor(F2_BF16, 4, qs);
    x.k = gpu_tensor(F2_BF16, 4, ks);
    x.v = gpu_tensor(F2_BF16, 4, ks);
    x.dout = gpu_tensor(F2_BF16, 4, qs);
    x.out = gpu_tensor(F2_BF16, 4, qs);
    x.lse = gpu_tensor(F2_F32, 3, ls);
    x.dq = gpu_tensor(F2_BF16, 4, qs);
    x.dk = gpu_tensor(F2_BF16, 4, ks);
    x.dv = gpu_tensor(F2_BF16, 4, ks);
    x.scale = 1.0f / sqrtf((float)D);
    TRY(f2_rand_normal(x.q, 10 + i, 0, 1));
    TRY(f2_rand_normal(x.k, 20 + i, 0, 1));
    TRY(f2_rand_normal(x.v, 30 + i, 0, 1));
    TRY(f2_rand_normal(x.dout, 40 + i, 0, 1));
    double flops = 4.0 * B * H * T * T * D / 2;
    int calls = T * B >= 8192 ? 5 : 20;
    double fwd = time_ms(run_forward, &x, samples, calls), bwd = time_ms(run_backward, &x, samples, calls);
    printf("%-18s %-9s %10.3f %10.1f\n", shapes[i].name, "forward", fwd, flops / (fwd * 1e9));
    printf("%-18s %-9s %10.3f %10.1f\n", shapes[i].name, "backward", bwd, 2.5 * flops / (bwd * 1e9));
    printf("%-18s %-9s %10.3f %10.1f\n", shapes[i].name, "fwd+bwd", fwd + bwd, 3.5 * flops / ((fwd + bwd) * 1e9));
    f2_tensor *all[] = {x.q, x.k, x.v, x.dout, x.out, x.lse, x.dq, x.dk, x.dv};
    for (size_t j = 0; j < sizeof all / sizeof *all; j++) f2_tensor_free(all[j]);
  }
  return 0;
}
