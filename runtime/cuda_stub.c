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
int f2_cuda_build_info(char *buf, size_t size) {
  snprintf(buf, size, "CUDA: not compiled in\nGPUs: none\n");
  return F2_OK;
}
#endif
