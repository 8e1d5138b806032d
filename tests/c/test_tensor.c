/* test_tensor.c — tensor geometry and casts on the CPU: views (narrow, select, transpose, permute,
 * expand, as_strided, reshape) against index arithmetic done here, their range errors, storage
 * refcounts, and the bf16/f16 conversions against rounding references built from libm (nearbyint,
 * ldexp), not from bit tricks: exhaustive over f16, random over fp32 bit patterns. */
#include <string.h>

#include "f2_internal.h"
#include "f2test.h"

static uint64_t rng_state;
static uint64_t next_u64(void) { /* xorshift64*: the test's own inputs, independent of f2_rng.h */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545F4914F6CDD1Dull;
}
static int64_t rand_int(int64_t lo, int64_t hi) { return lo + (int64_t)(next_u64() % (uint64_t)(hi - lo + 1)); }

static float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static uint32_t float_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

/* A contiguous f32 tensor whose element at row-major index i holds i. */
static f2_tensor *iota(int32_t ndim, const int64_t *shape) {
  f2_tensor *t = f2_tensor_new(F2_F32, F2_CPU, ndim, shape);
  float *p = t->data;
  for (int64_t i = 0; i < f2_tensor_numel(t); i++) p[i] = (float)i;
  return t;
}

/* Element at a multi-index, by the view's own strides. */
static float at(const f2_tensor *t, const int64_t *idx) {
  int64_t off = 0;
  for (int i = 0; i < t->ndim; i++) off += idx[i] * t->stride[i];
  return ((const float *)t->data)[off];
}

/* Advances a row-major multi-index over shape; 0 when done. */
static int next_index(int32_t ndim, const int64_t *shape, int64_t *idx) {
  for (int d = ndim - 1; d >= 0; d--) {
    if (++idx[d] < shape[d]) return 1;
    idx[d] = 0;
  }
  return 0;
}

static int error_mentions(const char *text) { return strstr(f2_last_error(), text) != NULL; }

/* ---------------------------------------------------------------- views */

