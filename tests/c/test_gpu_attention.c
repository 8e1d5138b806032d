/* test_gpu_attention.c — causal GQA attention on CUDA (kernels/attention.cu) against the CPU reference
 * (the same f2_attention_* calls on CPU tensors) on fresh random inputs (seed printed): forward out and
 * lse, backward dq dk dv, decode against a KV cache. f32 and bf16 (the bf16 head dims 64 and 128 take
 * the tensor-core kernels, others the plain fp32 path), T in {1, 17, 64, 129, 300} and longer, grouped
 * and plain heads, f32 and bf16 outputs and gradients, mixed input dtypes; backward and forward run
 * twice must give the same bits. Errors are measured against the largest magnitude of the reference
 * (fp32 1e-4, bf16 2e-2: P and dS go through bf16 GEMMs). Each failure prints the count of bad
 * elements, the first (index and coordinates, got vs want) and the max error. F2_TEST_VERBOSE=1 prints
 * every compare. All of that runs attention.cu's own kernels (F2_ATTN_CUDNN=0); the tensor-core cases
 * run again under every tile variant (F2_ATTN_VARIANT), and under cuDNN's fused attention, the default
 * where libcudnn loads (the test prints which cuDNN it found; where none loads these cases run
 * attention.cu's kernels again). Exit 77 without a GPU. */
#include <string.h>

#include "f2test.h"

static uint64_t seed;
static int verbose;
static char variant[64];   /* F2_ATTN_VARIANT while the variant cases run, for the labels */


/* Normal(0, std) values drawn in f32 on the CPU, rounded to dtype (CPU tensor). */
static f2_tensor *rand_cpu(int32_t dtype, int ndim, const int64_t *shape, double std) {
  f2_tensor *f = f2t_tensor(F2_F32, F2_CPU, ndim, shape);
  CHECK_OK(f2_rand_normal(f, seed++, 0, std));
  f2_tensor *c = f2t_copy_as(f, dtype, F2_CPU);
  f2_tensor_free(f);
  return c;
}

static void coords_text(char *buf, size_t size, const f2_tensor *t, int64_t i) {
  int64_t idx[8];
  for (int d = t->ndim - 1; d >= 0; d--) {
    idx[d] = i % t->shape[d];
    i /= t->shape[d];
  }
  int n = snprintf(buf, size, "[");
  for (int d = 0; d < t->ndim && n < (int)size; d++) n += snprintf(buf + n, size - n, d ? ",%lld" : "%lld", (long long)idx[d]);
  if (n < (int)size) snprintf(buf + n, size - n, "]");
}

/* got (any device, dtype) vs want: every |got - want| <= tol * max(max|want|, floor) (NaN only where want
 * is NaN); floor: the size below which want is rounding noise (0: none). */
static void compare_floor(const char *label, const char *what, const f2_tensor *got, const f2_tensor *want,
                          double tol, double floor) {
  f2_tensor *g = f2t_copy_as(got, F2_F32, F2_CPU), *w = f2t_copy_as(want, F2_F32, F2_CPU);
  const float *gv = g->data, *wv = w->data;
  int64_t n = f2_tensor_numel(w), bad = 0, first = -1;
  double max_want = 0, max_err = 0;
  for (int64_t i = 0; i < n; i++)
    if (fabs(wv[i]) > max_want) max_want = fabs(wv[i]);
  double ref = max_want > floor ? max_want : floor, bound = tol * (ref > 0 ? ref : 1);
  for (int64_t i = 0; i < n; i++) {
    double err = fabs((double)gv[i] - wv[i]);
    int ok = isnan(wv[i]) ? isnan(gv[i]) : err <= bound;
    if (!ok) {
      if (first < 0) first = i;
      bad++;
    }
    if (!(err <= max_err)) max_err = err;   /* NaN counts as the largest */
  }
  if (bad) {
    char at[96];
    coords_text(at, sizeof at, w, first);
    CHECK(bad == 0, "%s %s: %lld of %lld elements off by more than %.3g (%g x max(max |want| %.4g, floor %.4g)); "
                    "first at %lld %s: got %.7g want %.7g; max abs err %.3g = %.3g x max |want|",
          label, what, (long long)bad, (long long)n, bound, tol, max_want, floor, (long long)first, at, gv[first],
          wv[first], max_err, max_want > 0 ? max_err / max_want : max_err);
  } else {
    f2t_passed++;
    if (verbose)
      printf("ok %s %s: n=%lld, max abs err %.3g = %.3g x max |want| %.4g\n", label, what, (long long)n, max_err,
             max_want > 0 ? max_err / max_want : max_err, max_want);
  }
  f2_tensor_free(g);
  f2_tensor_free(w);
}

