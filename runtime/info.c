/* info.c — version and build information for `fairy2 --version`. */
#include "f2_internal.h"

#include <stdio.h>

#ifndef F2_VERSION_STRING
#define F2_VERSION_STRING "0.0.0-dev"
#endif

const char *f2_version(void) { return F2_VERSION_STRING; }

int f2_build_info(char *buf, size_t size) {
  int n = snprintf(buf, size, "fairy2 %s (C11, %s)\n", f2_version(), __VERSION__);
  if (n < 0 || (size_t)n >= size) return F2_FAIL(F2_ERR_ARG, "buffer of %zu bytes too small", size);
  return f2_cuda_build_info(buf + n, size - (size_t)n);
}
