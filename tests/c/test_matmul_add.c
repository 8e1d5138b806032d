/* test_matmul_add.c — f2_matmul_add (out = alpha op(a) op(b) + beta c) on the CPU against a plain fp64
 * loop on fresh random inputs: every transpose, 2-D and batched, f32/bf16 inputs, f32/bf16 out, c a
 * separate tensor, a strided view (transposed storage), out itself, or not read (beta = 0 with c full of
 * NaN); then the argument checks (c's shape, dtype, a partial overlap with out). */
#include <string.h>

#include "f2test.h"

static uint64_t rng_state;
static double uniform(void) {   /* SplitMix64 */
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}
static int64_t rand_int(int64_t lo, int64_t hi) { return lo + (int64_t)(uniform() * (double)(hi - lo + 1)); }

static f2_tensor *new_or_die(int32_t dtype, int nd, const int64_t *shape) {
  f2_tensor *t = f2_tensor_new(dtype, F2_CPU, nd, shape);
  if (!t) {
    fprintf(stderr, "f2_tensor_new: %s\n", f2_last_error());
    exit(1);
  }
  return t;
}
/* N(0,1) entries, shape [batch,] rows, cols (batch 0: 2-D). */
static f2_tensor *randn(int32_t dtype, int64_t batch, int64_t rows, int64_t cols) {
  int64_t shape[3] = {batch, rows, cols};
  int nd = batch ? 3 : 2;
  f2_tensor *t = new_or_die(dtype, nd, batch ? shape : shape + 1);
  CHECK_OK(f2_rand_normal(t, (uint64_t)rand_int(0, 1 << 30), 0, 1));
  return t;
}
/* Element i of a CPU tensor of any layout (index over its logical row-major order). */
static double at(const f2_tensor *t, int64_t i) {
  int64_t off = 0;
  for (int d = t->ndim - 1; d >= 0; d--) {
    off += (i % t->shape[d]) * t->stride[d];
    i /= t->shape[d];
  }
  if (t->dtype == F2_F32) return ((const float *)t->data)[off];
  uint32_t u = (uint32_t)((const uint16_t *)t->data)[off] << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* got vs the fp64 loop: |err| <= 1e-5 (|alpha| sum |a b| + |beta c|) (fp32 accumulation), plus half a
 * bf16 step of the result when out is bf16. c_ref NULL: beta c is not added (beta = 0). */
static void check_result(const char *what, const f2_tensor *got, const f2_tensor *a, const f2_tensor *b, int ta,
                         int tb, float alpha, const f2_tensor *c_ref, float beta) {
  int nd = got->ndim;
  int64_t batch = nd == 3 ? got->shape[0] : 1, M = got->shape[nd - 2], N = got->shape[nd - 1];
  int64_t K = ta ? a->shape[nd - 2] : a->shape[nd - 1];
  int64_t bad = 0, first = -1;
  double worst = 0, first_got = 0, first_want = 0;
  for (int64_t bi = 0; bi < batch; bi++)
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = 0; j < N; j++) {
        double sum = 0, mag = 0;
        for (int64_t k = 0; k < K; k++) {
          int64_t ia = bi * M * K + (ta ? k * M + i : i * K + k), ib = bi * K * N + (tb ? j * K + k : k * N + j);
          double p = at(a, ia) * at(b, ib);
          sum += p, mag += fabs(p);
        }
        int64_t io = (bi * M + i) * N + j;
        double want = alpha * sum, bound = 1e-5 * fabs(alpha) * mag + 1e-30;
        if (c_ref) want += beta * at(c_ref, io), bound += 1e-5 * fabs(beta * at(c_ref, io));
        if (got->dtype == F2_BF16) bound += fabs(want) * 0x1.0p-8;
        double g = at(got, io), err = fabs(g - want);
        if (!(err <= bound)) {
          if (first < 0) first = io, first_got = g, first_want = want;
          bad++;
        }
        if (err / bound > worst) worst = err / bound;
      }
  CHECK(bad == 0, "%s: %lld of %lld off; first at %lld: got %.9g want %.9g (worst err/bound %.3g)", what,
        (long long)bad, (long long)(batch * M * N), (long long)first, first_got, first_want, worst);
}

/* One random case: c separate (contiguous or a transposed view), c = out, or beta = 0 with a NaN c. */
enum { C_SEPARATE, C_STRIDED, C_IS_OUT, C_UNREAD, C_MODES };
static const char *mode_name[C_MODES] = {"c separate", "c strided view", "c = out", "beta 0, c NaN"};

