/* test_gpu_matmul_add.c — f2_matmul_add on CUDA (cuBLASLt with c as C, out as D) against the CPU
 * f2_matmul_add on the same fresh random inputs: every transpose, 2-D and batched, f32/bf16 inputs,
 * f32/bf16 out, odd sizes, c a separate tensor (the one-pass path), a transposed view (the copy-first
 * path), out itself, or not read (beta = 0, c NaN); c must come out untouched. Same call twice: bitwise
 * equal. A failed compare prints the bad count, the first bad index (got vs want), the max abs error. */
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

static f2_tensor *new_or_die(int32_t dtype, int32_t device, int nd, const int64_t *shape) {
  f2_tensor *t = f2_tensor_new(dtype, device, nd, shape);
  if (!t) {
    fprintf(stderr, "f2_tensor_new: %s\n", f2_last_error());
    exit(1);
  }
  return t;
}
static f2_tensor *randn(int32_t dtype, int64_t batch, int64_t rows, int64_t cols) {   /* CPU; batch 0: 2-D */
  int64_t shape[3] = {batch, rows, cols};
  f2_tensor *t = new_or_die(dtype, F2_CPU, batch ? 3 : 2, batch ? shape : shape + 1);
  CHECK_OK(f2_rand_normal(t, (uint64_t)rand_int(0, 1 << 30), 0, 1));
  return t;
}
/* A contiguous copy of t on device. */
static f2_tensor *on(int32_t device, const f2_tensor *t) {
  f2_tensor *c = new_or_die(t->dtype, device, t->ndim, t->shape);
  CHECK_OK(f2_copy(c, t));
  return c;
}
static double get(const f2_tensor *t, int64_t i) {   /* CPU, contiguous */
  if (t->dtype == F2_F32) return ((const float *)t->data)[i];
  uint32_t u = (uint32_t)((const uint16_t *)t->data)[i] << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static uint32_t bits(const f2_tensor *t, int64_t i) {
  return t->dtype == F2_BF16 ? ((const uint16_t *)t->data)[i] : ((const uint32_t *)t->data)[i];
}

/* GPU result vs CPU result: |err| <= rtol |want| + atol; atol = 1e-5 sqrt(K) max |want| covers the two
 * fp32 accumulation orders, rtol a bf16 step when out is bf16. A bf16 out also gets half a bf16 step of
 * the largest value: cuBLASLt may round op(a) op(b) to bf16 before its epilogue adds c (seen on an H200:
 * a 14 x 6 x 64 batch off by 2^-7 at max |want| ~ 2, and a cancelling sum off by 12 of its own ulps). */
static void compare(const char *what, const f2_tensor *got_dev, const f2_tensor *want, int64_t K) {
  f2_tensor *got = on(F2_CPU, got_dev);
  int64_t n = f2_tensor_numel(want), bad = 0, first = -1;
  double mx = 0, max_err = 0;
  for (int64_t i = 0; i < n; i++) mx = fmax(mx, fabs(get(want, i)));
  double rtol = want->dtype == F2_BF16 ? 0x1.0p-7 : 1e-5, atol = 1e-5 * sqrt((double)K) * mx + 1e-30;
  if (want->dtype == F2_BF16) atol += 0x1.0p-8 * mx;
  for (int64_t i = 0; i < n; i++) {
    double g = get(got, i), w = get(want, i), err = fabs(g - w);
    if (!(err <= atol + rtol * fabs(w))) {
      if (first < 0) first = i;
      bad++;
    }
    if (err > max_err || err != err) max_err = err;
  }
  CHECK(bad == 0, "%s: %lld of %lld off (rtol %g, atol %.3g); first at %lld: got %.9g want %.9g; max abs err %.3g",
        what, (long long)bad, (long long)n, rtol, atol, (long long)first, first >= 0 ? get(got, first) : 0.0,
        first >= 0 ? get(want, first) : 0.0, max_err);
  f2_tensor_free(got);
}
static void compare_bits(const char *what, const f2_tensor *x_dev, const f2_tensor *y_dev) {
  f2_tensor *x = on(F2_CPU, x_dev), *y = on(F2_CPU, y_dev);
  int64_t n = f2_tensor_numel(x), bad = 0, first = -1;
  for (int64_t i = 0; i < n; i++)
    if (bits(x, i) != bits(y, i)) bad++, first = first < 0 ? i : first;
  CHECK(bad == 0, "%s: %lld of %lld differ bitwise; first at %lld", what, (long long)bad, (long long)n,
        (long long)first);
  f2_tensor_free(x), f2_tensor_free(y);
}

enum { C_SEPARATE, C_STRIDED, C_IS_OUT, C_UNREAD, C_MODES };
static const char *mode_name[C_MODES] = {"c separate", "c strided view", "c = out", "beta 0, c NaN"};

static void one_case(int nd, int ta, int tb, int64_t M, int64_t N, int64_t K, int32_t din, int32_t dout, int mode) {
  int64_t batch = nd == 3 ? rand_int(1, 3) : 0;
  f2_tensor *a = ta ? randn(din, batch, K, M) : randn(din, batch, M, K);
  f2_tensor *b = tb ? randn(din, batch, N, K) : randn(din, batch, K, N);
  f2_tensor *out = randn(dout, batch, M, N), *c_store = NULL, *c;
  float alpha = (float)(uniform() * 2 - 0.5), beta = mode == C_UNREAD ? 0.0f : (float)(uniform() * 2 - 1);
  if (mode == C_STRIDED) {
    c_store = randn(dout, batch, N, M);
    c = f2_tensor_transpose(c_store, nd - 2, nd - 1);
  } else if (mode == C_IS_OUT) {
    c = f2_tensor_view(out);
  } else {
    c = randn(dout, batch, M, N);
    if (mode == C_UNREAD) CHECK_OK(f2_fill(c, NAN));
  }
  /* GPU copies: c (contiguous, or the same transposed view of a GPU copy of c's storage), out twice. */
  f2_tensor *ag = on(F2_CUDA, a), *bg = on(F2_CUDA, b), *og = on(F2_CUDA, out), *og2 = on(F2_CUDA, out);
  f2_tensor *cs_g = c_store ? on(F2_CUDA, c_store) : NULL, *cg, *cg2;
  if (mode == C_STRIDED) cg = f2_tensor_transpose(cs_g, nd - 2, nd - 1), cg2 = f2_tensor_view(cg);
  else if (mode == C_IS_OUT) cg = f2_tensor_view(og), cg2 = f2_tensor_view(og2);
  else cg = on(F2_CUDA, c), cg2 = f2_tensor_view(cg);
  f2_tensor *c_before = mode == C_IS_OUT ? NULL : on(F2_CPU, cg);
  char what[256];
  snprintf(what, sizeof what, "matmul_add %dD%s [%lld x %lld x %lld] %s %s%s-> %s, %s", nd, nd == 3 ? " batched" : "",
           (long long)M, (long long)N, (long long)K, f2_dtype_name(din), ta ? "a^T " : "", tb ? "b^T " : "",
           f2_dtype_name(dout), mode_name[mode]);
  CHECK_OK(f2_matmul_add(out, a, b, ta, tb, alpha, c, beta));
  int rc = f2_matmul_add(og, ag, bg, ta, tb, alpha, cg, beta);
  CHECK(rc == F2_OK, "%s: %s", what, f2_last_error());
  CHECK_OK(f2_matmul_add(og2, ag, bg, ta, tb, alpha, cg2, beta));
  if (rc == F2_OK) {
    compare(what, og, out, K);
    compare_bits("matmul_add deterministic", og2, og);
    if (c_before) {   /* c is only read */
      f2_tensor *c_after = on(F2_CPU, cg);
      int64_t n = f2_tensor_numel(c_before), changed = 0;
      for (int64_t i = 0; i < n; i++)   /* by bits, so NaN entries (beta 0) count too */
        changed += bits(c_before, i) != bits(c_after, i);
      CHECK(changed == 0, "%s: c changed in %lld elements", what, (long long)changed);
      f2_tensor_free(c_after);
    }
  }
  f2_tensor *all[] = {a, b, out, c_store, c, ag, bg, og, og2, cs_g, cg, cg2, c_before};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) f2_tensor_free(all[i]);
}

