/* matmul.cu — out[M,N] = alpha * op(a)[M,K] @ op(b)[K,N] + beta * c through cuBLASLt (c = out for
 * f2_matmul, another tensor of out's layout for f2_matmul_add: cuBLASLt's C and D), 2-D or 3-D
 * strided-batched. bf16/f16 inputs: fp32 accumulation (CUBLAS_COMPUTE_32F); f32 inputs: plain fp32
 * (no TF32). Output f32 or the inputs' dtype; other mixes go through fp32 temporaries.
 * Row-major tensors are column-major transposes, so a row-major out is computed as
 * out^T = op(b)^T op(a)^T; any view whose rows or columns are contiguous maps without a copy. */
#include <cublasLt.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "f2_cuda.cuh"

namespace {
const size_t kWorkspaceBytes = 32u << 20;
cublasLtHandle_t handle;
void *workspace;

/* A logical matrix (rows x cols) at data with element strides, and its batch stride. */
struct View {
  void *data;
  int32_t dtype;
  int64_t rows, cols, row_stride, col_stride, batch_stride;
};

View transposed(View v) {
  View t = v;
  t.rows = v.cols, t.cols = v.rows, t.row_stride = v.col_stride, t.col_stride = v.row_stride;
  return t;
}

/* The matrix of t's last two dims, transposed when trans is set. */
View view_of(const f2_tensor *t, int32_t trans) {
  int d = t->ndim - 2;
  View v = {t->data, t->dtype, t->shape[d], t->shape[d + 1], t->stride[d], t->stride[d + 1],
            t->ndim == 3 ? t->stride[0] : 0};
  return trans ? transposed(v) : v;
}

/* How cuBLAS reads v: stored column-major with leading dimension ld (v itself for op N, its
 * transpose for op T). Returns 0 when neither rows nor columns are contiguous (the caller copies). */
struct Layout {
  cublasOperation_t op;
  int64_t ld;
};
int layout_of(const View &v, int allow_transpose, Layout *l) {
  if (v.rows == 1 || v.row_stride == 1) { /* columns contiguous: column-major as it is */
    int64_t ld = v.cols == 1 ? v.rows : v.col_stride;
    if (ld >= v.rows) return *l = {CUBLAS_OP_N, ld}, 1;
  }
  if (allow_transpose && (v.cols == 1 || v.col_stride == 1)) { /* rows contiguous: a stored transpose */
    int64_t ld = v.rows == 1 ? v.cols : v.row_stride;
    if (ld >= v.cols) return *l = {CUBLAS_OP_T, ld}, 1;
  }
  return 0;
}

cudaDataType_t cuda_type(int32_t dtype) {
  return dtype == F2_BF16 ? CUDA_R_16BF : dtype == F2_F16 ? CUDA_R_16F : CUDA_R_32F;
}

/* Largest power of two (<= 256) that divides the address of every matrix of the batch. */
uint32_t alignment(const View &v, int64_t batch) {
  uintptr_t p = (uintptr_t)v.data | (batch > 1 ? (uintptr_t)(v.batch_stride * (int64_t)f2_dtype_size(v.dtype)) : 0);
  uint32_t a = 256;
  while (a > 1 && p % a) a >>= 1;
  return a;
}

/* Descriptors and the heuristic's algorithm for one problem, cached: a training step repeats the
 * same few shapes, and the heuristic query costs more than the GEMM for small ones. */
struct Key {
  int32_t a_type, b_type, c_type, op_a, op_b;
  uint32_t align_a, align_b, align_c, align_d;   /* c: the addend, d: the output */
  int64_t m, n, k, lda, ldb, ldc, batch, stride_a, stride_b, stride_c;
};
const int kCandidates = 8;   /* heuristic algorithms timed per problem (algorithm choice, below) */
struct Plan {
  Key key;
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t a, b, c;
  cublasLtMatmulAlgo_t algo;
  cublasLtMatmulAlgo_t candidates[kCandidates];   /* the heuristic's first ones, best guess first */
  int n_candidates;
  bool chosen;   /* algo is final (chosen by timing, from the cache, or tuning is off) */
};
const int kPlans = 64;
Plan plans[kPlans];
int plan_count, plan_evict;

void destroy_plan(Plan *p) {
  if (p->desc) cublasLtMatmulDescDestroy(p->desc);
  if (p->a) cublasLtMatrixLayoutDestroy(p->a);
  if (p->b) cublasLtMatrixLayoutDestroy(p->b);
  if (p->c) cublasLtMatrixLayoutDestroy(p->c);
  memset(p, 0, sizeof *p);
}

int make_layout(cublasLtMatrixLayout_t *l, int32_t type, int64_t rows, int64_t cols, int64_t ld, int64_t batch,
                int64_t stride) {
  F2_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(l, (cudaDataType_t)type, (uint64_t)rows, (uint64_t)cols, ld));
  if (batch > 1) {
    int32_t count = (int32_t)batch;
    F2_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count));
    F2_CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
  }
  return F2_OK;
}

