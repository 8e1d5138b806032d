/* bench_gemm.c — the linear layers' GEMMs of a SmolLM2-135M training step (8 x 2048 tokens), one row per
 * shape: f2_matmul as the model calls it (cuBLASLt, cached plan, the algorithm matmul.cu chose: timed on
 * first use, or from the F2_GEMM_CACHE file; F2_GEMM_TUNE=0 for the heuristic's first) against cuBLASLt's
 * first heuristic algorithm and the fastest of its first 8 for the same problem, timed the same way. Also the
 * fused shapes (q/k/v as one [960 x 576] weight, gate/up as one [3072 x 576]) beside the separate ones, so
 * the table says what fusing saves. Mean of 20 back-to-back calls (host clock, synchronized); TFLOP/s =
 * 2 m n k / time. Skips (exit 77) without a GPU. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "f2.h"

#ifdef F2_HAVE_CUDA
#include <cublasLt.h>
#include <cuda_runtime.h>

#define TRY(x)                                                  \
  do {                                                          \
    if ((x) != F2_OK) {                                         \
      fprintf(stderr, "bench_gemm: %s: %s\n", #x, f2_last_error()); \
      exit(1);                                                  \
    }                                                           \
  } while (0)
#define CK(x)                                                              \
  do {                                                                     \
    int e_ = (int)(x);                                                     \
    if (e_) {                                                              \
      fprintf(stderr, "bench_gemm: %s failed (%d) at line %d\n", #x, e_, __LINE__); \
      exit(1);                                                             \
    }                                                                      \
  } while (0)

enum { TOKENS = 16384, REPS = 20 };

/* One GEMM of the step, in f2_matmul's terms: out[m x n] = op(a) op(b) (+ out when acc). */
typedef struct {
  const char *name;
  int64_t m, n, k;
  int ta, tb;   /* a is [k x m] when ta, b is [n x k] when tb */
  int out_f32, acc;
} shape;

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

static f2_tensor *tensor2(int64_t r, int64_t c, int32_t dtype, uint64_t seed) {
  int64_t shape[2] = {r, c};
  f2_tensor *t = f2_tensor_new(dtype, F2_CUDA, 2, shape);
  if (!t) exit(1);
  TRY(f2_rand_normal(t, seed, 0, 0.05));
  return t;
}

/* Mean over REPS back-to-back calls after 3 warm-ups (host clock around the queue and a synchronize);
 * f2_matmul through the library. */
static double time_f2(const shape *s, f2_tensor *out, f2_tensor *a, f2_tensor *b) {
  for (int i = 0; i < 3; i++) TRY(f2_matmul(out, a, b, s->ta, s->tb, 1, s->acc ? 1 : 0));
  TRY(f2_cuda_synchronize());
  double t0 = now_ms();
  for (int i = 0; i < REPS; i++) TRY(f2_matmul(out, a, b, s->ta, s->tb, 1, s->acc ? 1 : 0));
  TRY(f2_cuda_synchronize());
  return (now_ms() - t0) / REPS;
}

/* The same problem straight through cuBLASLt (column-major: D^T[n x m] = op(b)^T op(a)^T, as f2_matmul
 * maps row-major tensors), each of the heuristic's first 8 algorithms timed; returns the best, *algos the
 * count found, *first the time of algorithm 0. */
static double time_lt(cublasLtHandle_t lt, void *ws, size_t ws_bytes, const shape *s, f2_tensor *out, f2_tensor *a,
                      f2_tensor *b, int *algos, double *first) {
  cudaStream_t st = 0;
  cublasLtMatmulDesc_t desc;
  CK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  /* Row-major out[m x n] = A B is column-major out^T[n x m] = B^T A^T: first operand b, second a. */
  cublasOperation_t opb = s->tb ? CUBLAS_OP_T : CUBLAS_OP_N, opa = s->ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opb, sizeof opb));
  CK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opa, sizeof opa));
  cublasLtMatrixLayout_t lb, la, lc;
  /* b row-major [k x n] (tb: [n x k]) is column-major [n x k] (tb: [k x n]) with ld = its row length. */
  CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, s->tb ? s->k : s->n, s->tb ? s->n : s->k, s->tb ? s->k : s->n));
  CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s->ta ? s->m : s->k, s->ta ? s->k : s->m, s->ta ? s->m : s->k));
  CK(cublasLtMatrixLayoutCreate(&lc, s->out_f32 ? CUDA_R_32F : CUDA_R_16BF, s->n, s->m, s->n));
  cublasLtMatmulPreference_t pref;
  CK(cublasLtMatmulPreferenceCreate(&pref));
  uint64_t wsb = ws_bytes;
  CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb));
  cublasLtMatmulHeuristicResult_t res[8];
  int found = 0;
  CK(cublasLtMatmulAlgoGetHeuristic(lt, desc, lb, la, lc, lc, pref, 8, res, &found));
  float alpha = 1, beta = s->acc ? 1.f : 0.f;
  double best = 1e30;
  for (int i = 0; i < found; i++) {
    int bad = 0;
    for (int w = 0; w < 3; w++)
      bad |= cublasLtMatmul(lt, desc, &alpha, b->data, lb, a->data, la, &beta, out->data, lc, out->data, lc,
                            &res[i].algo, ws, ws_bytes, st) != CUBLAS_STATUS_SUCCESS;
    if (bad) continue;
    cudaDeviceSynchronize();
    double t0 = now_ms();
    for (int r = 0; r < REPS; r++)
      cublasLtMatmul(lt, desc, &alpha, b->data, lb, a->data, la, &beta, out->data, lc, out->data, lc, &res[i].algo, ws,
                     ws_bytes, st);
    cudaDeviceSynchronize();
    double ms = (now_ms() - t0) / REPS;
    if (i == 0) *first = ms;
    if (ms < best) best = ms;
  }
  *algos = found;
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(desc);
  return best;
}