static void compare(const char *label, const char *what, const f2_tensor *got, const f2_tensor *want, double tol) {
  compare_floor(label, what, got, want, tol, 0);
}

/* Two GPU results must be bit for bit equal. */
static void compare_bits(const char *label, const char *what, const f2_tensor *a, const f2_tensor *b) {
  f2_tensor *ha = f2t_copy_as(a, a->dtype, F2_CPU), *hb = f2t_copy_as(b, b->dtype, F2_CPU);
  size_t n = f2_tensor_nbytes(ha), esz = f2_dtype_size(ha->dtype), first = n;
  const unsigned char *pa = ha->data, *pb = hb->data;
  for (size_t i = 0; i < n && first == n; i++)
    if (pa[i] != pb[i]) first = i;
  CHECK(first == n, "%s %s: two runs differ, first at element %zu", label, what, first / esz);
  f2_tensor_free(ha);
  f2_tensor_free(hb);
}

static double tol_for(int32_t dtype) { return dtype == F2_BF16 ? 2e-2 : 1e-4; }

typedef struct {
  int64_t B, T, H, Hkv, D;
  int32_t q_dtype, kv_dtype;   /* inputs (q and dout; k and v) */
  int32_t out_dtype, grad_dtype;
  double q_std;                /* larger: sharper softmax */
  float scale;
} attn_case;

