/* test_nn_cpu.c — the model ops of runtime/nn_cpu.c against naive double-precision references written
 * here from the HF definitions, on fresh random inputs: forwards compared directly, backwards against
 * central finite differences of the double reference (loss = sum(w * forward) with random w).
 * Also: accumulation (+=) semantics, ignore_index, bf16 inputs, and bad input giving clear errors. */
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

static f2_tensor *new_f32(int ndim, const int64_t *shape) {
  f2_tensor *t = f2_tensor_new(F2_F32, F2_CPU, ndim, shape);
  if (!t) {
    fprintf(stderr, "f2_tensor_new failed: %s\n", f2_last_error());
    exit(1);
  }
  return t;
}
/* A fresh f32 tensor with N(0, std) entries, mirrored into the double array ref (may be NULL). */
static f2_tensor *randn(int ndim, const int64_t *shape, double std, double *ref) {
  f2_tensor *t = new_f32(ndim, shape);
  float *p = t->data;
  for (int64_t i = 0; i < f2_tensor_numel(t); i++) {
    p[i] = (float)(std * normal());
    if (ref) ref[i] = p[i];
  }
  return t;
}
static f2_tensor *ids_tensor(int64_t n, const int32_t *ids) {
  f2_tensor *t = f2_tensor_new(F2_I32, F2_CPU, 1, &n);
  memcpy(t->data, ids, (size_t)n * sizeof *ids);
  return t;
}
static double *dalloc(int64_t n) { return calloc((size_t)n, sizeof(double)); }

/* max|a - b| / max|b|: one number per tensor. */
static double rel_err(const float *a, const double *b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    num = fmax(num, fabs((double)a[i] - b[i]));
    den = fmax(den, fabs(b[i]));
  }
  return num / (den > 0 ? den : 1e-300);
}

/* Central differences of loss() with respect to every entry of x (double; h = 1e-5). */
static void fd_grad(double (*loss)(void *), void *ctx, double *x, int64_t n, double *grad) {
  const double h = 1e-5;
  for (int64_t i = 0; i < n; i++) {
    double saved = x[i];
    x[i] = saved + h;
    double lp = loss(ctx);
    x[i] = saved - h;
    double lm = loss(ctx);
    x[i] = saved;
    grad[i] = (lp - lm) / (2 * h);
  }
}

static double weighted_sum(const double *w, const double *y, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += w[i] * y[i];
  return s;
}

/* ---------------------------------------------------------------- embedding */
static void test_embedding(void) {
  const int64_t V = 11, D = 7, N = 9;
  int32_t ids[9];
  for (int i = 0; i < N; i++) ids[i] = (int32_t)(uniform() * V);
  ids[N - 1] = ids[0];   /* a repeated id: its gradient rows must add up */
  int64_t wshape[2] = {V, D}, oshape[3] = {3, 3, D};
  double *w = dalloc(V * D);
  f2_tensor *weight = randn(2, wshape, 1.0, w), *out = new_f32(3, oshape), *idt = ids_tensor(N, ids);
  CHECK_OK(f2_embedding_forward(out, weight, idt));
  int exact = 1;
  for (int64_t n = 0; n < N; n++)
    for (int64_t d = 0; d < D; d++) exact &= ((float *)out->data)[n * D + d] == (float)w[ids[n] * D + d];
  CHECK(exact, "embedding rows copied exactly");

  double *dout = dalloc(N * D), *expect = dalloc(V * D);
  f2_tensor *dy = randn(3, oshape, 1.0, dout), *dweight = randn(2, wshape, 1.0, expect);
  for (int64_t n = 0; n < N; n++)
    for (int64_t d = 0; d < D; d++) expect[ids[n] * D + d] += dout[n * D + d];
  CHECK_OK(f2_embedding_backward(dweight, dy, idt));
  CHECK(rel_err(dweight->data, expect, V * D) < 1e-6, "embedding backward accumulates %g",
        rel_err(dweight->data, expect, V * D));

  ((int32_t *)idt->data)[4] = (int32_t)V;
  CHECK(f2_embedding_forward(out, weight, idt) == F2_ERR_ARG && strstr(f2_last_error(), "ids[4]"),
        "out-of-vocabulary id named: %s", f2_last_error());
  ((int32_t *)idt->data)[4] = -1;
  CHECK(f2_embedding_backward(dweight, dy, idt) == F2_ERR_ARG, "negative id refused");
  f2_tensor_free(weight), f2_tensor_free(out), f2_tensor_free(idt), f2_tensor_free(dy), f2_tensor_free(dweight);
  free(w), free(dout), free(expect);
}

