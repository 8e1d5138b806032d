/* bench_cpu.c — where one SmolLM2-135M QAT training step goes on the CPU: every piece of a step at
 * batch 4 x 128 tokens (fp32 activations, as the CPU model runs), timed through the public API on the
 * model's shapes and multiplied by the calls one step makes; prints a table with GFLOP/s and each
 * piece's share of the step. docs/performance.md keeps the figures. Threads: F2_THREADS (default: all
 * cores). Usage: bench_cpu [batch] [seq] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "f2.h"

enum { LAYERS = 30, HIDDEN = 576, HEADS = 9, KV_HEADS = 3, HEAD_DIM = 64, FFN = 1536, VOCAB = 49152 };

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
  fprintf(stderr, "bench_cpu: %s: %s\n", what, f2_last_error());
  exit(1);
}
#define TRY(expr) do { if ((expr) != F2_OK) die(#expr); } while (0)

static f2_tensor *randn(int32_t dtype, int32_t ndim, const int64_t *shape, uint64_t seed, double std) {
  f2_tensor *t = f2_tensor_new(dtype, F2_CPU, ndim, shape);
  if (!t) die("f2_tensor_new");
  TRY(f2_rand_normal(t, seed, 0, std));
  return t;
}
static f2_tensor *new2(int64_t a, int64_t b, uint64_t seed) { return randn(F2_F32, 2, (int64_t[]){a, b}, seed, 1); }

/* One row of the table: a piece run `calls` times per step, flops per call (0: not counted). */
typedef struct piece {
  const char *name;
  int calls;
  double flops;
  void (*run)(struct piece *);
  f2_tensor *t[8];
  double ms;   /* median wall time per call */
} piece;

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Median of 5 timed repetitions after a warm-up; each repetition runs long enough to be measurable. */
static void time_piece(piece *p) {
  enum { REPS = 5 };
  double t[REPS];
  double t0 = now();
  p->run(p);
  double once = now() - t0;
  int iters = once > 0.05 ? 1 : (int)(0.05 / (once + 1e-9)) + 1;
  for (int r = 0; r < REPS; r++) {
    t0 = now();
    for (int i = 0; i < iters; i++) p->run(p);
    t[r] = (now() - t0) * 1e3 / iters;
  }
  qsort(t, REPS, sizeof *t, compare_doubles);
  p->ms = t[REPS / 2];
}

/* t[0] = out, t[1] = a, t[2] = b; the transposes and beta ride in the name's kind. */
static void run_fwd(piece *p) { TRY(f2_matmul(p->t[0], p->t[1], p->t[2], 0, 1, 1, 0)); }     /* y = x W^T */
static void run_dgrad(piece *p) { TRY(f2_matmul(p->t[0], p->t[1], p->t[2], 0, 0, 1, 0)); }   /* dx = dy W */
static void run_wgrad(piece *p) { TRY(f2_matmul(p->t[0], p->t[1], p->t[2], 1, 0, 1, 1)); }   /* dW += dy^T x */

