/* test_gpu_graph.c — CUDA graphs and their private allocator pools. A small training-like step (elementwise
 * ops, Fairy2 quantization, matmuls with internal temporaries, sum of squares, f2_adamw_step_dev), whose
 * temporaries are allocated and freed inside it, is captured once and replayed with fresh inputs and
 * per-step hyperparameters; every replay must give the same bits as running the step eagerly. Memory
 * handed out after the capture (of the very sizes of the graph's temporaries) must survive the replays
 * untouched and never overlap the graph's outputs; the statistics follow the pool through capture,
 * empty_cache, graph_free and the frees after it. A capture broken by something that waits for the GPU
 * fails cleanly at f2_cuda_graph_end and the runtime keeps working; misuse gets clear errors. */
#include <string.h>

#include "f2test.h"

enum { M = 37, N = 48, K = 80 };   /* x [M,K], param [N,K] (N, K even for Fairy2), odd M */

static float *fp(const f2_tensor *t) { return (float *)t->data; }

static f2_tensor *new2(int32_t dtype, int64_t r, int64_t c) {
  int64_t shape[2] = {r, c};
  f2_tensor *t = f2_tensor_new(dtype, F2_CUDA, 2, shape);
  CHECK(t != NULL, "allocating [%lld,%lld]: %s", (long long)r, (long long)c, f2_last_error());
  return t;
}

static f2_tensor *to_cpu(const f2_tensor *src) {
  f2_tensor *t = f2_tensor_new(src->dtype, F2_CPU, src->ndim, src->shape);
  int rc = t ? f2_copy(t, src) : F2_ERR_MEM;
  CHECK(rc == F2_OK, "copy to the host: %s", f2_last_error());
  if (rc != F2_OK) f2_tensor_free(t);
  return rc == F2_OK ? t : NULL;
}

static f2_memory_stats stats(void) {
  f2_memory_stats s;
  memset(&s, 0, sizeof s);
  CHECK_OK(f2_cuda_memory_stats(&s));
  return s;
}

static void print_stats(const char *when, f2_memory_stats s) {
  printf("%-32s allocated %9lld reserved %9lld peak %9lld/%9lld mallocs %lld allocs %lld\n", when,
         (long long)s.allocated, (long long)s.reserved, (long long)s.peak_allocated, (long long)s.peak_reserved,
         (long long)s.num_cuda_mallocs, (long long)s.num_allocs);
}

/* The bytes the allocator reserves for a request (its rounding, see kernels/alloc.cu). */
static int64_t block_bytes(int64_t n) {
  return n < (1 << 20) ? (n + 511) / 512 * 512 : (n + (2 << 20) - 1) / (2 << 20) * (2 << 20);
}

/* Bitwise equal GPU tensors, else the first differing element (as f32 when f32). */
static void same_bits(const f2_tensor *a, const f2_tensor *b, const char *what, int replay) {
  f2_tensor *x = to_cpu(a), *y = to_cpu(b);
  if (x && y) {
    size_t size = f2_dtype_size(a->dtype), n = (size_t)f2_tensor_numel(a);
    int64_t bad = -1;
    for (size_t i = 0; i < n && bad < 0; i++)
      if (memcmp((char *)x->data + i * size, (char *)y->data + i * size, size) != 0) bad = (int64_t)i;
    CHECK(bad < 0, "replay %d: %s differs from the eager run at %lld (%.9g vs %.9g)", replay, what, (long long)bad,
          bad >= 0 && a->dtype == F2_F32 ? fp(x)[bad] : 0.0, bad >= 0 && a->dtype == F2_F32 ? fp(y)[bad] : 0.0);
  }
  f2_tensor_free(x);
  f2_tensor_free(y);
}

typedef struct state {
  f2_tensor *param, *m, *v;   /* [N,K] f32 */
} state;

static const f2_quant_config quant = {.stages = 2, .granularity = F2_FAIRY2_PER_TENSOR, .group_size = 0,
                                      .skip_finite_check = 0};

/* One step; every temporary is allocated and freed inside, as in a training step. Outputs y [M,N] f32
 * and the quantizer's scales [2,4,1]. */