static void run_case(attn_case c) {
  char label[224];
  snprintf(label, sizeof label, "[B=%lld T=%lld H=%lld/%lld D=%lld q %s kv %s out %s grads %s q_std %g%s%s]",
           (long long)c.B, (long long)c.T, (long long)c.H, (long long)c.Hkv, (long long)c.D, f2_dtype_name(c.q_dtype),
           f2_dtype_name(c.kv_dtype), f2_dtype_name(c.out_dtype), f2_dtype_name(c.grad_dtype), c.q_std,
           variant[0] ? " variant " : "", variant);
  if (verbose) printf("case %s\n", label);
  int64_t qs[4] = {c.B, c.T, c.H, c.D}, ks[4] = {c.B, c.T, c.Hkv, c.D}, ls[3] = {c.B, c.H, c.T};
  f2_tensor *q = rand_cpu(c.q_dtype, 4, qs, c.q_std), *k = rand_cpu(c.kv_dtype, 4, ks, 1.0);
  f2_tensor *v = rand_cpu(c.kv_dtype, 4, ks, 1.0), *dout = rand_cpu(c.q_dtype, 4, qs, 1.0);
  f2_tensor *gq = f2t_copy_as(q, q->dtype, F2_CUDA), *gk = f2t_copy_as(k, k->dtype, F2_CUDA);
  f2_tensor *gv = f2t_copy_as(v, v->dtype, F2_CUDA), *gdout = f2t_copy_as(dout, dout->dtype, F2_CUDA);
  double tol = tol_for(c.q_dtype == F2_BF16 || c.kv_dtype == F2_BF16 ? F2_BF16 : F2_F32);

  /* Forward: CPU reference in f32, GPU into out_dtype; then again for the bits. */
  f2_tensor *out = f2t_tensor(F2_F32, F2_CPU, 4, qs), *lse = f2t_tensor(F2_F32, F2_CPU, 3, ls);
  f2_tensor *gout = f2t_tensor(c.out_dtype, F2_CUDA, 4, qs), *glse = f2t_tensor(F2_F32, F2_CUDA, 3, ls);
  f2_tensor *gout2 = f2t_tensor(c.out_dtype, F2_CUDA, 4, qs), *glse2 = f2t_tensor(F2_F32, F2_CUDA, 3, ls);
  CHECK_OK(f2_attention_forward(out, lse, q, k, v, c.scale));
  CHECK_OK(f2_attention_forward(gout, glse, gq, gk, gv, c.scale));
  CHECK_OK(f2_attention_forward(gout2, glse2, gq, gk, gv, c.scale));
  compare(label, "forward out", gout, out, c.out_dtype == F2_BF16 ? 2e-2 : tol);
  compare(label, "forward lse", glse, lse, tol == 1e-4 ? 1e-5 : 1e-3);   /* scores are exact products: tight */
  compare_bits(label, "forward out", gout, gout2);
  compare_bits(label, "forward lse", glse, glse2);
  CHECK_OK(f2_attention_forward(gout2, NULL, gq, gk, gv, c.scale));   /* lse not wanted */
  compare_bits(label, "forward out without lse", gout, gout2);

  /* Backward from the same out (the CPU's, rounded to q's dtype) and lse on both sides. */
  f2_tensor *out_in = f2t_copy_as(out, c.q_dtype, F2_CPU), *gout_in = f2t_copy_as(out_in, c.q_dtype, F2_CUDA);
  f2_tensor *glse_in = f2t_copy_as(lse, F2_F32, F2_CUDA);
  f2_tensor *dq = f2t_tensor(F2_F32, F2_CPU, 4, qs), *dk = f2t_tensor(F2_F32, F2_CPU, 4, ks);
  f2_tensor *dv = f2t_tensor(F2_F32, F2_CPU, 4, ks);
  f2_tensor *g[2][3];
  for (int r = 0; r < 2; r++) {
    g[r][0] = f2t_tensor(c.grad_dtype, F2_CUDA, 4, qs);
    g[r][1] = f2t_tensor(c.grad_dtype, F2_CUDA, 4, ks);
    g[r][2] = f2t_tensor(c.grad_dtype, F2_CUDA, 4, ks);
    CHECK_OK(f2_fill(g[r][0], 12345.0));   /* overwritten, never accumulated into */
    CHECK_OK(f2_fill(g[r][1], 12345.0));
    CHECK_OK(f2_fill(g[r][2], 12345.0));
  }
  CHECK_OK(f2_attention_backward(dq, dk, dv, dout, q, k, v, out_in, lse, c.scale));
  for (int r = 0; r < 2; r++)
    CHECK_OK(f2_attention_backward(g[r][0], g[r][1], g[r][2], gdout, gq, gk, gv, gout_in, glse_in, c.scale));
  double gtol = c.grad_dtype == F2_BF16 && tol < 2e-2 ? 2e-2 : tol;
  /* dq and dk sum dS = P (dP - D) terms, dP ~ sqrt(Dh) for unit inputs. Where every row sees one key (T = 1)
   * P = 1 and dP - D cancels exactly, so both sides hold only the rounding noise of two dot products
   * (~1e-7, in different orders): measure against the scale of a dP term instead. */
  double gfloor = c.scale * sqrt((double)c.D);
  compare_floor(label, "backward dq", g[0][0], dq, gtol, gfloor);
  compare_floor(label, "backward dk", g[0][1], dk, gtol, gfloor * c.q_std);
  compare(label, "backward dv", g[0][2], dv, gtol);
  compare_bits(label, "backward dq", g[0][0], g[1][0]);
  compare_bits(label, "backward dk", g[0][1], g[1][1]);
  compare_bits(label, "backward dv", g[0][2], g[1][2]);

  f2_tensor *all[] = {q, k, v, dout, gq, gk, gv, gdout, out, lse, gout, glse, gout2, glse2, out_in, gout_in, glse_in,
                      dq, dk, dv, g[0][0], g[0][1], g[0][2], g[1][0], g[1][1], g[1][2]};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) f2_tensor_free(all[i]);
}