#endif  // F2_HAVE_CUDA

int main(void) {
  if (f2_cuda_device_count() < 1) {
    printf("skipped: no usable GPU (%s)\n", f2_cuda_compiled() ? "CUDA build" : "built without CUDA");
    return 77;
  }
#ifdef F2_HAVE_CUDA
  const int64_t T = TOKENS;
  /* Per layer of SmolLM2-135M: forward y = x W^T; backward dx = dy W (bf16 out; the second of q/k/v and
   * gate/up adds into the first's dx), dW += dy^T x (fp32 out, accumulated). */
  static const shape shapes[] = {
      {"fwd q, o     576->576", T, 576, 576, 0, 1, 0, 0},
      {"fwd k, v     576->192", T, 192, 576, 0, 1, 0, 0},
      {"fwd gate, up 576->1536", T, 1536, 576, 0, 1, 0, 0},
      {"fwd down     1536->576", T, 576, 1536, 0, 1, 0, 0},
      {"fwd qkv      576->960 (fused)", T, 960, 576, 0, 1, 0, 0},
      {"fwd gate+up  576->3072 (fused)", T, 3072, 576, 0, 1, 0, 0},
      {"dx  q        576->576", T, 576, 576, 0, 0, 0, 0},
      {"dx  k, v +=  192->576", T, 576, 192, 0, 0, 0, 1},
      {"dx  gate     1536->576", T, 576, 1536, 0, 0, 0, 0},
      {"dx  up +=    1536->576", T, 576, 1536, 0, 0, 0, 1},
      {"dx  down     576->1536", T, 1536, 576, 0, 0, 0, 0},
      {"dx  qkv      960->576 (fused)", T, 576, 960, 0, 0, 0, 0},
      {"dx  gate+up  3072->576 (fused)", T, 576, 3072, 0, 0, 0, 0},
      {"dW  q, o     576x576", 576, 576, T, 1, 0, 1, 1},
      {"dW  k, v     192x576", 192, 576, T, 1, 0, 1, 1},
      {"dW  gate, up 1536x576", 1536, 576, T, 1, 0, 1, 1},
      {"dW  down     576x1536", 576, 1536, T, 1, 0, 1, 1},
      {"dW  qkv      960x576 (fused)", 960, 576, T, 1, 0, 1, 1},
      {"dW  gate+up  3072x576 (fused)", 3072, 576, T, 1, 0, 1, 1},
  };
  cublasLtHandle_t lt;
  CK(cublasLtCreate(&lt));
  void *ws = NULL;
  const size_t ws_bytes = 32u << 20;
  CK(cudaMalloc(&ws, ws_bytes));
  printf("| GEMM (M = %d tokens) | m x n x k | f2_matmul us | TFLOP/s | heuristic #0 us | best of %s us | best TFLOP/s |\n",
         TOKENS, "8");
  printf("|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
    const shape *s = &shapes[i];
    f2_tensor *a = s->ta ? tensor2(s->k, s->m, F2_BF16, 1) : tensor2(s->m, s->k, F2_BF16, 1);
    f2_tensor *b = s->tb ? tensor2(s->n, s->k, F2_BF16, 2) : tensor2(s->k, s->n, F2_BF16, 2);
    f2_tensor *out = tensor2(s->m, s->n, s->out_f32 ? F2_F32 : F2_BF16, 3);
    double f2ms = time_f2(s, out, a, b), first = 0;
    int algos = 0;
    double best = time_lt(lt, ws, ws_bytes, s, out, a, b, &algos, &first);
    double fl = 2.0 * s->m * s->n * s->k;
    printf("| %s | %lldx%lldx%lld | %.1f | %.0f | %.1f | %.1f (%d algos) | %.0f |\n", s->name, (long long)s->m,
           (long long)s->n, (long long)s->k, f2ms * 1e3, fl / (f2ms * 1e9), first * 1e3, best * 1e3, algos,
           fl / (best * 1e9));
    f2_tensor_free(a);
    f2_tensor_free(b);
    f2_tensor_free(out);
  }
  cudaFree(ws);
  cublasLtDestroy(lt);
#endif
  return 0;
}
