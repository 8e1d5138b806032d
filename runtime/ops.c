/* ops.c — the one dispatch point of every tensor op: checks arguments (NULLs, ops, shapes, dtypes,
 * devices) with messages that name the op, then runs the CPU reference (ops_cpu.c) or the CUDA entry
 * point (kernels/, or cuda_stub.c). Also f2_copy's device transfers, staged through contiguous
 * buffers, and f2_tensor_contiguous. */
#include "ops_cpu.h"

#include <stdio.h>

static const char *device_name(int32_t device) { return device == F2_CUDA ? "cuda" : "cpu"; }

static void shape_text(char *buf, size_t size, const f2_tensor *t) { f2_shape_text(buf, size, t->ndim, t->shape); }

static int check_not_null(const char *what, const char *name, const void *t) {
  if (!t) return F2_FAIL(F2_ERR_ARG, "%s: %s is NULL", what, name);
  return F2_OK;
}

int f2_check_same_device(const char *what, const f2_tensor *a, const f2_tensor *b) {
  if (a->device != b->device)
    return F2_FAIL(F2_ERR_ARG, "%s: tensors on different devices (%s and %s); move one with f2_copy", what,
                   device_name(a->device), device_name(b->device));
  return F2_OK;
}

int f2_check_same_shape(const char *what, const f2_tensor *a, const f2_tensor *b) {
  int same = a->ndim == b->ndim;
  for (int i = 0; same && i < a->ndim; i++) same = a->shape[i] == b->shape[i];
  if (!same) {
    char sa[128], sb[128];
    shape_text(sa, sizeof sa, a);
    shape_text(sb, sizeof sb, b);
    return F2_FAIL(F2_ERR_ARG, "%s: shapes %s and %s differ (broadcast with f2_tensor_expand)", what, sa, sb);
  }
  return F2_OK;
}

int f2_check_float(const char *what, const f2_tensor *t) {
  if (t->dtype != F2_F32 && t->dtype != F2_BF16 && t->dtype != F2_F16)
    return F2_FAIL(F2_ERR_ARG, "%s: dtype %s is not a float dtype (f32, bf16, f16)", what, f2_dtype_name(t->dtype));
  return F2_OK;
}

/* ---------------------------------------------------------------- copy and device transfers */

/* A new contiguous tensor shaped like t. */
static f2_tensor *new_like(const f2_tensor *t, int32_t dtype, int32_t device) {
  return f2_tensor_new(dtype, device, t->ndim, t->shape);
}

/* Host <-> device: the source side gathers and casts into a contiguous buffer of dst's dtype, one
 * memcpy moves it, and the destination side scatters it when dst is strided. */
static int copy_across(f2_tensor *dst, const f2_tensor *src) {
  int to_gpu = dst->device == F2_CUDA;
  f2_tensor *packed = NULL, *landed = NULL;
  const f2_tensor *from = src;
  f2_tensor *to = dst;
  int rc = F2_OK;
  if (src->dtype != dst->dtype || !f2_tensor_is_contiguous(src)) {
    packed = new_like(src, dst->dtype, src->device);
    if (!packed) return F2_ERR_MEM;
    rc = to_gpu ? f2_cpu_copy(packed, src) : f2_cuda_copy(packed, src);
    from = packed;
  }
  if (rc == F2_OK && !f2_tensor_is_contiguous(dst)) {
    landed = new_like(dst, dst->dtype, dst->device);
    rc = landed ? F2_OK : F2_ERR_MEM;
    to = landed;
  }
  if (rc == F2_OK)
    rc = f2_cuda_memcpy(to->data, from->data, f2_tensor_nbytes(dst), to_gpu ? F2_MEMCPY_H2D : F2_MEMCPY_D2H);
  if (rc == F2_OK && landed) rc = to_gpu ? f2_cuda_copy(dst, landed) : f2_cpu_copy(dst, landed);
  /* Freed host buffers are done with (H2D is staged before memcpy returns, D2H synchronizes);
   * freed device buffers go back to the stream-ordered caching allocator. */
  f2_tensor_free(packed);
  f2_tensor_free(landed);
  return rc;
}