/* A cuDNN workspace over F2_CUDNN_WORKSPACE_MB (here 0 MiB; cuDNN's deterministic backward takes B H T^2
 * bf16): cuDNN declines the shape and attention.cu's kernels run, so the gradients are those of
 * F2_ATTN_CUDNN=0 bit for bit (cuDNN's differ from them in the last bits). A shape no other case uses:
 * graphs are built once per shape. */
static void run_cap_case(void) {
  const char *label = "[cuDNN workspace over F2_CUDNN_WORKSPACE_MB=0: B=1 T=301 H=4/2 D=64 bf16]";
  int64_t qs[4] = {1, 301, 4, 64}, ks[4] = {1, 301, 2, 64}, ls[3] = {1, 4, 301};
  const float scale = 0.125f;
  f2_tensor *host[4] = {rand_cpu(F2_BF16, 4, qs, 1.0), rand_cpu(F2_BF16, 4, ks, 1.0), rand_cpu(F2_BF16, 4, ks, 1.0),
                        rand_cpu(F2_BF16, 4, qs, 1.0)};
  f2_tensor *in[4];   /* q, k, v, dout on the GPU */
  for (int i = 0; i < 4; i++) in[i] = f2t_copy_as(host[i], F2_BF16, F2_CUDA);
  f2_tensor *out = f2t_tensor(F2_BF16, F2_CUDA, 4, qs), *lse = f2t_tensor(F2_F32, F2_CUDA, 3, ls);
  const char *cap = getenv("F2_CUDNN_WORKSPACE_MB");
  char cap_saved[32];
  snprintf(cap_saved, sizeof cap_saved, "%s", cap ? cap : "");
  setenv("F2_ATTN_CUDNN", "0", 1);
  CHECK_OK(f2_attention_forward(out, lse, in[0], in[1], in[2], scale));
  f2_tensor *g[2][3];   /* attention.cu's kernels; cuDNN over its cap */
  for (int r = 0; r < 2; r++) {
    g[r][0] = f2t_tensor(F2_BF16, F2_CUDA, 4, qs);
    g[r][1] = f2t_tensor(F2_BF16, F2_CUDA, 4, ks);
    g[r][2] = f2t_tensor(F2_BF16, F2_CUDA, 4, ks);
    if (r == 1) {
      setenv("F2_ATTN_CUDNN", "1", 1);
      setenv("F2_CUDNN_WORKSPACE_MB", "0", 1);
    }
    CHECK_OK(f2_attention_backward(g[r][0], g[r][1], g[r][2], in[3], in[0], in[1], in[2], out, lse, scale));
  }
  if (cap)
    setenv("F2_CUDNN_WORKSPACE_MB", cap_saved, 1);
  else
    unsetenv("F2_CUDNN_WORKSPACE_MB");
  compare_bits(label, "backward dq", g[0][0], g[1][0]);
  compare_bits(label, "backward dk", g[0][1], g[1][1]);
  compare_bits(label, "backward dv", g[0][2], g[1][2]);
  f2_tensor *all[] = {host[0], host[1], host[2], host[3], in[0], in[1], in[2], in[3], out, lse,
                      g[0][0], g[0][1], g[0][2], g[1][0], g[1][1], g[1][2]};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) f2_tensor_free(all[i]);
}

