/* view.c — views: new tensor handles over the same storage with other geometry (narrow, select,
 * reshape, permute, transpose, expand, as_strided). No data moves; every range is checked. */
#include "ops_cpu.h"

#include <stdio.h>

static char *element_address(const f2_tensor *t, int64_t offset) {
  return (char *)t->data + offset * (int64_t)f2_dtype_size(t->dtype);
}

static int check_tensor(const char *what, const f2_tensor *t) {
  if (!t) return F2_FAIL(F2_ERR_ARG, "%s: tensor is NULL", what);
  return F2_OK;
}

static int check_dim(const char *what, const f2_tensor *t, int32_t dim) {
  if (dim < 0 || dim >= t->ndim)
    return F2_FAIL(F2_ERR_ARG, "%s: dim %d out of range for a %d-dim tensor", what, (int)dim, (int)t->ndim);
  return F2_OK;
}

void f2_shape_text(char *buf, size_t size, int32_t ndim, const int64_t *shape) {
  int n = snprintf(buf, size, "[");
  for (int i = 0; i < ndim && n > 0 && (size_t)n < size; i++)
    n += snprintf(buf + n, size - (size_t)n, i ? ",%lld" : "%lld", (long long)shape[i]);
  if (n > 0 && (size_t)n < size) snprintf(buf + n, size - (size_t)n, "]");
}

f2_tensor *f2_tensor_view(const f2_tensor *t) {
  if (check_tensor("view", t) != F2_OK) return NULL;
  return f2_tensor_make(t->storage, t->data, t->dtype, t->device, t->ndim, t->shape, t->stride);
}

f2_tensor *f2_tensor_narrow(const f2_tensor *t, int32_t dim, int64_t start, int64_t length) {
  if (check_tensor("narrow", t) != F2_OK || check_dim("narrow", t, dim) != F2_OK) return NULL;
  if (start < 0 || length < 0 || start > t->shape[dim] - length)
    return F2_FAIL_NULL(F2_ERR_ARG, "narrow: [%lld, %lld) out of range for dim %d of size %lld", (long long)start,
                        (long long)(start + length), (int)dim, (long long)t->shape[dim]);
  int64_t shape[F2_MAX_DIMS];
  for (int i = 0; i < t->ndim; i++) shape[i] = t->shape[i];
  shape[dim] = length;
  return f2_tensor_make(t->storage, element_address(t, start * t->stride[dim]), t->dtype, t->device, t->ndim, shape,
                        t->stride);
}

f2_tensor *f2_tensor_select(const f2_tensor *t, int32_t dim, int64_t index) {
  if (check_tensor("select", t) != F2_OK || check_dim("select", t, dim) != F2_OK) return NULL;
  if (index < 0 || index >= t->shape[dim])
    return F2_FAIL_NULL(F2_ERR_ARG, "select: index %lld out of range for dim %d of size %lld", (long long)index,
                        (int)dim, (long long)t->shape[dim]);
  int64_t shape[F2_MAX_DIMS], stride[F2_MAX_DIMS];
  int n = 0;
  for (int i = 0; i < t->ndim; i++) {
    if (i == dim) continue;
    shape[n] = t->shape[i];
    stride[n++] = t->stride[i];
  }
  return f2_tensor_make(t->storage, element_address(t, index * t->stride[dim]), t->dtype, t->device, n, shape, stride);
}

/* Strides that walk t's elements in row-major order with the new shape, or 0 when t's layout cannot.
 * t's dims fall into chunks, runs of dims each contiguous over the next (size-1 dims never break a
 * run); the new dims, filled in from the innermost, must cover each chunk exactly, never straddle two. */
