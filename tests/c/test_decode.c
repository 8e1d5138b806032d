/* test_decode.c — f2_attention_decode (attention against a KV cache, for generation) against the
 * full-sequence f2_attention_forward on fresh random inputs: the sequence is decoded in random chunks
 * (a prefill, single tokens, short runs), the cache filled only up to the positions seen so far and
 * NaN beyond, so reading a future position would show. Also bf16 inputs and bad arguments. */
#include <string.h>

#include "f2test.h"

static uint64_t rng_state;
static double uniform(void) {   /* SplitMix64 */
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}
static double normal(void) { return sqrt(-2.0 * log(1.0 - uniform())) * cos(6.283185307179586 * uniform()); }

static f2_tensor *new_tensor(int32_t dtype, int ndim, const int64_t *shape) {
  f2_tensor *t = f2_tensor_new(dtype, F2_CPU, ndim, shape);
  if (!t) {
    fprintf(stderr, "f2_tensor_new failed: %s\n", f2_last_error());
    exit(1);
  }
  return t;
}
/* N(0, 1) entries in dtype (f32 or bf16, rounded by f2_copy). */
static f2_tensor *randn(int32_t dtype, int ndim, const int64_t *shape) {
  f2_tensor *f = new_tensor(F2_F32, ndim, shape);
  for (int64_t i = 0; i < f2_tensor_numel(f); i++) ((float *)f->data)[i] = (float)normal();
  if (dtype == F2_F32) return f;
  f2_tensor *t = new_tensor(dtype, ndim, shape);
  f2_copy(t, f);
  f2_tensor_free(f);
  return t;
}
/* A contiguous copy of rows [start, start+len) of dim 1 of t. */
static f2_tensor *rows(const f2_tensor *t, int64_t start, int64_t len) {
  f2_tensor *v = f2_tensor_narrow(t, 1, start, len);
  f2_tensor *c = f2_tensor_contiguous(v);
  f2_tensor_free(v);
  return c;
}
/* max |a - b| / max |b| over the float tensors a and b (same numel; any float dtype). */
static double rel_err(const f2_tensor *a, const f2_tensor *b) {
  int64_t n = f2_tensor_numel(a);
  f2_tensor *fa = new_tensor(F2_F32, a->ndim, a->shape), *fb = new_tensor(F2_F32, b->ndim, b->shape);
  f2_copy(fa, a), f2_copy(fb, b);
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    double x = ((float *)fa->data)[i], y = ((float *)fb->data)[i];
    num = isnan(x) || isnan(y) ? INFINITY : fmax(num, fabs(x - y));
    den = fmax(den, fabs(y));
  }
  f2_tensor_free(fa), f2_tensor_free(fb);
  return num / (den > 0 ? den : 1e-300);
}

/* Decodes a B x T sequence in random chunks and compares every chunk with the full forward's rows. */
static void test_decode(int32_t dtype, int64_t H, int64_t Hkv) {
  const int64_t B = 2, T = 13, Dh = 8, Tmax = T + 3;
  const float scale = 1.0f / sqrtf((float)Dh);
  int64_t qshape[4] = {B, T, H, Dh}, kshape[4] = {B, T, Hkv, Dh}, cshape[4] = {B, Tmax, Hkv, Dh};
  f2_tensor *q = randn(dtype, 4, qshape), *k = randn(dtype, 4, kshape), *v = randn(dtype, 4, kshape);
  f2_tensor *full = new_tensor(F2_F32, 4, qshape);
  CHECK_OK(f2_attention_forward(full, NULL, q, k, v, scale));
  f2_tensor *kc = new_tensor(dtype, 4, cshape), *vc = new_tensor(dtype, 4, cshape);
  CHECK_OK(f2_fill(kc, NAN));
  CHECK_OK(f2_fill(vc, NAN));
  int64_t n_past = 0, chunks = 0;
  double worst = 0;
  while (n_past < T) {
    /* First a prefill of 1..6 tokens, then mostly single tokens and now and then a short run. */
    int64_t len = chunks == 0 ? 1 + (int64_t)(uniform() * 6) : uniform() < 0.7 ? 1 : 1 + (int64_t)(uniform() * 3);
    if (len > T - n_past) len = T - n_past;
    /* The new keys and values go into the cache, as the model writes them before attending. */
    f2_tensor *kdst = f2_tensor_narrow(kc, 1, n_past, len), *vdst = f2_tensor_narrow(vc, 1, n_past, len);
    f2_tensor *ksrc = f2_tensor_narrow(k, 1, n_past, len), *vsrc = f2_tensor_narrow(v, 1, n_past, len);
    CHECK_OK(f2_copy(kdst, ksrc));
    CHECK_OK(f2_copy(vdst, vsrc));
    f2_tensor *qc = rows(q, n_past, len), *want = rows(full, n_past, len);
    f2_tensor *out = new_tensor(F2_F32, 4, qc->shape);
    CHECK_OK(f2_attention_decode(out, qc, kc, vc, n_past, scale));
    double e = rel_err(out, want);
    worst = fmax(worst, e);
    f2_tensor_free(kdst), f2_tensor_free(vdst), f2_tensor_free(ksrc), f2_tensor_free(vsrc);
    f2_tensor_free(qc), f2_tensor_free(want), f2_tensor_free(out);
    n_past += len;
    chunks++;
  }
  CHECK(worst < 1e-6, "%s H=%lld Hkv=%lld: decoded rows differ from the full forward by %g (%lld chunks)",
        f2_dtype_name(dtype), (long long)H, (long long)Hkv, worst, (long long)chunks);
  /* The whole sequence at once from an empty past is the full forward too (bf16 out this time). */
  f2_tensor *out = new_tensor(F2_BF16, 4, qshape);
  CHECK_OK(f2_attention_decode(out, q, kc, vc, 0, scale));
  CHECK(rel_err(out, full) < 1e-2, "bf16 out %g", rel_err(out, full));
  f2_tensor_free(out);
  f2_tensor_free(q), f2_tensor_free(k), f2_tensor_free(v), f2_tensor_free(full);
  f2_tensor_free(kc), f2_tensor_free(vc);
}