static void run_attention_fwd(piece *p) { TRY(f2_attention_forward(p->t[3], p->t[4], p->t[0], p->t[1], p->t[2], 0.125f)); }
static void run_attention_bwd(piece *p) {
  TRY(f2_attention_backward(p->t[5], p->t[6], p->t[7], p->t[3], p->t[0], p->t[1], p->t[2], p->t[3], p->t[4], 0.125f));
}
static void run_rmsnorm_fwd(piece *p) { TRY(f2_rmsnorm_forward(p->t[2], p->t[3], p->t[0], p->t[1], 1e-5f)); }
static void run_rmsnorm_bwd(piece *p) { TRY(f2_rmsnorm_backward(p->t[4], p->t[5], p->t[2], p->t[0], p->t[1], p->t[3])); }
static void run_rope_fwd(piece *p) { TRY(f2_rope_forward(p->t[0], p->t[0], p->t[2], p->t[3])); TRY(f2_rope_forward(p->t[1], p->t[1], p->t[2], p->t[3])); }
static void run_rope_bwd(piece *p) { TRY(f2_rope_backward(p->t[0], p->t[0], p->t[2], p->t[3])); TRY(f2_rope_backward(p->t[1], p->t[1], p->t[2], p->t[3])); }
static void run_swiglu_fwd(piece *p) { TRY(f2_swiglu_forward(p->t[2], p->t[0], p->t[1])); }
static void run_swiglu_bwd(piece *p) { TRY(f2_swiglu_backward(p->t[3], p->t[4], p->t[2], p->t[0], p->t[1])); }
static void run_ce_fwd(piece *p) { TRY(f2_cross_entropy_forward(p->t[2], NULL, p->t[0], p->t[1], -100)); }
static void run_ce_bwd(piece *p) { TRY(f2_cross_entropy_backward(p->t[3], p->t[0], p->t[1], -100, 1.0f)); }
static void run_embedding_fwd(piece *p) { TRY(f2_embedding_forward(p->t[2], p->t[0], p->t[1])); }
static void run_embedding_bwd(piece *p) { TRY(f2_embedding_backward(p->t[3], p->t[2], p->t[1])); }
static void run_add(piece *p) { TRY(f2_binary(p->t[0], p->t[0], p->t[1], F2_OP_ADD)); }
static void run_adamw(piece *p) {
  f2_adamw_config c = {.lr = 1e-4f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .weight_decay = 0.1f,
                       .grad_scale = 1.0f, .step = 1};
  TRY(f2_adamw_step(p->t[0], p->t[1], p->t[2], p->t[3], &c));
}

/* The 210 quantized layers: q, k, v, o, gate, up, down of each block, (out, in). */
static const int64_t linear_shapes[7][2] = {{576, 576}, {192, 576}, {192, 576}, {576, 576},
                                            {1536, 576}, {1536, 576}, {576, 1536}};
static f2_tensor *quant_r[LAYERS * 7], *quant_hat[LAYERS * 7], *quant_scales[LAYERS * 7], *quant_codes[LAYERS * 7];
static void run_quantize(piece *p) {
  (void)p;
  f2_quant_config cfg = {.stages = 2, .granularity = F2_FAIRY2_PER_TENSOR};
  TRY(f2_fairy2_quantize_batch(quant_hat, quant_scales, quant_codes, (const f2_tensor *const *)quant_r, LAYERS * 7, &cfg));
}

