/* test_nn_strided.c — RoPE, the fused q/k/v RoPE and SwiGLU on row-strided views (the column slices of a fused q/k/v or
 * gate/up projection's rows) on the CPU: the same bits as on contiguous copies of the views, in place
 * and out of place, f32 and bf16, odd sizes; what lies outside an output view is left alone; layouts
 * that are not rows at one stride are refused with a clear message. Fresh random inputs (seed printed). */
#include <string.h>

#include "f2test.h"

static uint64_t seed_counter;
static uint64_t next_seed(void) { return seed_counter++; }

static f2_tensor *randn(int32_t dtype, int ndim, const int64_t *shape) {
  f2_tensor *f = f2t_tensor(F2_F32, F2_CPU, ndim, shape), *t = f2t_tensor(dtype, F2_CPU, ndim, shape);
  CHECK_OK(f2_rand_normal(f, next_seed(), 0.0, 1.0));
  CHECK_OK(f2_copy(t, f));
  f2_tensor_free(f);
  return t;
}
static f2_tensor *contiguous_copy(const f2_tensor *t) {
  f2_tensor *c = f2t_tensor(t->dtype, F2_CPU, t->ndim, t->shape);
  CHECK_OK(f2_copy(c, t));
  return c;
}
/* Bitwise equality of two same-shape tensors of any strides; prints the first difference. */
static int64_t offset_of(const f2_tensor *t, int64_t i) {
  int64_t off = 0;
  for (int d = t->ndim - 1; d >= 0; d--) {
    off += (i % t->shape[d]) * t->stride[d];
    i /= t->shape[d];
  }
  return off;
}
static int same_bits(const f2_tensor *a, const f2_tensor *b, const char *what) {
  int64_t n = f2_tensor_numel(a);
  size_t size = f2_dtype_size(a->dtype);
  for (int64_t i = 0; i < n; i++) {
    const char *pa = (const char *)a->data + offset_of(a, i) * (int64_t)size;
    const char *pb = (const char *)b->data + offset_of(b, i) * (int64_t)size;
    if (memcmp(pa, pb, size) != 0) {
      fprintf(stderr, "%s: first difference at element %lld of %lld\n", what, (long long)i, (long long)n);
      return 0;
    }
  }
  return 1;
}
static void fill_bits(f2_tensor *t, uint8_t byte) { memset(t->data, byte, f2_tensor_nbytes(t)); }
/* Bytes of buffer `all` outside the view v still hold `byte` (v a view of all). */
static int untouched_outside(const f2_tensor *all, const f2_tensor *v, uint8_t byte) {
  size_t size = f2_dtype_size(all->dtype), nbytes = f2_tensor_nbytes(all);
  char *mask = calloc(nbytes, 1);
  int64_t n = f2_tensor_numel(v);
  for (int64_t i = 0; i < n; i++) {
    size_t at = (size_t)((const char *)v->data - (const char *)all->data) + (size_t)offset_of(v, i) * size;
    memset(mask + at, 1, size);
  }
  int ok = 1;
  for (size_t i = 0; i < nbytes && ok; i++) ok = mask[i] || ((const uint8_t *)all->data)[i] == byte;
  free(mask);
  return ok;
}

/* ---------------------------------------------------------------- RoPE */

/* Y [B, T, W] with W = (H + 2 Hkv) Dh + pad: q, k and v heads side by side in each row, as the fused
 * projection writes them. */
