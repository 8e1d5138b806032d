/* bench_attention.c — causal GQA flash attention on CUDA (kernels/attention.cu), bf16 in and out, at the
 * training shapes: SmolLM2-135M (H 9 / Hkv 3, Dh 64) at B x T = 8 x 2048 and 32 x 512, Qwen3-4B (H 32 /
 * Hkv 8, Dh 128) at 1 x 2048 and 4 x 2048. Forward (out + lse) and backward (dq dk dv, bf16) each: the
 * median over samples of the mean time of back-to-back calls (device synchronized around each sample),
 * and TFLOP/s counted causal (forward 2*2*B*H*T*T*Dh/2, backward 2.5x that). The baseline row is a bf16
 * cuBLAS GEMM (f2_matmul, 4096^3) in the same run: what the tensor cores give a plain GEMM here.
 *
 * First cuDNN's fused attention (kernels/attention_cudnn.cpp, the default where libcudnn loads), then
 * attention.cu's own kernels (F2_ATTN_CUDNN=0): their default and every tile variant of each kernel
 * (F2_ATTN_VARIANT=fwd=N / dq=N / kv=N, on top of whatever F2_ATTN_VARIANT was set to at start): the
 * forward variants time the forward, the dQ and dK/dV variants
 * the backward (the other kernel at its default, so the rows differ by that kernel's time). Before
 * timing, each variant runs forward and backward on B=1 T=333 with the shape's heads against the CPU
 * reference: the max error over out, dq, dk, dv relative to each one's max |ref| is printed (BAD above
 * 2e-2). A variant index past the list ends it.
 * Last, in the same run, PyTorch's scaled_dot_product_attention at the same shapes under each fused
 * backend it has (tests/bench/attention_torch.py, from the repository root; F2_BENCH_TORCH=0 skips it).
 * Usage: bench_attention [samples (20)] */
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
  fprintf(stderr, "bench_attention: %s: %s\n", what, f2_last_error());
  exit(1);
}
#define TRY(expr) do { if ((expr) != F2_OK) die(#expr); } while (0)

static f2_tensor *new_tensor(int32_t dtype, int32_t device, int ndim, const int64_t *shape) {
  f2_tensor *t = f2_tensor_new(dtype, device, ndim, shape);
  if (!t) die("f2_tensor_new");
  return t;
}
static f2_tensor *gpu_tensor(int32_t dtype, int ndim, const int64_t *shape) {
  return new_tensor(dtype, F2_CUDA, ndim, shape);
}
static f2_tensor *copy_as(const f2_tensor *t, int32_t dtype, int32_t device) {
  f2_tensor *c = new_tensor(dtype, device, t->ndim, t->shape);
  TRY(f2_copy(c, t));
  return c;
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

/* The correctness check's inputs (bf16 on the GPU) and the CPU reference from the same bf16 values. */
typedef struct check_ctx {
  attn_ctx g;                                   /* GPU tensors, bf16 (lse f32) */
  f2_tensor *out, *dq, *dk, *dv;                /* CPU reference, f32 */
} check_ctx;

static f2_tensor *rand_bf16_cpu(int ndim, const int64_t *shape, uint64_t seed, double std) {
  f2_tensor *f = new_tensor(F2_F32, F2_CPU, ndim, shape);
  TRY(f2_rand_normal(f, seed, 0, std));
  f2_tensor *b = copy_as(f, F2_BF16, F2_CPU), *r = copy_as(b, F2_F32, F2_CPU);   /* bf16-valued f32 */
  f2_tensor_free(f);
  f2_tensor_free(b);
  return r;
}

static void check_init(check_ctx *c, int64_t H, int64_t Hkv, int64_t D) {
  const int64_t B = 1, T = 333;
  int64_t qs[4] = {B, T, H, D}, ks[4] = {B, T, Hkv, D}, ls[3] = {B, H, T};
  f2_tensor *q = rand_bf16_cpu(4, qs, 101, 2.0), *k = rand_bf16_cpu(4, ks, 102, 1.0);
  f2_tensor *v = rand_bf16_cpu(4, ks, 103, 1.0), *dout = rand_bf16_cpu(4, qs, 104, 1.0);
  float scale = 1.0f / sqrtf((float)D);
  f2_tensor *lse = new_tensor(F2_F32, F2_CPU, 3, ls);
  c->out = new_tensor(F2_F32, F2_CPU, 4, qs);
  c->dq = new_tensor(F2_F32, F2_CPU, 4, qs);
  c->dk = new_tensor(F2_F32, F2_CPU, 4, ks);
  c->dv = new_tensor(F2_F32, F2_CPU, 4, ks);
  TRY(f2_attention_forward(c->out, lse, q, k, v, scale));
  f2_tensor *out_b = copy_as(c->out, F2_BF16, F2_CPU), *out_in = copy_as(out_b, F2_F32, F2_CPU);
  TRY(f2_attention_backward(c->dq, c->dk, c->dv, dout, q, k, v, out_in, lse, scale));
  attn_ctx *g = &c->g;
  g->q = copy_as(q, F2_BF16, F2_CUDA);
  g->k = copy_as(k, F2_BF16, F2_CUDA);
  g->v = copy_as(v, F2_BF16, F2_CUDA);
  g->dout = copy_as(dout, F2_BF16, F2_CUDA);
  g->out = copy_as(out_b, F2_BF16, F2_CUDA);   /* the backward's input; the forward writes fwd_out */
  g->lse = copy_as(lse, F2_F32, F2_CUDA);
  g->dq = gpu_tensor(F2_BF16, 4, qs);
  g->dk = gpu_tensor(F2_BF16, 4, ks);
  g->dv = gpu_tensor(F2_BF16, 4, ks);
  g->c = gpu_tensor(F2_BF16, 4, qs);           /* forward out */
  g->a = gpu_tensor(F2_F32, 3, ls);            /* forward lse */
  g->scale = scale;
  f2_tensor *all[] = {q, k, v, dout, lse, out_b, out_in};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) f2_tensor_free(all[i]);
}

