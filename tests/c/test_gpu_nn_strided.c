/* test_gpu_nn_strided.c — RoPE, the fused q/k/v RoPE and SwiGLU of kernels/nn.cu on row-strided views (the column slices of a
 * fused q/k/v or gate/up projection's rows, as nn/fused.lua makes them) against the CPU reference on the
 * same views: strided inputs, strided outputs inside a sentinel-filled buffer (compared whole, so a write
 * outside the view shows), in place over the fused buffer, contiguous operands too; f32 and bf16; odd
 * sizes and padded rows (odd row strides) that miss the 4-wide path, SmolLM2/Qwen3 sizes that take it.
 * A second GPU run must give the same bits. A failed compare prints the bad count, the first bad index
 * (got vs want) and the max abs / rel errors. F2_TEST_VERBOSE=1 prints every compare. */
#include <string.h>

#include "f2test.h"

static uint64_t seed_counter;
static int verbose;
static uint64_t next_seed(void) { return seed_counter++; }
static const char *dn(int32_t dtype) { return f2_dtype_name(dtype); }

static f2_tensor *on(int32_t device, const f2_tensor *t) {   /* contiguous copy on device */
  f2_tensor *c = f2t_tensor(t->dtype, device, t->ndim, t->shape);
  f2t_copy(c, t);
  return c;
}
static f2_tensor *randn(int32_t dtype, int ndim, const int64_t *shape) {   /* CPU, N(0, 1) */
  f2_tensor *f = f2t_tensor(F2_F32, F2_CPU, ndim, shape), *t = f2t_tensor(dtype, F2_CPU, ndim, shape);
  CHECK_OK(f2_rand_normal(f, next_seed(), 0.0, 1.0));
  f2t_copy(t, f);
  f2_tensor_free(f);
  return t;
}
static double get(const f2_tensor *t, int64_t i) {   /* CPU, contiguous */
  if (t->dtype == F2_F32) return ((const float *)t->data)[i];
  uint32_t u = (uint32_t)((const uint16_t *)t->data)[i] << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* got (any device) vs want (CPU), both contiguous of one shape: |got - want| <= atol + rtol |want|. */
static void compare(const f2_tensor *got_any, const f2_tensor *want, double rtol, double atol, const char *what) {
  f2_tensor *got = on(F2_CPU, got_any);
  int64_t n = f2_tensor_numel(want), bad = 0, first = -1;
  double max_abs = 0, max_rel = 0;
  for (int64_t i = 0; i < n; i++) {
    double g = get(got, i), w = get(want, i), err = fabs(g - w);
    if (err > max_abs) max_abs = err;
    if (w != 0 && err / fabs(w) > max_rel) max_rel = err / fabs(w);
    if (!(err <= atol + rtol * fabs(w))) {
      if (first < 0) first = i;
      bad++;
    }
  }
  CHECK(bad == 0, "%s: %lld of %lld elements off, first at %lld (got %.9g, want %.9g); max abs %.3g, max rel %.3g",
        what, (long long)bad, (long long)n, (long long)first, first >= 0 ? get(got, first) : 0.0,
        first >= 0 ? get(want, first) : 0.0, max_abs, max_rel);
  if (verbose) printf("  %s: max abs %.3g, max rel %.3g over %lld\n", what, max_abs, max_rel, (long long)n);
  f2_tensor_free(got);
}
/* Bitwise equality of two GPU tensors of one shape (the determinism check). */
static void same_bits(const f2_tensor *a_any, const f2_tensor *b_any, const char *what) {
  f2_tensor *a = on(F2_CPU, a_any), *b = on(F2_CPU, b_any);
  int same = memcmp(a->data, b->data, f2_tensor_nbytes(a)) == 0;
  CHECK(same, "%s: a second GPU run gave other bits", what);
  f2_tensor_free(a), f2_tensor_free(b);
}
static double rtol_of(int32_t dtype) { return dtype == F2_BF16 ? 1e-2 : 1e-5; }
static double atol_of(int32_t dtype) { return dtype == F2_BF16 ? 1e-2 : 1e-6; }

/* ---------------------------------------------------------------- RoPE */

/* RoPE tables for head dim Dh and `positions` positions (HF's inv_freq, base 10000): t[0], t[1] the CPU's
 * cos and sin, t[2], t[3] their GPU copies. */
typedef struct {
  f2_tensor *t[4];
} rope_tables;
static rope_tables make_tables(int64_t Dh, int64_t positions) {
  int64_t half = Dh / 2, ts[2] = {positions, half};
  f2_tensor *inv = f2t_tensor(F2_F32, F2_CPU, 1, &half);
  for (int64_t i = 0; i < half; i++) ((float *)inv->data)[i] = (float)pow(10000.0, -2.0 * (double)i / (double)Dh);
  rope_tables r;
  r.t[0] = f2t_tensor(F2_F32, F2_CPU, 2, ts), r.t[1] = f2t_tensor(F2_F32, F2_CPU, 2, ts);
  CHECK_OK(f2_rope_tables(r.t[0], r.t[1], inv));
  r.t[2] = on(F2_CUDA, r.t[0]), r.t[3] = on(F2_CUDA, r.t[1]);
  f2_tensor_free(inv);
  return r;
}

/* Y [B, T, W], W = (H + 2 Hkv) Dh + pad: q, k, v heads side by side per row. Each op runs on the CPU and
 * the GPU on the same views; outputs compared whole. */
static void rope_case(int32_t dtype, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t Dh, int64_t pad) {
  char what[256];
  int64_t W = (H + 2 * Hkv) * Dh + pad, ys[3] = {B, T, W};
  rope_tables tb = make_tables(Dh, T + 2);
  f2_tensor *cs = tb.t[0], *sn = tb.t[1], *cs_g = tb.t[2], *sn_g = tb.t[3];
  f2_tensor *y = randn(dtype, 3, ys), *y_g = on(F2_CUDA, y);
  struct { int64_t heads, col; const char *name; } parts[2] = {{H, 0, "q"}, {Hkv, H * Dh, "k"}};
  for (int p = 0; p < 2; p++) {
    int64_t heads = parts[p].heads, shape[4] = {B, T, heads, Dh}, stride[4] = {T * W, W, Dh, 1}, col = parts[p].col;
    for (int dir = 0; dir < 2; dir++) {
      int (*op)(f2_tensor *, const f2_tensor *, const f2_tensor *, const f2_tensor *) =
          dir ? f2_rope_backward : f2_rope_forward;
      char base[160];
      snprintf(base, sizeof base, "rope %s %s [%lld,%lld,%lld] heads %lld x %lld %s", dir ? "backward" : "forward",
               parts[p].name, (long long)B, (long long)T, (long long)W, (long long)heads, (long long)Dh, dn(dtype));
      /* strided x -> contiguous out */
      f2_tensor *xv = f2t_view(y, 4, shape, stride, col), *xv_g = f2t_view(y_g, 4, shape, stride, col);
      f2_tensor *out = f2t_tensor(dtype, F2_CPU, 4, shape), *out_g = f2t_tensor(dtype, F2_CUDA, 4, shape);
      f2_tensor *out_g2 = f2t_tensor(dtype, F2_CUDA, 4, shape);
      CHECK_OK(op(out, xv, cs, sn));
      CHECK_OK(op(out_g, xv_g, cs_g, sn_g));
      CHECK_OK(op(out_g2, xv_g, cs_g, sn_g));
      snprintf(what, sizeof what, "%s: strided x", base);
      compare(out_g, out, rtol_of(dtype), atol_of(dtype), what);
      same_bits(out_g, out_g2, what);
      /* contiguous x -> strided out inside a sentinel-filled buffer (compared whole) */
      f2_tensor *xc = on(F2_CPU, xv), *xc_g = on(F2_CUDA, xc);
      f2_tensor *wide = f2t_tensor(dtype, F2_CPU, 3, ys), *wide_g = f2t_tensor(dtype, F2_CUDA, 3, ys);
      CHECK_OK(f2_fill(wide, 7.0));
      CHECK_OK(f2_fill(wide_g, 7.0));
      f2_tensor *ov = f2t_view(wide, 4, shape, stride, col), *ov_g = f2t_view(wide_g, 4, shape, stride, col);
      CHECK_OK(op(ov, xc, cs, sn));
      CHECK_OK(op(ov_g, xc_g, cs_g, sn_g));
      snprintf(what, sizeof what, "%s: strided out (whole buffer)", base);
      compare(wide_g, wide, rtol_of(dtype), atol_of(dtype), what);
      /* in place on the strided view of a copy of Y */
      f2_tensor *y2 = on(F2_CPU, y), *y2_g = on(F2_CUDA, y);
      f2_tensor *iv = f2t_view(y2, 4, shape, stride, col), *iv_g = f2t_view(y2_g, 4, shape, stride, col);
      CHECK_OK(op(iv, iv, cs, sn));
      CHECK_OK(op(iv_g, iv_g, cs_g, sn_g));
      snprintf(what, sizeof what, "%s: in place (whole buffer)", base);
      compare(y2_g, y2, rtol_of(dtype), atol_of(dtype), what);
      /* contiguous both ways (the unfused path) */
      f2_tensor *cc = f2t_tensor(dtype, F2_CPU, 4, shape), *cc_g = f2t_tensor(dtype, F2_CUDA, 4, shape);
      CHECK_OK(op(cc, xc, cs, sn));
      CHECK_OK(op(cc_g, xc_g, cs_g, sn_g));
      snprintf(what, sizeof what, "%s: contiguous", base);
      compare(cc_g, cc, rtol_of(dtype), atol_of(dtype), what);
      f2_tensor *all[] = {xv, xv_g, out, out_g, out_g2, xc, xc_g, wide, wide_g, ov, ov_g, y2, y2_g, iv, iv_g, cc, cc_g};
      for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) f2_tensor_free(all[i]);
    }
  }
  f2_tensor *all[] = {cs, sn, cs_g, sn_g, y, y_g};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) f2_tensor_free(all[i]);
}