int build_plan(Plan *p, const Key &k) {
  memset(p, 0, sizeof *p);
  p->key = k;
  cublasOperation_t op_a = (cublasOperation_t)k.op_a, op_b = (cublasOperation_t)k.op_b;
  F2_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  F2_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
  F2_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
  F2_TRY(make_layout(&p->a, k.a_type, op_a == CUBLAS_OP_N ? k.m : k.k, op_a == CUBLAS_OP_N ? k.k : k.m, k.lda,
                     k.batch, k.stride_a));
  F2_TRY(make_layout(&p->b, k.b_type, op_b == CUBLAS_OP_N ? k.k : k.n, op_b == CUBLAS_OP_N ? k.n : k.k, k.ldb,
                     k.batch, k.stride_b));
  F2_TRY(make_layout(&p->c, k.c_type, k.m, k.n, k.ldc, k.batch, k.stride_c));
  cublasLtMatmulPreference_t pref;
  F2_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  uint64_t ws = kWorkspaceBytes;
  uint32_t aligns[4] = {k.align_a, k.align_b, k.align_c, k.align_d};
  const cublasLtMatmulPreferenceAttributes_t align_attrs[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
  for (int i = 0; i < 4 && s == CUBLAS_STATUS_SUCCESS; i++)
    s = cublasLtMatmulPreferenceSetAttribute(pref, align_attrs[i], &aligns[i], sizeof aligns[i]);
  cublasLtMatmulHeuristicResult_t results[kCandidates] = {};
  int found = 0;
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulAlgoGetHeuristic(handle, p->desc, p->a, p->b, p->c, p->c, pref, kCandidates, results, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  F2_CUBLAS_CHECK(s);
  for (int i = 0; i < found; i++)
    if (results[i].state == CUBLAS_STATUS_SUCCESS) p->candidates[p->n_candidates++] = results[i].algo;
  if (p->n_candidates < 1)
    return F2_FAIL(F2_ERR_UNSUPPORTED, "cuBLASLt has no algorithm for m=%lld n=%lld k=%lld batch=%lld (types %d,%d->%d)",
                   (long long)k.m, (long long)k.n, (long long)k.k, (long long)k.batch, k.a_type, k.b_type, k.c_type);
  p->algo = p->candidates[0];
  return F2_OK;
}

int get_plan(const Key &k, Plan **out) {
  for (int i = 0; i < plan_count; i++)
    if (memcmp(&plans[i].key, &k, sizeof k) == 0) return *out = &plans[i], F2_OK;
  Plan *p;
  if (plan_count < kPlans) {
    p = &plans[plan_count];
  } else { /* full: replace the oldest, round robin */
    p = &plans[plan_evict];
    plan_evict = (plan_evict + 1) % kPlans;
    destroy_plan(p);
  }
  int rc = build_plan(p, k);
  if (rc != F2_OK) {
    destroy_plan(p);
    return rc;
  }
  if (p == &plans[plan_count]) plan_count++;
  *out = p;
  return F2_OK;
}

int init_once(void) {
  if (!handle) F2_CUBLAS_CHECK(cublasLtCreate(&handle));
  if (!workspace) F2_TRY(f2_cuda_alloc(&workspace, kWorkspaceBytes));
  return F2_OK;
}

/* A temporary contiguous copy in dtype, freed when it goes out of scope (stream-ordered reuse). */
struct Temp {
  f2_tensor *t = nullptr;
  ~Temp() { f2_tensor_free(t); }
  int make(int32_t dtype, const f2_tensor *like, int copy) {
    t = f2_tensor_new(dtype, F2_CUDA, like->ndim, like->shape);
    if (!t) return F2_ERR_MEM;
    return copy ? f2_cuda_copy(t, like) : F2_OK;
  }
};

/* ---------------------------------------------------------------- algorithm choice
 * cuBLASLt's heuristic puts a good algorithm first, not the fastest: on an H200 the best of its first
 * eight beats the first by 5-12% on SmolLM2's fused projections (docs/performance.md). So the first call
 * of each problem (outside a graph capture) times the first kCandidates on the call's own operands and
 * keeps the fastest. Different algorithms round differently, and a choice by timing could differ between
 * runs, so every choice goes to a cache file per card (F2_GEMM_CACHE, default
 * $XDG_CACHE_HOME/fairy2/gemm-algos.tsv or ~/.cache/fairy2/gemm-algos.tsv; lines "card<TAB>cuBLASLt
 * version<TAB>problem (hex)<TAB>index"), read back by later runs: after the first run on a card the
 * same problem always gets the same algorithm, and the results the same bits. F2_GEMM_TUNE=0: the
 * heuristic's first, as before (no timing, no file). Lines for other cards or library versions are kept
 * and skipped; malformed ones are reported once and skipped. */
struct Choice {
  Key key;
  int index;
};
struct Choices {
  bool loaded;
  int n, cap;
  Choice *items;
  char card[320];   /* this GPU: name, SM count, compute capability; then the cuBLASLt version */
  char path[1024];
};
Choices choices;

bool tuning_enabled() {
  const char *e = getenv("F2_GEMM_TUNE");
  return !(e && e[0] == '0' && e[1] == 0);
}

void cache_path(char *out, size_t size) {
  const char *e = getenv("F2_GEMM_CACHE"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
  if (e && *e) snprintf(out, size, "%s", e);
  else if (xdg && *xdg) snprintf(out, size, "%s/fairy2/gemm-algos.tsv", xdg);
  else if (home && *home) snprintf(out, size, "%s/.cache/fairy2/gemm-algos.tsv", home);
  else out[0] = 0;
}

void key_hex(const Key &k, char *out) {   /* 2 sizeof(Key) + 1 chars */
  const unsigned char *b = (const unsigned char *)&k;
  for (size_t i = 0; i < sizeof k; i++) snprintf(out + 2 * i, 3, "%02x", b[i]);
}

int remember(const Key &k, int index) {
  if (choices.n == choices.cap) {
    int cap = choices.cap ? 2 * choices.cap : 64;
    Choice *p = (Choice *)realloc(choices.items, (size_t)cap * sizeof *p);
    if (!p) return F2_FAIL(F2_ERR_MEM, "matmul: out of host memory for the algorithm choices");
    choices.items = p, choices.cap = cap;
  }
  choices.items[choices.n++] = {k, index};
  return F2_OK;
}

/* The card's identity and the choices the cache file holds for it (once per process). */
int load_choices() {
  if (choices.loaded) return F2_OK;
  choices.loaded = true;
  int dev = 0;
  cudaDeviceProp prop;
  F2_CUDA_CHECK(cudaGetDevice(&dev));
  F2_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  for (char *c = prop.name; *c; c++)
    if (*c == '\t' || *c == '\n') *c = ' ';
  snprintf(choices.card, sizeof choices.card, "%s sm%d%d x%d\t%zu", prop.name, prop.major, prop.minor,
           prop.multiProcessorCount, cublasLtGetVersion());
  cache_path(choices.path, sizeof choices.path);
  FILE *f = choices.path[0] ? fopen(choices.path, "r") : nullptr;
  if (!f) return F2_OK;   /* none yet */
  char line[2048], hex[2 * sizeof(Key) + 1];
  const size_t card_len = strlen(choices.card);
  int line_no = 0, bad = 0;
  while (fgets(line, sizeof line, f)) {
    line_no++;
    if (strncmp(line, choices.card, card_len) != 0 || line[card_len] != '\t') continue;   /* another card */
    const char *p = line + card_len + 1, *tab = strchr(p, '\t');
    char *end = nullptr;
    long index = tab ? strtol(tab + 1, &end, 10) : -1;
    Key k;
    bool ok = tab && (size_t)(tab - p) == 2 * sizeof k && end != tab + 1 && (*end == '\n' || *end == 0) &&
              index >= 0 && index < kCandidates;
    unsigned char *kb = (unsigned char *)&k;
    for (size_t i = 0; ok && i < sizeof k; i++) {
      memcpy(hex, p + 2 * i, 2);
      hex[2] = 0;
      char *e2;
      unsigned long v = strtoul(hex, &e2, 16);
      ok = e2 == hex + 2;
      kb[i] = (unsigned char)v;
    }
    if (!ok) {
      if (!bad++)
        fprintf(stderr, "fairy2: GEMM algorithm cache %s line %d is malformed; skipped (delete the file to start over)\n",
                choices.path, line_no);
      continue;
    }
    F2_TRY(remember(k, (int)index));
  }
  fclose(f);
  return F2_OK;
}

/* Appends a choice to the cache file (creating its directory); a file that cannot be written only
 * costs the next run a new timing. */
void save_choice(const Key &k, int index) {
  if (!choices.path[0]) return;
  char dir[1024];
  snprintf(dir, sizeof dir, "%s", choices.path);
  for (char *s = dir + 1; *s; s++)   /* mkdir -p of the directories */
    if (*s == '/') {
      *s = 0;
      if (mkdir(dir, 0755) != 0 && errno != EEXIST) return;
      *s = '/';
    }
  FILE *f = fopen(choices.path, "a");
  if (!f) return;
  char hex[2 * sizeof(Key) + 1];
  key_hex(k, hex);
  fprintf(f, "%s\t%s\t%d\n", choices.card, hex, index);
  fclose(f);
}

/* Times each candidate on these operands (one warm-up, then 5 calls between events) and returns the
 * fastest's index. D is written (the real call follows); when C is D and beta is not 0 the calls
 * would accumulate into it, so they write a scratch copy of D's span instead. */
int time_candidates(Plan *p, const View &first, const View &second, const View &c, const View &d, float alpha,
                    float beta, int *best) {
  void *scratch = nullptr;
  const void *c_data = c.data;
  void *d_data = d.data;
  cudaStream_t st = f2_cuda_stream();
  if (beta != 0.0f && c.data == d.data) {
    const size_t bytes = (size_t)(p->key.ldc * (d.cols - 1) + d.rows +
                                  (p->key.batch > 1 ? p->key.stride_c * (p->key.batch - 1) : 0)) *
                         f2_dtype_size(d.dtype);
    F2_TRY(f2_cuda_alloc(&scratch, bytes));
    if (cudaMemsetAsync(scratch, 0, bytes, st) != cudaSuccess) {
      f2_cuda_free(scratch);
      return F2_FAIL(F2_ERR_CUDA, "matmul: clearing the timing scratch failed");
    }
    c_data = d_data = scratch;
  }
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  int rc = F2_OK;
  float best_ms = -1;   /* none timed yet */
  *best = 0;
  if (cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess)
    rc = F2_FAIL(F2_ERR_CUDA, "matmul: creating timing events failed");
  for (int i = 0; rc == F2_OK && i < p->n_candidates; i++) {
    auto call = [&] {
      return cublasLtMatmul(handle, p->desc, &alpha, first.data, p->a, second.data, p->b, &beta, c_data, p->c, d_data,
                            p->c, &p->candidates[i], workspace, kWorkspaceBytes, st);
    };
    if (call() != CUBLAS_STATUS_SUCCESS) continue;   /* not runnable after all: not a candidate */
    cudaEventRecord(e0, st);
    bool ok = true;
    for (int r = 0; r < 5 && ok; r++) ok = call() == CUBLAS_STATUS_SUCCESS;
    cudaEventRecord(e1, st);
    float ms = 0;
    if (cudaEventSynchronize(e1) != cudaSuccess || cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess) {
      rc = F2_FAIL(F2_ERR_CUDA, "matmul: timing cuBLASLt algorithms failed: %s", cudaGetErrorString(cudaGetLastError()));
      break;
    }
    if (ok && (best_ms < 0 || ms < best_ms)) best_ms = ms, *best = i;
  }
  if (e0) cudaEventDestroy(e0);
  if (e1) cudaEventDestroy(e1);
  if (scratch) f2_cuda_free(scratch);
  return rc;
}

/* Sets p->algo for good (see above). While a graph is being captured nothing can be timed: the
 * heuristic's first runs and the choice waits for an eager call. */
int choose_algo(Plan *p, const View &first, const View &second, const View &c, const View &d, float alpha,
                float beta) {
  if (!tuning_enabled() || p->n_candidates == 1) return p->chosen = true, F2_OK;
  F2_TRY(load_choices());
  for (int i = 0; i < choices.n; i++)
    if (memcmp(&choices.items[i].key, &p->key, sizeof p->key) == 0) {
      if (choices.items[i].index < p->n_candidates) p->algo = p->candidates[choices.items[i].index];
      return p->chosen = true, F2_OK;
    }
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(f2_cuda_stream(), &cap) != cudaSuccess || cap != cudaStreamCaptureStatusNone)
    return F2_OK;
  int best = 0;
  F2_TRY(time_candidates(p, first, second, c, d, alpha, beta, &best));
  p->algo = p->candidates[best];
  F2_TRY(remember(p->key, best));
  save_choice(p->key, best);
  return p->chosen = true, F2_OK;
}

/* D = alpha first @ second + beta C, with D column-major (layout op N) and C of D's layout (C may be D). */
int run(const View &first, const View &second, const View &c, const View &d, int64_t batch, float alpha,
        float beta) {
  Layout lf, ls, lc;
  if (!layout_of(first, 1, &lf) || !layout_of(second, 1, &ls) || !layout_of(d, 0, &lc))
    return F2_FAIL(F2_ERR_ARG, "matmul: internal layout error");
  Key k;
  memset(&k, 0, sizeof k);   /* padding too: keys compare with memcmp */
  k.a_type = cuda_type(first.dtype), k.b_type = cuda_type(second.dtype), k.c_type = cuda_type(d.dtype);
  k.op_a = lf.op, k.op_b = ls.op;
  k.align_a = alignment(first, batch), k.align_b = alignment(second, batch), k.align_d = alignment(d, batch);
  k.align_c = c.data == d.data ? k.align_d : alignment(c, batch);
  k.m = d.rows, k.n = d.cols, k.k = first.cols;
  k.lda = lf.ld, k.ldb = ls.ld, k.ldc = lc.ld;
  k.batch = batch;
  if (batch > 1) k.stride_a = first.batch_stride, k.stride_b = second.batch_stride, k.stride_c = d.batch_stride;
  Plan *p;
  F2_TRY(get_plan(k, &p));
  if (!p->chosen) F2_TRY(choose_algo(p, first, second, c, d, alpha, beta));
  F2_CUBLAS_CHECK(cublasLtMatmul(handle, p->desc, &alpha, first.data, p->a, second.data, p->b, &beta, c.data, p->c,
                                 d.data, p->c, &p->algo, workspace, kWorkspaceBytes, f2_cuda_stream()));
  return F2_OK;
}
}  // namespace

extern "C" int f2_cuda_matmul(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t trans_a,
                              int32_t trans_b, float alpha, float beta) {
  if (out->ndim < 2 || out->ndim > 3 || a->ndim < 2 || a->ndim > out->ndim || b->ndim < 2 || b->ndim > out->ndim)
    return F2_FAIL(F2_ERR_ARG, "matmul: dims out %d, a %d, b %d (2-D, or 3-D batched)", (int)out->ndim,
                   (int)a->ndim, (int)b->ndim);
  View va = view_of(a, trans_a), vb = view_of(b, trans_b), vc = view_of(out, 0);
  int64_t batch = out->ndim == 3 ? out->shape[0] : 1;
  if (va.rows != vc.rows || vb.cols != vc.cols || va.cols != vb.rows || (a->ndim == 3 && a->shape[0] != batch) ||
      (b->ndim == 3 && b->shape[0] != batch))
    return F2_FAIL(F2_ERR_ARG, "matmul: op(a) %lldx%lld @ op(b) %lldx%lld does not give out %lldx%lld (batch %lld)",
                   (long long)va.rows, (long long)va.cols, (long long)vb.rows, (long long)vb.cols,
                   (long long)vc.rows, (long long)vc.cols, (long long)batch);
  if (batch == 0 || vc.rows == 0 || vc.cols == 0) return F2_OK;
  if (va.cols == 0) /* empty sum: out = beta * out, with beta == 0 ignoring what out held (BLAS) */
    return beta == 0.0f ? f2_cuda_fill(out, 0.0) : f2_cuda_binary_scalar(out, out, beta, F2_OP_MUL);
  if (batch > 1 && vc.batch_stride == 0) return F2_FAIL(F2_ERR_ARG, "matmul: output batch stride is 0");
  F2_TRY(init_once());

  /* cuBLASLt takes equal input types (f32, bf16, f16) and an output of that type or f32. */
  int32_t in_dtype = a->dtype == b->dtype && f2_host_dtype_is_float(a->dtype) ? a->dtype : F2_F32;
  Temp ta, tb, tc;
  Layout l;
  if (a->dtype != in_dtype || !layout_of(va, 1, &l)) {
    F2_TRY(ta.make(in_dtype, a, 1));
    va = view_of(ta.t, trans_a);
  }
  if (b->dtype != in_dtype || !layout_of(vb, 1, &l)) {
    F2_TRY(tb.make(in_dtype, b, 1));
    vb = view_of(tb.t, trans_b);
  }
  int out_ok = out->dtype == F2_F32 || out->dtype == in_dtype;
  int c_colmajor = layout_of(vc, 0, &l), c_rowmajor = layout_of(transposed(vc), 0, &l);
  if (!out_ok || !(c_colmajor || c_rowmajor)) {
    F2_TRY(tc.make(out_ok ? out->dtype : F2_F32, out, beta != 0.0f));
    vc = view_of(tc.t, 0);
    c_colmajor = 0;
  }
  if (c_colmajor) F2_TRY(run(va, vb, vc, vc, batch, alpha, beta));
  else F2_TRY(run(transposed(vb), transposed(va), transposed(vc), transposed(vc), batch, alpha, beta));
  if (tc.t) F2_TRY(f2_cuda_copy(out, tc.t));
  return F2_OK;
}

/* out = alpha op(a) op(b) + beta c. When c has out's dtype and strides and out goes to cuBLASLt as it
 * is, c is cuBLASLt's C and out its D (one pass); otherwise c is copied into out first and the plain
 * matmul accumulates onto it. c may be out; the dispatch checked shapes, dtypes and overlaps. */
extern "C" int f2_cuda_matmul_add(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t trans_a,
                                  int32_t trans_b, float alpha, const f2_tensor *c, float beta) {
  bool same_layout = c->dtype == out->dtype && c->ndim == out->ndim;
  for (int d = 0; same_layout && d < out->ndim; d++)
    same_layout = c->shape[d] == out->shape[d] && (c->stride[d] == out->stride[d] || c->shape[d] == 1);
  if (c->data == out->data || beta == 0.0f || !same_layout || out->ndim < 2 || out->ndim > 3 ||
      a->ndim != out->ndim || b->ndim != out->ndim || a->dtype != b->dtype || !f2_host_dtype_is_float(a->dtype) ||
      (out->dtype != F2_F32 && out->dtype != a->dtype)) {
    if (c->data != out->data && beta != 0.0f) F2_TRY(f2_cuda_copy(out, c));
    return f2_cuda_matmul(out, a, b, trans_a, trans_b, alpha, beta);
  }
  View va = view_of(a, trans_a), vb = view_of(b, trans_b), vd = view_of(out, 0), vc = view_of(c, 0);
  int64_t batch = out->ndim == 3 ? out->shape[0] : 1;
  Layout l;
  int d_colmajor = layout_of(vd, 0, &l), d_rowmajor = layout_of(transposed(vd), 0, &l);
  if (va.rows != vd.rows || vb.cols != vd.cols || va.cols != vb.rows || va.cols == 0 || batch == 0 ||
      vd.rows == 0 || vd.cols == 0 || (batch > 1 && vd.batch_stride == 0) || !(d_colmajor || d_rowmajor)) {
    F2_TRY(f2_cuda_copy(out, c));   /* shapes the plain matmul handles (or rejects) */
    return f2_cuda_matmul(out, a, b, trans_a, trans_b, alpha, beta);
  }
  F2_TRY(init_once());
  Temp ta, tb;
  if (!layout_of(va, 1, &l)) {
    F2_TRY(ta.make(a->dtype, a, 1));
    va = view_of(ta.t, trans_a);
  }
  if (!layout_of(vb, 1, &l)) {
    F2_TRY(tb.make(b->dtype, b, 1));
    vb = view_of(tb.t, trans_b);
  }
  if (d_colmajor) return run(va, vb, vc, vd, batch, alpha, beta);
  return run(transposed(vb), transposed(va), transposed(vc), transposed(vd), batch, alpha, beta);
}