static void check_free(check_ctx *c) {
  f2_tensor *all[] = {c->out, c->dq, c->dk, c->dv, c->g.q, c->g.k, c->g.v, c->g.dout, c->g.out, c->g.lse,
                      c->g.dq, c->g.dk, c->g.dv, c->g.c, c->g.a};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) f2_tensor_free(all[i]);
}

/* max |got - want| / max |want|. */
static double rel_err(const f2_tensor *got, const f2_tensor *want) {
  f2_tensor *g = copy_as(got, F2_F32, F2_CPU);
  const float *gv = g->data, *wv = want->data;
  double mw = 0, me = 0;
  for (int64_t i = 0, n = f2_tensor_numel(want); i < n; i++) {
    double e = fabs((double)gv[i] - wv[i]);
    if (fabs(wv[i]) > mw) mw = fabs(wv[i]);
    if (!(e <= me)) me = e;   /* NaN is the largest */
  }
  f2_tensor_free(g);
  return mw > 0 ? me / mw : me;
}

/* Runs the current variant on the check inputs: 1 if it is out of range (the list ended), else 0 with the
 * largest relative error in *err. */
static int check_variant(check_ctx *c, double *err) {
  attn_ctx *g = &c->g;
  if (f2_attention_forward(g->c, g->a, g->q, g->k, g->v, g->scale) != F2_OK) {
    if (strstr(f2_last_error(), "out of range")) return 1;
    die("f2_attention_forward (check)");
  }
  if (f2_attention_backward(g->dq, g->dk, g->dv, g->dout, g->q, g->k, g->v, g->out, g->lse, g->scale) != F2_OK) {
    if (strstr(f2_last_error(), "out of range")) return 1;
    die("f2_attention_backward (check)");
  }
  double e[4] = {rel_err(g->c, c->out), rel_err(g->dq, c->dq), rel_err(g->dk, c->dk), rel_err(g->dv, c->dv)};
  *err = 0;
  for (int i = 0; i < 4; i++)
    if (!(e[i] <= *err)) *err = e[i];
  return 0;
}