static int step(f2_tensor **y_out, f2_tensor **scales_out, state *s, const f2_tensor *x, const f2_tensor *x2,
                const f2_tensor *hparams) {
  int64_t one = 1, sshape[3] = {2, 4, 1};
  f2_tensor *xb = new2(F2_BF16, M, K), *r_hat = new2(F2_BF16, N, K), *y = new2(F2_F32, M, N);
  f2_tensor *y2 = new2(F2_BF16, M, K), *grad = new2(F2_F32, N, K);
  f2_tensor *scales = f2_tensor_new(F2_F32, F2_CUDA, 3, sshape), *sumsq = f2_tensor_new(F2_F32, F2_CUDA, 1, &one);
  int rc = xb && r_hat && y && y2 && grad && scales && sumsq ? F2_OK : F2_ERR_MEM;
  const f2_tensor *list[1] = {grad};
  if (rc == F2_OK) rc = f2_binary(xb, x, x2, F2_OP_ADD);                              /* mixed dtypes */
  if (rc == F2_OK) rc = f2_fairy2_quantize(r_hat, scales, NULL, s->param, &quant);
  if (rc == F2_OK) rc = f2_matmul(y, xb, r_hat, 0, 1, 1.0f, 0.0f);                   /* bf16 x bf16 -> f32 */
  f2_tensor *yb = rc == F2_OK ? new2(F2_BF16, M, N) : NULL;                         /* a temporary in the step */
  if (rc == F2_OK && !yb) rc = F2_ERR_MEM;
  if (rc == F2_OK) rc = f2_copy(yb, y);
  if (rc == F2_OK) rc = f2_matmul(y2, yb, r_hat, 0, 0, 1.0f, 0.0f);                  /* bf16 x bf16 -> bf16 */
  if (rc == F2_OK) rc = f2_matmul(grad, yb, y2, 1, 0, 1.0f, 0.0f);                   /* yb^T y2 -> f32 */
  f2_tensor_free(yb);
  if (rc == F2_OK) rc = f2_binary_scalar(grad, grad, 1e-3, F2_OP_MUL);
  if (rc == F2_OK) rc = f2_sum_squares(sumsq, list, 1);
  if (rc == F2_OK) rc = f2_adamw_step_dev(s->param, s->m, s->v, grad, hparams, sumsq);
  f2_tensor_free(xb), f2_tensor_free(r_hat), f2_tensor_free(y2), f2_tensor_free(grad), f2_tensor_free(sumsq);
  CHECK(rc == F2_OK, "step: %s", f2_last_error());
  if (rc != F2_OK) {
    f2_tensor_free(y), f2_tensor_free(scales);
    y = scales = NULL;
  }
  *y_out = y;
  *scales_out = scales;
  return rc;
}

static void state_init(state *s, uint64_t seed) {
  s->param = new2(F2_F32, N, K), s->m = new2(F2_F32, N, K), s->v = new2(F2_F32, N, K);
  CHECK_OK(f2_rand_normal(s->param, seed, 0, 0.1));
  CHECK_OK(f2_fill(s->m, 0));
  CHECK_OK(f2_fill(s->v, 0));
}
static void state_copy(state *dst, const state *src) {
  state_init(dst, 0);
  CHECK_OK(f2_copy(dst->param, src->param));
}
static void state_free(state *s) { f2_tensor_free(s->param), f2_tensor_free(s->m), f2_tensor_free(s->v); }

/* hparams of step t: lr and clipping vary, so a replay that baked them in would be caught. */
static void set_hparams(f2_tensor *h_cpu, f2_tensor *h_gpu, int64_t t) {
  float *h = fp(h_cpu);
  h[F2_ADAMW_LR] = 1e-2f / (float)t;
  h[F2_ADAMW_BETA1] = 0.9f;
  h[F2_ADAMW_BETA2] = 0.95f;
  h[F2_ADAMW_EPS] = 1e-8f;
  h[F2_ADAMW_WEIGHT_DECAY] = 0.1f;
  h[F2_ADAMW_BC1] = 1.0f - powf(0.9f, (float)t);
  h[F2_ADAMW_BC2] = 1.0f - powf(0.95f, (float)t);
  h[F2_ADAMW_MAX_NORM] = t % 2 ? 0.05f : t % 3 ? 10.0f : 0.0f;   /* clips, doesn't, off */
  CHECK_OK(f2_copy(h_gpu, h_cpu));
}