/* ---------------------------------------------------------------- RMSNorm */
typedef struct { int64_t rows, dim; double *x, *w, *wout, *y; float eps; } rms_ctx;
static void rms_ref(rms_ctx *c) {
  for (int64_t r = 0; r < c->rows; r++) {
    double ms = 0;
    for (int64_t d = 0; d < c->dim; d++) ms += c->x[r * c->dim + d] * c->x[r * c->dim + d];
    double rs = 1.0 / sqrt(ms / c->dim + c->eps);
    for (int64_t d = 0; d < c->dim; d++) c->y[r * c->dim + d] = c->w[d] * c->x[r * c->dim + d] * rs;
  }
}
static double rms_loss(void *p) {
  rms_ctx *c = p;
  rms_ref(c);
  return weighted_sum(c->wout, c->y, c->rows * c->dim);
}
static void test_rmsnorm(void) {
  rms_ctx c = {.rows = 6, .dim = 20, .eps = 1e-5f};
  int64_t n = c.rows * c.dim, xshape[3] = {2, 3, c.dim}, wshape[1] = {c.dim}, rshape[1] = {c.rows};
  c.x = dalloc(n), c.w = dalloc(c.dim), c.wout = dalloc(n), c.y = dalloc(n);
  f2_tensor *x = randn(3, xshape, 2.0, c.x), *w = randn(1, wshape, 1.0, c.w), *dy = randn(3, xshape, 1.0, c.wout);
  f2_tensor *out = new_f32(3, xshape), *rstd = new_f32(1, rshape), *dx = new_f32(3, xshape);
  rms_ref(&c);
  CHECK_OK(f2_rmsnorm_forward(out, rstd, x, w, c.eps));
  CHECK(rel_err(out->data, c.y, n) < 1e-5, "rmsnorm forward %g", rel_err(out->data, c.y, n));

  double *gx = dalloc(n), *gw = dalloc(c.dim), *dw0 = dalloc(c.dim);
  f2_tensor *dweight = randn(1, wshape, 1.0, dw0);
  fd_grad(rms_loss, &c, c.x, n, gx);
  fd_grad(rms_loss, &c, c.w, c.dim, gw);
  for (int64_t d = 0; d < c.dim; d++) gw[d] += dw0[d];
  CHECK_OK(f2_rmsnorm_backward(dx, dweight, dy, x, w, rstd));
  CHECK(rel_err(dx->data, gx, n) < 1e-4, "rmsnorm dx vs finite differences %g", rel_err(dx->data, gx, n));
  CHECK(rel_err(dweight->data, gw, c.dim) < 1e-4, "rmsnorm dweight += %g", rel_err(dweight->data, gw, c.dim));

  /* In place (out = x) gives the same numbers. */
  float first = ((float *)out->data)[0];
  CHECK_OK(f2_rmsnorm_forward(x, NULL, x, w, c.eps));
  CHECK(((float *)x->data)[0] == first, "rmsnorm in place");

  /* bf16 input and output, fp32 math: close to the f32 result at bf16 precision. */
  f2_tensor *xb = f2_tensor_new(F2_BF16, F2_CPU, 3, xshape), *ob = f2_tensor_new(F2_BF16, F2_CPU, 3, xshape);
  for (int64_t i = 0; i < n; i++) {   /* truncated to bf16: the input is what it is, exactly */
    float f = (float)c.x[i];
    uint32_t bits;
    memcpy(&bits, &f, 4);
    ((uint16_t *)xb->data)[i] = (uint16_t)(bits >> 16);
    bits &= 0xffff0000u;
    memcpy(&f, &bits, 4);
    c.x[i] = f;
  }
  rms_ref(&c);
  CHECK_OK(f2_rmsnorm_forward(ob, NULL, xb, w, c.eps));
  double worst = 0;
  for (int64_t i = 0; i < n; i++) {
    uint32_t bits = (uint32_t)((uint16_t *)ob->data)[i] << 16;
    float v;
    memcpy(&v, &bits, 4);
    worst = fmax(worst, fabs(v - c.y[i]) / (fabs(c.y[i]) + 1e-2));
  }
  CHECK(worst < 2e-2, "rmsnorm bf16 in/out within bf16 precision: %g", worst);

  int64_t bad[1] = {c.dim + 1};
  f2_tensor *wbad = new_f32(1, bad);
  CHECK(f2_rmsnorm_forward(out, rstd, x, wbad, c.eps) == F2_ERR_ARG && strstr(f2_last_error(), "x has shape"),
        "rmsnorm weight/x mismatch named: %s", f2_last_error());
  CHECK(f2_rmsnorm_backward(dx, dweight, dy, x, w, NULL) == F2_ERR_ARG && strstr(f2_last_error(), "rstd is NULL"),
        "rmsnorm backward without rstd: %s", f2_last_error());
  f2_tensor *xi = f2_tensor_new(F2_I32, F2_CPU, 3, xshape);
  CHECK(f2_rmsnorm_forward(out, rstd, xi, w, c.eps) == F2_ERR_ARG && strstr(f2_last_error(), "dtype i32"),
        "rmsnorm i32 input refused: %s", f2_last_error());
  f2_tensor_free(x), f2_tensor_free(w), f2_tensor_free(dy), f2_tensor_free(out), f2_tensor_free(rstd);
  f2_tensor_free(dx), f2_tensor_free(dweight), f2_tensor_free(xb), f2_tensor_free(ob), f2_tensor_free(wbad);
  f2_tensor_free(xi);
  free(c.x), free(c.w), free(c.wout), free(c.y), free(gx), free(gw), free(dw0);
}

