/* f2_mmap.h — a refcounted, memory-mapped file shared by the safetensors and GGUF readers: the open
 * file handle holds one reference and every zero-copy tensor view holds one more, so tensors outlive
 * the handle that made them. Header-only (static) so nothing here is exported from the runtime. */
#ifndef F2_MMAP_H
#define F2_MMAP_H
#include "f2_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct f2_mapping {
  uint8_t *base;   /* NULL for an empty file */
  size_t size;
  int32_t refcount;
} f2_mapping;

/* Maps the whole file. Private and writable: a view that someone writes into gets its own pages
 * (copy on write) instead of a crash, and the file itself never changes. */
static inline f2_mapping *f2_mapping_open(const char *path, const char *kind) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return F2_FAIL_NULL(F2_ERR_IO, "%s file '%s': cannot open: %s", kind, path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return F2_FAIL_NULL(F2_ERR_IO, "%s file '%s': not a regular file", kind, path);
  }
  f2_mapping *m = calloc(1, sizeof *m);
  if (!m) {
    close(fd);
    return F2_FAIL_NULL(F2_ERR_MEM, "out of host memory");
  }
  m->size = (size_t)st.st_size;
  m->refcount = 1;
  if (m->size > 0) {
    void *p = mmap(NULL, m->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      close(fd);
      free(m);
      return F2_FAIL_NULL(F2_ERR_IO, "%s file '%s': mmap failed: %s", kind, path, strerror(errno));
    }
    m->base = p;
  }
  close(fd);   /* the mapping keeps the file alive */
  return m;
}

/* Drops one reference; the signature fits f2_tensor_wrap's release callback. */
static inline void f2_mapping_release(void *owner) {
  f2_mapping *m = owner;
  if (!m || --m->refcount > 0) return;
  if (m->base) munmap(m->base, m->size);
  free(m);
}

/* A zero-copy CPU tensor over [offset, offset + bytes) of the mapping (the caller checked the range). */
static inline f2_tensor *f2_mapping_view(f2_mapping *m, size_t offset, int32_t dtype, int32_t ndim,
                                         const int64_t *shape) {
  f2_tensor *t = f2_tensor_wrap(m->base + offset, dtype, F2_CPU, ndim, shape, f2_mapping_release, m);
  if (t) m->refcount++;
  return t;
}
#endif