int f2_copy(f2_tensor *dst, const f2_tensor *src) {
  F2_TRY(check_not_null("copy", "dst", dst));
  F2_TRY(check_not_null("copy", "src", src));
  F2_TRY(f2_check_same_shape("copy", dst, src));
  if (f2_tensor_numel(dst) == 0) return F2_OK;
  if (dst->device == F2_CPU && src->device == F2_CPU) return f2_cpu_copy(dst, src);
  if (dst->device == F2_CUDA && src->device == F2_CUDA) return F2_PROFILED("copy", f2_cuda_copy(dst, src));
  return copy_across(dst, src);
}

f2_tensor *f2_tensor_contiguous(const f2_tensor *t) {
  if (check_not_null("contiguous", "tensor", t) != F2_OK) return NULL;
  if (f2_tensor_is_contiguous(t)) return f2_tensor_view(t);
  f2_tensor *c = new_like(t, t->dtype, t->device);
  if (c && f2_copy(c, t) != F2_OK) {
    f2_tensor_free(c);
    return NULL;
  }
  return c;
}

/* ---------------------------------------------------------------- fill, arange, rand */

int f2_fill(f2_tensor *t, double value) {
  F2_TRY(check_not_null("fill", "tensor", t));
  return t->device == F2_CUDA ? F2_PROFILED("fill", f2_cuda_fill(t, value)) : f2_cpu_fill(t, value);
}

int f2_arange(f2_tensor *t, double start, double step) {
  F2_TRY(check_not_null("arange", "tensor", t));
  if (t->device == F2_CPU) return f2_cpu_arange(t, start, step);
  /* No kernel of its own: small index tensors, made on the host and copied over. */
  f2_tensor *host = new_like(t, t->dtype, F2_CPU);
  if (!host) return F2_ERR_MEM;
  int rc = f2_cpu_arange(host, start, step);
  if (rc == F2_OK) rc = f2_copy(t, host);
  f2_tensor_free(host);
  return rc;
}

int f2_rand_uniform(f2_tensor *t, uint64_t seed, double low, double high) {
  F2_TRY(check_not_null("rand_uniform", "tensor", t));
  if (!(low <= high)) return F2_FAIL(F2_ERR_ARG, "rand_uniform: low %g is above high %g", low, high);
  return t->device == F2_CUDA ? f2_cuda_rand_uniform(t, seed, low, high) : f2_cpu_rand_uniform(t, seed, low, high);
}

int f2_rand_normal(f2_tensor *t, uint64_t seed, double mean, double std) {
  F2_TRY(check_not_null("rand_normal", "tensor", t));
  if (!(std >= 0)) return F2_FAIL(F2_ERR_ARG, "rand_normal: std %g is negative", std);
  return t->device == F2_CUDA ? f2_cuda_rand_normal(t, seed, mean, std) : f2_cpu_rand_normal(t, seed, mean, std);
}

/* ---------------------------------------------------------------- elementwise */

static int check_operand(const char *what, const char *name, const f2_tensor *out, const f2_tensor *t) {
  F2_TRY(check_not_null(what, name, t));
  F2_TRY(f2_check_same_device(what, out, t));
  return f2_check_same_shape(what, out, t);
}

int f2_binary(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t op) {
  F2_TRY(check_not_null("binary", "out", out));
  F2_TRY(check_operand("binary", "a", out, a));
  F2_TRY(check_operand("binary", "b", out, b));
  if (op < F2_OP_ADD || op > F2_OP_POW) return F2_FAIL(F2_ERR_ARG, "binary: unknown op %d", (int)op);
  return out->device == F2_CUDA ? F2_PROFILED("elementwise", f2_cuda_binary(out, a, b, op)) : f2_cpu_binary(out, a, b, 0, op);
}

int f2_binary_scalar(f2_tensor *out, const f2_tensor *a, double s, int32_t op) {
  F2_TRY(check_not_null("binary_scalar", "out", out));
  F2_TRY(check_operand("binary_scalar", "a", out, a));
  if (op < F2_OP_ADD || op > F2_OP_POW) return F2_FAIL(F2_ERR_ARG, "binary_scalar: unknown op %d", (int)op);
  return out->device == F2_CUDA ? F2_PROFILED("elementwise", f2_cuda_binary_scalar(out, a, s, op)) : f2_cpu_binary(out, a, NULL, s, op);
}