static void rope_case(int32_t dtype, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t Dh, int64_t pad) {
  char what[160];
  int64_t W = (H + 2 * Hkv) * Dh + pad, ys[3] = {B, T, W}, half = Dh / 2;
  f2_tensor *y = randn(dtype, 3, ys);
  int64_t ts[2] = {T + 3, half}, is = half;
  f2_tensor *inv = f2t_tensor(F2_F32, F2_CPU, 1, &is), *cs = f2t_tensor(F2_F32, F2_CPU, 2, ts), *sn = f2t_tensor(F2_F32, F2_CPU, 2, ts);
  for (int64_t i = 0; i < half; i++) ((float *)inv->data)[i] = (float)pow(10000.0, -2.0 * (double)i / (double)Dh);
  CHECK_OK(f2_rope_tables(cs, sn, inv));
  struct { int64_t heads, col; const char *name; } parts[2] = {{H, 0, "q"}, {Hkv, H * Dh, "k"}};
  for (int p = 0; p < 2; p++) {
    int64_t heads = parts[p].heads, shape[4] = {B, T, heads, Dh}, stride[4] = {T * W, W, Dh, 1};
    for (int dir = 0; dir < 2; dir++) {
      int (*op)(f2_tensor *, const f2_tensor *, const f2_tensor *, const f2_tensor *) =
          dir ? f2_rope_backward : f2_rope_forward;
      snprintf(what, sizeof what, "rope %s %s of [%lld,%lld,%lld] (%s heads %lld x %lld) %s", dir ? "backward" : "forward",
               parts[p].name, (long long)B, (long long)T, (long long)W, parts[p].name, (long long)heads, (long long)Dh,
               f2_dtype_name(dtype));
      /* strided x -> contiguous out, as the reference on a contiguous copy */
      f2_tensor *xv = f2t_view(y, 4, shape, stride, parts[p].col), *xc = contiguous_copy(xv);
      f2_tensor *out = f2t_tensor(dtype, F2_CPU, 4, shape), *ref = f2t_tensor(dtype, F2_CPU, 4, shape);
      CHECK_OK(op(out, xv, cs, sn));
      CHECK_OK(op(ref, xc, cs, sn));
      CHECK(same_bits(out, ref, what), "%s: strided x, contiguous out", what);
      /* contiguous x -> strided out inside a sentinel-filled wide buffer: the view's elements as the
       * reference, everything else untouched */
      f2_tensor *dy = f2t_tensor(dtype, F2_CPU, 3, ys);
      fill_bits(dy, 0x7b);
      f2_tensor *ov = f2t_view(dy, 4, shape, stride, parts[p].col);
      CHECK_OK(op(ov, xc, cs, sn));
      CHECK(same_bits(ov, ref, what), "%s: contiguous x, strided out", what);
      CHECK(untouched_outside(dy, ov, 0x7b), "%s: wrote outside the out view", what);
      /* in place on the strided view */
      f2_tensor *y2 = contiguous_copy(y), *iv = f2t_view(y2, 4, shape, stride, parts[p].col);
      CHECK_OK(op(iv, iv, cs, sn));
      CHECK(same_bits(iv, ref, what), "%s: in place on the strided view", what);
      f2_tensor_free(xv), f2_tensor_free(xc), f2_tensor_free(out), f2_tensor_free(ref), f2_tensor_free(ov);
      f2_tensor_free(dy), f2_tensor_free(iv), f2_tensor_free(y2);
    }
  }
  f2_tensor_free(y), f2_tensor_free(inv), f2_tensor_free(cs), f2_tensor_free(sn);
}