/* f2_qkv_rope_forward/backward: Y [B*T, W] (the heads' columns a view when padded) into q, k, v and back
 * into a sentinel-filled Y (compared whole: the pad columns must stay as they were), GPU against CPU. */
static void qkv_case(int32_t dtype, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t Dh, int64_t pad) {
  char what[200];
  int64_t W = (H + 2 * Hkv) * Dh + pad, ys[2] = {B * T, W};
  int64_t rows[2] = {B * T, W - pad}, rs[2] = {W, 1};
  int64_t qs[4] = {B, T, H, Dh}, ks[4] = {B, T, Hkv, Dh};
  rope_tables tb = make_tables(Dh, T + 2);
  f2_tensor *cs = tb.t[0], *sn = tb.t[1], *cs_g = tb.t[2], *sn_g = tb.t[3];
  f2_tensor *y = randn(dtype, 2, ys), *y_g = on(F2_CUDA, y);
  f2_tensor *yv = f2t_view(y, 2, rows, rs, 0), *yv_g = f2t_view(y_g, 2, rows, rs, 0);
  f2_tensor *q = f2t_tensor(dtype, F2_CPU, 4, qs), *k = f2t_tensor(dtype, F2_CPU, 4, ks), *v = f2t_tensor(dtype, F2_CPU, 4, ks);
  f2_tensor *q_g = f2t_tensor(dtype, F2_CUDA, 4, qs), *k_g = f2t_tensor(dtype, F2_CUDA, 4, ks), *v_g = f2t_tensor(dtype, F2_CUDA, 4, ks);
  f2_tensor *q_g2 = f2t_tensor(dtype, F2_CUDA, 4, qs);
  f2_tensor *k_g2 = f2t_tensor(dtype, F2_CUDA, 4, ks), *v_g2 = f2t_tensor(dtype, F2_CUDA, 4, ks);
  CHECK_OK(f2_qkv_rope_forward(q, k, v, yv, cs, sn));
  CHECK_OK(f2_qkv_rope_forward(q_g, k_g, v_g, yv_g, cs_g, sn_g));
  CHECK_OK(f2_qkv_rope_forward(q_g2, k_g2, v_g2, yv_g, cs_g, sn_g));
  snprintf(what, sizeof what, "qkv_rope forward [%lld,%lld] heads %lld/%lld x %lld pad %lld %s", (long long)B,
           (long long)T, (long long)H, (long long)Hkv, (long long)Dh, (long long)pad, dn(dtype));
  compare(q_g, q, rtol_of(dtype), atol_of(dtype), what);
  compare(k_g, k, rtol_of(dtype), atol_of(dtype), what);
  compare(v_g, v, 0, 0, what);   /* a copy: exact */
  same_bits(q_g, q_g2, what);
  same_bits(k_g, k_g2, what);
  /* backward from the CPU's q, k, v (the same gradients on both sides) */
  f2_tensor *dq_g = on(F2_CUDA, q), *dk_g = on(F2_CUDA, k), *dv_g = on(F2_CUDA, v);
  f2_tensor *dy = f2t_tensor(dtype, F2_CPU, 2, ys), *dy_g = f2t_tensor(dtype, F2_CUDA, 2, ys);
  CHECK_OK(f2_fill(dy, 7.0));
  CHECK_OK(f2_fill(dy_g, 7.0));
  f2_tensor *dyv = f2t_view(dy, 2, rows, rs, 0), *dyv_g = f2t_view(dy_g, 2, rows, rs, 0);
  CHECK_OK(f2_qkv_rope_backward(dyv, q, k, v, cs, sn));
  CHECK_OK(f2_qkv_rope_backward(dyv_g, dq_g, dk_g, dv_g, cs_g, sn_g));
  snprintf(what, sizeof what, "qkv_rope backward [%lld,%lld] heads %lld/%lld x %lld pad %lld %s (whole rows)",
           (long long)B, (long long)T, (long long)H, (long long)Hkv, (long long)Dh, (long long)pad, dn(dtype));
  compare(dy_g, dy, rtol_of(dtype), atol_of(dtype), what);
  f2_tensor *all[] = {cs, sn, cs_g, sn_g, y, y_g, yv, yv_g, q, k, v, q_g, k_g, v_g, q_g2, k_g2, v_g2,
                      dq_g, dk_g, dv_g, dy, dy_g, dyv, dyv_g};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) f2_tensor_free(all[i]);
}