static void one_case(int nd, int ta, int tb, int64_t M, int64_t N, int64_t K, int32_t din, int32_t dout, int mode) {
  int64_t batch = nd == 3 ? rand_int(1, 3) : 0;
  f2_tensor *a = ta ? randn(din, batch, K, M) : randn(din, batch, M, K);
  f2_tensor *b = tb ? randn(din, batch, N, K) : randn(din, batch, K, N);
  f2_tensor *out = randn(dout, batch, M, N), *c = NULL, *c_store = NULL, *c_ref = NULL;
  float alpha = (float)(uniform() * 2 - 0.5), beta = mode == C_UNREAD ? 0.0f : (float)(uniform() * 2 - 1);
  if (mode == C_STRIDED) {   /* c[.., i, j] at j * M + i: out's shape, other strides */
    c_store = randn(dout, batch, N, M);
    c = f2_tensor_transpose(c_store, nd - 2, nd - 1);
  } else if (mode == C_IS_OUT) {
    c = f2_tensor_view(out);
  } else {
    c = randn(dout, batch, M, N);
    if (mode == C_UNREAD) CHECK_OK(f2_fill(c, NAN));
  }
  if (mode != C_UNREAD) {   /* what c held before the call (c may be out) */
    c_ref = new_or_die(dout, c->ndim, c->shape);
    CHECK_OK(f2_copy(c_ref, c));
  }
  char what[256];
  snprintf(what, sizeof what, "matmul_add %dD%s [%lld x %lld x %lld] %s%s -> %s, %s", nd, nd == 3 ? " batched" : "",
           (long long)M, (long long)N, (long long)K, ta ? "a^T " : "", tb ? "b^T" : "", f2_dtype_name(dout),
           mode_name[mode]);
  int rc = f2_matmul_add(out, a, b, ta, tb, alpha, c, beta);
  CHECK(rc == F2_OK, "%s: %s", what, f2_last_error());
  if (rc == F2_OK) check_result(what, out, a, b, ta, tb, alpha, c_ref, beta);
  f2_tensor_free(a), f2_tensor_free(b), f2_tensor_free(out), f2_tensor_free(c), f2_tensor_free(c_store);
  f2_tensor_free(c_ref);
}

static void test_errors(void) {
  int64_t s23[2] = {2, 3}, s34[2] = {3, 4}, s24[2] = {2, 4}, s42[2] = {4, 2}, s8[1] = {9};
  f2_tensor *a = new_or_die(F2_F32, 2, s23), *b = new_or_die(F2_F32, 2, s34), *out = new_or_die(F2_F32, 2, s24);
  f2_tensor *c_shape = new_or_die(F2_F32, 2, s42), *c_bf = new_or_die(F2_BF16, 2, s24);
  f2_tensor *flat = new_or_die(F2_F32, 1, s8);
  CHECK_OK(f2_fill(a, 1));
  CHECK_OK(f2_fill(b, 1));
  CHECK_OK(f2_fill(out, 0));
  CHECK(f2_matmul_add(out, a, b, 0, 0, 1, NULL, 1) != F2_OK, "a NULL c must fail");
  CHECK(f2_matmul_add(out, a, b, 0, 0, 1, c_shape, 1) != F2_OK, "c of another shape must fail");
  CHECK(f2_matmul_add(out, a, b, 0, 0, 1, c_bf, 1) != F2_OK, "c of another dtype must fail");
  CHECK(strstr(f2_last_error(), "dtype") != NULL, "the message names the dtype: %s", f2_last_error());
  /* out and c: [2, 4] windows one element apart in one buffer. */
  int64_t st[2] = {4, 1};
  f2_tensor *o = f2_tensor_as_strided(flat, 2, s24, st, 0), *cc = f2_tensor_as_strided(flat, 2, s24, st, 1);
  CHECK(o && cc, "as_strided: %s", f2_last_error());
  if (o && cc) {
    CHECK(f2_matmul_add(o, a, b, 0, 0, 1, cc, 1) != F2_OK, "c partly overlapping out must fail");
    CHECK(strstr(f2_last_error(), "overlap") != NULL, "the message says overlap: %s", f2_last_error());
  }
  f2_tensor_free(o), f2_tensor_free(cc);
  f2_tensor_free(a), f2_tensor_free(b), f2_tensor_free(out), f2_tensor_free(c_shape), f2_tensor_free(c_bf);
  f2_tensor_free(flat);
}

int main(void) {
  rng_state = f2t_seed();
  static const int32_t dtypes[2] = {F2_F32, F2_BF16};
  for (int nd = 2; nd <= 3; nd++)
    for (int t = 0; t < 4; t++)
      for (int din = 0; din < 2; din++)
        for (int dout = 0; dout < 2; dout++)
          for (int mode = 0; mode < C_MODES; mode++)
            one_case(nd, t & 1, t >> 1, rand_int(1, 40), rand_int(1, 40), rand_int(1, 70), dtypes[din], dtypes[dout],
                     mode);
  one_case(2, 0, 1, 64, 96, 160, F2_BF16, F2_BF16, C_SEPARATE);   /* a down projection's layout: x @ W^T + r */
  test_errors();
  return f2t_done();
}