static void print_row(const char *shape, const char *pass, const char *variant, double err, double ms, double tflops) {
  char e[24] = "";
  if (err >= 0) snprintf(e, sizeof e, "%.2e%s", err, err > 2e-2 || isnan(err) ? " BAD" : "");
  printf("%-18s %-9s %-10s %-12s %9.3f %9.1f\n", shape, pass, variant, e, ms, tflops);
  fflush(stdout);
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
  const char *env = getenv("F2_ATTN_VARIANT");
  char base[256];
  snprintf(base, sizeof base, "%s", env ? env : "");
  printf("F2_ATTN_VARIANT at start: \"%s\"; max err: relative, on B=1 T=333 vs the CPU\n", base);
  char info[2048];
  f2_build_info(info, sizeof info);
  const char *line = strstr(info, "cuDNN attention:");
  printf("%.*s; the cudnn rows are attention.cu's default where it is off\n", line ? (int)strcspn(line, "\n") : 0,
         line ? line : "");
  printf("%-18s %-9s %-10s %-12s %9s %9s\n", "shape", "pass", "variant", "max err", "ms", "TFLOP/s");

  attn_ctx g = {0};
  int64_t gs[2] = {4096, 4096};
  g.a = gpu_tensor(F2_BF16, 2, gs);
  g.b = gpu_tensor(F2_BF16, 2, gs);
  g.c = gpu_tensor(F2_BF16, 2, gs);
  TRY(f2_rand_normal(g.a, 1, 0, 1));
  TRY(f2_rand_normal(g.b, 2, 0, 1));
  double gemm_ms = time_ms(run_gemm, &g, samples, 10);
  print_row("GEMM 4096^3", "baseline", "", -1, gemm_ms, 2.0 * 4096 * 4096 * 4096 / (gemm_ms * 1e9));
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
    check_ctx chk;
    check_init(&chk, H, Hkv, D);
    double flops = 4.0 * B * H * T * T * D / 2;
    int calls = T * B >= 8192 ? 5 : 20;

    /* cuDNN's fused attention (the default where libcudnn loads), then attention.cu's kernels: their
     * default (the variant set at start) and each kernel's list. */
    static const char *const kernels[] = {"cudnn", "", "fwd", "dq", "kv"};
    for (int kn = 0; kn < 5; kn++)
      for (int vi = 0; vi < (kn > 1 ? 64 : 1); vi++) {
        char var[16] = "default", spec[300];
        if (kn == 0) snprintf(var, sizeof var, "cudnn");
        if (kn > 1) snprintf(var, sizeof var, "%s=%d", kernels[kn], vi);
        snprintf(spec, sizeof spec, "%s%s%s", base, base[0] && kn > 1 ? "," : "", kn > 1 ? var : "");
        if (setenv("F2_ATTN_VARIANT", spec, 1) != 0 || setenv("F2_ATTN_CUDNN", kn ? "0" : "1", 1) != 0)
          die("setenv");
        double err;
        if (check_variant(&chk, &err)) break;   /* past the list */
        if (kn != 3 && kn != 4) {
          double fwd = time_ms(run_forward, &x, samples, calls);
          print_row(shapes[i].name, "forward", var, err, fwd, flops / (fwd * 1e9));
        }
        if (kn != 2) {
          double bwd = time_ms(run_backward, &x, samples, calls);
          print_row(shapes[i].name, "backward", var, err, bwd, 2.5 * flops / (bwd * 1e9));
        }
      }
    if (env)
      setenv("F2_ATTN_VARIANT", base, 1);
    else
      unsetenv("F2_ATTN_VARIANT");
    check_free(&chk);
    f2_tensor *all[] = {x.q, x.k, x.v, x.dout, x.out, x.lse, x.dq, x.dk, x.dv};
    for (size_t j = 0; j < sizeof all / sizeof *all; j++) f2_tensor_free(all[j]);
  }
  /* PyTorch's own fused attention at the same shapes, for the side-by-side table (F2_BENCH_TORCH=0: not). */
  const char *torch = getenv("F2_BENCH_TORCH");
  if (!torch || strcmp(torch, "0") != 0) {
    char cmd[64];
    snprintf(cmd, sizeof cmd, "python3 tests/bench/attention_torch.py %d", samples);
    printf("\n");
    fflush(stdout);
    if (system(cmd) != 0) printf("PyTorch SDPA: %s failed (run from the repository root)\n", cmd);
  }
  return 0;
}