static void test_views(void) {
  int64_t shape[3] = {rand_int(2, 6), rand_int(2, 7), rand_int(2, 8)};
  int64_t S0 = shape[0], S1 = shape[1], S2 = shape[2];
  f2_tensor *t = iota(3, shape);
  CHECK(f2_tensor_is_contiguous(t), "fresh tensor is contiguous");
  CHECK(f2_tensor_refcount(t) == 1, "refcount %d", f2_tensor_refcount(t));

  /* narrow(1, start, len): element (i, j, k) is t[i, start + j, k]. */
  int64_t start = rand_int(0, S1 - 1), len = rand_int(0, S1 - start);
  f2_tensor *n = f2_tensor_narrow(t, 1, start, len);
  CHECK(n && n->shape[1] == len && f2_tensor_refcount(t) == 2, "narrow shape/refcount");
  int bad = 0;
  for (int64_t i = 0; i < S0; i++)
    for (int64_t j = 0; j < len; j++)
      for (int64_t k = 0; k < S2; k++) bad += at(n, (int64_t[]){i, j, k}) != (float)(i * S1 * S2 + (start + j) * S2 + k);
  CHECK(bad == 0, "narrow values: %d wrong", bad);
  CHECK(len == S1 || len <= 1 || S0 == 1 || !f2_tensor_is_contiguous(n), "a narrowed middle dim is strided");

  /* select(2, k): drops the dim. */
  int64_t ks = rand_int(0, S2 - 1);
  f2_tensor *s = f2_tensor_select(t, 2, ks);
  CHECK(s && s->ndim == 2 && s->shape[0] == S0 && s->shape[1] == S1, "select shape");
  bad = 0;
  for (int64_t i = 0; i < S0; i++)
    for (int64_t j = 0; j < S1; j++) bad += at(s, (int64_t[]){i, j}) != (float)(i * S1 * S2 + j * S2 + ks);
  CHECK(bad == 0, "select values: %d wrong", bad);

  /* permute by a random permutation: p[d0, d1, d2] = t[idx with idx[perm[d]] = d-th index]. */
  int32_t perm[3] = {0, 1, 2};
  for (int i = 2; i > 0; i--) {
    int j = (int)rand_int(0, i);
    int32_t x = perm[i];
    perm[i] = perm[j];
    perm[j] = x;
  }
  f2_tensor *p = f2_tensor_permute(t, perm);
  bad = 0;
  int64_t pidx[3] = {0}, src[3];
  do {
    for (int d = 0; d < 3; d++) src[perm[d]] = pidx[d];
    bad += at(p, pidx) != at(t, src);
  } while (next_index(3, p->shape, pidx));
  CHECK(bad == 0, "permute (%d,%d,%d): %d wrong", perm[0], perm[1], perm[2], bad);

  /* transpose(0, 2) == permute(2, 1, 0). */
  f2_tensor *tr = f2_tensor_transpose(t, 0, 2);
  CHECK(tr && tr->shape[0] == S2 && tr->shape[2] == S0 && tr->stride[0] == 1 && tr->stride[2] == S1 * S2,
        "transpose geometry");
  CHECK(!f2_tensor_is_contiguous(tr), "transpose is not contiguous");

  /* expand [1, S1, 1] -> [3, S0, S1, S2] with stride 0 on broadcast dims. */
  f2_tensor *col = f2_tensor_narrow(s, 0, 0, 1); /* [1, S1] */
  f2_tensor *col3 = f2_tensor_reshape(col, 3, (int64_t[]){1, S1, 1});
  f2_tensor *e = f2_tensor_expand(col3, 4, (int64_t[]){3, S0, -1, S2});
  CHECK(e && e->ndim == 4 && e->stride[0] == 0 && e->stride[1] == 0 && e->stride[3] == 0 && e->shape[2] == S1,
        "expand geometry");
  bad = 0;
  int64_t eidx[4] = {0};
  do bad += at(e, eidx) != (float)(eidx[2] * S2 + ks);
  while (next_index(4, e->shape, eidx));
  CHECK(bad == 0, "expand values: %d wrong", bad);

  /* as_strided: the diagonal of the first [S1, S2] matrix, starting one element in. */
  int64_t diag = (S1 < S2 ? S1 : S2) - 1;
  f2_tensor *d = f2_tensor_as_strided(t, 1, (int64_t[]){diag}, (int64_t[]){S2 + 1}, 1);
  bad = 0;
  for (int64_t i = 0; d && i < diag; i++) bad += at(d, (int64_t[]){i}) != (float)(1 + i * (S2 + 1));
  CHECK(d && bad == 0, "as_strided diagonal: %d wrong", bad);
  /* ... and reaching back to the storage's start from a narrowed view is allowed. */
  f2_tensor *back = f2_tensor_as_strided(n, 1, (int64_t[]){2}, (int64_t[]){1}, -start * S2);
  CHECK(back && ((float *)back->data)[0] == 0.0f, "as_strided may reach back inside the storage");

  CHECK(f2_tensor_refcount(t) == 10, "9 views + t: refcount %d", f2_tensor_refcount(t));
  f2_tensor *views[] = {n, s, p, tr, col, col3, e, d, back};
  for (size_t i = 0; i < sizeof views / sizeof *views; i++) f2_tensor_free(views[i]);
  CHECK(f2_tensor_refcount(t) == 1, "views freed: refcount %d", f2_tensor_refcount(t));
  f2_tensor_free(t);
}