/* ---------------------------------------------------------------- RoPE (HF rotate_half) */
typedef struct { int64_t B, T, H, Dh; double *x, *cos_full, *sin_full, *wout, *y; } rope_ctx;
static void rope_ref(rope_ctx *c) {
  int64_t half = c->Dh / 2;
  for (int64_t b = 0; b < c->B; b++)
    for (int64_t t = 0; t < c->T; t++)
      for (int64_t h = 0; h < c->H; h++) {
        const double *x = c->x + ((b * c->T + t) * c->H + h) * c->Dh;
        double *y = c->y + ((b * c->T + t) * c->H + h) * c->Dh;
        for (int64_t i = 0; i < c->Dh; i++) {
          double rotated = i < half ? -x[i + half] : x[i - half];   /* rotate_half(x) = cat(-x2, x1) */
          y[i] = x[i] * c->cos_full[t * c->Dh + i] + rotated * c->sin_full[t * c->Dh + i];
        }
      }
}
static double rope_loss(void *p) {
  rope_ctx *c = p;
  rope_ref(c);
  return weighted_sum(c->wout, c->y, c->B * c->T * c->H * c->Dh);
}
static void test_rope(void) {
  rope_ctx c = {.B = 2, .T = 5, .H = 3, .Dh = 8};
  int64_t P = 9, half = c.Dh / 2, n = c.B * c.T * c.H * c.Dh;
  int64_t xshape[4] = {c.B, c.T, c.H, c.Dh}, tshape[2] = {P, half}, fshape[1] = {half};
  f2_tensor *inv = new_f32(1, fshape), *cs = new_f32(2, tshape), *sn = new_f32(2, tshape);
  for (int64_t i = 0; i < half; i++) ((float *)inv->data)[i] = (float)pow(10000.0, -2.0 * i / c.Dh) * (float)(1 + uniform());
  CHECK_OK(f2_rope_tables(cs, sn, inv));
  double worst = 0;
  for (int64_t t = 0; t < P; t++)
    for (int64_t i = 0; i < half; i++) {
      double angle = (double)t * ((float *)inv->data)[i];
      worst = fmax(worst, fabs(((float *)cs->data)[t * half + i] - cos(angle)));
      worst = fmax(worst, fabs(((float *)sn->data)[t * half + i] - sin(angle)));
    }
  CHECK(worst < 1e-5, "rope tables vs cos/sin of p * inv_freq: %g", worst);

  /* The reference uses HF's full-width tables, cat(freqs, freqs), from the double angles. */
  c.cos_full = dalloc(P * c.Dh), c.sin_full = dalloc(P * c.Dh);
  for (int64_t t = 0; t < P; t++)
    for (int64_t i = 0; i < c.Dh; i++) {
      double angle = (double)t * ((float *)inv->data)[i % half];
      c.cos_full[t * c.Dh + i] = cos(angle), c.sin_full[t * c.Dh + i] = sin(angle);
    }
  c.x = dalloc(n), c.wout = dalloc(n), c.y = dalloc(n);
  f2_tensor *x = randn(4, xshape, 1.0, c.x), *dy = randn(4, xshape, 1.0, c.wout), *out = new_f32(4, xshape);
  f2_tensor *dx = new_f32(4, xshape);
  rope_ref(&c);
  CHECK_OK(f2_rope_forward(out, x, cs, sn));
  CHECK(rel_err(out->data, c.y, n) < 1e-5, "rope forward %g", rel_err(out->data, c.y, n));
  double *gx = dalloc(n);
  fd_grad(rope_loss, &c, c.x, n, gx);
  CHECK_OK(f2_rope_backward(dx, dy, cs, sn));
  CHECK(rel_err(dx->data, gx, n) < 1e-4, "rope backward vs finite differences %g", rel_err(dx->data, gx, n));
  CHECK_OK(f2_rope_forward(x, x, cs, sn));
  CHECK(memcmp(x->data, out->data, (size_t)n * 4) == 0, "rope in place equals out of place");

  int64_t short_shape[2] = {c.T - 1, half};
  f2_tensor *short_table = new_f32(2, short_shape);
  CHECK(f2_rope_forward(out, x, short_table, short_table) == F2_ERR_ARG && strstr(f2_last_error(), "positions"),
        "rope tables too short: %s", f2_last_error());
  f2_tensor_free(inv), f2_tensor_free(cs), f2_tensor_free(sn), f2_tensor_free(x), f2_tensor_free(dy);
  f2_tensor_free(out), f2_tensor_free(dx), f2_tensor_free(short_table);
  free(c.cos_full), free(c.sin_full), free(c.x), free(c.wout), free(c.y), free(gx);
}