int f2_unary(f2_tensor *out, const f2_tensor *a, int32_t op) {
  F2_TRY(check_not_null("unary", "out", out));
  F2_TRY(check_operand("unary", "a", out, a));
  if (op < F2_OP_NEG || op > F2_OP_SIGN) return F2_FAIL(F2_ERR_ARG, "unary: unknown op %d", (int)op);
  return out->device == F2_CUDA ? F2_PROFILED("elementwise", f2_cuda_unary(out, a, op)) : f2_cpu_unary(out, a, op);
}

/* ---------------------------------------------------------------- reduce */

static int check_reduce_shape(const f2_tensor *out, const f2_tensor *x, int32_t dim) {
  if (dim == -1) {
    if (f2_tensor_numel(out) != 1)
      return F2_FAIL(F2_ERR_ARG, "reduce: over all elements out must have 1 element, not %lld",
                     (long long)f2_tensor_numel(out));
    return F2_OK;
  }
  /* out is x's shape with dim removed, or kept with size 1. */
  int keep = out->ndim == x->ndim, ok = keep || out->ndim == x->ndim - 1;
  for (int i = 0, j = 0; ok && i < x->ndim; i++) {
    if (i == dim) {
      if (keep) ok = out->shape[j++] == 1;
    } else {
      ok = out->shape[j++] == x->shape[i];
    }
  }
  if (!ok) {
    char so[128], sx[128];
    shape_text(so, sizeof so, out);
    shape_text(sx, sizeof sx, x);
    return F2_FAIL(F2_ERR_ARG, "reduce: out %s does not fit x %s reduced over dim %d (drop it or make it 1)", so, sx,
                   (int)dim);
  }
  return F2_OK;
}

int f2_reduce(f2_tensor *out, const f2_tensor *x, int32_t dim, int32_t op) {
  F2_TRY(check_not_null("reduce", "out", out));
  F2_TRY(check_not_null("reduce", "x", x));
  F2_TRY(f2_check_same_device("reduce", out, x));
  if (op < F2_RED_SUM || op > F2_RED_NORM) return F2_FAIL(F2_ERR_ARG, "reduce: unknown op %d", (int)op);
  if (dim < -1 || dim >= x->ndim)
    return F2_FAIL(F2_ERR_ARG, "reduce: dim %d out of range for a %d-dim tensor (-1: all)", (int)dim, (int)x->ndim);
  F2_TRY(check_reduce_shape(out, x, dim));
  int64_t count = dim == -1 ? f2_tensor_numel(x) : x->shape[dim];
  if (count == 0 && (op == F2_RED_MAX || op == F2_RED_MIN) && f2_tensor_numel(out) > 0)
    return F2_FAIL(F2_ERR_ARG, "reduce: %s over no elements", op == F2_RED_MAX ? "max" : "min");
  return out->device == F2_CUDA ? F2_PROFILED("reduce", f2_cuda_reduce(out, x, dim, op)) : f2_cpu_reduce(out, x, dim, op);
}

/* ---------------------------------------------------------------- matmul */

/* The checks f2_matmul and f2_matmul_add share (op names the entry point in messages). */
static int matmul_args(const char *op, f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t trans_a,
                       int32_t trans_b) {
  F2_TRY(check_not_null(op, "out", out));
  F2_TRY(check_not_null(op, "a", a));
  F2_TRY(check_not_null(op, "b", b));
  F2_TRY(f2_check_same_device(op, out, a));
  F2_TRY(f2_check_same_device(op, out, b));
  int nd = out->ndim;
  if ((nd != 2 && nd != 3) || a->ndim != nd || b->ndim != nd)
    return F2_FAIL(F2_ERR_ARG, "%s: out, a, b must all be 2-D or all 3-D (have %d, %d, %d dims)", op, (int)nd,
                   (int)a->ndim, (int)b->ndim);
  F2_TRY(f2_check_float("matmul a", a));
  if (a->dtype != b->dtype)
    return F2_FAIL(F2_ERR_ARG, "%s: a is %s but b is %s (one input dtype)", op, f2_dtype_name(a->dtype),
                   f2_dtype_name(b->dtype));
  if (out->dtype != F2_F32 && out->dtype != F2_BF16)
    return F2_FAIL(F2_ERR_ARG, "%s: out dtype %s (f32 or bf16)", op, f2_dtype_name(out->dtype));
  int64_t M = out->shape[nd - 2], N = out->shape[nd - 1];
  int64_t am = trans_a ? a->shape[nd - 1] : a->shape[nd - 2], ak = trans_a ? a->shape[nd - 2] : a->shape[nd - 1];
  int64_t bk = trans_b ? b->shape[nd - 1] : b->shape[nd - 2], bn = trans_b ? b->shape[nd - 2] : b->shape[nd - 1];
  int batch_ok = nd == 2 || (a->shape[0] == out->shape[0] && b->shape[0] == out->shape[0]);
  if (am != M || bn != N || ak != bk || !batch_ok) {
    char so[128], sa[128], sb[128];
    shape_text(so, sizeof so, out);
    shape_text(sa, sizeof sa, a);
    shape_text(sb, sizeof sb, b);
    return F2_FAIL(F2_ERR_ARG, "%s: shapes do not match: out %s = a%s %s @ b%s %s", op, so, trans_a ? "^T" : "", sa,
                   trans_b ? "^T" : "", sb);
  }
  return F2_OK;
}