static int overlaps(const f2_tensor *a, const f2_tensor *b) {
  uintptr_t a0 = (uintptr_t)a->data, a1 = a0 + f2_tensor_nbytes(a), b0 = (uintptr_t)b->data, b1 = b0 + f2_tensor_nbytes(b);
  return a0 < b1 && b0 < a1;
}

/* The step captured once, replayed with new inputs, against the eager step. */
static void test_replay(uint64_t seed) {
  enum { REPLAYS = 6, SENTINELS = 14 };
  int64_t nh = F2_ADAMW_HPARAMS;
  f2_tensor *x = new2(F2_F32, M, K), *x2 = new2(F2_F32, M, K);
  f2_tensor *h_cpu = f2_tensor_new(F2_F32, F2_CPU, 1, &nh), *h_gpu = f2_tensor_new(F2_F32, F2_CUDA, 1, &nh);
  state G, E, W;
  state_init(&G, seed);
  state_copy(&E, &G);
  state_copy(&W, &G);

  /* Warm-up: the first eager run creates cuBLASLt plans and every lazily allocated workspace, as a
   * training run's first (eager) step does before capturing. */
  CHECK_OK(f2_rand_normal(x, seed + 1, 0, 1));
  CHECK_OK(f2_rand_normal(x2, seed + 2, 0, 1));
  set_hparams(h_cpu, h_gpu, 1);
  f2_tensor *y, *sc;
  if (step(&y, &sc, &W, x, x2, h_gpu) == F2_OK) f2_tensor_free(y), f2_tensor_free(sc);
  state_free(&W);
  /* An empty cache, so the capture's allocations must cudaMalloc (the path a capture restricts). */
  CHECK_OK(f2_cuda_synchronize());
  CHECK_OK(f2_cuda_empty_cache());
  f2_memory_stats s0 = stats();
  print_stats("before capture", s0);

  CHECK(!f2_cuda_is_capturing(), "capturing before begin");
  CHECK_OK(f2_cuda_graph_begin());
  CHECK(f2_cuda_is_capturing(), "not capturing after begin");
  f2_tensor *yg = NULL, *sg = NULL;
  int rc = step(&yg, &sg, &G, x, x2, h_gpu);
  f2_memory_stats s_mid = stats();
  f2_cuda_graph *graph = f2_cuda_graph_end();
  CHECK(graph != NULL, "capture failed: %s", f2_last_error());
  CHECK(!f2_cuda_is_capturing(), "still capturing after end");
  f2_memory_stats s1 = stats();
  print_stats("after capture", s1);
  if (rc != F2_OK || !graph) {
    f2_cuda_graph_free(graph);
    return;
  }
  CHECK(s1.num_cuda_mallocs > s0.num_cuda_mallocs, "the capture made no cudaMalloc after empty_cache");
  CHECK(s_mid.allocated == s1.allocated, "end changed allocated");
  /* Live now: the two outputs; the temporaries went back to the pool. */
  int64_t outputs = block_bytes((int64_t)f2_tensor_nbytes(yg)) + block_bytes((int64_t)f2_tensor_nbytes(sg));
  CHECK(s1.allocated - s0.allocated == outputs, "allocated grew by %lld over the capture, the outputs hold %lld",
        (long long)(s1.allocated - s0.allocated), (long long)outputs);
  CHECK(s1.peak_allocated >= s1.allocated && s1.peak_reserved >= s1.reserved && s1.reserved >= s1.allocated,
        "inconsistent stats after the capture");
  /* empty_cache keeps the pool's free blocks (each replay writes them). */
  CHECK_OK(f2_cuda_empty_cache());
  f2_memory_stats s2 = stats();
  print_stats("after empty_cache", s2);
  CHECK(s2.reserved - s2.allocated >= block_bytes(N * K * 4) + block_bytes(N * K * 2),
        "empty_cache left only %lld cached bytes: the pool's temporaries were given back",
        (long long)(s2.reserved - s2.allocated));

  /* Memory handed out after the capture, of the sizes of the graph's temporaries, filled with a
   * sentinel: the replays must not touch it, and it must not overlap the graph's outputs. */
  const int64_t shapes[7][3] = {{F2_BF16, M, K}, {F2_BF16, N, K}, {F2_BF16, M, K}, {F2_F32, N, K},
                                {F2_F32, M, K}, {F2_F32, 1, 1},   {F2_F32, N, K}};
  f2_tensor *sentinel[SENTINELS];
  for (int i = 0; i < SENTINELS; i++) {
    sentinel[i] = new2((int32_t)shapes[i % 7][0], shapes[i % 7][1], shapes[i % 7][2]);
    if (!sentinel[i]) continue;
    CHECK_OK(f2_fill(sentinel[i], 100.0 + i));
    CHECK(!overlaps(sentinel[i], yg) && !overlaps(sentinel[i], sg), "tensor %d allocated after the capture overlaps "
          "the graph's output", i);
  }

  f2_tensor *xh = f2_tensor_new(F2_F32, F2_CPU, 2, x->shape);
  for (int t = 1; t <= REPLAYS; t++) {
    CHECK_OK(f2_rand_normal(x, seed * 7 + (uint64_t)t, 0, 1));
    CHECK_OK(f2_rand_normal(x2, seed * 11 + (uint64_t)t, 0, 1));
    if (t == 4) { /* a NaN input: NaN gradients, a NaN sumsq, so the update is skipped */
      CHECK_OK(f2_copy(xh, x));
      fp(xh)[5] = NAN;
      CHECK_OK(f2_copy(x, xh));
    }
    set_hparams(h_cpu, h_gpu, t);
    CHECK_OK(f2_cuda_graph_launch(graph));
    f2_tensor *ye = NULL, *se = NULL;
    if (step(&ye, &se, &E, x, x2, h_gpu) != F2_OK) break;
    same_bits(yg, ye, "y", t);
    same_bits(sg, se, "scales", t);
    same_bits(G.param, E.param, "param", t);
    same_bits(G.m, E.m, "m", t);
    same_bits(G.v, E.v, "v", t);
    f2_tensor_free(ye), f2_tensor_free(se);
  }
  f2_tensor_free(xh);
  /* The NaN replay really skipped: param changed on the other replays, so a frozen param is not it. */
  f2_tensor *pg = to_cpu(G.param);
  if (pg) {
    int finite = 1;
    for (int64_t i = 0; i < N * K; i++) finite &= isfinite(fp(pg)[i]) != 0;
    CHECK(finite, "the NaN step reached param");
    f2_tensor_free(pg);
  }
  CHECK_OK(f2_cuda_synchronize());
  for (int i = 0; i < SENTINELS; i++) {
    f2_tensor *h = sentinel[i] ? to_cpu(sentinel[i]) : NULL;
    if (!h) continue;
    int64_t n = f2_tensor_numel(h), bad = -1;
    for (int64_t j = 0; j < n && bad < 0; j++) {
      float v = h->dtype == F2_F32 ? fp(h)[j] : 0.0f;
      if (h->dtype == F2_BF16) {
        union { uint32_t u; float f; } u = {.u = (uint32_t)((uint16_t *)h->data)[j] << 16};
        v = u.f;
      }
      if (v != 100.0f + i) bad = j;   /* 100 + i: exact in bf16 too */
    }
    CHECK(bad < 0, "tensor %d allocated after the capture was overwritten by a replay (element %lld)", i, (long long)bad);
    f2_tensor_free(h);
  }

  /* A second graph alive at the same time, with its own pool: both keep replaying correctly. */
  f2_tensor *a = new2(F2_F32, M, K);
  CHECK_OK(f2_rand_normal(a, seed + 99, 0, 1));
  CHECK_OK(f2_cuda_graph_begin());
  f2_tensor *tmp = new2(F2_F32, M, K), *b = new2(F2_F32, M, K);
  CHECK_OK(f2_binary_scalar(tmp, a, 2.0, F2_OP_MUL));
  CHECK_OK(f2_binary(b, tmp, a, F2_OP_ADD)); /* b = 3a */
  f2_tensor_free(tmp);
  f2_cuda_graph *graph2 = f2_cuda_graph_end();
  CHECK(graph2 != NULL, "second capture failed: %s", f2_last_error());
  for (int t = 0; t < 3 && graph2; t++) {
    CHECK_OK(f2_rand_normal(a, seed + 100 + (uint64_t)t, 0, 1));
    CHECK_OK(f2_cuda_graph_launch(graph2));
    CHECK_OK(f2_cuda_graph_launch(graph));
    f2_tensor *ah = to_cpu(a), *bh = to_cpu(b);
    int64_t bad = -1;
    for (int64_t i = 0; ah && bh && i < M * K && bad < 0; i++)
      if (fp(bh)[i] != (float)(2.0f * fp(ah)[i] + fp(ah)[i])) bad = i;
    CHECK(ah && bh && bad < 0, "second graph: b != 3a at %lld", (long long)bad);
    f2_tensor_free(ah), f2_tensor_free(bh);
  }
  f2_cuda_graph_free(graph2);
  f2_tensor_free(b);
  f2_tensor_free(a);

  /* graph_free: the pool's free blocks join the global cache (empty_cache can now give them back); the
   * outputs stay live, then go to the global cache when freed. */
  for (int i = 0; i < SENTINELS; i++) f2_tensor_free(sentinel[i]);
  CHECK_OK(f2_cuda_empty_cache());
  f2_memory_stats s3 = stats();
  print_stats("before graph_free", s3);
  CHECK(s3.reserved > s3.allocated, "the pool's free blocks are missing before graph_free");
  f2_cuda_graph_free(graph);
  f2_memory_stats s4 = stats();
  CHECK(s4.allocated == s3.allocated && s4.reserved == s3.reserved, "graph_free changed allocated/reserved "
        "(%lld/%lld -> %lld/%lld)", (long long)s3.allocated, (long long)s3.reserved, (long long)s4.allocated,
        (long long)s4.reserved);
  CHECK_OK(f2_cuda_empty_cache());
  f2_memory_stats s5 = stats();
  print_stats("after graph_free, empty_cache", s5);
  CHECK(s5.reserved == s5.allocated, "after graph_free and empty_cache %lld bytes stay cached",
        (long long)(s5.reserved - s5.allocated));
  f2_tensor_free(yg);
  f2_tensor_free(sg);
  f2_memory_stats s6 = stats();
  CHECK(s5.allocated - s6.allocated == outputs, "freeing the outputs released %lld bytes, they hold %lld",
        (long long)(s5.allocated - s6.allocated), (long long)outputs);
  CHECK_OK(f2_cuda_empty_cache());
  f2_memory_stats s7 = stats();
  print_stats("outputs freed, empty_cache", s7);
  CHECK(s7.reserved == s7.allocated, "the outputs of a freed graph did not go back to the global cache");

  state_free(&G);
  state_free(&E);
  f2_tensor_free(x), f2_tensor_free(x2), f2_tensor_free(h_cpu), f2_tensor_free(h_gpu);
}