/* ---------------------------------------------------------------- SwiGLU */

/* Y [B, R, 2I + pad]: gate = columns 0..I-1, up = I..2I-1. */
static void swiglu_case(int32_t dtype, int64_t B, int64_t R, int64_t I, int64_t pad) {
  char base[160], what[256];
  snprintf(base, sizeof base, "swiglu [%lld x %lld rows, I %lld, pad %lld] %s", (long long)B, (long long)R,
           (long long)I, (long long)pad, dn(dtype));
  int64_t W = 2 * I + pad, ys[3] = {B, R, W}, shape[3] = {B, R, I}, stride[3] = {R * W, W, 1};
  double rt = rtol_of(dtype), at = atol_of(dtype);
  f2_tensor *y = randn(dtype, 3, ys), *y_g = on(F2_CUDA, y);
  f2_tensor *gv = f2t_view(y, 3, shape, stride, 0), *uv = f2t_view(y, 3, shape, stride, I);
  f2_tensor *gv_g = f2t_view(y_g, 3, shape, stride, 0), *uv_g = f2t_view(y_g, 3, shape, stride, I);
  /* forward from the strided halves */
  f2_tensor *out = f2t_tensor(dtype, F2_CPU, 3, shape), *out_g = f2t_tensor(dtype, F2_CUDA, 3, shape);
  f2_tensor *out_g2 = f2t_tensor(dtype, F2_CUDA, 3, shape);
  CHECK_OK(f2_swiglu_forward(out, gv, uv));
  CHECK_OK(f2_swiglu_forward(out_g, gv_g, uv_g));
  CHECK_OK(f2_swiglu_forward(out_g2, gv_g, uv_g));
  snprintf(what, sizeof what, "%s: forward, strided gate/up", base);
  compare(out_g, out, rt, at, what);
  same_bits(out_g, out_g2, what);
  /* forward, contiguous operands */
  f2_tensor *gc = on(F2_CPU, gv), *uc = on(F2_CPU, uv), *gc_g = on(F2_CUDA, gc), *uc_g = on(F2_CUDA, uc);
  f2_tensor *oc = f2t_tensor(dtype, F2_CPU, 3, shape), *oc_g = f2t_tensor(dtype, F2_CUDA, 3, shape);
  CHECK_OK(f2_swiglu_forward(oc, gc, uc));
  CHECK_OK(f2_swiglu_forward(oc_g, gc_g, uc_g));
  snprintf(what, sizeof what, "%s: forward, contiguous", base);
  compare(oc_g, oc, rt, at, what);
  /* forward into a strided out inside a sentinel-filled buffer */
  f2_tensor *wide = f2t_tensor(dtype, F2_CPU, 3, ys), *wide_g = f2t_tensor(dtype, F2_CUDA, 3, ys);
  CHECK_OK(f2_fill(wide, -3.0));
  CHECK_OK(f2_fill(wide_g, -3.0));
  f2_tensor *ov = f2t_view(wide, 3, shape, stride, I), *ov_g = f2t_view(wide_g, 3, shape, stride, I);
  CHECK_OK(f2_swiglu_forward(ov, gc, uc));
  CHECK_OK(f2_swiglu_forward(ov_g, gc_g, uc_g));
  snprintf(what, sizeof what, "%s: forward into a strided out (whole buffer)", base);
  compare(wide_g, wide, rt, at, what);
  /* backward in place over the fused buffer's halves (MLP's use), compared whole */
  f2_tensor *dout = randn(dtype, 3, shape), *dout_g = on(F2_CUDA, dout);
  f2_tensor *y2 = on(F2_CPU, y), *y2_g = on(F2_CUDA, y), *y3_g = on(F2_CUDA, y);
  f2_tensor *g2 = f2t_view(y2, 3, shape, stride, 0), *u2 = f2t_view(y2, 3, shape, stride, I);
  f2_tensor *g2_g = f2t_view(y2_g, 3, shape, stride, 0), *u2_g = f2t_view(y2_g, 3, shape, stride, I);
  f2_tensor *g3_g = f2t_view(y3_g, 3, shape, stride, 0), *u3_g = f2t_view(y3_g, 3, shape, stride, I);
  CHECK_OK(f2_swiglu_backward(g2, u2, dout, g2, u2));
  CHECK_OK(f2_swiglu_backward(g2_g, u2_g, dout_g, g2_g, u2_g));
  CHECK_OK(f2_swiglu_backward(g3_g, u3_g, dout_g, g3_g, u3_g));
  snprintf(what, sizeof what, "%s: backward in place over the halves (whole buffer)", base);
  compare(y2_g, y2, rt, at, what);
  same_bits(y2_g, y3_g, what);
  /* backward with every operand strided and separate outputs; and all contiguous */
  f2_tensor *dwide = randn(dtype, 3, ys), *dwide_g = on(F2_CUDA, dwide);
  f2_tensor *dov = f2t_view(dwide, 3, shape, stride, I), *dov_g = f2t_view(dwide_g, 3, shape, stride, I);
  f2_tensor *gw = f2t_tensor(dtype, F2_CPU, 3, ys), *gw_g = f2t_tensor(dtype, F2_CUDA, 3, ys);
  CHECK_OK(f2_fill(gw, 5.0));
  CHECK_OK(f2_fill(gw_g, 5.0));
  f2_tensor *dgv = f2t_view(gw, 3, shape, stride, 0), *duv = f2t_view(gw, 3, shape, stride, I);
  f2_tensor *dgv_g = f2t_view(gw_g, 3, shape, stride, 0), *duv_g = f2t_view(gw_g, 3, shape, stride, I);
  CHECK_OK(f2_swiglu_backward(dgv, duv, dov, gv, uv));
  CHECK_OK(f2_swiglu_backward(dgv_g, duv_g, dov_g, gv_g, uv_g));
  snprintf(what, sizeof what, "%s: backward, every operand strided (whole buffer)", base);
  compare(gw_g, gw, rt, at, what);
  f2_tensor *dgc = f2t_tensor(dtype, F2_CPU, 3, shape), *duc = f2t_tensor(dtype, F2_CPU, 3, shape);
  f2_tensor *dgc_g = f2t_tensor(dtype, F2_CUDA, 3, shape), *duc_g = f2t_tensor(dtype, F2_CUDA, 3, shape);
  CHECK_OK(f2_swiglu_backward(dgc, duc, dout, gc, uc));
  CHECK_OK(f2_swiglu_backward(dgc_g, duc_g, dout_g, gc_g, uc_g));
  snprintf(what, sizeof what, "%s: backward dgate, contiguous", base);
  compare(dgc_g, dgc, rt, at, what);
  snprintf(what, sizeof what, "%s: backward dup, contiguous", base);
  compare(duc_g, duc, rt, at, what);
  f2_tensor *all[] = {y, y_g, gv, uv, gv_g, uv_g, out, out_g, out_g2, gc, uc, gc_g, uc_g, oc, oc_g, wide, wide_g, ov,
                      ov_g, dout, dout_g, y2, y2_g, y3_g, g2, u2, g2_g, u2_g, g3_g, u3_g, dwide, dwide_g, dov, dov_g,
                      gw, gw_g, dgv, duv, dgv_g, duv_g, dgc, duc, dgc_g, duc_g};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) f2_tensor_free(all[i]);
}