static void test_errors(void) {
  int64_t qshape[4] = {1, 2, 4, 8}, cshape[4] = {1, 5, 2, 8}, bad_heads[4] = {1, 5, 3, 8}, short_v[4] = {1, 4, 2, 8};
  f2_tensor *q = randn(F2_F32, 4, qshape), *out = new_tensor(F2_F32, 4, qshape);
  f2_tensor *kc = randn(F2_F32, 4, cshape), *vc = randn(F2_F32, 4, cshape);
  CHECK(f2_attention_decode(out, q, kc, vc, 4, 1.0f) == F2_ERR_ARG && strstr(f2_last_error(), "do not fit"),
        "overflowing the cache: %s", f2_last_error());
  CHECK(f2_attention_decode(out, q, kc, vc, -1, 1.0f) == F2_ERR_ARG && strstr(f2_last_error(), "n_past -1"),
        "negative n_past: %s", f2_last_error());
  CHECK_OK(f2_attention_decode(out, q, kc, vc, 3, 1.0f));   /* exactly full */
  f2_tensor *k3 = randn(F2_F32, 4, bad_heads), *v3 = randn(F2_F32, 4, bad_heads);
  CHECK(f2_attention_decode(out, q, k3, v3, 0, 1.0f) == F2_ERR_ARG && strstr(f2_last_error(), "multiple"),
        "heads: %s", f2_last_error());
  f2_tensor *vs = randn(F2_F32, 4, short_v);
  CHECK(f2_attention_decode(out, q, kc, vs, 0, 1.0f) == F2_ERR_ARG && strstr(f2_last_error(), "v_cache has shape"),
        "v_cache shape: %s", f2_last_error());
  f2_tensor *qt = f2_tensor_transpose(q, 1, 2);
  CHECK(f2_attention_decode(out, qt, kc, vc, 0, 1.0f) == F2_ERR_ARG && strstr(f2_last_error(), "contiguous"),
        "strided q: %s", f2_last_error());
  int64_t ishape[4] = {1, 2, 4, 8};
  f2_tensor *qi = new_tensor(F2_I32, 4, ishape);
  CHECK(f2_attention_decode(out, qi, kc, vc, 0, 1.0f) == F2_ERR_ARG && strstr(f2_last_error(), "dtype i32"),
        "i32 q: %s", f2_last_error());
  CHECK(f2_attention_decode(out, q, NULL, vc, 0, 1.0f) == F2_ERR_ARG && strstr(f2_last_error(), "k_cache is NULL"),
        "NULL cache: %s", f2_last_error());
  f2_tensor_free(q), f2_tensor_free(out), f2_tensor_free(kc), f2_tensor_free(vc), f2_tensor_free(k3);
  f2_tensor_free(v3), f2_tensor_free(vs), f2_tensor_free(qt), f2_tensor_free(qi);
}

int main(void) {
  rng_state = f2t_seed();
  for (int rep = 0; rep < 3; rep++) {
    test_decode(F2_F32, 4, 4);
    test_decode(F2_F32, 6, 2);
    test_decode(F2_BF16, 6, 3);
  }
  test_errors();
  return f2t_done();
}