/* ---------------------------------------------------------------- causal GQA attention */
typedef struct { int64_t B, T, H, Hkv, Dh; double scale, *q, *k, *v, *wout, *y, *lse; } attn_ctx;
/* Written as HF does it: repeat_kv (KV head kv serves query heads kv*n_rep .. kv*n_rep+n_rep-1), the full
 * score matrix with a -inf causal mask, softmax, then P V. */
static void attn_ref(attn_ctx *c) {
  int64_t n_rep = c->H / c->Hkv, T = c->T, Dh = c->Dh;
  double *s = dalloc(T * T);
  for (int64_t b = 0; b < c->B; b++)
    for (int64_t kv = 0; kv < c->Hkv; kv++)
      for (int64_t r = 0; r < n_rep; r++) {
        int64_t h = kv * n_rep + r;
        for (int64_t i = 0; i < T; i++) {
          double m = -INFINITY, sum = 0;
          for (int64_t j = 0; j < T; j++) {
            double d = 0;
            for (int64_t e = 0; e < Dh; e++)
              d += c->q[((b * T + i) * c->H + h) * Dh + e] * c->k[((b * T + j) * c->Hkv + kv) * Dh + e];
            s[i * T + j] = j > i ? -INFINITY : d * c->scale;
            m = fmax(m, s[i * T + j]);
          }
          for (int64_t j = 0; j < T; j++) sum += exp(s[i * T + j] - m);
          c->lse[(b * c->H + h) * T + i] = m + log(sum);
          for (int64_t e = 0; e < Dh; e++) {
            double acc = 0;
            for (int64_t j = 0; j < T; j++) acc += exp(s[i * T + j] - m) / sum * c->v[((b * T + j) * c->Hkv + kv) * Dh + e];
            c->y[((b * T + i) * c->H + h) * Dh + e] = acc;
          }
        }
      }
  free(s);
}
static double attn_loss(void *p) {
  attn_ctx *c = p;
  attn_ref(c);
  return weighted_sum(c->wout, c->y, c->B * c->T * c->H * c->Dh);
}
static void test_attention(int64_t H, int64_t Hkv) {
  attn_ctx c = {.B = 2, .T = 6, .H = H, .Hkv = Hkv, .Dh = 6};
  c.scale = 1.0 / sqrt((double)c.Dh);
  int64_t nq = c.B * c.T * H * c.Dh, nk = c.B * c.T * Hkv * c.Dh;
  int64_t qshape[4] = {c.B, c.T, H, c.Dh}, kshape[4] = {c.B, c.T, Hkv, c.Dh}, lshape[3] = {c.B, H, c.T};
  c.q = dalloc(nq), c.k = dalloc(nk), c.v = dalloc(nk), c.wout = dalloc(nq), c.y = dalloc(nq);
  c.lse = dalloc(c.B * H * c.T);
  f2_tensor *q = randn(4, qshape, 1.5, c.q), *k = randn(4, kshape, 1.5, c.k), *v = randn(4, kshape, 1.0, c.v);
  f2_tensor *dy = randn(4, qshape, 1.0, c.wout), *out = new_f32(4, qshape), *lse = new_f32(3, lshape);
  f2_tensor *dq = new_f32(4, qshape), *dk = new_f32(4, kshape), *dv = new_f32(4, kshape);
  attn_ref(&c);
  CHECK_OK(f2_attention_forward(out, lse, q, k, v, (float)c.scale));
  CHECK(rel_err(out->data, c.y, nq) < 1e-5, "attention H=%lld Hkv=%lld forward %g", (long long)H, (long long)Hkv,
        rel_err(out->data, c.y, nq));
  CHECK(rel_err(lse->data, c.lse, c.B * H * c.T) < 1e-5, "attention lse %g", rel_err(lse->data, c.lse, c.B * H * c.T));

  double *gq = dalloc(nq), *gk = dalloc(nk), *gv = dalloc(nk);
  fd_grad(attn_loss, &c, c.q, nq, gq);
  fd_grad(attn_loss, &c, c.k, nk, gk);
  fd_grad(attn_loss, &c, c.v, nk, gv);
  CHECK_OK(f2_attention_backward(dq, dk, dv, dy, q, k, v, out, lse, (float)c.scale));
  CHECK(rel_err(dq->data, gq, nq) < 1e-4, "attention dq %g", rel_err(dq->data, gq, nq));
  CHECK(rel_err(dk->data, gk, nk) < 1e-4, "attention dk %g", rel_err(dk->data, gk, nk));
  CHECK(rel_err(dv->data, gv, nk) < 1e-4, "attention dv %g", rel_err(dv->data, gv, nk));

  if (Hkv > 1) {
    int64_t bad[4] = {c.B, c.T, H - 1, c.Dh};
    f2_tensor *qbad = new_f32(4, bad), *obad = new_f32(4, bad);
    CHECK(f2_attention_forward(obad, NULL, qbad, k, v, 1.0f) == F2_ERR_ARG && strstr(f2_last_error(), "multiple"),
          "heads not a multiple of KV heads: %s", f2_last_error());
    f2_tensor_free(qbad), f2_tensor_free(obad);
  }
  if (H != Hkv)
    CHECK(f2_attention_forward(out, lse, q, k, dq, 1.0f) == F2_ERR_ARG && strstr(f2_last_error(), "v has shape"),
          "v shape checked: %s", f2_last_error());
  /* Tensors on two devices are refused before anything runs (a CPU tensor relabelled, never dereferenced). */
  q->device = F2_CUDA;
  CHECK(f2_attention_forward(out, lse, q, k, v, 1.0f) == F2_ERR_ARG && strstr(f2_last_error(), "different devices"),
        "mixed devices refused: %s", f2_last_error());
  q->device = F2_CPU;
  /* Non-contiguous: k viewed with T and Hkv swapped back and forth (a same-shape, transposed view). */
  f2_tensor *kt = f2_tensor_transpose(k, 1, 2), *kt_copy = new_f32(4, kt->shape), *ktt;
  CHECK_OK(f2_copy(kt_copy, kt));
  ktt = f2_tensor_transpose(kt_copy, 1, 2);
  CHECK(Hkv == 1 || (f2_attention_forward(out, lse, q, ktt, v, 1.0f) == F2_ERR_ARG &&   /* one KV head: still contiguous */
                     strstr(f2_last_error(), "k must be contiguous")),
        "non-contiguous k refused: %s", f2_last_error());
  f2_tensor_free(kt), f2_tensor_free(kt_copy), f2_tensor_free(ktt);
  f2_tensor *all[] = {q, k, v, dy, out, lse, dq, dk, dv};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) f2_tensor_free(all[i]);
  free(c.q), free(c.k), free(c.v), free(c.wout), free(c.y), free(c.lse), free(gq), free(gk), free(gv);
}