static void test_reshape(void) {
  int64_t a = rand_int(2, 5), b = rand_int(2, 5), c = 2 * rand_int(1, 4);
  f2_tensor *t = iota(3, (int64_t[]){a, b, c});
  /* Contiguous: any compatible shape is a view; -1 infers. */
  f2_tensor *flat = f2_tensor_reshape(t, 1, (int64_t[]){-1});
  CHECK(flat && flat->shape[0] == a * b * c && flat->data == t->data && flat->stride[0] == 1, "flatten view");
  f2_tensor *r = f2_tensor_reshape(t, 4, (int64_t[]){c / 2, -1, 1, 2});
  CHECK(r && r->shape[1] == a * b, "reshape with -1 and a size-1 dim");
  int bad = 0;
  int64_t idx[4] = {0};
  do bad += at(r, idx) != (float)(idx[0] * a * b * 2 + idx[1] * 2 + idx[3]);
  while (r && next_index(4, r->shape, idx));
  CHECK(bad == 0, "reshape values: %d wrong", bad);
  f2_tensor *one = f2_tensor_narrow(flat, 0, 3, 1), *scalar = f2_tensor_reshape(one, 0, NULL);
  CHECK(scalar && scalar->ndim == 0 && ((float *)scalar->data)[0] == 3.0f, "reshape to 0-dim");

  /* Transposed [b, a, c] can split or merge within its chunks ([b] [a] and [c] stay separate)... */
  f2_tensor *tr = f2_tensor_transpose(t, 0, 1);
  f2_tensor *split = f2_tensor_reshape(tr, 4, (int64_t[]){b, a, c / 2, 2});
  CHECK(split != NULL, "splitting the contiguous last dim of a transposed tensor is a view: %s", f2_last_error());
  bad = 0;
  int64_t sidx[4] = {0};
  do bad += split && at(split, sidx) != (float)(sidx[1] * b * c + sidx[0] * c + sidx[2] * 2 + sidx[3]);
  while (split && next_index(4, split->shape, sidx));
  CHECK(bad == 0, "split values: %d wrong", bad);
  /* ... but cannot merge the swapped dims. */
  f2_clear_error();
  f2_tensor *merged = f2_tensor_reshape(tr, 2, (int64_t[]){a * b, c});
  CHECK(merged == NULL && error_mentions("contiguous first"), "non-viewable reshape fails: %s", f2_last_error());
  CHECK(f2_tensor_reshape(t, 2, (int64_t[]){-1, -1}) == NULL && error_mentions("more than one -1"), "two -1");
  CHECK(f2_tensor_reshape(t, 2, (int64_t[]){a * b * c + 1, 1}) == NULL && error_mentions("elements"),
        "numel mismatch: %s", f2_last_error());
  CHECK(f2_tensor_reshape(t, 2, (int64_t[]){7 * a * b * c, -1}) == NULL && error_mentions("cannot infer"),
        "bad -1: %s", f2_last_error());
  /* Empty tensors reshape freely. */
  f2_tensor *empty = f2_tensor_new(F2_F32, F2_CPU, 2, (int64_t[]){0, 4});
  f2_tensor *er = f2_tensor_reshape(empty, 3, (int64_t[]){2, 0, -1});
  CHECK(er == NULL, "-1 with a zero-size dim is ambiguous");
  er = f2_tensor_reshape(empty, 3, (int64_t[]){2, 0, 5});
  CHECK(er && er->shape[2] == 5, "empty reshape");
  f2_tensor *frees[] = {flat, r, one, scalar, tr, split, empty, er, t};
  for (size_t i = 0; i < sizeof frees / sizeof *frees; i++) f2_tensor_free(frees[i]);
}

static void test_view_errors(void) {
  f2_tensor *t = iota(2, (int64_t[]){3, 4});
  f2_clear_error();
  CHECK(f2_tensor_narrow(t, 2, 0, 1) == NULL && error_mentions("narrow: dim 2 out of range"), "%s", f2_last_error());
  CHECK(f2_tensor_narrow(t, 1, 3, 2) == NULL && error_mentions("[3, 5) out of range"), "%s", f2_last_error());
  CHECK(f2_tensor_narrow(t, 1, -1, 1) == NULL, "negative start");
  CHECK(f2_tensor_select(t, 0, 3) == NULL && error_mentions("index 3 out of range"), "%s", f2_last_error());
  CHECK(f2_tensor_select(t, -1, 0) == NULL && error_mentions("dim -1"), "%s", f2_last_error());
  CHECK(f2_tensor_permute(t, (int32_t[]){0, 0}) == NULL && error_mentions("not a permutation"), "%s", f2_last_error());
  CHECK(f2_tensor_transpose(t, 0, 5) == NULL && error_mentions("transpose"), "%s", f2_last_error());
  CHECK(f2_tensor_expand(t, 2, (int64_t[]){3, 5}) == NULL && error_mentions("cannot broadcast [3,4] to [3,5]"), "%s",
        f2_last_error());
  CHECK(f2_tensor_expand(t, 1, (int64_t[]){4}) == NULL && error_mentions("cannot hold"), "%s", f2_last_error());
  CHECK(f2_tensor_as_strided(t, 1, (int64_t[]){4}, (int64_t[]){4}, 1) == NULL && error_mentions("outside the storage"),
        "%s", f2_last_error());
  CHECK(f2_tensor_as_strided(t, 1, (int64_t[]){2}, (int64_t[]){-1}, 1) == NULL && error_mentions("negative"), "%s",
        f2_last_error());
  CHECK(f2_tensor_view(NULL) == NULL && error_mentions("NULL"), "%s", f2_last_error());
  /* Sizes whose byte count overflows must not under-allocate. */
  CHECK(f2_tensor_new(F2_F32, F2_CPU, 2, (int64_t[]){1ll << 40, 1ll << 22}) == NULL && error_mentions("too large"),
        "%s", f2_last_error());
  CHECK(f2_tensor_new(F2_F32, F2_CPU, 2, NULL) == NULL && error_mentions("shape is NULL"), "%s", f2_last_error());
  CHECK(f2_tensor_new(9, F2_CPU, 0, NULL) == NULL && error_mentions("unknown dtype 9"), "%s", f2_last_error());
  f2_tensor_free(t);
}

