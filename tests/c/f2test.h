/* f2test.h — the tiny C test harness: CHECK macros that count, a summary line ctest can read,
 * exit 77 (skipped) for GPU tests on a machine without a GPU, fresh random inputs per run. */
#ifndef F2TEST_H
#define F2TEST_H
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "f2.h"

static int f2t_passed, f2t_failed;

#define CHECK(cond, ...)                                                  \
  do {                                                                    \
    if (cond) {                                                           \
      f2t_passed++;                                                       \
    } else {                                                              \
      f2t_failed++;                                                       \
      fprintf(stderr, "%s:%d: FAILED %s: ", __FILE__, __LINE__, #cond);   \
      fprintf(stderr, __VA_ARGS__);                                       \
      fputc('\n', stderr);                                                \
    }                                                                     \
  } while (0)
/* A call returning an f2 status must succeed; prints f2_last_error() when not. */
#define CHECK_OK(expr) CHECK((expr) == F2_OK, "%s", f2_last_error())
#define CHECK_CLOSE(a, b, rtol, atol)                                                   \
  CHECK(fabs((double)(a) - (double)(b)) <= (atol) + (rtol) * fabs((double)(b)),         \
        "%s = %.9g vs %s = %.9g", #a, (double)(a), #b, (double)(b))

/* Seed from the clock unless F2_TEST_SEED is set; printed so a failure can be replayed. */
static inline uint64_t f2t_seed(void) {
  const char *env = getenv("F2_TEST_SEED");
  uint64_t seed = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL) ^ (uint64_t)clock() << 20;
  printf("seed %llu (F2_TEST_SEED to replay)\n", (unsigned long long)seed);
  return seed;
}

/* GPU tests call this first: exit 77 = skipped, with the reason on one line. */
static inline void f2t_require_gpu(void) {
  if (f2_cuda_device_count() < 1) {
    printf("skipped: no usable GPU (%s)\n", f2_cuda_compiled() ? "CUDA build" : "built without CUDA");
    exit(77);
  }
}

/* A new tensor, or the test stops: running out of memory is not what a test checks. */
static inline f2_tensor *f2t_tensor(int32_t dtype, int32_t device, int ndim, const int64_t *shape) {
  f2_tensor *t = f2_tensor_new(dtype, device, ndim, shape);
  if (!t) {
    fprintf(stderr, "f2_tensor_new failed: %s\n", f2_last_error());
    exit(1);
  }
  return t;
}

/* f2_copy (any devices, dtypes, strides), or the test stops. */
static inline void f2t_copy(f2_tensor *dst, const f2_tensor *src) {
  if (f2_copy(dst, src) != F2_OK) {
    fprintf(stderr, "f2_copy failed: %s\n", f2_last_error());
    exit(1);
  }
}

/* t's values in a new tensor of the given dtype and device (f2_copy: transfer and cast), or the test stops. */
static inline f2_tensor *f2t_copy_as(const f2_tensor *t, int32_t dtype, int32_t device) {
  f2_tensor *c = f2t_tensor(dtype, device, t->ndim, t->shape);
  f2t_copy(c, t);
  return c;
}

/* A view of t (f2_tensor_as_strided: shape, element strides, offset in elements), or the test stops. */
static inline f2_tensor *f2t_view(const f2_tensor *t, int ndim, const int64_t *shape, const int64_t *stride,
                                  int64_t offset) {
  f2_tensor *v = f2_tensor_as_strided(t, ndim, shape, stride, offset);
  if (!v) {
    fprintf(stderr, "f2_tensor_as_strided failed: %s\n", f2_last_error());
    exit(1);
  }
  return v;
}

/* Prints the summary line and returns the exit status. */
static inline int f2t_done(void) {
  printf("%d passed, %d failed\n", f2t_passed, f2t_failed);
  return f2t_failed ? 1 : 0;
}
#endif
