/* f2_internal.h — what the runtime's C files share and Lua never sees: error macros, storage,
 * the CUDA entry points that ops dispatch to. Included by the runtime C files and the kernels. */
#ifndef F2_INTERNAL_H
#define F2_INTERNAL_H
#include "f2.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Records "file:line: message" for f2_last_error() and returns code. */
int f2_set_error(int code, const char *file, int line, const char *fmt, ...)
#ifdef __GNUC__
    __attribute__((format(printf, 4, 5)))
#endif
    ;
#define F2_FAIL(code, ...) f2_set_error((code), __FILE__, __LINE__, __VA_ARGS__)
/* Returns the status of expr from the current function when it failed. */
#define F2_TRY(expr) do { int f2_try_rc_ = (expr); if (f2_try_rc_ != F2_OK) return f2_try_rc_; } while (0)
/* For constructors that return NULL on failure. */
#define F2_FAIL_NULL(code, ...) (F2_FAIL((code), __VA_ARGS__), (void *)0)

struct f2_storage {
  void *ptr;
  size_t nbytes;
  int32_t device;
  int32_t refcount;
  void (*release)(void *owner);   /* wrapped memory: called with owner when the last view goes */
  void *owner;
};

/* Storage lifetime (tensor.c). */
f2_storage *f2_storage_new(int32_t device, size_t nbytes);
void f2_storage_retain(f2_storage *s);
void f2_storage_release(f2_storage *s);
/* A fresh handle on s (retained) with the given geometry. */
f2_tensor *f2_tensor_make(f2_storage *s, void *data, int32_t dtype, int32_t device, int32_t ndim,
                          const int64_t *shape, const int64_t *stride);

/* Shape checks shared by the ops; each returns F2_OK or fails with a message naming `what`. */
int f2_check_same_device(const char *what, const f2_tensor *a, const f2_tensor *b);
int f2_check_same_shape(const char *what, const f2_tensor *a, const f2_tensor *b);
int f2_check_float(const char *what, const f2_tensor *t);

/* bf16 / f16 conversions (round to nearest even; NaN stays NaN). */
static inline float f2_bf16_to_f32(uint16_t h) {
  union { uint32_t u; float f; } v;
  v.u = (uint32_t)h << 16;
  return v.f;
}
static inline uint16_t f2_f32_to_bf16(float f) {
  union { uint32_t u; float f; } v;
  v.f = f;
  if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40u); /* quiet NaN */
  uint32_t rounding = 0x7fffu + ((v.u >> 16) & 1u);
  return (uint16_t)((v.u + rounding) >> 16);
}
float f2_f16_to_f32(uint16_t h);
uint16_t f2_f32_to_f16(float f);

/* GPU caching allocator (kernels/alloc.cu). Plain cudaMalloc underneath, never managed memory. */
int f2_cuda_alloc(void **ptr, size_t nbytes);
void f2_cuda_free(void *ptr);
int f2_cuda_require(const char *what);   /* F2_OK, or F2_ERR_NO_DEVICE with a clear message */

#ifdef __cplusplus
}
#endif
#endif
