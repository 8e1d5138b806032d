/* test_gpu_ops.c — every tensor op on CUDA against the same op on the CPU reference, on fresh random
 * inputs (seed printed): transfers, copy/cast for all 49 dtype pairs, strided and broadcast views,
 * fill, rand (same seed, same numbers), unary/binary/scalar ops, reductions (with determinism),
 * matmul (f32, bf16, f16; all transpose combos; odd shapes; strided and batched). Public API only.
 * Each compare prints, on failure, the count of bad elements, the first one (index and coordinates,
 * got vs want) and the max abs / rel errors. F2_TEST_VERBOSE=1 prints every compare. */
#include <string.h>

#include "f2test.h"

static uint64_t seed_counter;
static int verbose;
static uint64_t next_seed(void) { return seed_counter++; }

/* ---------------------------------------------------------------- independent element access */

static uint64_t mix64(uint64_t *state) { /* splitmix64: raw random bits for the test's own inputs */
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static int64_t offset_of(const f2_tensor *t, int64_t i) {
  int64_t off = 0;
  for (int d = t->ndim - 1; d >= 0; d--) {
    off += (i % t->shape[d]) * t->stride[d];
    i /= t->shape[d];
  }
  return off;
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

static uint64_t get_bits(const f2_tensor *t, int64_t i) {
  const char *p = (const char *)t->data + offset_of(t, i) * (int64_t)f2_dtype_size(t->dtype);
  uint64_t v = 0;
  memcpy(&v, p, f2_dtype_size(t->dtype));
  return v;
}

static void set_bits(f2_tensor *t, int64_t i, uint64_t v) {
  char *p = (char *)t->data + offset_of(t, i) * (int64_t)f2_dtype_size(t->dtype);
  memcpy(p, &v, f2_dtype_size(t->dtype));
}

static double bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static double half_value(uint16_t h) { /* IEEE binary16, decoded from its definition */
  int e = (h >> 10) & 31, m = h & 1023;
  double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
  return h & 0x8000 ? -v : v;
}

static int is_float_dtype(int32_t d) { return d == F2_F32 || d == F2_BF16 || d == F2_F16; }

static double get(const f2_tensor *t, int64_t i) {
  uint64_t b = get_bits(t, i);
  switch (t->dtype) {
    case F2_F32: return bits_f32((uint32_t)b);
    case F2_BF16: return bits_f32((uint32_t)b << 16);
    case F2_F16: return half_value((uint16_t)b);
    case F2_I32: return (int32_t)(uint32_t)b;
    case F2_I64: return (double)(int64_t)b;
    case F2_U8: return (uint8_t)b;
    default: return (int8_t)(uint8_t)b;
  }
}

static int element_is_nan(const f2_tensor *t, int64_t i) { return is_float_dtype(t->dtype) && isnan(get(t, i)); }

/* ---------------------------------------------------------------- tensors on both devices */

/* The same logical tensor on the CPU (c) and the GPU (g); views are applied to both alike. */
typedef struct {
  f2_tensor *c, *g;
} twin;

static void twin_free(twin t) {
  f2_tensor_free(t.c);
  f2_tensor_free(t.g);
}


/* A CPU copy of any tensor (contiguous, same dtype). */
static f2_tensor *host(const f2_tensor *t) {
  f2_tensor *h = f2t_tensor(t->dtype, F2_CPU, t->ndim, t->shape);
  if (f2_copy(h, t) != F2_OK) {
    fprintf(stderr, "download failed: %s\n", f2_last_error());
    exit(1);
  }
  return h;
}

/* Uploads c's bits to a new GPU tensor of the same shape (a transfer, no arithmetic). */
static twin twin_of(f2_tensor *c) {
  twin t = {c, f2t_tensor(c->dtype, F2_CUDA, c->ndim, c->shape)};
  CHECK_OK(f2_copy(t.g, c));
  return t;
}

/* Uniform values in [lo, hi) drawn in f32 on the CPU, cast to dtype, uploaded. */
static twin twin_rand(int32_t dtype, int ndim, const int64_t *shape, double lo, double hi) {
  f2_tensor *f = f2t_tensor(F2_F32, F2_CPU, ndim, shape), *c = f2t_tensor(dtype, F2_CPU, ndim, shape);
  CHECK_OK(f2_rand_uniform(f, next_seed(), lo, hi));
  CHECK_OK(f2_copy(c, f));
  f2_tensor_free(f);
  return twin_of(c);
}

/* Every bit pattern of the dtype (NaNs, Infs, denormals, extreme integers). */
static twin twin_bits(int32_t dtype, int ndim, const int64_t *shape) {
  f2_tensor *c = f2t_tensor(dtype, F2_CPU, ndim, shape);
  uint64_t s = next_seed();
  for (int64_t i = 0; i < f2_tensor_numel(c); i++) set_bits(c, i, mix64(&s));
  return twin_of(c);
}

/* Views get their own handles; free_after() releases a temporary one once a view of it exists
 * (a view keeps its storage alive). */
static twin free_after(twin view, twin temporary) {
  twin_free(temporary);
  return view;
}
static twin twin_view(twin t) { return (twin){f2_tensor_view(t.c), f2_tensor_view(t.g)}; }
static twin twin_transpose(twin t, int d0, int d1) {
  return (twin){f2_tensor_transpose(t.c, d0, d1), f2_tensor_transpose(t.g, d0, d1)};
}
static twin twin_narrow(twin t, int dim, int64_t start, int64_t len) {
  return (twin){f2_tensor_narrow(t.c, dim, start, len), f2_tensor_narrow(t.g, dim, start, len)};
}
static twin twin_expand(twin t, int ndim, const int64_t *shape) {
  return (twin){f2_tensor_expand(t.c, ndim, shape), f2_tensor_expand(t.g, ndim, shape)};
}
static twin twin_strided(twin t, int ndim, const int64_t *shape, const int64_t *stride, int64_t offset) {
  return (twin){f2_tensor_as_strided(t.c, ndim, shape, stride, offset),
                f2_tensor_as_strided(t.g, ndim, shape, stride, offset)};
}
static twin twin_permute(twin t, const int32_t *dims) {
  return (twin){f2_tensor_permute(t.c, dims), f2_tensor_permute(t.g, dims)};
}

/* ---------------------------------------------------------------- comparisons */

/* got (any device) vs want (CPU), elementwise: |got - want| <= atol + rtol * scale, where scale is
 * |want|, or the element of `scale` when given (an error bound such as |A| @ |B| for matmul).
 * Equal values (Infs included) and NaN vs NaN pass. */
static int compare(const char *what, const f2_tensor *got, const f2_tensor *want, double rtol, double atol,
                   const f2_tensor *scale) {
  f2_tensor *g = host(got);
  int64_t n = f2_tensor_numel(want), bad = 0, first = -1;
  double max_abs = 0, max_rel = 0;
  for (int64_t i = 0; i < n; i++) {
    double a = get(g, i), b = get(want, i), err = fabs(a - b);
    double bound = atol + rtol * (scale ? fabs(get(scale, i)) : fabs(b));
    int ok = a == b || (isnan(a) && isnan(b)) || err <= bound;
    if (!ok) {
      if (first < 0) first = i;
      bad++;
    }
    if (!isnan(err) && a != b) {
      if (err > max_abs) max_abs = err;
      if (b != 0 && err / fabs(b) > max_rel) max_rel = err / fabs(b);
    }
  }
  if (bad) {
    char at[96];
    coords_text(at, sizeof at, want, first);
    CHECK(bad == 0, "%s: %lld of %lld elements off (rtol %g, atol %g); first at %lld %s: got %.9g want %.9g%s%.3g; "
                    "max abs err %.3g, max rel err %.3g",
          what, (long long)bad, (long long)n, rtol, atol, (long long)first, at, get(g, first), get(want, first),
          scale ? ", bound scale " : "", scale ? fabs(get(scale, first)) : 0.0, max_abs, max_rel);
  } else {
    f2t_passed++;
    if (verbose) printf("ok %s: n=%lld, max abs err %.3g, max rel err %.3g\n", what, (long long)n, max_abs, max_rel);
  }
  f2_tensor_free(g);
  return bad == 0;
}

/* Bit for bit; a NaN on both sides passes even with different payloads (counted, not failed). */
static int compare_bits(const char *what, const f2_tensor *got, const f2_tensor *want) {
  f2_tensor *g = host(got);
  int64_t n = f2_tensor_numel(want), bad = 0, first = -1, nan_payload = 0;
  for (int64_t i = 0; i < n; i++) {
    if (get_bits(g, i) == get_bits(want, i)) continue;
    if (element_is_nan(g, i) && element_is_nan(want, i)) {
      nan_payload++;
      continue;
    }
    if (first < 0) first = i;
    bad++;
  }
  if (bad) {
    char at[96];
    coords_text(at, sizeof at, want, first);
    CHECK(bad == 0, "%s: %lld of %lld elements differ bitwise; first at %lld %s: got %.9g (0x%llx) want %.9g (0x%llx)",
          what, (long long)bad, (long long)n, (long long)first, at, get(g, first),
          (unsigned long long)get_bits(g, first), get(want, first), (unsigned long long)get_bits(want, first));
  } else {
    f2t_passed++;
    if (verbose || nan_payload)
      printf("ok %s: n=%lld bit-exact%s%lld\n", what, (long long)n, nan_payload ? ", NaNs with other payloads: " : "",
             (long long)nan_payload);
  }
  f2_tensor_free(g);
  return bad == 0;
}

static const int32_t all_dtypes[] = {F2_F32, F2_BF16, F2_F16, F2_I32, F2_I64, F2_U8, F2_I8};
static const int32_t float_dtypes[] = {F2_F32, F2_BF16, F2_F16};

/* Relative tolerance of one rounding into dtype (plus fp32 math differences). */
static double dtype_rtol(int32_t dtype) { return dtype == F2_BF16 ? 1e-2 : dtype == F2_F16 ? 2e-3 : 1e-5; }

/* ---------------------------------------------------------------- transfers and copies */

static void test_transfers(void) {
  for (int k = 0; k < 7; k++) {
    int32_t dt = all_dtypes[k];
    char what[128];
    /* Round trip of every bit pattern. */
    twin t = twin_bits(dt, 3, (int64_t[]){3, 257, 5});
    snprintf(what, sizeof what, "round trip %s", f2_dtype_name(dt));
    compare_bits(what, t.g, t.c);
    /* Strided CPU source -> contiguous GPU; contiguous CPU -> strided GPU destination. */
    twin tt = twin_transpose(t, 0, 2);
    f2_tensor *up = f2t_tensor(dt, F2_CUDA, 3, tt.c->shape);
    CHECK_OK(f2_copy(up, tt.c));
    snprintf(what, sizeof what, "upload of a transposed %s view", f2_dtype_name(dt));
    compare_bits(what, up, tt.c);
    twin dst = twin_bits(dt, 3, (int64_t[]){5, 300, 3});
    twin dn = twin_narrow(dst, 1, 40, 257);
    twin dv = free_after(twin_transpose(dn, 0, 2), dn); /* [3, 257, 5] inside [5, 300, 3] */
    CHECK_OK(f2_copy(dv.c, t.c));
    CHECK_OK(f2_copy(dv.g, t.c));
    snprintf(what, sizeof what, "upload into a strided %s view (whole buffer)", f2_dtype_name(dt));
    compare_bits(what, dst.g, dst.c);
    /* Strided GPU source -> CPU (download path). */
    f2_tensor *down = f2t_tensor(dt, F2_CPU, 3, dv.g->shape);
    CHECK_OK(f2_copy(down, dv.g));
    snprintf(what, sizeof what, "download of a strided %s view", f2_dtype_name(dt));
    compare_bits(what, down, dv.c);
    f2_tensor_free(down);
    f2_tensor_free(up);
    twin_free(dv);
    twin_free(dst);
    twin_free(tt);
    twin_free(t);
  }
  /* Cross-device copy with a cast (staged through the source device). */
  twin src = twin_rand(F2_F32, 2, (int64_t[]){33, 65}, -3, 3);
  twin dst = twin_of(f2t_tensor(F2_BF16, F2_CPU, 2, (int64_t[]){33, 65}));
  CHECK_OK(f2_copy(dst.c, src.c));
  CHECK_OK(f2_copy(dst.g, src.c)); /* CPU f32 -> GPU bf16 */
  compare_bits("upload with cast f32 -> bf16", dst.g, dst.c);
  f2_tensor *back = f2t_tensor(F2_F32, F2_CPU, 2, (int64_t[]){33, 65}), *want = host(dst.c);
  CHECK_OK(f2_copy(back, dst.g)); /* GPU bf16 -> CPU f32 */
  f2_tensor *want32 = f2t_tensor(F2_F32, F2_CPU, 2, (int64_t[]){33, 65});
  CHECK_OK(f2_copy(want32, want));
  compare_bits("download with cast bf16 -> f32", back, want32);
  f2_tensor_free(back), f2_tensor_free(want), f2_tensor_free(want32);
  twin_free(src), twin_free(dst);
  /* A large device-to-device copy (the memcpy path), 64 MiB. */
  twin big = twin_bits(F2_I32, 1, (int64_t[]){16 << 20});
  f2_tensor *big2 = f2t_tensor(F2_I32, F2_CUDA, 1, (int64_t[]){16 << 20});
  CHECK_OK(f2_copy(big2, big.g));
  compare_bits("64 MiB device-to-device copy", big2, big.c);
  f2_tensor_free(big2);
  twin_free(big);
}

/* f32 sources: every bit pattern for half the elements, the other half numbers in [-300, 300] with
 * fractions (truncation, saturation of u8/i8) and a row of special values. */
static twin cast_source(int32_t dt) {
  twin t = twin_bits(dt, 2, (int64_t[]){61, 37});
  if (dt != F2_F32) return t;
  static const float special[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, 1e-40f, -1e-45f, 5.96e-8f,
                                  2.98e-8f, 65504.0f, 65519.99f, 65520.0f, 1e20f, -1e20f, 3e9f, -3e9f, 1.00390625f,
                                  1.01171875f, 127.9f, -128.9f, 255.5f, 256.0f, -0.99f, 2147483520.0f, 9.3e18f};
  uint64_t s = next_seed();
  for (int64_t i = 0; i < f2_tensor_numel(t.c); i++) {
    float v = (float)((double)(mix64(&s) >> 11) * 0x1.0p-53 * 600.0 - 300.0);
    if (i % 2) memcpy(&v, &(uint32_t){(uint32_t)mix64(&s)}, 4);
    if (i < (int64_t)(sizeof special / sizeof special[0])) v = special[i];
    uint32_t u;
    memcpy(&u, &v, 4);
    set_bits(t.c, i, u);
  }
  CHECK_OK(f2_copy(t.g, t.c));
  return t;
}

static void test_casts(void) {
  for (int s = 0; s < 7; s++) {
    twin src = cast_source(all_dtypes[s]);
    for (int d = 0; d < 7; d++) {
      int32_t dt = all_dtypes[d];
      char what[128];
      twin dst = twin_of(f2t_tensor(dt, F2_CPU, 2, src.c->shape));
      CHECK_OK(f2_copy(dst.c, src.c));
      CHECK_OK(f2_copy(dst.g, src.g));
      snprintf(what, sizeof what, "cast %s -> %s", f2_dtype_name(all_dtypes[s]), f2_dtype_name(dt));
      compare_bits(what, dst.g, dst.c);
      /* Strided both sides: transposed source into a narrowed, transposed destination. */
      twin base = twin_bits(dt, 2, (int64_t[]){45, 70});
      twin rows = twin_narrow(base, 0, 4, 37);
      twin view = free_after(twin_narrow(rows, 1, 3, 61), rows); /* [37, 61], rows of 70 */
      twin st = twin_transpose(src, 0, 1);                             /* [37, 61], column-major */
      CHECK_OK(f2_copy(view.c, st.c));
      CHECK_OK(f2_copy(view.g, st.g));
      snprintf(what, sizeof what, "strided cast %s -> %s (whole buffer)", f2_dtype_name(all_dtypes[s]),
               f2_dtype_name(dt));
      compare_bits(what, base.g, base.c);
      twin_free(st), twin_free(view), twin_free(base), twin_free(dst);
    }
    twin_free(src);
  }
}

/* ---------------------------------------------------------------- fill and rand */

/* Same-dtype copies between column slices (rows of whole 16-byte chunks at a row stride: the
 * 16-byte row kernel) and, beside them, slices that miss that shape (the generic kernel). */
static void test_copy_rows(void) {
  static const int32_t dts[] = {F2_BF16, F2_F32, F2_U8, F2_I64};
  for (size_t d = 0; d < sizeof dts / sizeof *dts; d++) {
    const int32_t dt = dts[d];
    const int64_t chunk = 16 / f2_dtype_size(dt);   /* elements in 16 bytes */
    for (int odd = 0; odd < 2; odd++) {
      const int64_t width = 3 * chunk + (odd ? 1 : 0);
      twin src_base = twin_bits(dt, 2, (int64_t[]){37, 8 * chunk});
      twin dst_base = twin_bits(dt, 2, (int64_t[]){37, 5 * chunk});
      twin src = twin_narrow(src_base, 1, 2 * chunk, width), dst = twin_narrow(dst_base, 1, chunk, width);
      CHECK_OK(f2_copy(dst.c, src.c));
      CHECK_OK(f2_copy(dst.g, src.g));
      char what[96];
      snprintf(what, sizeof what, "column slice copy %s, %lld wide (whole buffer)", f2_dtype_name(dt),
               (long long)width);
      compare_bits(what, dst_base.g, dst_base.c);
      twin_free(src), twin_free(dst), twin_free(src_base), twin_free(dst_base);
    }
  }
}

static void test_fill(void) {
  uint64_t s = next_seed();
  double values[] = {(double)(mix64(&s) % 2001) - 1000.0 + 0.37, -2.5, NAN, 1e10, -1e30, 0.1};
  for (int k = 0; k < 7; k++)
    for (int v = 0; v < 6; v++) {
      int32_t dt = all_dtypes[k];
      twin base = twin_bits(dt, 3, (int64_t[]){4, 50, 9});
      twin part = twin_narrow(base, 1, 5, 40);
      twin view = free_after(twin_transpose(part, 0, 2), part);
      CHECK_OK(f2_fill(view.c, values[v]));
      CHECK_OK(f2_fill(view.g, values[v]));
      char what[96];
      snprintf(what, sizeof what, "fill %s view with %g", f2_dtype_name(dt), values[v]);
      compare_bits(what, base.g, base.c);
      twin_free(view), twin_free(base);
    }
  /* Whole contiguous tensors with +0 (a memset) and -0 (not one: the sign bit is set in float dtypes). */
  for (int k = 0; k < 7; k++)
    for (int neg = 0; neg < 2; neg++) {
      twin t = twin_bits(all_dtypes[k], 2, (int64_t[]){33, 65});
      CHECK_OK(f2_fill(t.c, neg ? -0.0 : 0.0));
      CHECK_OK(f2_fill(t.g, neg ? -0.0 : 0.0));
      char what[64];
      snprintf(what, sizeof what, "fill %s with %s0", f2_dtype_name(all_dtypes[k]), neg ? "-" : "+");
      compare_bits(what, t.g, t.c);
      twin_free(t);
    }
}

static void test_rand(void) {
  static const int32_t dtypes[] = {F2_F32, F2_BF16, F2_F16, F2_I32};
  for (int k = 0; k < 4; k++) {
    int32_t dt = dtypes[k];
    for (int layout = 0; layout < 2; layout++) {
      char what[128];
      twin base = twin_bits(dt, 2, (int64_t[]){300, 77});
      /* layout 1: a strided view; element i is still its own row-major index i. */
      twin part = twin_narrow(base, 1, 10, 60);
      twin t = layout ? twin_transpose(part, 0, 1) : twin_of(host(base.c));
      twin_free(part);
      uint64_t seed = next_seed() * 0x9E3779B97F4A7C15ull;
      CHECK_OK(f2_rand_uniform(t.c, seed, -2.0, 3.5));
      CHECK_OK(f2_rand_uniform(t.g, seed, -2.0, 3.5));
      snprintf(what, sizeof what, "rand_uniform %s %s: CPU and GPU bit-identical", f2_dtype_name(dt),
               layout ? "strided view (whole buffer)" : "contiguous");
      compare_bits(what, layout ? base.g : t.g, layout ? base.c : t.c);
      if (dt != F2_I32) {
        /* Box-Muller in fp64: glibc's and CUDA's log/cos may differ in the last bit of a double,
         * which can flip the fp32 rounding of one element in ~1e8: allow one ulp of the dtype. */
        CHECK_OK(f2_rand_normal(t.c, seed, 0.5, 2.0));
        CHECK_OK(f2_rand_normal(t.g, seed, 0.5, 2.0));
        snprintf(what, sizeof what, "rand_normal %s %s", f2_dtype_name(dt), layout ? "strided view" : "contiguous");
        compare(what, layout ? base.g : t.g, layout ? base.c : t.c, dt == F2_F32 ? 2.4e-7 : dtype_rtol(dt), 0, NULL);
      }
      /* A different seed must give different numbers. */
      f2_tensor *other = f2t_tensor(dt, F2_CUDA, 2, t.g->shape), *h1, *h2;
      CHECK_OK(f2_rand_uniform(other, seed + 1, -2.0, 3.5));
      CHECK_OK(f2_rand_uniform(t.g, seed, -2.0, 3.5));
      h1 = host(other), h2 = host(t.g);
      int64_t same = 0, n = f2_tensor_numel(h1);
      for (int64_t i = 0; i < n; i++) same += get_bits(h1, i) == get_bits(h2, i);
      CHECK(same < n / (dt == F2_I32 ? 4 : 20), "%s: seeds %llu and %llu agree on %lld of %lld elements",
            f2_dtype_name(dt), (unsigned long long)seed, (unsigned long long)seed + 1, (long long)same, (long long)n);
      f2_tensor_free(h1), f2_tensor_free(h2), f2_tensor_free(other);
      twin_free(t), twin_free(base);
    }
  }
  /* A large tensor: the index crosses many blocks and grid-stride rounds. */
  twin big = twin_of(f2t_tensor(F2_F32, F2_CPU, 1, (int64_t[]){(1 << 24) + 3}));
  uint64_t seed = next_seed();
  CHECK_OK(f2_rand_uniform(big.c, seed, 0, 1));
  CHECK_OK(f2_rand_uniform(big.g, seed, 0, 1));
  compare_bits("rand_uniform f32, 2^24 + 3 elements", big.g, big.c);
  twin_free(big);
}

/* ---------------------------------------------------------------- elementwise */

static const char *unary_names[] = {"neg", "abs", "exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "silu", "square", "sign"};
static const char *binary_names[] = {"add", "sub", "mul", "div", "max", "min", "pow"};

static void test_unary(void) {
  for (int op = F2_OP_NEG; op <= F2_OP_SIGN; op++) {
    int positive = op == F2_OP_LOG || op == F2_OP_SQRT || op == F2_OP_RSQRT;
    double lo = positive ? 0.05 : op == F2_OP_EXP ? -8 : -5, hi = positive ? 9 : op == F2_OP_EXP ? 8 : 5;
    for (int k = 0; k < 3; k++)
      for (int out_f32 = 0; out_f32 < 2; out_f32++) {
        int32_t in = float_dtypes[k], out_dt = out_f32 ? F2_F32 : in;
        if (out_f32 && in == F2_F32) continue;
        twin a = twin_rand(in, 2, (int64_t[]){129, 70}, lo, hi);
        twin at = twin_transpose(a, 0, 1);
        twin out = twin_of(f2t_tensor(out_dt, F2_CPU, 2, (int64_t[]){70, 129}));
        CHECK_OK(f2_unary(out.c, at.c, op));
        CHECK_OK(f2_unary(out.g, at.g, op));
        char what[96];
        snprintf(what, sizeof what, "unary %s %s -> %s (transposed input)", unary_names[op], f2_dtype_name(in),
                 f2_dtype_name(out_dt));
        /* fp32 math on the GPU vs fp64 on the CPU: a few fp32 ulps, one rounding into the output. */
        compare(what, out.g, out.c, dtype_rtol(out_dt), 1e-6, NULL);
        twin_free(out), twin_free(at), twin_free(a);
      }
  }
  /* In place on a strided view, and integer ops that are exact. */
  twin a = twin_rand(F2_F32, 2, (int64_t[]){64, 64}, -3, 3);
  twin at = twin_transpose(a, 0, 1);
  twin v = free_after(twin_narrow(at, 0, 3, 50), at);
  CHECK_OK(f2_unary(v.c, v.c, F2_OP_TANH));
  CHECK_OK(f2_unary(v.g, v.g, F2_OP_TANH));
  compare("unary tanh in place on a strided view (whole buffer)", a.g, a.c, 1e-5, 1e-6, NULL);
  twin_free(v), twin_free(a);
  static const int int_ops[] = {F2_OP_NEG, F2_OP_ABS, F2_OP_SQUARE, F2_OP_SIGN};
  for (int k = 0; k < 4; k++) {
    twin x = twin_rand(F2_I32, 1, (int64_t[]){1000}, -40000, 40000);
    twin y = twin_of(f2t_tensor(F2_I32, F2_CPU, 1, (int64_t[]){1000}));
    CHECK_OK(f2_unary(y.c, x.c, int_ops[k]));
    CHECK_OK(f2_unary(y.g, x.g, int_ops[k]));
    char what[64];
    snprintf(what, sizeof what, "unary %s i32", unary_names[int_ops[k]]);
    compare_bits(what, y.g, y.c);
    twin_free(x), twin_free(y);
  }
}

/* Inputs in the op's domain: pow takes a > 0. (Division by a tiny or zero divisor is fine: both
 * devices divide correctly rounded, so the quotients agree relatively, Infs and NaNs included.) */
static void binary_ranges(int op, double *alo, double *ahi, double *blo, double *bhi) {
  *alo = op == F2_OP_POW ? 0.25 : -4, *ahi = op == F2_OP_POW ? 3 : 4;
  *blo = op == F2_OP_POW ? -2.5 : -4, *bhi = op == F2_OP_POW ? 2.5 : 4;
}

static void test_binary(void) {
  /* {a, b, out} dtypes */
  static const int32_t configs[][3] = {{F2_F32, F2_F32, F2_F32}, {F2_BF16, F2_BF16, F2_BF16}, {F2_F16, F2_F16, F2_F16},
                                       {F2_BF16, F2_F32, F2_F32}, {F2_F32, F2_F16, F2_BF16}, {F2_I32, F2_I32, F2_I32}};
  for (int op = F2_OP_ADD; op <= F2_OP_POW; op++)
    for (int c = 0; c < 6; c++)
      for (int layout = 0; layout < 3; layout++) {
        int32_t da = configs[c][0], db = configs[c][1], dout = configs[c][2];
        if (da == F2_I32 && op == F2_OP_POW) continue; /* fp64 pow then truncation: not a sensible integer op */
        double alo, ahi, blo, bhi;
        binary_ranges(op, &alo, &ahi, &blo, &bhi);
        /* Integers: division truncates toward zero; by zero it saturates (NaN -> 0), alike on both. */
        if (da == F2_I32) alo = -3000, ahi = 3000, blo = op == F2_OP_DIV ? -50 : -3000, bhi = op == F2_OP_DIV ? 50 : 3000;
        int64_t shape[3] = {6, 35, 41};
        twin a = twin_rand(da, 3, shape, alo, ahi), b = {0}, av = {0}, bv = {0};
        if (layout == 0) { /* both contiguous */
          b = twin_rand(db, 3, shape, blo, bhi);
          av = twin_view(a);
          bv = twin_view(b);
        } else if (layout == 1) { /* a transposed storage, b broadcast along dims 0 and 2 */
          twin_free(a);
          a = twin_rand(da, 3, (int64_t[]){41, 35, 6}, alo, ahi);
          av = twin_transpose(a, 0, 2);
          b = twin_rand(db, 3, (int64_t[]){1, 35, 1}, blo, bhi);
          bv = twin_expand(b, 3, shape);
        } else { /* b one element broadcast everywhere, a narrowed */
          twin_free(a);
          a = twin_rand(da, 3, (int64_t[]){6, 40, 41}, alo, ahi);
          av = twin_narrow(a, 1, 2, 35);
          b = twin_rand(db, 1, (int64_t[]){1}, blo, bhi);
          bv = twin_expand(b, 3, shape);
        }
        twin out = twin_of(f2t_tensor(dout, F2_CPU, 3, shape));
        CHECK_OK(f2_binary(out.c, av.c, bv.c, op));
        CHECK_OK(f2_binary(out.g, av.g, bv.g, op));
        char what[128];
        snprintf(what, sizeof what, "binary %s %s,%s -> %s layout %d", binary_names[op], f2_dtype_name(da),
                 f2_dtype_name(db), f2_dtype_name(dout), layout);
        if (dout == F2_I32) compare_bits(what, out.g, out.c);
        else compare(what, out.g, out.c, dtype_rtol(dout), op == F2_OP_SUB || op == F2_OP_ADD ? 1e-5 : 1e-6, NULL);
        twin_free(out), twin_free(av), twin_free(bv), twin_free(a), twin_free(b);
      }
  /* In place: a = a * b. */
  twin a = twin_rand(F2_BF16, 2, (int64_t[]){77, 31}, -2, 2), b = twin_rand(F2_F32, 2, (int64_t[]){77, 31}, -2, 2);
  CHECK_OK(f2_binary(a.c, a.c, b.c, F2_OP_MUL));
  CHECK_OK(f2_binary(a.g, a.g, b.g, F2_OP_MUL));
  compare("binary mul in place bf16 *= f32", a.g, a.c, 1e-2, 1e-6, NULL);
  twin_free(a), twin_free(b);
  /* NaN propagation of max/min. */
  twin x = twin_rand(F2_F32, 1, (int64_t[]){64}, -1, 1), y = twin_rand(F2_F32, 1, (int64_t[]){64}, -1, 1);
  for (int i = 0; i < 64; i += 5) set_bits(i % 2 ? x.c : y.c, i, 0x7fc00000u);
  CHECK_OK(f2_copy(x.g, x.c));
  CHECK_OK(f2_copy(y.g, y.c));
  for (int op = F2_OP_MAX; op <= F2_OP_MIN; op++) {
    twin out = twin_of(f2t_tensor(F2_F32, F2_CPU, 1, (int64_t[]){64}));
    CHECK_OK(f2_binary(out.c, x.c, y.c, op));
    CHECK_OK(f2_binary(out.g, x.g, y.g, op));
    compare_bits(op == F2_OP_MAX ? "binary max with NaNs" : "binary min with NaNs", out.g, out.c);
    f2_tensor *h = host(out.g);
    CHECK(isnan(get(h, 5)) && isnan(get(h, 10)), "NaN did not propagate through %s", binary_names[op]);
    f2_tensor_free(h);
    twin_free(out);
  }
  twin_free(x), twin_free(y);
}

static void test_binary_scalar(void) {
  uint64_t s = next_seed();
  for (int op = F2_OP_ADD; op <= F2_OP_POW; op++)
    for (int k = 0; k < 4; k++) {
      int32_t dt = k < 3 ? float_dtypes[k] : F2_I32;
      if (dt == F2_I32 && op == F2_OP_POW) continue;
      double alo, ahi, blo, bhi;
      binary_ranges(op, &alo, &ahi, &blo, &bhi);
      double scalar = blo + (bhi - blo) * (double)(mix64(&s) >> 11) * 0x1.0p-53;
      if (dt == F2_I32) alo = -5000, ahi = 5000, scalar = op == F2_OP_DIV ? 7 : -1234;
      twin a = twin_rand(dt, 2, (int64_t[]){90, 33}, alo, ahi);
      twin at = twin_transpose(a, 0, 1);
      twin out = twin_of(f2t_tensor(dt, F2_CPU, 2, (int64_t[]){33, 90}));
      CHECK_OK(f2_binary_scalar(out.c, at.c, scalar, op));
      CHECK_OK(f2_binary_scalar(out.g, at.g, scalar, op));
      char what[96];
      snprintf(what, sizeof what, "binary_scalar %s %s with %g", binary_names[op], f2_dtype_name(dt), scalar);
      if (dt == F2_I32) compare_bits(what, out.g, out.c);
      else compare(what, out.g, out.c, dtype_rtol(dt), 1e-5, NULL);
      twin_free(out), twin_free(at), twin_free(a);
    }
  /* Integer outputs saturate and truncate the same way on both devices. */
  twin a = twin_rand(F2_F32, 1, (int64_t[]){500}, -400, 400);
  twin out = twin_of(f2t_tensor(F2_I8, F2_CPU, 1, (int64_t[]){500}));
  CHECK_OK(f2_binary_scalar(out.c, a.c, 0.7, F2_OP_MUL));
  CHECK_OK(f2_binary_scalar(out.g, a.g, 0.7, F2_OP_MUL));
  compare_bits("binary_scalar f32 * 0.7 -> i8 (saturating)", out.g, out.c);
  twin_free(out), twin_free(a);
}

/* ---------------------------------------------------------------- reductions */

static const char *reduce_names[] = {"sum", "mean", "max", "min", "norm"};

/* out shape of x reduced over dim (dropped); dim -1: one element. */
static int reduced_shape(const f2_tensor *x, int dim, int64_t *shape) {
  if (dim < 0) {
    shape[0] = 1;
    return 1;
  }
  int n = 0;
  for (int i = 0; i < x->ndim; i++)
    if (i != dim) shape[n++] = x->shape[i];
  return n;
}

/* One reduction on both devices; the GPU runs it twice more (once on a fresh copy of x) and must
 * give the same bits each time. */
static void check_reduce(const char *label, twin x, int dim, int op, int32_t out_dtype) {
  int64_t shape[8];
  int nd = reduced_shape(x.c, dim, shape);
  twin out = twin_of(f2t_tensor(out_dtype, F2_CPU, nd, shape));
  CHECK_OK(f2_reduce(out.c, x.c, dim, op));
  CHECK_OK(f2_reduce(out.g, x.g, dim, op));
  char what[160];
  snprintf(what, sizeof what, "reduce %s dim %d of %s %s -> %s", reduce_names[op], dim, label,
           f2_dtype_name(x.c->dtype), f2_dtype_name(out_dtype));
  if (op == F2_RED_MAX || op == F2_RED_MIN) {
    compare_bits(what, out.g, out.c); /* no arithmetic: exact */
  } else if (op == F2_RED_NORM) {
    compare(what, out.g, out.c, out_dtype == F2_F32 ? 1e-5 : dtype_rtol(out_dtype), 0, NULL);
  } else {
    /* Cancellation: bound the error by the sum of |x| (fp32 accumulation vs the CPU's fp64). */
    f2_tensor *ax = f2t_tensor(F2_F32, F2_CPU, x.c->ndim, x.c->shape), *scale = f2t_tensor(F2_F32, F2_CPU, nd, shape);
    CHECK_OK(f2_unary(ax, x.c, F2_OP_ABS));
    CHECK_OK(f2_reduce(scale, ax, dim, op));
    if (out_dtype == F2_F32) {
      compare(what, out.g, out.c, 1e-5, 1e-6, scale);
    } else { /* one more rounding into the output dtype */
      f2_tensor *s2 = f2t_tensor(F2_F32, F2_CPU, nd, shape), *w = f2t_tensor(F2_F32, F2_CPU, nd, shape);
      CHECK_OK(f2_copy(w, out.c));
      CHECK_OK(f2_unary(w, w, F2_OP_ABS));
      CHECK_OK(f2_binary_scalar(w, w, dtype_rtol(out_dtype) / 1e-5, F2_OP_MUL));
      CHECK_OK(f2_binary(s2, scale, w, F2_OP_ADD));
      compare(what, out.g, out.c, 1e-5, 1e-6, s2);
      f2_tensor_free(s2), f2_tensor_free(w);
    }
    f2_tensor_free(ax), f2_tensor_free(scale);
  }
  /* Determinism: again, and on a fresh copy of x elsewhere in memory. */
  f2_tensor *again = f2t_tensor(out_dtype, F2_CUDA, nd, shape), *fresh = f2t_tensor(x.g->dtype, F2_CUDA, x.g->ndim, x.g->shape);
  CHECK_OK(f2_copy(fresh, x.g));
  CHECK_OK(f2_reduce(again, x.g, dim, op));
  f2_tensor *h1 = host(out.g);
  snprintf(what, sizeof what, "reduce %s dim %d of %s: second run bitwise equal", reduce_names[op], dim, label);
  compare_bits(what, again, h1);
  CHECK_OK(f2_reduce(again, fresh, dim, op));
  snprintf(what, sizeof what, "reduce %s dim %d of %s: on a copy of x bitwise equal", reduce_names[op], dim, label);
  compare_bits(what, again, h1);
  f2_tensor_free(h1), f2_tensor_free(again), f2_tensor_free(fresh);
  twin_free(out);
}

static void test_reduce(void) {
  struct {
    int ndim;
    int64_t shape[3];
    int dims[4], ndims;
  } cases[] = {
      {2, {37, 1000}, {1, 0, -1}, 3},        /* block per output; R=37 block path; split all-reduce */
      {3, {3, 5, 7}, {0, 1, 2, -1}, 4},      /* thread per output */
      {2, {2, 300000}, {1, -1, 0}, 3},       /* split over many blocks, two passes */
      {1, {(1 << 21) + 17}, {-1, 0}, 2},     /* long all-reduce */
      {2, {1000, 4}, {1, 0}, 2},             /* many short rows; few long columns */
      {2, {513, 257}, {1, 0}, 2},            /* many outputs, block per output */
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
    for (int k = 0; k < 3; k++) {
      twin x = twin_rand(float_dtypes[k], cases[c].ndim, cases[c].shape, -1, 1.2);
      char label[64];
      int n = snprintf(label, sizeof label, "[");
      for (int d = 0; d < cases[c].ndim; d++) n += snprintf(label + n, sizeof label - n, d ? ",%lld" : "%lld", (long long)cases[c].shape[d]);
      snprintf(label + n, sizeof label - n, "]");
      for (int d = 0; d < cases[c].ndims; d++)
        for (int op = F2_RED_SUM; op <= F2_RED_NORM; op++)
          check_reduce(label, x, cases[c].dims[d], op, k == 1 && op == F2_RED_SUM ? F2_BF16 : F2_F32);
      twin_free(x);
    }
  /* Strided inputs: a transposed view, and a narrowed one (the all-reduce walks 2 dims). */
  twin base = twin_rand(F2_F32, 2, (int64_t[]){64, 300}, -1, 1);
  twin tv = twin_transpose(base, 0, 1), nv = twin_narrow(base, 1, 7, 250);
  for (int op = F2_RED_SUM; op <= F2_RED_NORM; op++)
    for (int dim = -1; dim < 2; dim++) {
      check_reduce("transposed [300,64]", tv, dim, op, F2_F32);
      check_reduce("narrowed [64,250]", nv, dim, op, F2_F32);
    }
  twin_free(tv), twin_free(nv), twin_free(base);
  /* Keep the reduced dim as size 1. */
  twin x = twin_rand(F2_F32, 3, (int64_t[]){9, 70, 11}, -1, 1);
  twin out = twin_of(f2t_tensor(F2_F32, F2_CPU, 3, (int64_t[]){9, 1, 11}));
  CHECK_OK(f2_reduce(out.c, x.c, 1, F2_RED_MEAN));
  CHECK_OK(f2_reduce(out.g, x.g, 1, F2_RED_MEAN));
  compare("reduce mean keepdim [9,70,11] -> [9,1,11]", out.g, out.c, 1e-5, 1e-6, NULL);
  twin_free(out), twin_free(x);
  /* NaN makes max/min/sum NaN. */
  x = twin_rand(F2_F32, 2, (int64_t[]){6, 5000}, -1, 1);
  set_bits(x.c, 2 * 5000 + 4321, 0x7fc00000u);
  CHECK_OK(f2_copy(x.g, x.c));
  for (int op = F2_RED_SUM; op <= F2_RED_NORM; op++) {
    check_reduce("[6,5000] with a NaN in row 2", x, 1, op, F2_F32);
    check_reduce("[6,5000] with a NaN in row 2", x, -1, op, F2_F32);
  }
  twin_free(x);
  /* Integer input: exact sums (fp64 accumulation), integer output. */
  x = twin_rand(F2_I32, 2, (int64_t[]){40, 3000}, -100000, 100000);
  for (int op = F2_RED_SUM; op <= F2_RED_MIN; op++) {
    int64_t shape[1] = {40};
    twin o = twin_of(f2t_tensor(F2_I64, F2_CPU, 1, shape));
    CHECK_OK(f2_reduce(o.c, x.c, 1, op));
    CHECK_OK(f2_reduce(o.g, x.g, 1, op));
    char what[64];
    snprintf(what, sizeof what, "reduce %s i32 [40,3000] -> i64", reduce_names[op]);
    compare_bits(what, o.g, o.c);
    twin_free(o);
  }
  twin_free(x);
  /* Over no elements: sum 0, mean NaN. */
  x = twin_of(f2t_tensor(F2_F32, F2_CPU, 2, (int64_t[]){0, 5}));
  for (int op = F2_RED_SUM; op <= F2_RED_MEAN; op++) {
    twin o = twin_of(f2t_tensor(F2_F32, F2_CPU, 1, (int64_t[]){5}));
    CHECK_OK(f2_reduce(o.c, x.c, 0, op));
    CHECK_OK(f2_reduce(o.g, x.g, 0, op));
    compare_bits(op ? "reduce mean over no elements" : "reduce sum over no elements", o.g, o.c);
    twin_free(o);
  }
  twin_free(x);
  /* 2^33 elements through a broadcast view (one row of x repeated): the 64-bit index path. Values in
   * {-1, 0, 1} keep every partial sum an exactly representable integer, so the result is exact. */
  twin col = twin_rand(F2_F32, 2, (int64_t[]){65536, 1}, -1.5, 1.5);
  twin colr = twin_of(f2t_tensor(F2_F32, F2_CPU, 2, (int64_t[]){65536, 1}));
  CHECK_OK(f2_unary(colr.c, col.c, F2_OP_SIGN)); /* round to -1, 0, 1 */
  CHECK_OK(f2_copy(colr.g, colr.c));
  twin huge = twin_expand(colr, 2, (int64_t[]){65536, 131072});
  double sum = 0, maxv = -2;
  for (int64_t i = 0; i < 65536; i++) sum += get(colr.c, i), maxv = get(colr.c, i) > maxv ? get(colr.c, i) : maxv;
  f2_tensor *o = f2t_tensor(F2_F32, F2_CUDA, 1, (int64_t[]){1});
  CHECK_OK(f2_reduce(o, huge.g, -1, F2_RED_SUM));
  f2_tensor *h = host(o);
  CHECK(get(h, 0) == 131072.0 * sum, "sum over 2^33 broadcast elements: got %.17g want %.17g", get(h, 0), 131072.0 * sum);
  f2_tensor_free(h);
  CHECK_OK(f2_reduce(o, huge.g, -1, F2_RED_MAX));
  h = host(o);
  CHECK(get(h, 0) == maxv, "max over 2^33 broadcast elements: got %g want %g", get(h, 0), maxv);
  f2_tensor_free(h), f2_tensor_free(o);
  twin_free(huge), twin_free(colr), twin_free(col);
}

/* ---------------------------------------------------------------- matmul */

/* out = alpha op(a) op(b) + beta out on both devices; error bound per element:
 * rtol_acc * (|alpha| |op(a)| |op(b)| + |beta| |out|) + rtol_out * |want|. */
static void check_matmul(const char *label, twin out, twin a, twin b, int ta, int tb, float alpha, float beta,
                         double rtol_acc) {
  int nd = out.c->ndim;
  f2_tensor *out0 = host(out.c); /* out before, for the bound */
  CHECK_OK(f2_matmul(out.c, a.c, b.c, ta, tb, alpha, beta));
  int rc = f2_matmul(out.g, a.g, b.g, ta, tb, alpha, beta);
  CHECK(rc == F2_OK, "%s: %s", label, f2_last_error());
  /* |a| |b| in f32 on the CPU */
  f2_tensor *aa = f2t_tensor(F2_F32, F2_CPU, nd, a.c->shape), *ab = f2t_tensor(F2_F32, F2_CPU, nd, b.c->shape);
  f2_tensor *bound = f2t_tensor(F2_F32, F2_CPU, nd, out.c->shape), *t = f2t_tensor(F2_F32, F2_CPU, nd, out.c->shape);
  CHECK_OK(f2_unary(aa, a.c, F2_OP_ABS));
  CHECK_OK(f2_unary(ab, b.c, F2_OP_ABS));
  CHECK_OK(f2_matmul(bound, aa, ab, ta, tb, fabsf(alpha), 0));
  if (beta != 0) {
    CHECK_OK(f2_unary(t, out0, F2_OP_ABS));
    CHECK_OK(f2_binary_scalar(t, t, fabs(beta), F2_OP_MUL));
    CHECK_OK(f2_binary(bound, bound, t, F2_OP_ADD));
  }
  double rtol_out = out.c->dtype == F2_BF16 ? 1e-2 : 0;
  if (rtol_out > 0) { /* the final rounding into bf16, relative to |want| */
    CHECK_OK(f2_copy(t, out.c));
    CHECK_OK(f2_unary(t, t, F2_OP_ABS));
    CHECK_OK(f2_binary_scalar(t, t, rtol_out / rtol_acc, F2_OP_MUL));
    CHECK_OK(f2_binary(bound, bound, t, F2_OP_ADD));
  }
  char what[200];
  snprintf(what, sizeof what, "matmul %s %s%s%s -> %s alpha %.3g beta %.3g", label, f2_dtype_name(a.c->dtype),
           ta ? " a^T" : "", tb ? " b^T" : "", f2_dtype_name(out.c->dtype), alpha, beta);
  compare(what, out.g, out.c, rtol_acc, 1e-30, bound);
  f2_tensor_free(aa), f2_tensor_free(ab), f2_tensor_free(bound), f2_tensor_free(t), f2_tensor_free(out0);
}

/* A fresh output: random when beta reads it, NaN when beta is 0 (which must never read out). */
static twin matmul_out(int32_t dtype, int nd, const int64_t *shape, float beta) {
  twin o = twin_rand(dtype, nd, shape, -1, 1);
  if (beta == 0) {
    CHECK_OK(f2_fill(o.c, NAN));
    CHECK_OK(f2_fill(o.g, NAN));
  }
  return o;
}

static void matmul_case(int64_t batch, int64_t M, int64_t K, int64_t N, int32_t in, int32_t out_dt, int ta, int tb,
                        float alpha, float beta, double rtol_acc) {
  int nd = batch ? 3 : 2;
  int64_t as[3], bs[3], os[3];
  int o = batch ? 1 : 0;
  as[0] = bs[0] = os[0] = batch;
  as[o] = ta ? K : M, as[o + 1] = ta ? M : K;
  bs[o] = tb ? N : K, bs[o + 1] = tb ? K : N;
  os[o] = M, os[o + 1] = N;
  twin a = twin_rand(in, nd, as, -1, 1), b = twin_rand(in, nd, bs, -1, 1), out = matmul_out(out_dt, nd, os, beta);
  char label[96];
  if (batch) snprintf(label, sizeof label, "%lldx[%lldx%lld @ %lldx%lld]", (long long)batch, (long long)M, (long long)K, (long long)K, (long long)N);
  else snprintf(label, sizeof label, "%lldx%lld @ %lldx%lld", (long long)M, (long long)K, (long long)K, (long long)N);
  check_matmul(label, out, a, b, ta, tb, alpha, beta, rtol_acc);
  twin_free(a), twin_free(b), twin_free(out);
}

static void test_matmul(void) {
  static const int64_t shapes[][3] = {{1, 1, 1},   {7, 13, 5},   {64, 64, 64}, {127, 65, 33}, {33, 1, 47},
                                      {5, 300, 3}, {1, 200, 77}, {96, 7, 1},   {256, 512, 128}};
  /* {in, out, rtol_acc}: fp32 sums in another order; bf16/f16 products are exact in fp32, so the
   * same, with room for tensor-core accumulation details. */
  struct {
    int32_t in, out;
    double rtol;
  } types[] = {{F2_F32, F2_F32, 1e-5}, {F2_BF16, F2_F32, 1e-4}, {F2_BF16, F2_BF16, 1e-4}, {F2_F16, F2_F32, 1e-4},
               {F2_F32, F2_BF16, 1e-5}, {F2_F16, F2_BF16, 1e-4}};
  uint64_t s = next_seed();
  for (size_t t = 0; t < sizeof types / sizeof types[0]; t++)
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
      for (int tr = 0; tr < 4; tr++) {
        float alpha = (float)(0.5 + (double)(mix64(&s) % 1000) / 500.0), beta = tr % 2 ? 0.0f : -0.75f;
        matmul_case(0, shapes[k][0], shapes[k][1], shapes[k][2], types[t].in, types[t].out, tr & 1, tr >> 1, alpha,
                    beta, types[t].rtol);
      }
  /* Batched, all transpose combos. */
  for (int t = 0; t < 3; t++)
    for (int tr = 0; tr < 4; tr++)
      matmul_case(3, 17, 33, 29, types[t].in, types[t].out, tr & 1, tr >> 1, 1.0f, tr == 3 ? 0.5f : 0.0f,
                  types[t].rtol);
  matmul_case(8, 64, 128, 96, F2_BF16, F2_BF16, 0, 1, 1.0f, 0.0f, 1e-4);
  /* A larger bf16 GEMM like a training layer. */
  matmul_case(0, 512, 1024, 768, F2_BF16, F2_BF16, 0, 1, 1.0f, 0.0f, 1e-4);
  matmul_case(0, 512, 1024, 768, F2_BF16, F2_F32, 1, 0, 1.0f, 1.0f, 1e-4);

  for (int k = 0; k < 2; k++) {
    int32_t dt = k ? F2_BF16 : F2_F32;
    double rtol = k ? 1e-4 : 1e-5;
    /* a narrowed (row stride > K), b a transposed view; out narrowed inside a wider buffer: the
     * columns outside the view must keep their values. */
    twin abase = twin_rand(dt, 2, (int64_t[]){45, 70}, -1, 1), a = twin_narrow(abase, 1, 3, 61);
    twin bbase = twin_rand(dt, 2, (int64_t[]){29, 61}, -1, 1), b = twin_transpose(bbase, 0, 1);
    twin obase = twin_rand(dt, 2, (int64_t[]){45, 40}, -1, 1), o = twin_narrow(obase, 1, 5, 29);
    check_matmul("strided a, b view, out narrowed", o, a, b, 0, 0, 1.5f, 0.25f, rtol);
    /* Columns [0,5) and [34,40) lie outside the view: bit for bit what they were. */
    twin left = twin_narrow(obase, 1, 0, 5), right = twin_narrow(obase, 1, 34, 6);
    compare_bits("matmul into a narrowed out: columns left of the view untouched", left.g, left.c);
    compare_bits("matmul into a narrowed out: columns right of the view untouched", right.g, right.c);
    twin_free(left), twin_free(right), twin_free(o), twin_free(obase);
    /* out as a transposed view (column-major output). */
    twin obase2 = twin_rand(dt, 2, (int64_t[]){29, 45}, -1, 1), o2 = twin_transpose(obase2, 0, 1);
    check_matmul("out a transposed view", o2, a, b, 0, 0, 1.0f, 1.0f, rtol);
    twin_free(o2), twin_free(obase2);
    /* Neither rows nor columns contiguous (stride 2 both ways): staged through a copy. */
    twin sbase = twin_rand(dt, 2, (int64_t[]){90, 122}, -1, 1);
    twin sa = twin_strided(sbase, 2, (int64_t[]){45, 61}, (int64_t[]){244, 2}, 1);
    twin o3 = matmul_out(dt, 2, (int64_t[]){45, 29}, 0);
    check_matmul("a with stride 2 in both dims", o3, sa, b, 0, 0, 1.0f, 0.0f, rtol);
    twin_free(o3);
    /* b broadcast along K (row stride 0). */
    twin brow = twin_rand(dt, 2, (int64_t[]){1, 29}, -1, 1), bb = twin_expand(brow, 2, (int64_t[]){61, 29});
    twin o4 = matmul_out(dt, 2, (int64_t[]){45, 29}, 0);
    check_matmul("b broadcast along K", o4, a, bb, 0, 0, 1.0f, 0.0f, rtol);
    twin_free(o4), twin_free(bb), twin_free(brow);
    /* Batched with interleaved batches: [M, B, K] permuted to [B, M, K] (batch stride K). */
    twin pa = twin_rand(dt, 3, (int64_t[]){21, 4, 19}, -1, 1), pav = twin_permute(pa, (int32_t[]){1, 0, 2});
    twin pb = twin_rand(dt, 3, (int64_t[]){4, 19, 23}, -1, 1);
    twin pobase = twin_rand(dt, 3, (int64_t[]){21, 4, 23}, -1, 1), po = twin_permute(pobase, (int32_t[]){1, 0, 2});
    check_matmul("batched, permuted a and out", po, pav, pb, 0, 0, 1.0f, 0.5f, rtol);
    twin_free(po), twin_free(pobase), twin_free(pb), twin_free(pav), twin_free(pa);
    twin_free(sa), twin_free(sbase), twin_free(a), twin_free(abase), twin_free(b), twin_free(bbase);
  }
  /* K = 0: out = beta * out; beta = 0 clears it even over NaN. */
  for (int k = 0; k < 2; k++) {
    twin a = twin_of(f2t_tensor(F2_F32, F2_CPU, 2, (int64_t[]){3, 0})), b = twin_of(f2t_tensor(F2_F32, F2_CPU, 2, (int64_t[]){0, 4}));
    twin o = matmul_out(F2_F32, 2, (int64_t[]){3, 4}, k ? 0.0f : 0.5f);
    CHECK_OK(f2_matmul(o.c, a.c, b.c, 0, 0, 1.0f, k ? 0.0f : 0.5f));
    CHECK_OK(f2_matmul(o.g, a.g, b.g, 0, 0, 1.0f, k ? 0.0f : 0.5f));
    compare_bits(k ? "matmul K=0 beta 0" : "matmul K=0 beta 0.5", o.g, o.c);
    twin_free(a), twin_free(b), twin_free(o);
  }
  /* More distinct shapes than the descriptor cache holds, then the first ones again: same bits. */
  twin a = twin_rand(F2_BF16, 2, (int64_t[]){80, 48}, -1, 1), b = twin_rand(F2_BF16, 2, (int64_t[]){48, 40}, -1, 1);
  f2_tensor *first = NULL;
  for (int m = 80; m >= 1; m--) {
    twin am = twin_narrow(a, 0, 0, m);
    twin o = matmul_out(F2_F32, 2, (int64_t[]){m, 40}, 0);
    check_matmul("cache churn", o, am, b, 0, 0, 1.0f, 0.0f, 1e-4);
    if (m == 80) first = host(o.g);
    twin_free(o), twin_free(am);
  }
  f2_tensor *again = f2t_tensor(F2_F32, F2_CUDA, 2, (int64_t[]){80, 40});
  CHECK_OK(f2_matmul(again, a.g, b.g, 0, 0, 1.0f, 0.0f));
  compare_bits("matmul after cache eviction: same bits as the first run", again, first);
  f2_tensor_free(again), f2_tensor_free(first);
  twin_free(a), twin_free(b);
}

/* ---------------------------------------------------------------- errors */

static void test_errors(void) {
  f2_tensor *g = f2t_tensor(F2_F32, F2_CUDA, 2, (int64_t[]){4, 4}), *c = f2t_tensor(F2_F32, F2_CPU, 2, (int64_t[]){4, 4});
  CHECK(f2_binary(g, g, c, F2_OP_ADD) == F2_ERR_ARG, "mixing devices in an op must fail");
  CHECK(strstr(f2_last_error(), "device") != NULL, "message names the devices: %s", f2_last_error());
  CHECK(f2_matmul(g, g, c, 0, 0, 1, 0) == F2_ERR_ARG, "matmul across devices must fail");
  CHECK_OK(f2_cuda_synchronize());
  f2_tensor_free(g), f2_tensor_free(c);
}

int main(void) {
  f2t_require_gpu();
  seed_counter = f2t_seed();
  verbose = getenv("F2_TEST_VERBOSE") != NULL;
  /* Warm up the persistent buffers (cuBLASLt workspace, reduction scratch) so the leak check
   * below sees only what the tests themselves hold. */
  {
    twin a = twin_rand(F2_F32, 2, (int64_t[]){8, 8}, -1, 1), x = twin_rand(F2_F32, 1, (int64_t[]){1 << 20}, -1, 1);
    twin o = twin_of(f2t_tensor(F2_F32, F2_CPU, 2, (int64_t[]){8, 8}));
    check_matmul("warm-up", o, a, a, 0, 0, 1, 0, 1e-5);
    check_reduce("warm-up", x, -1, F2_RED_SUM, F2_F32);
    twin_free(a), twin_free(x), twin_free(o);
  }
  f2_memory_stats before, after;
  CHECK_OK(f2_cuda_memory_stats(&before));
  struct {
    const char *name;
    void (*fn)(void);
  } sections[] = {{"transfers", test_transfers}, {"casts", test_casts},   {"copy rows", test_copy_rows}, {"fill", test_fill},
                  {"rand", test_rand},           {"unary", test_unary},   {"binary", test_binary},
                  {"binary_scalar", test_binary_scalar}, {"reduce", test_reduce}, {"matmul", test_matmul},
                  {"errors", test_errors}};
  for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++) {
    int passed = f2t_passed, failed = f2t_failed;
    clock_t start = clock();
    sections[i].fn();
    printf("%-14s %5d passed, %d failed (%.1f s CPU time)\n", sections[i].name, f2t_passed - passed,
           f2t_failed - failed, (double)(clock() - start) / CLOCKS_PER_SEC);
    fflush(stdout);
  }
  CHECK_OK(f2_cuda_synchronize());
  CHECK_OK(f2_cuda_memory_stats(&after));
  CHECK(after.allocated == before.allocated, "GPU bytes allocated: %lld before the tests, %lld after (a leak?)",
        (long long)before.allocated, (long long)after.allocated);
  return f2t_done();
}