int f2_matmul(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t trans_a, int32_t trans_b,
              float alpha, float beta) {
  F2_TRY(matmul_args("matmul", out, a, b, trans_a, trans_b));
  return out->device == F2_CUDA ? F2_PROFILED("matmul", f2_cuda_matmul(out, a, b, trans_a, trans_b, alpha, beta))
                                : f2_cpu_matmul(out, a, b, trans_a, trans_b, alpha, beta);
}

/* Bytes [first, last) that t's elements can touch (a strided view's span). */
static void byte_span(const f2_tensor *t, uintptr_t *first, uintptr_t *last) {
  int64_t lo = 0, hi = 0;
  for (int d = 0; d < t->ndim; d++) {
    if (t->shape[d] == 0) {
      *first = *last = (uintptr_t)t->data;
      return;
    }
    int64_t step = t->stride[d] * (t->shape[d] - 1);
    if (step < 0) lo += step;
    else hi += step;
  }
  int64_t size = (int64_t)f2_dtype_size(t->dtype);
  *first = (uintptr_t)((const char *)t->data + lo * size);
  *last = (uintptr_t)((const char *)t->data + (hi + 1) * size);
}

int f2_matmul_add(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t trans_a, int32_t trans_b,
                  float alpha, const f2_tensor *c, float beta) {
  F2_TRY(matmul_args("matmul_add", out, a, b, trans_a, trans_b));
  F2_TRY(check_not_null("matmul_add", "c", c));
  F2_TRY(f2_check_same_device("matmul_add", out, c));
  if (c->dtype != out->dtype)
    return F2_FAIL(F2_ERR_ARG, "matmul_add: c is %s but out is %s (c must have out's dtype)",
                   f2_dtype_name(c->dtype), f2_dtype_name(out->dtype));
  int same_shape = c->ndim == out->ndim;
  for (int d = 0; same_shape && d < out->ndim; d++) same_shape = c->shape[d] == out->shape[d];
  if (!same_shape) {
    char so[128], sc[128];
    shape_text(so, sizeof so, out);
    shape_text(sc, sizeof sc, c);
    return F2_FAIL(F2_ERR_ARG, "matmul_add: c %s must have out's shape %s", sc, so);
  }
  int same_view = c->data == out->data;
  for (int d = 0; same_view && d < out->ndim; d++) same_view = c->stride[d] == out->stride[d] || c->shape[d] == 1;
  if (same_view || beta == 0.0f) /* c is out, or not read (beta = 0 never reads it, as BLAS) */
    return f2_matmul(out, a, b, trans_a, trans_b, alpha, beta);
  uintptr_t o0, o1, c0, c1;
  byte_span(out, &o0, &o1);
  byte_span(c, &c0, &c1);
  if (o0 < c1 && c0 < o1)
    return F2_FAIL(F2_ERR_ARG, "matmul_add: c overlaps out without being out (pass out itself, or a separate "
                   "tensor)");
  if (out->device == F2_CUDA) return F2_PROFILED("matmul", f2_cuda_matmul_add(out, a, b, trans_a, trans_b, alpha, c, beta));
  /* CPU: out = c, then the matmul accumulates onto it. */
  F2_TRY(f2_copy(out, c));
  return f2_cpu_matmul(out, a, b, trans_a, trans_b, alpha, beta);
}