static int view_strides(const f2_tensor *t, int32_t ndim, const int64_t *shape, int64_t *stride) {
  if (t->ndim == 0 || f2_tensor_numel(t) == 0) { /* no layout to keep: contiguous strides */
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
      stride[i] = s;
      s *= shape[i] > 0 ? shape[i] : 1;
    }
    return 1;
  }
  int new_dim = ndim - 1;
  int64_t chunk_stride = t->stride[t->ndim - 1]; /* stride of the chunk's innermost dim */
  int64_t chunk_numel = 1, placed_numel = 1;
  for (int old = t->ndim - 1; old >= 0; old--) {
    chunk_numel *= t->shape[old];
    int chunk_ends = old == 0 || (t->shape[old - 1] != 1 && t->stride[old - 1] != chunk_numel * chunk_stride);
    if (!chunk_ends) continue;
    while (new_dim >= 0 && (placed_numel < chunk_numel || shape[new_dim] == 1)) {
      stride[new_dim] = placed_numel * chunk_stride;
      placed_numel *= shape[new_dim];
      new_dim--;
    }
    if (placed_numel != chunk_numel) return 0;
    if (old > 0) {
      chunk_stride = t->stride[old - 1];
      chunk_numel = placed_numel = 1;
    }
  }
  return new_dim == -1;
}

f2_tensor *f2_tensor_reshape(const f2_tensor *t, int32_t ndim, const int64_t *shape) {
  if (check_tensor("reshape", t) != F2_OK) return NULL;
  if (ndim < 0 || ndim > F2_MAX_DIMS)
    return F2_FAIL_NULL(F2_ERR_ARG, "reshape: ndim %d outside 0..%d", (int)ndim, F2_MAX_DIMS);
  if (ndim > 0 && !shape) return F2_FAIL_NULL(F2_ERR_ARG, "reshape: shape is NULL");
  int64_t numel = f2_tensor_numel(t), known = 1, resolved[F2_MAX_DIMS];
  int infer = -1;
  for (int i = 0; i < ndim; i++) {
    resolved[i] = shape[i];
    if (shape[i] == -1) {
      if (infer >= 0) return F2_FAIL_NULL(F2_ERR_ARG, "reshape: more than one -1 (dims %d and %d)", infer, i);
      infer = i;
    } else if (shape[i] < 0) {
      return F2_FAIL_NULL(F2_ERR_ARG, "reshape: negative size %lld in dim %d", (long long)shape[i], i);
    } else {
      known *= shape[i];
    }
  }
  char from[128], to[128];
  f2_shape_text(from, sizeof from, t->ndim, t->shape);
  if (infer >= 0) {
    if (known == 0 || numel % known != 0) {
      f2_shape_text(to, sizeof to, ndim, shape);
      return F2_FAIL_NULL(F2_ERR_ARG, "reshape: cannot infer the -1 in %s from %lld elements %s", to,
                          (long long)numel, from);
    }
    resolved[infer] = numel / known;
    known *= resolved[infer];
  }
  f2_shape_text(to, sizeof to, ndim, resolved);
  if (known != numel)
    return F2_FAIL_NULL(F2_ERR_ARG, "reshape: %s has %lld elements, %s has %lld", from, (long long)numel, to,
                        (long long)known);
  int64_t stride[F2_MAX_DIMS];
  if (!view_strides(t, ndim, resolved, stride))
    return F2_FAIL_NULL(F2_ERR_ARG,
                        "reshape: this non-contiguous %s tensor cannot be viewed as %s; call contiguous first",
                        from, to);
  return f2_tensor_make(t->storage, t->data, t->dtype, t->device, ndim, resolved, stride);
}

f2_tensor *f2_tensor_permute(const f2_tensor *t, const int32_t *dims) {
  if (check_tensor("permute", t) != F2_OK) return NULL;
  if (t->ndim > 0 && !dims) return F2_FAIL_NULL(F2_ERR_ARG, "permute: dims is NULL");
  int seen[F2_MAX_DIMS] = {0};
  int64_t shape[F2_MAX_DIMS], stride[F2_MAX_DIMS];
  for (int i = 0; i < t->ndim; i++) {
    int32_t d = dims[i];
    if (d < 0 || d >= t->ndim || seen[d]++)
      return F2_FAIL_NULL(F2_ERR_ARG, "permute: dims is not a permutation of 0..%d (entry %d is %d)",
                          (int)t->ndim - 1, i, (int)d);
    shape[i] = t->shape[d];
    stride[i] = t->stride[d];
  }
  return f2_tensor_make(t->storage, t->data, t->dtype, t->device, t->ndim, shape, stride);
}

