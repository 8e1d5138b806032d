/* cuda_stub.c — the CUDA entry points of a build without CUDA: every GPU request fails cleanly. */
#include "f2_internal.h"

#include <stdio.h>

#ifndef F2_HAVE_CUDA
static int no_cuda(const char *what) {
  return F2_FAIL(F2_ERR_NO_DEVICE, "%s needs CUDA, but this fairy2 was built without it", what);
}
int f2_cuda_compiled(void) { return 0; }
int f2_cuda_device_count(void) { return 0; }
int f2_cuda_set_device(int32_t index) { (void)index; return no_cuda("selecting a GPU"); }
int f2_cuda_require(const char *what) { return no_cuda(what); }
int f2_cuda_alloc(void **ptr, size_t nbytes) { (void)nbytes; *ptr = NULL; return no_cuda("GPU memory"); }
void f2_cuda_free(void *ptr) { (void)ptr; }
int f2_cuda_memory_stats(f2_memory_stats *out) { (void)out; return no_cuda("GPU memory statistics"); }
int f2_cuda_reset_peak(void) { return no_cuda("GPU memory statistics"); }
int f2_cuda_empty_cache(void) { return no_cuda("the GPU allocator"); }
int f2_cuda_synchronize(void) { return no_cuda("synchronizing a GPU"); }
int f2_cuda_memcpy(void *dst, const void *src, size_t nbytes, int kind) {
  (void)dst, (void)src, (void)nbytes, (void)kind;
  return no_cuda("a GPU copy");
}
int f2_cuda_copy(f2_tensor *dst, const f2_tensor *src) { (void)dst, (void)src; return no_cuda("a GPU copy"); }
int f2_cuda_fill(f2_tensor *t, double v) { (void)t, (void)v; return no_cuda("a GPU fill"); }
int f2_cuda_rand_uniform(f2_tensor *t, uint64_t seed, double lo, double hi) {
  (void)t, (void)seed, (void)lo, (void)hi;
  return no_cuda("GPU random numbers");
}
int f2_cuda_rand_normal(f2_tensor *t, uint64_t seed, double mean, double std) {
  (void)t, (void)seed, (void)mean, (void)std;
  return no_cuda("GPU random numbers");
}
int f2_cuda_binary(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t op) {
  (void)out, (void)a, (void)b, (void)op;
  return no_cuda("a GPU op");
}
int f2_cuda_binary_scalar(f2_tensor *out, const f2_tensor *a, double s, int32_t op) {
  (void)out, (void)a, (void)s, (void)op;
  return no_cuda("a GPU op");
}
int f2_cuda_unary(f2_tensor *out, const f2_tensor *a, int32_t op) { (void)out, (void)a, (void)op; return no_cuda("a GPU op"); }
int f2_cuda_reduce(f2_tensor *out, const f2_tensor *x, int32_t dim, int32_t op) {
  (void)out, (void)x, (void)dim, (void)op;
  return no_cuda("a GPU reduction");
}
int f2_cuda_matmul(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t ta, int32_t tb, float alpha,
                   float beta) {
  (void)out, (void)a, (void)b, (void)ta, (void)tb, (void)alpha, (void)beta;
  return no_cuda("a GPU matmul");
}
int f2_cuda_matmul_add(f2_tensor *out, const f2_tensor *a, const f2_tensor *b, int32_t ta, int32_t tb, float alpha,
                       const f2_tensor *c, float beta) {
  (void)out, (void)a, (void)b, (void)ta, (void)tb, (void)alpha, (void)c, (void)beta;
  return no_cuda("a GPU matmul");
}
int f2_cuda_build_info(char *buf, size_t size) {
  snprintf(buf, size, "CUDA: not compiled in\nGPUs: none\n");
  return F2_OK;
}
#endif