static int released;
static void count_release(void *owner) { released += *(int *)owner; }

static void test_refcounts(void) {
  static float buf[12];
  int weight = 1;
  released = 0;
  f2_tensor *w = f2_tensor_wrap(buf, F2_F32, F2_CPU, 2, (int64_t[]){3, 4}, count_release, &weight);
  f2_tensor *v1 = f2_tensor_transpose(w, 0, 1), *v2 = f2_tensor_select(v1, 0, 2);
  CHECK(f2_tensor_refcount(v2) == 3, "refcount %d", f2_tensor_refcount(v2));
  f2_tensor_free(w);
  f2_tensor_free(v1);
  CHECK(released == 0 && f2_tensor_refcount(v2) == 1, "storage lives while a view does");
  CHECK(v2->data == buf + 2 && v2->stride[0] == 4, "view of a view: data %p stride %lld", v2->data,
        (long long)v2->stride[0]);
  f2_tensor_free(v2);
  CHECK(released == 1, "release ran once with the last view (%d)", released);
  f2_tensor_free(NULL);

  /* Wrapped memory without a release callback stays the owner's: freeing the last view must not
   * free() it (a static buffer here: glibc aborts on such a free). */
  f2_tensor *borrowed = f2_tensor_wrap(buf, F2_F32, F2_CPU, 1, (int64_t[]){12}, NULL, NULL);
  CHECK(borrowed != NULL, "%s", f2_last_error());
  f2_tensor_free(borrowed);
  buf[0] = 1.0f;
  CHECK(buf[0] == 1.0f, "the borrowed buffer is still usable");
}

/* ---------------------------------------------------------------- bf16 / f16 */

/* Round-to-nearest-even references from libm: x scaled so one unit in the last place of the target
 * format is 1, rounded with nearbyint (RNE in the default mode), then assembled; a carry into the
 * next binade falls out of the code arithmetic. Returns the code without sign; NaN handled by callers. */
static uint16_t ref_round(double ax, int mant_bits, int bias, int max_exp_code) {
  int e;
  frexp(ax, &e); /* ax = f * 2^e, f in [0.5, 1) */
  int unbiased = e - 1, min_normal = 1 - bias;
  if (ax == 0) return 0;
  if (unbiased < min_normal) { /* denormal: units of 2^(min_normal - mant_bits) */
    double q = nearbyint(ldexp(ax, mant_bits - min_normal));
    return (uint16_t)q;
  }
  double q = nearbyint(ldexp(ax, mant_bits - unbiased)); /* in [2^m, 2^(m+1)] */
  long code = ((long)(unbiased + bias) << mant_bits) + (long)q - (1L << mant_bits);
  long inf = (long)max_exp_code << mant_bits;
  return (uint16_t)(code >= inf ? inf : code);
}

static double ref_decode(uint16_t h, int mant_bits, int bias, int exp_bits) {
  int exp_code = (h >> mant_bits) & ((1 << exp_bits) - 1), m = h & ((1 << mant_bits) - 1);
  double sign = (h >> (mant_bits + exp_bits)) ? -1 : 1;
  if (exp_code == (1 << exp_bits) - 1) return m ? NAN : sign * INFINITY;
  if (exp_code == 0) return sign * ldexp(m, 1 - bias - mant_bits);
  return sign * ldexp(m + (1 << mant_bits), exp_code - bias - mant_bits);
}