/* Decode: Tq queries at positions n_past.. against caches of Tmax positions. */
static void run_decode(int64_t B, int64_t Tq, int64_t n_past, int64_t Tmax, int64_t H, int64_t Hkv, int64_t D,
                       int32_t dtype) {
  char label[128];
  snprintf(label, sizeof label, "[decode B=%lld Tq=%lld n_past=%lld Tmax=%lld H=%lld/%lld D=%lld %s]", (long long)B,
           (long long)Tq, (long long)n_past, (long long)Tmax, (long long)H, (long long)Hkv, (long long)D,
           f2_dtype_name(dtype));
  int64_t qs[4] = {B, Tq, H, D}, cs[4] = {B, Tmax, Hkv, D};
  f2_tensor *q = rand_cpu(dtype, 4, qs, 1.5), *kc = rand_cpu(dtype, 4, cs, 1.0), *vc = rand_cpu(dtype, 4, cs, 1.0);
  f2_tensor *gq = f2t_copy_as(q, dtype, F2_CUDA), *gk = f2t_copy_as(kc, dtype, F2_CUDA), *gv = f2t_copy_as(vc, dtype, F2_CUDA);
  f2_tensor *out = f2t_tensor(F2_F32, F2_CPU, 4, qs), *gout = f2t_tensor(dtype, F2_CUDA, 4, qs);
  float scale = 1.0f / sqrtf((float)D);
  CHECK_OK(f2_attention_decode(out, q, kc, vc, n_past, scale));
  CHECK_OK(f2_attention_decode(gout, gq, gk, gv, n_past, scale));
  compare(label, "decode out", gout, out, tol_for(dtype));
  f2_tensor *all[] = {q, kc, vc, gq, gk, gv, out, gout};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) f2_tensor_free(all[i]);
}