/* Something that waits for the GPU inside a capture (which: 0 a copy to the host, 1 synchronize): the op
 * fails, end returns NULL with a message, and afterwards everything works as before. */
static void test_broken_capture(int which) {
  int64_t n = 1000;
  f2_memory_stats s0 = stats();
  f2_tensor *host = f2_tensor_new(F2_F32, F2_CPU, 1, &n);
  CHECK_OK(f2_cuda_graph_begin());
  f2_tensor *t = f2_tensor_new(F2_F32, F2_CUDA, 1, &n);
  CHECK(t != NULL, "allocation during the capture: %s", f2_last_error());
  CHECK_OK(f2_fill(t, 1.0));
  int rc = which == 0 ? f2_copy(host, t) : f2_cuda_synchronize();
  CHECK(rc != F2_OK, "%s during a capture succeeded", which == 0 ? "a copy to the host" : "synchronize");
  printf("%s during a capture: %s\n", which == 0 ? "copy to host" : "synchronize", f2_last_error());
  f2_cuda_graph *g = f2_cuda_graph_end();
  CHECK(g == NULL, "a broken capture gave a graph");
  const char *msg = f2_last_error();
  printf("end: %s\n", msg);
  CHECK(strstr(msg, "capture") != NULL, "the message should say the capture failed: %s", msg);
  CHECK(!f2_cuda_is_capturing(), "still capturing after a failed end");
  f2_cuda_graph_free(g);
  /* The runtime works: the same tensor (now an ordinary block), eager ops, a copy back, a new capture. */
  CHECK_OK(f2_fill(t, 2.5));
  CHECK_OK(f2_copy(host, t));
  CHECK(fp(host)[0] == 2.5f && fp(host)[n - 1] == 2.5f, "eager fill after a failed capture: %g", fp(host)[0]);
  f2_tensor_free(t);
  f2_memory_stats s1 = stats();
  CHECK(s1.allocated == s0.allocated, "a failed capture leaked %lld bytes", (long long)(s1.allocated - s0.allocated));
  CHECK_OK(f2_cuda_empty_cache());
  f2_tensor *u = f2_tensor_new(F2_F32, F2_CUDA, 1, &n);
  CHECK_OK(f2_cuda_graph_begin());
  CHECK_OK(f2_fill(u, -3.0));
  f2_cuda_graph *g2 = f2_cuda_graph_end();
  CHECK(g2 != NULL, "capture after a failed one: %s", f2_last_error());
  CHECK_OK(f2_fill(u, 0.0));
  CHECK_OK(f2_cuda_graph_launch(g2));
  CHECK_OK(f2_copy(host, u));
  CHECK(fp(host)[7] == -3.0f, "replay after a failed capture wrote %g", fp(host)[7]);
  f2_cuda_graph_free(g2);
  f2_tensor_free(u);
  f2_tensor_free(host);
}