int main(void) {
  f2t_require_gpu();
  rng_state = f2t_seed();
  static const int32_t dtypes[2] = {F2_F32, F2_BF16};
  for (int nd = 2; nd <= 3; nd++)
    for (int t = 0; t < 4; t++)
      for (int din = 0; din < 2; din++)
        for (int dout = 0; dout < 2; dout++)
          for (int mode = 0; mode < C_MODES; mode++)
            one_case(nd, t & 1, t >> 1, rand_int(1, 70), rand_int(1, 70), rand_int(1, 90), dtypes[din], dtypes[dout],
                     mode);
  /* Sizes that fill tiles and ones that do not, in the training layouts: the down projection
   * x[T, 1536] @ W[576, 1536]^T + residual, bf16 in and out, and the f32 case. */
  for (int mode = 0; mode < C_MODES; mode++) {
    one_case(2, 0, 1, 512, 576, 1536, F2_BF16, F2_BF16, mode);
    one_case(2, 0, 1, 257, 576, 1536, F2_BF16, F2_BF16, mode);
    one_case(2, 0, 1, 300, 130, 77, F2_F32, F2_F32, mode);
  }
  one_case(3, 1, 0, 129, 65, 200, F2_BF16, F2_F32, C_SEPARATE);
  return f2t_done();
}