int main(void) {
  f2t_require_gpu();
  seed_counter = f2t_seed();
  verbose = getenv("F2_TEST_VERBOSE") != NULL;
  const int32_t dtypes[2] = {F2_F32, F2_BF16};
  for (int d = 0; d < 2; d++) {
    int32_t dt = dtypes[d];
    rope_case(dt, 2, 5, 3, 1, 8, 0);       /* odd T and heads; 4-wide path */
    rope_case(dt, 3, 3, 2, 2, 6, 0);       /* half = 3: scalar path */
    rope_case(dt, 2, 9, 4, 2, 16, 3);      /* padded rows, odd row stride: scalar path */
    rope_case(dt, 2, 7, 4, 2, 16, 4);      /* padded rows, row stride a multiple of 4 */
    rope_case(dt, 1, 1, 1, 1, 2, 1);       /* one row */
    rope_case(dt, 2, 257, 9, 3, 64, 0);    /* SmolLM2's heads */
    rope_case(dt, 1, 65, 32, 8, 128, 0);   /* Qwen3-4B's heads */
    qkv_case(dt, 2, 5, 3, 1, 8, 0);        /* 4-wide path */
    qkv_case(dt, 2, 3, 4, 2, 6, 5);        /* half = 3, padded: scalar path */
    qkv_case(dt, 4, 257, 9, 3, 64, 0);     /* SmolLM2's heads: 8-wide path */
    qkv_case(dt, 1, 33, 32, 8, 128, 8);    /* Qwen3-4B's heads, padded by 8 */
    swiglu_case(dt, 1, 7, 48, 0);
    swiglu_case(dt, 2, 33, 13, 0);         /* odd I: scalar path */
    swiglu_case(dt, 3, 5, 64, 5);          /* padded: odd row stride */
    swiglu_case(dt, 1, 9, 8, 4);           /* padded, row stride a multiple of 4 */
    swiglu_case(dt, 1, 1, 6, 0);           /* one row */
    swiglu_case(dt, 4, 513, 1536, 0);      /* SmolLM2's intermediate */
    swiglu_case(dt, 1, 3, 9728, 0);        /* Qwen3-4B's intermediate */
  }
  return f2t_done();
}