/* Misuse: clear errors, and the capture in progress is not disturbed by them. */
static void test_misuse(void) {
  f2_clear_error();
  CHECK(f2_cuda_graph_end() == NULL, "end without begin gave a graph");
  CHECK(strstr(f2_last_error(), "no capture") != NULL, "end without begin: %s", f2_last_error());
  CHECK(f2_cuda_graph_launch(NULL) == F2_ERR_ARG, "launching NULL");
  f2_cuda_graph_free(NULL);

  int64_t n = 64;
  f2_tensor *t = f2_tensor_new(F2_F32, F2_CUDA, 1, &n), *host = f2_tensor_new(F2_F32, F2_CPU, 1, &n);
  CHECK_OK(f2_cuda_graph_begin());
  CHECK(f2_cuda_graph_begin() == F2_ERR_ARG, "begin during a capture");
  printf("begin twice: %s\n", f2_last_error());
  CHECK(f2_cuda_is_capturing(), "a refused begin ended the capture");
  CHECK(f2_cuda_empty_cache() == F2_ERR_ARG, "empty_cache during a capture");
  printf("empty_cache during a capture: %s\n", f2_last_error());
  CHECK_OK(f2_fill(t, 4.0));
  f2_cuda_graph *g = f2_cuda_graph_end();
  CHECK(g != NULL, "the capture around the refused calls failed: %s", f2_last_error());
  CHECK_OK(f2_cuda_graph_begin());
  CHECK(f2_cuda_graph_launch(g) == F2_ERR_ARG, "launch during a capture");
  f2_cuda_graph *empty = f2_cuda_graph_end();
  CHECK(empty != NULL, "an empty capture: %s", f2_last_error());
  CHECK_OK(f2_cuda_graph_launch(empty));
  CHECK_OK(f2_fill(t, 0.0));
  CHECK_OK(f2_cuda_graph_launch(g));
  CHECK_OK(f2_copy(host, t));
  CHECK(fp(host)[63] == 4.0f, "replay wrote %g", fp(host)[63]);
  f2_cuda_graph_free(empty);
  f2_cuda_graph_free(g);
  f2_tensor_free(t);
  f2_tensor_free(host);
}

int main(void) {
  f2t_require_gpu();
  uint64_t seed = f2t_seed();
  test_replay(seed);
  test_broken_capture(0);
  test_broken_capture(1);
  test_misuse();
  return f2t_done();
}