/* ---------------------------------------------------------------- SwiGLU */
typedef struct { int64_t n; double *g, *u, *wout, *y; } swiglu_ctx;
static double swiglu_loss(void *p) {
  swiglu_ctx *c = p;
  for (int64_t i = 0; i < c->n; i++) c->y[i] = c->g[i] / (1 + exp(-c->g[i])) * c->u[i];
  return weighted_sum(c->wout, c->y, c->n);
}
static void test_swiglu(void) {
  int64_t shape[2] = {5, 13};
  swiglu_ctx c = {.n = 65};
  c.g = dalloc(c.n), c.u = dalloc(c.n), c.wout = dalloc(c.n), c.y = dalloc(c.n);
  f2_tensor *g = randn(2, shape, 3.0, c.g), *u = randn(2, shape, 1.0, c.u), *dy = randn(2, shape, 1.0, c.wout);
  f2_tensor *out = new_f32(2, shape), *dg = new_f32(2, shape), *du = new_f32(2, shape);
  swiglu_loss(&c);
  CHECK_OK(f2_swiglu_forward(out, g, u));
  CHECK(rel_err(out->data, c.y, c.n) < 1e-5, "swiglu forward %g", rel_err(out->data, c.y, c.n));
  double *gg = dalloc(c.n), *gu = dalloc(c.n);
  fd_grad(swiglu_loss, &c, c.g, c.n, gg);
  fd_grad(swiglu_loss, &c, c.u, c.n, gu);
  CHECK_OK(f2_swiglu_backward(dg, du, dy, g, u));
  CHECK(rel_err(dg->data, gg, c.n) < 1e-4, "swiglu dgate %g", rel_err(dg->data, gg, c.n));
  CHECK(rel_err(du->data, gu, c.n) < 1e-4, "swiglu dup %g", rel_err(du->data, gu, c.n));
  CHECK_OK(f2_swiglu_backward(g, u, dy, g, u));   /* gradients written over the inputs */
  CHECK(memcmp(g->data, dg->data, 65 * 4) == 0 && memcmp(u->data, du->data, 65 * 4) == 0, "swiglu backward in place");
  int64_t other[2] = {13, 5};
  f2_tensor *ubad = new_f32(2, other);
  CHECK(f2_swiglu_forward(out, g, ubad) == F2_ERR_ARG && strstr(f2_last_error(), "up has shape [13,5]"),
        "swiglu shape mismatch named: %s", f2_last_error());
  f2_tensor *all[] = {g, u, dy, out, dg, du, ubad};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) f2_tensor_free(all[i]);
  free(c.g), free(c.u), free(c.wout), free(c.y), free(gg), free(gu);
}