static void rope_refusals(void) {
  int64_t B = 2, T = 4, H = 3, Dh = 8, W = 5 * Dh, ys[3] = {B, T, W}, half = Dh / 2;
  f2_tensor *y = randn(F2_F32, 3, ys);
  int64_t ts[2] = {T, half};
  f2_tensor *cs = f2t_tensor(F2_F32, F2_CPU, 2, ts), *sn = f2t_tensor(F2_F32, F2_CPU, 2, ts);
  CHECK_OK(f2_fill(cs, 1.0));
  CHECK_OK(f2_fill(sn, 0.0));
  int64_t shape[4] = {B, T, H, Dh};
  f2_tensor *out = f2t_tensor(F2_F32, F2_CPU, 4, shape);
  /* head_dim elements 2 apart: the rows' elements are not contiguous */
  int64_t s1[4] = {T * W, W, Dh, 2};
  int64_t shape_small[4] = {B, T, 2, Dh / 2};
  f2_tensor *bad = f2t_view(y, 4, shape_small, s1, 0), *out_small = f2t_tensor(F2_F32, F2_CPU, 4, shape_small);
  CHECK(f2_rope_forward(out_small, bad, cs, sn) == F2_ERR_ARG && strstr(f2_last_error(), "row stride"),
        "rope: elements not contiguous refused: %s", f2_last_error());
  /* b and t rows not at one stride (b's stride is not T times t's) */
  int64_t s2[4] = {T * W + 1, W, Dh, 1};
  f2_tensor *bad2 = f2t_view(y, 4, shape, s2, 0);
  CHECK(f2_rope_forward(out, bad2, cs, sn) == F2_ERR_ARG && strstr(f2_last_error(), "x (shape"),
        "rope: rows at two strides refused: %s", f2_last_error());
  /* heads not adjacent within a row */
  int64_t s3[4] = {T * W, W, Dh + 1, 1};
  f2_tensor *bad3 = f2t_view(y, 4, shape, s3, 0);
  CHECK(f2_rope_backward(bad3, out, cs, sn) == F2_ERR_ARG && strstr(f2_last_error(), "out (shape"),
        "rope: heads apart refused (as out): %s", f2_last_error());
  /* rows overlapping (row stride below the row length) */
  int64_t s4[4] = {T * Dh, Dh, Dh, 1};
  f2_tensor *bad4 = f2t_view(y, 4, shape, s4, 0);
  CHECK(f2_rope_forward(out, bad4, cs, sn) == F2_ERR_ARG, "rope: overlapping rows refused: %s", f2_last_error());
  f2_tensor_free(y), f2_tensor_free(cs), f2_tensor_free(sn), f2_tensor_free(out), f2_tensor_free(bad);
  f2_tensor_free(out_small), f2_tensor_free(bad2), f2_tensor_free(bad3), f2_tensor_free(bad4);
}

/* f2_qkv_rope_forward/backward on Y [B*T, W]: the same bits as two RoPEs on the q and k views and a copy
 * of the v view (forward), and as the RoPE backwards into the views plus a copy (backward, into a
 * sentinel-filled wide buffer whose pad columns stay untouched). */
static void qkv_case(int32_t dtype, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t Dh, int64_t pad) {
  char what[160];
  snprintf(what, sizeof what, "qkv_rope [%lld,%lld] heads %lld+%lld+%lld x %lld pad %lld %s", (long long)B,
           (long long)T, (long long)H, (long long)Hkv, (long long)Hkv, (long long)Dh, (long long)pad, f2_dtype_name(dtype));
  int64_t W = (H + 2 * Hkv) * Dh + pad, ys[2] = {B * T, W}, half = Dh / 2;
  int64_t rows[2] = {B * T, W - pad}, row_stride[2] = {W, 1};   /* the heads' columns of each row */
  f2_tensor *y = randn(dtype, 2, ys), *yr = f2t_view(y, 2, rows, row_stride, 0);
  int64_t ts[2] = {T + 1, half}, is = half;
  f2_tensor *inv = f2t_tensor(F2_F32, F2_CPU, 1, &is), *cs = f2t_tensor(F2_F32, F2_CPU, 2, ts), *sn = f2t_tensor(F2_F32, F2_CPU, 2, ts);
  for (int64_t i = 0; i < half; i++) ((float *)inv->data)[i] = (float)pow(10000.0, -2.0 * (double)i / (double)Dh);
  CHECK_OK(f2_rope_tables(cs, sn, inv));
  int64_t qs[4] = {B, T, H, Dh}, ks[4] = {B, T, Hkv, Dh}, stride[4] = {T * W, W, Dh, 1};
  f2_tensor *yq = f2t_view(y, 4, qs, stride, 0), *yk = f2t_view(y, 4, ks, stride, H * Dh), *yv = f2t_view(y, 4, ks, stride, (H + Hkv) * Dh);
  f2_tensor *q = f2t_tensor(dtype, F2_CPU, 4, qs), *k = f2t_tensor(dtype, F2_CPU, 4, ks), *v = f2t_tensor(dtype, F2_CPU, 4, ks);
  f2_tensor *rq = f2t_tensor(dtype, F2_CPU, 4, qs), *rk = f2t_tensor(dtype, F2_CPU, 4, ks), *rv = f2t_tensor(dtype, F2_CPU, 4, ks);
  CHECK_OK(f2_qkv_rope_forward(q, k, v, yr, cs, sn));
  CHECK_OK(f2_rope_forward(rq, yq, cs, sn));
  CHECK_OK(f2_rope_forward(rk, yk, cs, sn));
  CHECK_OK(f2_copy(rv, yv));
  CHECK(same_bits(q, rq, what) && same_bits(k, rk, what) && same_bits(v, rv, what), "%s: forward", what);
  /* backward from q, k, v as the gradients */
  f2_tensor *dy = f2t_tensor(dtype, F2_CPU, 2, ys), *ref = f2t_tensor(dtype, F2_CPU, 2, ys);
  fill_bits(dy, 0x5d);
  fill_bits(ref, 0x5d);
  f2_tensor *dyr = f2t_view(dy, 2, rows, row_stride, 0);
  CHECK_OK(f2_qkv_rope_backward(dyr, q, k, v, cs, sn));
  f2_tensor *dq = f2t_view(ref, 4, qs, stride, 0), *dk = f2t_view(ref, 4, ks, stride, H * Dh), *dv = f2t_view(ref, 4, ks, stride, (H + Hkv) * Dh);
  CHECK_OK(f2_rope_backward(dq, q, cs, sn));
  CHECK_OK(f2_rope_backward(dk, k, cs, sn));
  CHECK_OK(f2_copy(dv, v));
  CHECK(same_bits(dy, ref, what), "%s: backward (whole rows, pad included)", what);
  f2_tensor *all[] = {y, yr, inv, cs, sn, yq, yk, yv, q, k, v, rq, rk, rv, dy, dyr, ref, dq, dk, dv};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) f2_tensor_free(all[i]);
}