int main(int argc, char **argv) {
  int64_t batch = argc > 1 ? atoll(argv[1]) : 4, seq = argc > 2 ? atoll(argv[2]) : 128, N = batch * seq;
  const char *threads = getenv("F2_THREADS");
  printf("SmolLM2-135M training step pieces on the CPU: batch %lld x %lld tokens, fp32, F2_THREADS=%s\n",
         (long long)batch, (long long)seq, threads ? threads : "(unset: all cores)");
  piece ps[40];
  int np = 0;
  uint64_t seed = 1;

  /* Linear layers by shape: how many of that shape per step (x LAYERS). */
  struct { const char *name; int64_t out, in; int per_block; } lin[4] = {
      {"q,o 576->576", 576, 576, 2}, {"k,v 576->192", 192, 576, 2}, {"gate,up 576->1536", 1536, 576, 2},
      {"down 1536->576", 576, 1536, 1}};
  for (int l = 0; l < 4; l++) {
    int64_t out = lin[l].out, in = lin[l].in;
    f2_tensor *x = new2(N, in, seed++), *w = new2(out, in, seed++), *y = new2(N, out, seed++);
    f2_tensor *dx = new2(N, in, seed++), *dw = new2(out, in, seed++);
    static char names[4][3][48];
    const char *kind[3] = {"fwd", "dgrad", "wgrad"};
    void (*fn[3])(piece *) = {run_fwd, run_dgrad, run_wgrad};
    f2_tensor *args[3][3] = {{y, x, w}, {dx, y, w}, {dw, y, x}};
    for (int k = 0; k < 3; k++) {
      snprintf(names[l][k], sizeof names[l][k], "matmul %s %s", kind[k], lin[l].name);
      ps[np] = (piece){names[l][k], LAYERS * lin[l].per_block, 2.0 * N * in * out, fn[k], {args[k][0], args[k][1], args[k][2]}};
      np++;
    }
  }
  {
    f2_tensor *h = new2(N, HIDDEN, seed++), *e = randn(F2_F32, 2, (int64_t[]){VOCAB, HIDDEN}, seed++, 0.02);
    f2_tensor *logits = new2(N, VOCAB, seed++), *dh = new2(N, HIDDEN, seed++), *de = new2(VOCAB, HIDDEN, seed++);
    double f = 2.0 * N * HIDDEN * VOCAB;
    ps[np++] = (piece){"lm head fwd (tied)", 1, f, run_fwd, {logits, h, e}};
    ps[np++] = (piece){"lm head dgrad", 1, f, run_dgrad, {dh, logits, e}};
    ps[np++] = (piece){"lm head wgrad", 1, f, run_wgrad, {de, logits, h}};
    f2_tensor *targets = f2_tensor_new(F2_I32, F2_CPU, 1, (int64_t[]){N});
    TRY(f2_fill(targets, 7));
    f2_tensor *loss = f2_tensor_new(F2_F32, F2_CPU, 1, (int64_t[]){1}), *dlogits = new2(N, VOCAB, seed++);
    ps[np++] = (piece){"cross-entropy fwd", 1, 0, run_ce_fwd, {logits, targets, loss, dlogits}};
    ps[np++] = (piece){"cross-entropy bwd", 1, 0, run_ce_bwd, {logits, targets, loss, dlogits}};
    /* Embedding: ids as i32 in [0, V). */
    f2_tensor *ids = f2_tensor_new(F2_I32, F2_CPU, 1, (int64_t[]){N});
    TRY(f2_arange(ids, 3, 89));
    ps[np++] = (piece){"embedding fwd", 1, 0, run_embedding_fwd, {e, ids, h, de}};
    ps[np++] = (piece){"embedding bwd", 1, 0, run_embedding_bwd, {e, ids, h, de}};
  }
  {
    int64_t qs[4] = {batch, seq, HEADS, HEAD_DIM}, ks[4] = {batch, seq, KV_HEADS, HEAD_DIM};
    f2_tensor *q = randn(F2_F32, 4, qs, seed++, 1), *k = randn(F2_F32, 4, ks, seed++, 1), *v = randn(F2_F32, 4, ks, seed++, 1);
    f2_tensor *out = randn(F2_F32, 4, qs, seed++, 1), *lse = randn(F2_F32, 3, (int64_t[]){batch, HEADS, seq}, seed++, 1);
    f2_tensor *dq = randn(F2_F32, 4, qs, seed++, 1), *dk = randn(F2_F32, 4, ks, seed++, 1), *dv = randn(F2_F32, 4, ks, seed++, 1);
    /* Causal: half of the T x T scores; QK^T and PV forward, four such products backward. */
    double f = 2.0 * 2 * batch * HEADS * (seq * (seq + 1) / 2) * HEAD_DIM;
    ps[np++] = (piece){"attention fwd", LAYERS, f, run_attention_fwd, {q, k, v, out, lse}};
    ps[np++] = (piece){"attention bwd", LAYERS, 2 * f, run_attention_bwd, {q, k, v, out, lse, dq, dk, dv}};
    f2_tensor *cs = randn(F2_F32, 2, (int64_t[]){seq, HEAD_DIM / 2}, seed++, 1);
    f2_tensor *sn = randn(F2_F32, 2, (int64_t[]){seq, HEAD_DIM / 2}, seed++, 1);
    ps[np++] = (piece){"rope fwd (q and k)", LAYERS, 0, run_rope_fwd, {dq, dk, cs, sn}};
    ps[np++] = (piece){"rope bwd (q and k)", LAYERS, 0, run_rope_bwd, {dq, dk, cs, sn}};
  }
  {
    f2_tensor *x = new2(N, HIDDEN, seed++), *w = randn(F2_F32, 1, (int64_t[]){HIDDEN}, seed++, 1);
    f2_tensor *y = new2(N, HIDDEN, seed++), *rstd = randn(F2_F32, 1, (int64_t[]){N}, seed++, 1);
    f2_tensor *dx = new2(N, HIDDEN, seed++), *dw = randn(F2_F32, 1, (int64_t[]){HIDDEN}, seed++, 1);
    ps[np++] = (piece){"rmsnorm fwd", 2 * LAYERS + 1, 0, run_rmsnorm_fwd, {x, w, y, rstd, dx, dw}};
    ps[np++] = (piece){"rmsnorm bwd", 2 * LAYERS + 1, 0, run_rmsnorm_bwd, {x, w, y, rstd, dx, dw}};
    ps[np++] = (piece){"add (residual, grads)", 7 * LAYERS, 0, run_add, {x, y}};
    f2_tensor *g = new2(N, FFN, seed++), *u = new2(N, FFN, seed++), *o = new2(N, FFN, seed++);
    f2_tensor *dg = new2(N, FFN, seed++), *du = new2(N, FFN, seed++);
    ps[np++] = (piece){"swiglu fwd", LAYERS, 0, run_swiglu_fwd, {g, u, o, dg, du}};
    ps[np++] = (piece){"swiglu bwd", LAYERS, 0, run_swiglu_bwd, {g, u, o, dg, du}};
  }
  {
    int64_t total = 0;
    for (int l = 0; l < LAYERS * 7; l++) {
      const int64_t *s = linear_shapes[l % 7];
      quant_r[l] = randn(F2_F32, 2, s, seed++, 0.02);
      quant_hat[l] = f2_tensor_new(F2_F32, F2_CPU, 2, s);
      quant_scales[l] = f2_tensor_new(F2_F32, F2_CPU, 3, (int64_t[]){2, 4, 1});
      quant_codes[l] = NULL;
      total += s[0] * s[1];
    }
    ps[np++] = (piece){"fairy2 quantize, 210 layers T=2", 1, 0, run_quantize, {NULL}};
    /* AdamW over every parameter at once (the model's count: linears, embedding, norms). */
    int64_t params = total + (int64_t)VOCAB * HIDDEN + (2 * LAYERS + 1) * HIDDEN;
    f2_tensor *pr[4];
    for (int i = 0; i < 4; i++) pr[i] = randn(F2_F32, 1, &params, seed++, 0.01);
    TRY(f2_fill(pr[2], 1e-4));
    ps[np++] = (piece){"adamw, all parameters", 1, 0, run_adamw, {pr[0], pr[1], pr[2], pr[3]}};
  }

  double step = 0, flops = 0, t0 = now();
  for (int i = 0; i < np; i++) {
    time_piece(&ps[i]);
    fprintf(stderr, "%-34s %10.3f ms\n", ps[i].name, ps[i].ms);   /* progress while the rest runs */
    step += ps[i].ms * ps[i].calls;
    flops += ps[i].flops * ps[i].calls;
  }
  printf("\n%-34s %6s %10s %10s %9s %7s\n", "piece", "calls", "ms/call", "ms/step", "GFLOP/s", "share");
  for (int i = 0; i < np; i++) {
    piece *p = &ps[i];
    char rate[16] = "";
    if (p->flops > 0) snprintf(rate, sizeof rate, "%.1f", p->flops / (p->ms * 1e6));
    printf("%-34s %6d %10.3f %10.1f %9s %6.1f%%\n", p->name, p->calls, p->ms, p->ms * p->calls, rate,
           100 * p->ms * p->calls / step);
  }
  printf("%-34s %6s %10s %10.1f %9.1f %6.1f%%\n", "step (sum)", "", "", step, flops / (step * 1e6), 100.0);
  printf("\n%.0f tokens/s at %lld tokens per step (sum of the pieces; %.1f s to measure)\n", N / (step * 1e-3),
         (long long)N, now() - t0);
  return 0;
}