int main(void) {
  f2t_require_gpu();
  seed = f2t_seed();
  verbose = getenv("F2_TEST_VERBOSE") && atoi(getenv("F2_TEST_VERBOSE"));
  static const int64_t heads[3][2] = {{9, 3}, {4, 4}, {8, 2}};
  static const int64_t seqs[] = {1, 17, 64, 129, 300};
  static const int64_t head_dims[] = {64, 128, 96, 32};
  static const int32_t dtypes[] = {F2_F32, F2_BF16};
  /* attention.cu's kernels first; cuDNN's own section below. */
  const char *cudnn_env = getenv("F2_ATTN_CUDNN");
  char cudnn_saved[16];
  snprintf(cudnn_saved, sizeof cudnn_saved, "%s", cudnn_env ? cudnn_env : "");
  setenv("F2_ATTN_CUDNN", "0", 1);
  int n = 0;
  /* Every dtype x head_dim x T, the head layouts and batch sizes cycling through. */
  for (int di = 0; di < 2; di++)
    for (int hd = 0; hd < 4; hd++)
      for (int ti = 0; ti < 5; ti++, n++) {
        int32_t dt = dtypes[di];
        attn_case c = {1 + n % 2, seqs[ti], heads[n % 3][0], heads[n % 3][1], head_dims[hd], dt, dt, dt, dt,
                       n % 2 ? 2.5 : 1.0, 1.0f / sqrtf((float)head_dims[hd])};
        run_case(c);
      }
  /* The tensor-core path over many blocks (uneven last block), f32 outputs and gradients from bf16
   * inputs, another scale. */
  run_case((attn_case){1, 517, 4, 2, 64, F2_BF16, F2_BF16, F2_F32, F2_F32, 1.0, 0.125f});
  run_case((attn_case){2, 700, 6, 1, 128, F2_BF16, F2_BF16, F2_BF16, F2_F32, 2.0, 0.0883883f});
  run_case((attn_case){1, 1024, 2, 2, 64, F2_BF16, F2_BF16, F2_BF16, F2_BF16, 3.0, 0.125f});
  /* Mixed input dtypes take the plain path. */
  run_case((attn_case){2, 77, 4, 2, 64, F2_BF16, F2_F32, F2_F32, F2_F32, 1.0, 0.125f});
  run_case((attn_case){1, 50, 3, 1, 128, F2_F32, F2_BF16, F2_BF16, F2_F32, 1.0, 0.0883883f});
  /* A head_dim the tensor cores don't take, past 128 threads' first pass. */
  run_case((attn_case){1, 40, 2, 1, 200, F2_BF16, F2_BF16, F2_BF16, F2_BF16, 1.0, 0.07f});

  /* Every tile variant of the tensor-core kernels (F2_ATTN_VARIANT; the lists' lengths per head dim as in
   * attention.cu's kCount64 / kCount128; head dim 64's dK/dV list ends with the Hopper kernels, which on
   * another GPU run the mma.sync default) on uneven shapes, one key block (T = 1 and 17), grouped heads.
   * The default ran above. */
  static const int counts[2][3] = {{6, 5, 17}, {5, 5, 10}};   /* fwd, dq, kv: head_dim 64, 128 */
  static const attn_case vcases[] = {
      {1, 333, 9, 3, 64, F2_BF16, F2_BF16, F2_BF16, F2_BF16, 2.0, 0.125f},
      {2, 130, 4, 2, 128, F2_BF16, F2_BF16, F2_BF16, F2_F32, 1.0, 0.0883883f},
      {1, 17, 6, 3, 64, F2_BF16, F2_BF16, F2_F32, F2_BF16, 1.0, 0.125f},
      {2, 1, 4, 1, 128, F2_BF16, F2_BF16, F2_BF16, F2_BF16, 2.5, 0.0883883f},
      {1, 700, 2, 1, 64, F2_BF16, F2_BF16, F2_BF16, F2_BF16, 3.0, 0.125f},
  };
  const char *env = getenv("F2_ATTN_VARIANT");
  char saved[256];
  snprintf(saved, sizeof saved, "%s", env ? env : "");
  for (int vi = 0; vi < 17; vi++)
    for (size_t ci = 0; ci < sizeof vcases / sizeof *vcases; ci++) {
      const int *n = counts[vcases[ci].D == 64 ? 0 : 1];
      if (vi >= n[0] && vi >= n[1] && vi >= n[2]) continue;
      snprintf(variant, sizeof variant, "fwd=%d,dq=%d,kv=%d", vi < n[0] ? vi : n[0] - 1, vi < n[1] ? vi : n[1] - 1,
               vi < n[2] ? vi : n[2] - 1);
      setenv("F2_ATTN_VARIANT", variant, 1);
      run_case(vcases[ci]);
    }
  variant[0] = 0;
  if (env)
    setenv("F2_ATTN_VARIANT", saved, 1);
  else
    unsetenv("F2_ATTN_VARIANT");

  /* cuDNN's fused attention (kernels/attention_cudnn.cpp) on the tensor-core cases, where libcudnn loads;
   * elsewhere they run attention.cu's kernels again. */
  setenv("F2_ATTN_CUDNN", "1", 1);
  char info[2048];
  f2_build_info(info, sizeof info);
  const char *line = strstr(info, "cuDNN attention:");
  printf("%.*s\n", line ? (int)strcspn(line, "\n") : 24, line ? line : "cuDNN attention: (no line)");
  snprintf(variant, sizeof variant, "cudnn");
  for (size_t ci = 0; ci < sizeof vcases / sizeof *vcases; ci++) run_case(vcases[ci]);
  run_case((attn_case){1, 517, 4, 2, 64, F2_BF16, F2_BF16, F2_BF16, F2_BF16, 1.0, 0.125f});
  run_case((attn_case){2, 700, 6, 1, 128, F2_BF16, F2_BF16, F2_BF16, F2_BF16, 2.0, 0.0883883f});
  run_case((attn_case){1, 1024, 2, 2, 64, F2_BF16, F2_BF16, F2_BF16, F2_BF16, 3.0, 0.125f});
  variant[0] = 0;
  run_cap_case();
  if (cudnn_env)
    setenv("F2_ATTN_CUDNN", cudnn_saved, 1);
  else
    unsetenv("F2_ATTN_CUDNN");

  for (int di = 0; di < 2; di++)
    for (int hd = 0; hd < 3; hd++) {
      run_decode(2, 1, 37, 64, 9, 3, head_dims[hd], dtypes[di]);
      run_decode(1, 5, 130, 200, 8, 2, head_dims[hd], dtypes[di]);
      run_decode(2, 5, 1, 6, 4, 4, head_dims[hd], dtypes[di]);
    }
  return f2t_done();
}