static void qkv_refusals(void) {
  int64_t B = 2, T = 3, H = 2, Hkv = 1, Dh = 4, W = (H + 2 * Hkv) * Dh, ys[2] = {B * T, W};
  int64_t qs[4] = {B, T, H, Dh}, ks[4] = {B, T, Hkv, Dh}, ts[2] = {T, Dh / 2};
  f2_tensor *y = randn(F2_F32, 2, ys), *q = f2t_tensor(F2_F32, F2_CPU, 4, qs), *k = f2t_tensor(F2_F32, F2_CPU, 4, ks);
  f2_tensor *v = f2t_tensor(F2_F32, F2_CPU, 4, ks), *vb = f2t_tensor(F2_BF16, F2_CPU, 4, ks);
  f2_tensor *cs = f2t_tensor(F2_F32, F2_CPU, 2, ts), *sn = f2t_tensor(F2_F32, F2_CPU, 2, ts);
  CHECK_OK(f2_fill(cs, 1.0));
  CHECK_OK(f2_fill(sn, 0.0));
  CHECK(f2_qkv_rope_forward(q, k, vb, y, cs, sn) == F2_ERR_ARG && strstr(f2_last_error(), "one dtype"),
        "qkv_rope: mixed dtypes refused: %s", f2_last_error());
  int64_t narrow[2] = {B * T, W - Dh};
  f2_tensor *y2 = randn(F2_F32, 2, narrow);
  CHECK(f2_qkv_rope_forward(q, k, v, y2, cs, sn) == F2_ERR_ARG && strstr(f2_last_error(), "y has shape"),
        "qkv_rope: y narrower than the heads refused: %s", f2_last_error());
  int64_t k2s[4] = {B, T, Hkv, Dh + 2};
  f2_tensor *k2 = f2t_tensor(F2_F32, F2_CPU, 4, k2s);
  CHECK(f2_qkv_rope_backward(y, q, k2, v, cs, sn) == F2_ERR_ARG && strstr(f2_last_error(), "dk has shape"),
        "qkv_rope: dk of another head_dim refused: %s", f2_last_error());
  int64_t short_t[2] = {T - 1, Dh / 2};
  f2_tensor *cs2 = f2t_tensor(F2_F32, F2_CPU, 2, short_t);
  CHECK(f2_qkv_rope_forward(q, k, v, y, cs2, cs2) == F2_ERR_ARG && strstr(f2_last_error(), "positions"),
        "qkv_rope: tables too short refused: %s", f2_last_error());
  CHECK(f2_qkv_rope_forward(q, k, v, NULL, cs, sn) == F2_ERR_ARG, "qkv_rope: NULL y refused");
  f2_tensor *all[] = {y, q, k, v, vb, cs, sn, y2, k2, cs2};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) f2_tensor_free(all[i]);
}