f2_tensor *f2_tensor_transpose(const f2_tensor *t, int32_t dim0, int32_t dim1) {
  if (check_tensor("transpose", t) != F2_OK || check_dim("transpose", t, dim0) != F2_OK ||
      check_dim("transpose", t, dim1) != F2_OK)
    return NULL;
  int32_t dims[F2_MAX_DIMS];
  for (int i = 0; i < t->ndim; i++) dims[i] = i;
  dims[dim0] = dim1;
  dims[dim1] = dim0;
  return f2_tensor_permute(t, dims);
}

/* numpy broadcasting: t's dims align with the trailing ones of shape; a size-1 dim (or a new leading
 * one) repeats with stride 0; -1 keeps t's size. */
f2_tensor *f2_tensor_expand(const f2_tensor *t, int32_t ndim, const int64_t *shape) {
  if (check_tensor("expand", t) != F2_OK) return NULL;
  if (ndim < t->ndim || ndim > F2_MAX_DIMS)
    return F2_FAIL_NULL(F2_ERR_ARG, "expand: %d dims cannot hold a %d-dim tensor (at most %d)", (int)ndim,
                        (int)t->ndim, F2_MAX_DIMS);
  if (ndim > 0 && !shape) return F2_FAIL_NULL(F2_ERR_ARG, "expand: shape is NULL");
  int64_t out_shape[F2_MAX_DIMS], stride[F2_MAX_DIMS];
  int lead = ndim - t->ndim;
  for (int i = 0; i < ndim; i++) {
    int src = i - lead;
    int64_t have = src >= 0 ? t->shape[src] : 1, want = shape[i];
    if (want == -1) {
      if (src < 0) return F2_FAIL_NULL(F2_ERR_ARG, "expand: -1 in new leading dim %d", i);
      want = have;
    }
    if (want < 0) return F2_FAIL_NULL(F2_ERR_ARG, "expand: negative size %lld in dim %d", (long long)want, i);
    if (have == want) {
      stride[i] = src >= 0 ? t->stride[src] : 0;
    } else if (have == 1) {
      stride[i] = 0;
    } else {
      char from[128], to[128];
      f2_shape_text(from, sizeof from, t->ndim, t->shape);
      f2_shape_text(to, sizeof to, ndim, shape);
      return F2_FAIL_NULL(F2_ERR_ARG, "expand: cannot broadcast %s to %s (dim %d: %lld vs %lld)", from, to, i,
                          (long long)have, (long long)want);
    }
    out_shape[i] = want;
  }
  return f2_tensor_make(t->storage, t->data, t->dtype, t->device, ndim, out_shape, stride);
}

f2_tensor *f2_tensor_as_strided(const f2_tensor *t, int32_t ndim, const int64_t *shape, const int64_t *stride,
                                int64_t offset) {
  if (check_tensor("as_strided", t) != F2_OK) return NULL;
  if (ndim < 0 || ndim > F2_MAX_DIMS)
    return F2_FAIL_NULL(F2_ERR_ARG, "as_strided: ndim %d outside 0..%d", (int)ndim, F2_MAX_DIMS);
  if (ndim > 0 && (!shape || !stride)) return F2_FAIL_NULL(F2_ERR_ARG, "as_strided: shape or stride is NULL");
  int64_t last = 0, numel = 1; /* offset of the last element from the first */
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0 || stride[i] < 0)
      return F2_FAIL_NULL(F2_ERR_ARG, "as_strided: negative size or stride in dim %d (%lld, %lld)", i,
                          (long long)shape[i], (long long)stride[i]);
    numel *= shape[i];
    if (shape[i] > 0) last += (shape[i] - 1) * stride[i];
  }
  /* Bounds are checked against the storage, so a view may reach back before t's first element. */
  int64_t esize = (int64_t)f2_dtype_size(t->dtype);
  int64_t first = ((char *)t->data - (char *)t->storage->ptr) / esize + offset;
  int64_t capacity = (int64_t)(t->storage->nbytes / (size_t)esize);
  if (numel > 0 && (first < 0 || first + last >= capacity))
    return F2_FAIL_NULL(F2_ERR_ARG, "as_strided: elements [%lld, %lld] outside the storage of %lld elements",
                        (long long)first, (long long)(first + last), (long long)capacity);
  return f2_tensor_make(t->storage, element_address(t, offset), t->dtype, t->device, ndim, shape, stride);
}
