/* tensor.c — dtypes, refcounted storage and tensor handles (construction, lifetime, geometry).
 * Views (narrow, permute, ...) live in view.c; ops in ops_cpu.c and kernels/. */
#include "f2_internal.h"

#include <stdlib.h>
#include <string.h>

static const struct { const char *name; size_t size; } dtypes[F2_DTYPE_COUNT] = {
    [F2_F32] = {"f32", 4}, [F2_BF16] = {"bf16", 2}, [F2_F16] = {"f16", 2}, [F2_I32] = {"i32", 4},
    [F2_I64] = {"i64", 8}, [F2_U8] = {"u8", 1},     [F2_I8] = {"i8", 1},
};

size_t f2_dtype_size(int32_t dtype) {
  return dtype >= 0 && dtype < F2_DTYPE_COUNT ? dtypes[dtype].size : 0;
}

const char *f2_dtype_name(int32_t dtype) {
  return dtype >= 0 && dtype < F2_DTYPE_COUNT ? dtypes[dtype].name : "invalid";
}

int32_t f2_dtype_from_name(const char *name) {
  for (int32_t i = 0; i < F2_DTYPE_COUNT; i++)
    if (strcmp(name, dtypes[i].name) == 0) return i;
  return -1;
}

f2_storage *f2_storage_new(int32_t device, size_t nbytes) {
  f2_storage *s = calloc(1, sizeof *s);
  if (!s) return F2_FAIL_NULL(F2_ERR_MEM, "out of host memory");
  s->device = device;
  s->nbytes = nbytes;
  s->refcount = 1;
  size_t alloc_bytes = nbytes ? nbytes : 1;
  if (device == F2_CPU) {
    /* 64-byte alignment: whole cache lines, and aligned vector loads in the CPU kernels. */
    s->ptr = aligned_alloc(64, (alloc_bytes + 63) & ~(size_t)63);
    if (!s->ptr) {
      free(s);
      return F2_FAIL_NULL(F2_ERR_MEM, "out of host memory allocating %zu bytes", nbytes);
    }
  } else if (device == F2_CUDA) {
    if (f2_cuda_alloc(&s->ptr, alloc_bytes) != F2_OK) {
      free(s);
      return NULL;
    }
  } else {
    free(s);
    return F2_FAIL_NULL(F2_ERR_ARG, "unknown device %d", (int)device);
  }
  return s;
}

void f2_storage_retain(f2_storage *s) {
  if (s) s->refcount++;
}

void f2_storage_release(f2_storage *s) {
  if (!s || --s->refcount > 0) return;
  if (s->borrowed) {
    if (s->release) s->release(s->owner);
  } else if (s->device == F2_CUDA) f2_cuda_free(s->ptr);
  else free(s->ptr);
  free(s);
}

f2_tensor *f2_tensor_make(f2_storage *s, void *data, int32_t dtype, int32_t device, int32_t ndim,
                          const int64_t *shape, const int64_t *stride) {
  if (ndim < 0 || ndim > F2_MAX_DIMS) return F2_FAIL_NULL(F2_ERR_ARG, "ndim %d outside 0..%d", (int)ndim, F2_MAX_DIMS);
  if (!f2_dtype_size(dtype)) return F2_FAIL_NULL(F2_ERR_ARG, "unknown dtype %d", (int)dtype);
  f2_tensor *t = calloc(1, sizeof *t);
  if (!t) return F2_FAIL_NULL(F2_ERR_MEM, "out of host memory");
  t->data = data;
  t->storage = s;
  t->dtype = dtype;
  t->device = device;
  t->ndim = ndim;
  for (int i = 0; i < ndim; i++) {
    t->shape[i] = shape[i];
    t->stride[i] = stride[i];
  }
  f2_storage_retain(s);
  return t;
}

/* Also rejects shapes whose byte size overflows (they would under-allocate). */
static int check_shape(int32_t ndim, const int64_t *shape, int32_t dtype) {
  if (ndim < 0 || ndim > F2_MAX_DIMS) return F2_FAIL(F2_ERR_ARG, "ndim %d outside 0..%d", (int)ndim, F2_MAX_DIMS);
  if (ndim > 0 && !shape) return F2_FAIL(F2_ERR_ARG, "shape is NULL");
  if (!f2_dtype_size(dtype)) return F2_FAIL(F2_ERR_ARG, "unknown dtype %d", (int)dtype);
  int64_t bytes = (int64_t)f2_dtype_size(dtype);
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return F2_FAIL(F2_ERR_ARG, "negative size %lld in dim %d", (long long)shape[i], i);
    if (__builtin_mul_overflow(bytes, shape[i], &bytes))
      return F2_FAIL(F2_ERR_ARG, "tensor too large: size overflows at dim %d", i);
  }
  return F2_OK;
}

static void contiguous_strides(int32_t ndim, const int64_t *shape, int64_t *stride) {
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    stride[i] = s;
    s *= shape[i];
  }
}

static int64_t shape_numel(int32_t ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  return n;
}

f2_tensor *f2_tensor_new(int32_t dtype, int32_t device, int32_t ndim, const int64_t *shape) {
  if (check_shape(ndim, shape, dtype) != F2_OK) return NULL;
  if (device == F2_CUDA && f2_cuda_require("a CUDA tensor") != F2_OK) return NULL;
  int64_t stride[F2_MAX_DIMS];
  contiguous_strides(ndim, shape, stride);
  f2_storage *s = f2_storage_new(device, (size_t)shape_numel(ndim, shape) * f2_dtype_size(dtype));
  if (!s) return NULL;
  f2_tensor *t = f2_tensor_make(s, s->ptr, dtype, device, ndim, shape, stride);
  f2_storage_release(s); /* the handle holds the only reference now */
  return t;
}

f2_tensor *f2_tensor_wrap(void *data, int32_t dtype, int32_t device, int32_t ndim, const int64_t *shape,
                          void (*release)(void *owner), void *owner) {
  if (check_shape(ndim, shape, dtype) != F2_OK) return NULL;
  f2_storage *s = calloc(1, sizeof *s);
  if (!s) return F2_FAIL_NULL(F2_ERR_MEM, "out of host memory");
  s->ptr = data;
  s->nbytes = (size_t)shape_numel(ndim, shape) * f2_dtype_size(dtype);
  s->device = device;
  s->refcount = 1;
  s->borrowed = 1;
  s->release = release;
  s->owner = owner;
  int64_t stride[F2_MAX_DIMS];
  contiguous_strides(ndim, shape, stride);
  f2_tensor *t = f2_tensor_make(s, data, dtype, device, ndim, shape, stride);
  f2_storage_release(s);
  return t;
}

void f2_tensor_free(f2_tensor *t) {
  if (!t) return;
  f2_storage_release(t->storage);
  free(t);
}

int64_t f2_tensor_numel(const f2_tensor *t) { return shape_numel(t->ndim, t->shape); }

size_t f2_tensor_nbytes(const f2_tensor *t) { return (size_t)f2_tensor_numel(t) * f2_dtype_size(t->dtype); }

int f2_tensor_is_contiguous(const f2_tensor *t) {
  int64_t s = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] != 1 && t->stride[i] != s) return 0;
    s *= t->shape[i];
  }
  return 1;
}

int32_t f2_tensor_refcount(const f2_tensor *t) { return t->storage ? t->storage->refcount : 0; }