/* ---------------------------------------------------------------- SwiGLU */

/* Y [rows, 2I (+ pad)]: gate = columns 0..I-1, up = I..2I-1, as the fused gate/up projection writes
 * them, B sequences of R rows each. */
static void swiglu_case(int32_t dtype, int64_t B, int64_t R, int64_t I, int64_t pad) {
  char what[160];
  snprintf(what, sizeof what, "swiglu [%lld x %lld rows, I %lld, pad %lld] %s", (long long)B, (long long)R,
           (long long)I, (long long)pad, f2_dtype_name(dtype));
  int64_t W = 2 * I + pad, ys[3] = {B, R, W}, shape[3] = {B, R, I}, stride[3] = {R * W, W, 1};
  f2_tensor *y = randn(dtype, 3, ys);
  f2_tensor *gv = f2t_view(y, 3, shape, stride, 0), *uv = f2t_view(y, 3, shape, stride, I);
  f2_tensor *gc = contiguous_copy(gv), *uc = contiguous_copy(uv);
  f2_tensor *out = f2t_tensor(dtype, F2_CPU, 3, shape), *ref = f2t_tensor(dtype, F2_CPU, 3, shape);
  CHECK_OK(f2_swiglu_forward(out, gv, uv));
  CHECK_OK(f2_swiglu_forward(ref, gc, uc));
  CHECK(same_bits(out, ref, what), "%s: forward from the strided halves", what);
  /* strided out inside a sentinel-filled buffer */
  f2_tensor *wide = f2t_tensor(dtype, F2_CPU, 3, ys);
  fill_bits(wide, 0x5a);
  f2_tensor *ov = f2t_view(wide, 3, shape, stride, I);
  CHECK_OK(f2_swiglu_forward(ov, gc, uc));
  CHECK(same_bits(ov, ref, what), "%s: forward into a strided out", what);
  CHECK(untouched_outside(wide, ov, 0x5a), "%s: forward wrote outside its out view", what);
  /* backward: reference on contiguous copies; then in place over the fused buffer's halves */
  f2_tensor *dout = randn(dtype, 3, shape);
  f2_tensor *dg = f2t_tensor(dtype, F2_CPU, 3, shape), *du = f2t_tensor(dtype, F2_CPU, 3, shape);
  CHECK_OK(f2_swiglu_backward(dg, du, dout, gc, uc));
  f2_tensor *y2 = contiguous_copy(y);
  f2_tensor *gv2 = f2t_view(y2, 3, shape, stride, 0), *uv2 = f2t_view(y2, 3, shape, stride, I);
  CHECK_OK(f2_swiglu_backward(gv2, uv2, dout, gv2, uv2));
  CHECK(same_bits(gv2, dg, what), "%s: backward dgate in place over the gate half", what);
  CHECK(same_bits(uv2, du, what), "%s: backward dup in place over the up half", what);
  if (pad > 0) {   /* the padding columns are the input's still */
    int64_t ps[3] = {B, R, pad};
    f2_tensor *p1 = f2t_view(y, 3, ps, stride, 2 * I), *p2 = f2t_view(y2, 3, ps, stride, 2 * I);
    CHECK(same_bits(p1, p2, what), "%s: backward wrote into the padding", what);
    f2_tensor_free(p1), f2_tensor_free(p2);
  }
  /* strided dout too (a view of another wide buffer) */
  f2_tensor *dwide = randn(dtype, 3, ys), *dov = f2t_view(dwide, 3, shape, stride, 0), *doc = contiguous_copy(dov);
  f2_tensor *dg2 = f2t_tensor(dtype, F2_CPU, 3, shape), *du2 = f2t_tensor(dtype, F2_CPU, 3, shape);
  f2_tensor *dg3 = f2t_tensor(dtype, F2_CPU, 3, shape), *du3 = f2t_tensor(dtype, F2_CPU, 3, shape);
  CHECK_OK(f2_swiglu_backward(dg2, du2, dov, gv, uv));
  CHECK_OK(f2_swiglu_backward(dg3, du3, doc, gc, uc));
  CHECK(same_bits(dg2, dg3, what) && same_bits(du2, du3, what), "%s: backward with every input strided", what);
  f2_tensor *all[] = {y, gv, uv, gc, uc, out, ref, wide, ov, dout, dg, du, y2, gv2, uv2, dwide, dov, doc, dg2, du2, dg3, du3};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) f2_tensor_free(all[i]);
}