/* ---------------------------------------------------------------- cross-entropy */
typedef struct { int64_t N, V; double *logits; const int32_t *targets; int32_t ignore; double *losses; } ce_ctx;
static double ce_loss(void *p) {   /* torch.nn.functional.cross_entropy(..., ignore_index, reduction="mean") */
  ce_ctx *c = p;
  double total = 0;
  int64_t counted = 0;
  for (int64_t r = 0; r < c->N; r++) {
    c->losses[r] = 0;
    if (c->targets[r] == c->ignore) continue;
    double sum = 0;
    for (int64_t v = 0; v < c->V; v++) sum += exp(c->logits[r * c->V + v]);
    c->losses[r] = log(sum) - c->logits[r * c->V + c->targets[r]];
    total += c->losses[r], counted++;
  }
  return total / counted;
}
static void test_cross_entropy(void) {
  ce_ctx c = {.N = 8, .V = 17, .ignore = -100};
  int32_t targets[8];
  for (int i = 0; i < 8; i++) targets[i] = (int32_t)(uniform() * c.V);
  targets[2] = targets[5] = -100;
  c.targets = targets;
  int64_t shape[3] = {2, 4, c.V}, one = 1, n = c.N * c.V;
  c.logits = dalloc(n), c.losses = dalloc(c.N);
  f2_tensor *logits = randn(3, shape, 3.0, c.logits), *tg = ids_tensor(c.N, targets);
  f2_tensor *loss = new_f32(1, &one), *losses = new_f32(1, &c.N), *dlogits = new_f32(3, shape);
  double expect = ce_loss(&c);
  CHECK_OK(f2_cross_entropy_forward(loss, losses, logits, tg, -100));
  CHECK_CLOSE(((float *)loss->data)[0], expect, 1e-5, 0);
  CHECK(rel_err(losses->data, c.losses, c.N) < 1e-5, "per-row losses %g", rel_err(losses->data, c.losses, c.N));
  CHECK(((float *)losses->data)[2] == 0 && ((float *)losses->data)[5] == 0, "ignored rows lose nothing");

  double *g = dalloc(n), dloss = 1 + uniform();
  fd_grad(ce_loss, &c, c.logits, n, g);
  for (int64_t i = 0; i < n; i++) g[i] *= dloss;
  CHECK_OK(f2_cross_entropy_backward(dlogits, logits, tg, -100, (float)dloss));
  CHECK(rel_err(dlogits->data, g, n) < 1e-4, "cross-entropy backward vs finite differences %g", rel_err(dlogits->data, g, n));
  CHECK_OK(f2_cross_entropy_backward(logits, logits, tg, -100, (float)dloss));
  CHECK(memcmp(logits->data, dlogits->data, (size_t)n * 4) == 0, "cross-entropy backward in place");

  int32_t all_ignored[8] = {7, 7, 7, 7, 7, 7, 7, 7};
  f2_tensor *tg7 = ids_tensor(c.N, all_ignored);
  CHECK_OK(f2_cross_entropy_forward(loss, NULL, logits, tg7, 7));
  CHECK(((float *)loss->data)[0] == 0, "no counted row: loss 0");
  ((int32_t *)tg->data)[3] = (int32_t)c.V;
  CHECK(f2_cross_entropy_forward(loss, NULL, logits, tg, -100) == F2_ERR_ARG && strstr(f2_last_error(), "targets[3]"),
        "bad target named: %s", f2_last_error());
  f2_tensor *all[] = {logits, tg, loss, losses, dlogits, tg7};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++) f2_tensor_free(all[i]);
  free(c.logits), free(c.losses), free(g);
}

int main(void) {
  rng_state = f2t_seed();
  test_embedding();
  test_rmsnorm();
  test_rope();
  test_attention(4, 2);
  test_attention(5, 1);
  test_attention(3, 3);
  test_swiglu();
  test_cross_entropy();
  CHECK(f2_swiglu_forward(NULL, NULL, NULL) == F2_ERR_ARG && strstr(f2_last_error(), "is NULL"), "NULL named");
  return f2t_done();
}