static void test_f16(void) {
  /* Every f16 decodes as ldexp says, and every non-NaN survives the round trip. */
  int bad_decode = 0, bad_trip = 0, nans = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    double want = ref_decode((uint16_t)h, 10, 15, 5);
    float got = f2_f16_to_f32((uint16_t)h);
    if (want != want) {
      nans++;
      bad_decode += got == got || (float_to_bits(got) >> 31) != (h >> 15);
      uint16_t back = f2_f32_to_f16(got);
      bad_trip += (back & 0x7c00u) != 0x7c00u || !(back & 0x3ffu) || (back >> 15) != (h >> 15);
      continue;
    }
    bad_decode += (double)got != want || (float_to_bits(got) >> 31) != (h >> 15);
    bad_trip += f2_f32_to_f16(got) != h;
  }
  CHECK(bad_decode == 0 && bad_trip == 0 && nans == 2046, "f16 exhaustive: %d decode, %d round trip wrong, %d NaNs",
        bad_decode, bad_trip, nans);

  /* Midpoints between neighbours tie to even; a hair above goes up, below goes down. */
  int bad_tie = 0;
  for (uint32_t h = 0; h < 0x7bff; h++) {
    double lo = ref_decode((uint16_t)h, 10, 15, 5), hi = ref_decode((uint16_t)(h + 1), 10, 15, 5);
    float mid = (float)((lo + hi) / 2); /* exact: f16 midpoints fit in fp32 */
    uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
    bad_tie += f2_f32_to_f16(mid) != even;
    bad_tie += f2_f32_to_f16(nextafterf(mid, INFINITY)) != h + 1;
    bad_tie += f2_f32_to_f16(nextafterf(mid, 0)) != h;
    bad_tie += f2_f32_to_f16(-mid) != (even | 0x8000u);
  }
  CHECK(bad_tie == 0, "f16 ties: %d wrong", bad_tie);
  /* The edges, spelled out. */
  CHECK(f2_f32_to_f16(65504.0f) == 0x7bff && f2_f32_to_f16(65519.99f) == 0x7bff, "max f16");
  CHECK(f2_f32_to_f16(65520.0f) == 0x7c00 && f2_f32_to_f16(1e10f) == 0x7c00 && f2_f32_to_f16(-1e10f) == 0xfc00,
        "overflow to Inf");
  CHECK(f2_f32_to_f16(INFINITY) == 0x7c00 && f2_f32_to_f16(-INFINITY) == 0xfc00, "Inf");
  CHECK(f2_f32_to_f16(0x1p-24f) == 0x0001 && f2_f32_to_f16(0x1p-25f) == 0 && f2_f32_to_f16(0x1.000002p-25f) == 1,
        "smallest denormal, and half of it ties to 0");
  CHECK(f2_f32_to_f16(-0.0f) == 0x8000 && f2_f32_to_f16(1e-30f) == 0 && f2_f32_to_f16(-1e-30f) == 0x8000, "zeros");
  CHECK(f2_f32_to_f16(0x1.ff8p-15f) == 0x03ff && f2_f32_to_f16(0x1.ffcp-15f) == 0x0400, "denormal rounds up to normal");
  uint16_t qn = f2_f32_to_f16(bits_to_float(0xffc00001u));
  CHECK((qn & 0xfe00u) == 0xfe00u, "NaN stays a quiet NaN with its sign: %04x", qn);
  uint16_t sn = f2_f32_to_f16(bits_to_float(0x7f800001u)); /* signalling NaN with only a low payload bit */
  CHECK((sn & 0x7c00u) == 0x7c00u && (sn & 0x3ffu), "signalling NaN does not become Inf: %04x", sn);

  /* Random fp32 bit patterns (all binades) against the libm reference. */
  int bad = 0;
  for (int i = 0; i < 1000000; i++) {
    uint32_t u = (uint32_t)next_u64();
    float x = bits_to_float(u);
    if (x != x) continue;
    uint16_t want = ref_round(fabs((double)x), 10, 15, 31) | (uint16_t)((u >> 16) & 0x8000u);
    uint16_t got = f2_f32_to_f16(x);
    if (got != want && bad++ < 5) fprintf(stderr, "f16(%a) = %04x, want %04x\n", x, got, want);
  }
  CHECK(bad == 0, "f16 random: %d wrong", bad);