static void swiglu_refusals(void) {
  int64_t ys[2] = {6, 20}, shape[2] = {6, 8};
  f2_tensor *y = randn(F2_F32, 2, ys), *out = f2t_tensor(F2_F32, F2_CPU, 2, shape);
  int64_t s_bad[2] = {20, 2};   /* columns 2 apart */
  f2_tensor *bad = f2t_view(y, 2, shape, s_bad, 0), *ok = f2t_view(y, 2, shape, (int64_t[]){20, 1}, 0);
  CHECK(f2_swiglu_forward(out, bad, ok) == F2_ERR_ARG && strstr(f2_last_error(), "gate (shape"),
        "swiglu: gate columns apart refused: %s", f2_last_error());
  CHECK(f2_swiglu_backward(out, bad, ok, ok, ok) == F2_ERR_ARG && strstr(f2_last_error(), "dup (shape"),
        "swiglu: dup columns apart refused: %s", f2_last_error());
  int64_t s_t[2] = {1, 6};   /* a transposed view: rows of one element */
  f2_tensor *tr = f2t_view(y, 2, shape, s_t, 0);
  CHECK(f2_swiglu_forward(out, ok, tr) == F2_ERR_ARG && strstr(f2_last_error(), "up (shape"),
        "swiglu: a transposed up refused: %s", f2_last_error());
  int64_t other[2] = {6, 9};
  f2_tensor *o2 = f2t_tensor(F2_F32, F2_CPU, 2, other);
  CHECK(f2_swiglu_forward(o2, ok, ok) == F2_ERR_ARG && strstr(f2_last_error(), "out has shape"),
        "swiglu: out of another shape refused: %s", f2_last_error());
  f2_tensor_free(y), f2_tensor_free(out), f2_tensor_free(bad), f2_tensor_free(ok), f2_tensor_free(tr), f2_tensor_free(o2);
}

int main(void) {
  seed_counter = f2t_seed();
  qkv_refusals();
  const int32_t dtypes[2] = {F2_F32, F2_BF16};
  for (int d = 0; d < 2; d++) {
    int32_t dt = dtypes[d];
    rope_case(dt, 2, 5, 3, 1, 8, 0);      /* odd T and heads */
    rope_case(dt, 1, 7, 9, 3, 64, 0);     /* SmolLM2's heads */
    rope_case(dt, 3, 3, 2, 2, 6, 0);      /* half = 3 */
    rope_case(dt, 2, 9, 4, 2, 16, 3);     /* padded rows: an odd row stride */
    rope_case(dt, 1, 1, 1, 1, 2, 1);      /* one row */
    qkv_case(dt, 2, 5, 3, 1, 8, 0);
    qkv_case(dt, 1, 7, 9, 3, 64, 0);      /* SmolLM2's heads */
    qkv_case(dt, 2, 3, 4, 2, 6, 5);       /* half = 3, padded rows */
    swiglu_case(dt, 1, 7, 48, 0);
    swiglu_case(dt, 2, 33, 13, 0);        /* odd I */
    swiglu_case(dt, 3, 5, 64, 5);         /* padded */
    swiglu_case(dt, 1, 1, 6, 0);          /* one row */
    swiglu_case(dt, 2, 17, 1536, 0);      /* SmolLM2's intermediate */
  }
  rope_refusals();
  swiglu_refusals();
  return f2t_done();
}