#ifdef __FLT16_MAX__
  /* The compiler's own conversion agrees too, where it has one. */
  int bad_cc = 0;
  for (int i = 0; i < 200000; i++) {
    float x = bits_to_float((uint32_t)next_u64());
    if (x != x) continue;
    _Float16 h = (_Float16)x;
    uint16_t hb;
    memcpy(&hb, &h, 2);
    bad_cc += hb != f2_f32_to_f16(x);
  }
  CHECK(bad_cc == 0, "f16 vs _Float16: %d differ", bad_cc);
#endif
}

static void test_bf16(void) {
  int bad = 0;
  for (int i = 0; i < 1000000; i++) {
    uint32_t u = (uint32_t)next_u64();
    if (i < 1000) u = (u & 0x807fffffu) | (i & 1 ? 0 : 0x00800000u); /* plenty of denormals and tiny normals */
    float x = bits_to_float(u);
    if (x != x) continue;
    uint16_t want = ref_round(fabs((double)x), 7, 127, 255) | (uint16_t)((u >> 16) & 0x8000u);
    uint16_t got = f2_f32_to_bf16(x);
    if (got != want && bad++ < 5) fprintf(stderr, "bf16(%a) = %04x, want %04x\n", x, got, want);
  }
  CHECK(bad == 0, "bf16 random: %d wrong", bad);
  int bad_decode = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    double want = ref_decode((uint16_t)h, 7, 127, 8);
    double got = f2_bf16_to_f32((uint16_t)h);
    bad_decode += want == want ? got != want : got == got;
  }
  CHECK(bad_decode == 0, "bf16 exhaustive decode: %d wrong", bad_decode);
  CHECK(f2_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80 && f2_f32_to_bf16(1.0f + 0x3p-8f) == 0x3f82, "bf16 ties to even");
  CHECK(f2_f32_to_bf16(0x1.fefffep127f) == 0x7f7f && f2_f32_to_bf16(0x1.ff0000p127f) == 0x7f80, "bf16 overflow edge");
  CHECK(f2_f32_to_bf16(bits_to_float(0x00000001u)) == 0 && f2_f32_to_bf16(bits_to_float(0x00008000u)) == 0 &&
            f2_f32_to_bf16(bits_to_float(0x00008001u)) == 1,
        "bf16 denormals round to nearest even");
  uint16_t sn = f2_f32_to_bf16(bits_to_float(0x7f800001u)), qn = f2_f32_to_bf16(bits_to_float(0xffffffffu));
  CHECK((sn & 0x7fc0u) == 0x7fc0u && qn == 0xffffu, "bf16 NaN stays NaN (quiet, signed): %04x %04x", sn, qn);
}

/* ---------------------------------------------------------------- casts through f2_copy */

static void test_copy_casts(void) {
  enum { N = 4096 };
  int64_t shape[1] = {N};
  f2_tensor *src = f2_tensor_new(F2_F32, F2_CPU, 1, shape);
  float *x = src->data;
  for (int i = 0; i < N; i++) {
    uint32_t u = (uint32_t)next_u64();
    x[i] = i % 4 == 0 ? bits_to_float(u) : (float)((int64_t)(next_u64() % 600) - 300) * 0.37f;
  }
  x[0] = NAN, x[1] = INFINITY, x[2] = -INFINITY, x[3] = 0x1p-140f, x[4] = 3e9f, x[5] = -3e9f, x[6] = -0.99f;
  f2_tensor *bf = f2_tensor_new(F2_BF16, F2_CPU, 1, shape), *h = f2_tensor_new(F2_F16, F2_CPU, 1, shape);
  f2_tensor *i32 = f2_tensor_new(F2_I32, F2_CPU, 1, shape), *u8 = f2_tensor_new(F2_U8, F2_CPU, 1, shape);
  f2_tensor *i8 = f2_tensor_new(F2_I8, F2_CPU, 1, shape), *i64 = f2_tensor_new(F2_I64, F2_CPU, 1, shape);
  CHECK_OK(f2_copy(bf, src));
  CHECK_OK(f2_copy(h, src));
  CHECK_OK(f2_copy(i32, src));
  CHECK_OK(f2_copy(u8, src));
  CHECK_OK(f2_copy(i8, src));
  CHECK_OK(f2_copy(i64, src));
  int bad = 0;
  for (int i = 0; i < N; i++) {
    double v = x[i], t = trunc(v);
    int64_t want32 = v != v ? 0 : v >= 2147483647.0 ? INT32_MAX : v <= -2147483648.0 ? INT32_MIN : (int64_t)t;
    int64_t want8 = v != v ? 0 : v >= 127 ? 127 : v <= -128 ? -128 : (int64_t)t;
    int64_t wantu8 = v != v ? 0 : v >= 255 ? 255 : v <= 0 ? 0 : (int64_t)t;
    int64_t want64 = v != v ? 0 : v >= 0x1p63 ? INT64_MAX : v <= -0x1p63 ? INT64_MIN : (int64_t)t;
    bad += ((uint16_t *)bf->data)[i] != f2_f32_to_bf16(x[i]);
    bad += ((uint16_t *)h->data)[i] != f2_f32_to_f16(x[i]);
    bad += ((int32_t *)i32->data)[i] != want32;
    bad += ((int8_t *)i8->data)[i] != want8;
    bad += ((uint8_t *)u8->data)[i] != wantu8;
    bad += ((int64_t *)i64->data)[i] != want64;
    if (bad && i < 8) fprintf(stderr, "cast of %a wrong\n", x[i]);
  }
  CHECK(bad == 0, "f32 -> every dtype: %d wrong", bad);
  /* ... and back to f32: exact for bf16/f16 (they widen exactly). */
  f2_tensor *back = f2_tensor_new(F2_F32, F2_CPU, 1, shape);
  CHECK_OK(f2_copy(back, h));
  bad = 0;
  for (int i = 0; i < N; i++) {
    float w = f2_f16_to_f32(((uint16_t *)h->data)[i]), g = ((float *)back->data)[i];
    bad += memcmp(&w, &g, 4) != 0;
  }
  CHECK(bad == 0, "f16 -> f32: %d wrong", bad);

  /* Integer -> integer is exact (int64 beyond 2^53 included) or wraps. */
  int64_t *big = i64->data;
  big[0] = (1ll << 62) + 1, big[1] = -(1ll << 62) - 3, big[2] = 0x1234567890ll, big[3] = 300, big[4] = -129;
  f2_tensor *big2 = f2_tensor_new(F2_I64, F2_CPU, 1, shape);
  CHECK_OK(f2_copy(i32, i64));
  CHECK_OK(f2_copy(u8, i64));
  CHECK_OK(f2_copy(big2, i32));
  int32_t *s32 = i32->data;
  CHECK(s32[0] == 1 && s32[1] == -3 && s32[2] == 0x34567890 && s32[3] == 300, "i64 -> i32 wraps: %d %d %d", s32[0],
        s32[1], s32[2]);
  CHECK(((uint8_t *)u8->data)[3] == 44 && ((uint8_t *)u8->data)[4] == 127, "i64 -> u8 wraps");
  CHECK(((int64_t *)big2->data)[1] == -3, "i32 -> i64 sign-extends");
  f2_tensor *big3 = f2_tensor_new(F2_I64, F2_CPU, 1, shape);
  CHECK_OK(f2_copy(big3, i64));
  CHECK(((int64_t *)big3->data)[0] == (1ll << 62) + 1, "i64 copy exact beyond 2^53");
  f2_tensor *frees[] = {src, bf, h, i32, u8, i8, i64, back, big2, big3};
  for (size_t i = 0; i < sizeof frees / sizeof *frees; i++) f2_tensor_free(frees[i]);
}

int main(void) {
  rng_state = f2t_seed() | 1;
  for (int rep = 0; rep < 20; rep++) {
    test_views();
    test_reshape();
  }
  test_view_errors();
  test_refcounts();
  test_f16();
  test_bf16();
  test_copy_casts();
  return f2t_done();
}
