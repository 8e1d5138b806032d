/* test_gpu_alloc.c — the GPU caching allocator: statistics move as expected (allocated, reserved,
 * peaks, cudaMalloc count), freed blocks are reused without a new cudaMalloc, empty_cache gives them
 * back, reuse is safe in stream order, and an absurd request fails with F2_ERR_MEM and a message,
 * leaving the allocator usable. Sizes are random per run (seed printed). */
#include <string.h>

#include "f2_internal.h" /* f2_cuda_alloc, to see the status code of a failed allocation */
#include "f2test.h"

static f2_memory_stats stats(void) {
  f2_memory_stats s;
  memset(&s, 0, sizeof s);
  CHECK_OK(f2_cuda_memory_stats(&s));
  return s;
}

static f2_tensor *gpu_bytes(int64_t nbytes) {
  f2_tensor *t = f2_tensor_new(F2_U8, F2_CUDA, 1, &nbytes);
  CHECK(t != NULL, "allocating %lld bytes: %s", (long long)nbytes, f2_last_error());
  return t;
}

static void print_stats(const char *when, f2_memory_stats s) {
  printf("%-28s allocated %10lld reserved %10lld peak %10lld/%10lld mallocs %lld allocs %lld\n", when,
         (long long)s.allocated, (long long)s.reserved, (long long)s.peak_allocated, (long long)s.peak_reserved,
         (long long)s.num_cuda_mallocs, (long long)s.num_allocs);
}

int main(void) {
  f2t_require_gpu();
  uint64_t seed = f2t_seed();
  /* A large size (2..10 MiB, not a multiple of anything) and a small one (1..64 KiB). */
  int64_t big = (2 << 20) + (int64_t)(seed % (8 << 20)) + 1, small = 1024 + (int64_t)(seed % 65536);
  printf("sizes: big %lld, small %lld bytes\n", (long long)big, (long long)small);

  CHECK_OK(f2_cuda_empty_cache());
  CHECK_OK(f2_cuda_reset_peak());
  f2_memory_stats s0 = stats();
  print_stats("start", s0);
  CHECK(s0.allocated >= 0 && s0.reserved >= s0.allocated, "reserved %lld < allocated %lld", (long long)s0.reserved,
        (long long)s0.allocated);
  CHECK(s0.peak_allocated == s0.allocated, "reset_peak: peak %lld != allocated %lld", (long long)s0.peak_allocated,
        (long long)s0.allocated);

  /* A fresh allocation: one cudaMalloc, a block at least as large as asked, at most one rounding
   * granule (2 MiB) larger. */
  f2_tensor *a = gpu_bytes(big);
  f2_memory_stats s1 = stats();
  print_stats("after big alloc", s1);
  int64_t block = s1.allocated - s0.allocated;
  CHECK(block >= big && block < big + (2 << 20), "block of %lld bytes for a request of %lld", (long long)block,
        (long long)big);
  CHECK(s1.reserved - s0.reserved == block, "reserved grew by %lld, block %lld", (long long)(s1.reserved - s0.reserved),
        (long long)block);
  CHECK(s1.num_cuda_mallocs == s0.num_cuda_mallocs + 1, "cudaMalloc calls %lld -> %lld", (long long)s0.num_cuda_mallocs,
        (long long)s1.num_cuda_mallocs);
  CHECK(s1.num_allocs == s0.num_allocs + 1, "allocations %lld -> %lld", (long long)s0.num_allocs, (long long)s1.num_allocs);
  CHECK(s1.peak_allocated >= s1.allocated && s1.peak_reserved >= s1.reserved, "peaks below current values");
  void *first_ptr = a->data;

  /* Freed: allocated drops, reserved stays (the block is cached). */
  f2_tensor_free(a);
  f2_memory_stats s2 = stats();
  print_stats("after free", s2);
  CHECK(s2.allocated == s0.allocated, "allocated %lld after free, %lld before", (long long)s2.allocated,
        (long long)s0.allocated);
  CHECK(s2.reserved == s1.reserved, "reserved changed on free: %lld -> %lld", (long long)s1.reserved,
        (long long)s2.reserved);
  CHECK(s2.peak_allocated == s1.peak_allocated, "peak changed on free");

  /* The same request again, and a slightly smaller one: served from the cache, no cudaMalloc. */
  a = gpu_bytes(big);
  f2_memory_stats s3 = stats();
  CHECK(a && a->data == first_ptr, "the cached block was not reused (%p vs %p)", a ? a->data : NULL, first_ptr);
  CHECK(s3.num_cuda_mallocs == s1.num_cuda_mallocs, "a cached size caused a cudaMalloc (%lld -> %lld)",
        (long long)s1.num_cuda_mallocs, (long long)s3.num_cuda_mallocs);
  CHECK(s3.num_allocs == s2.num_allocs + 1, "allocations not counted on a cache hit");
  CHECK(s3.reserved == s2.reserved, "reserved grew on a cache hit");
  f2_tensor_free(a);
  a = gpu_bytes(big - 4096);
  f2_memory_stats s4 = stats();
  CHECK(s4.num_cuda_mallocs == s1.num_cuda_mallocs, "a slightly smaller request caused a cudaMalloc");
  f2_tensor_free(a);

  /* A tiny request does not take the big cached block (waste is bounded): a new cudaMalloc. */
  f2_tensor *tiny = gpu_bytes(small);
  f2_memory_stats s5 = stats();
  CHECK(s5.num_cuda_mallocs == s4.num_cuda_mallocs + 1, "small request served from a block %lld bytes larger",
        (long long)block);
  CHECK(s5.allocated - s0.allocated < (1 << 20), "small request took %lld bytes", (long long)(s5.allocated - s0.allocated));

  /* Peak: two big blocks live at once. */
  f2_tensor *b1 = gpu_bytes(big), *b2 = gpu_bytes(big);
  f2_memory_stats s6 = stats();
  f2_tensor_free(b1);
  f2_tensor_free(b2);
  f2_memory_stats s7 = stats();
  print_stats("after two big, freed", s7);
  CHECK(s7.peak_allocated >= s0.allocated + 2 * big, "peak %lld below two live blocks (%lld)", (long long)s7.peak_allocated,
        (long long)(s0.allocated + 2 * big));
  CHECK(s7.peak_allocated == s6.allocated, "peak %lld != the high-water mark %lld", (long long)s7.peak_allocated,
        (long long)s6.allocated);
  CHECK_OK(f2_cuda_reset_peak());
  f2_memory_stats s8 = stats();
  CHECK(s8.peak_allocated == s8.allocated && s8.peak_reserved == s8.reserved, "reset_peak left peak %lld/%lld",
        (long long)s8.peak_allocated, (long long)s8.peak_reserved);

  /* empty_cache gives every cached block back; live ones stay. */
  CHECK_OK(f2_cuda_empty_cache());
  f2_memory_stats s9 = stats();
  print_stats("after empty_cache", s9);
  CHECK(s9.reserved == s9.allocated, "reserved %lld after empty_cache, allocated %lld", (long long)s9.reserved,
        (long long)s9.allocated);
  CHECK(s9.allocated == s5.allocated, "empty_cache changed allocated (%lld -> %lld)", (long long)s5.allocated,
        (long long)s9.allocated);
  f2_tensor_free(tiny);
  CHECK_OK(f2_cuda_empty_cache());
  f2_memory_stats s10 = stats();
  CHECK(s10.allocated == s0.allocated && s10.reserved == s0.reserved, "back to start: allocated %lld reserved %lld, "
        "start %lld %lld", (long long)s10.allocated, (long long)s10.reserved, (long long)s0.allocated, (long long)s0.reserved);

  /* Stream-ordered reuse: fill a block, free it, reallocate (same block) and fill with another
   * value while the first fill may still be queued: the second value must win everywhere. */
  int64_t n = big / 4;
  for (int round = 0; round < 3; round++) {
    f2_tensor *x = f2_tensor_new(F2_F32, F2_CUDA, 1, &n);
    CHECK_OK(f2_fill(x, 1.0 + round));
    f2_tensor_free(x);
    f2_tensor *y = f2_tensor_new(F2_F32, F2_CUDA, 1, &n), *h = f2_tensor_new(F2_F32, F2_CPU, 1, &n);
    CHECK_OK(f2_fill(y, -7.5));
    CHECK_OK(f2_copy(h, y));
    int64_t wrong = 0;
    for (int64_t i = 0; i < n; i++) wrong += ((float *)h->data)[i] != -7.5f;
    CHECK(wrong == 0, "round %d: %lld of %lld elements lost the second fill", round, (long long)wrong, (long long)n);
    f2_tensor_free(y);
    f2_tensor_free(h);
  }

  /* An absurd request: F2_ERR_MEM with a message, no crash, nothing counted, allocator still fine. */
  f2_memory_stats before = stats();
  f2_clear_error();
  int64_t huge = (int64_t)1 << 50; /* 1 PiB */
  f2_tensor *t = f2_tensor_new(F2_U8, F2_CUDA, 1, &huge);
  CHECK(t == NULL, "a 1 PiB GPU tensor was created");
  const char *msg = f2_last_error();
  printf("1 PiB tensor: %s\n", msg);
  CHECK(strstr(msg, "cudaMalloc") != NULL && strstr(msg, "1125899906842624") != NULL,
        "message should name cudaMalloc and the size: %s", msg);
  void *p = (void *)1;
  int rc = f2_cuda_alloc(&p, (size_t)1 << 50);
  CHECK(rc == F2_ERR_MEM, "f2_cuda_alloc of 1 PiB returned %d, want F2_ERR_MEM (%d): %s", rc, F2_ERR_MEM, f2_last_error());
  CHECK(p == NULL, "a failed allocation left the pointer set");
  rc = f2_cuda_alloc(&p, SIZE_MAX - 5);
  CHECK(rc == F2_ERR_MEM && p == NULL, "f2_cuda_alloc of SIZE_MAX-5 returned %d: %s", rc, f2_last_error());
  printf("SIZE_MAX-5 bytes: %s\n", f2_last_error());
  f2_memory_stats after = stats();
  CHECK(after.allocated == before.allocated && after.num_allocs == before.num_allocs,
        "a failed allocation changed the stats (allocated %lld -> %lld, allocs %lld -> %lld)", (long long)before.allocated,
        (long long)after.allocated, (long long)before.num_allocs, (long long)after.num_allocs);
  f2_tensor *ok = gpu_bytes(big);
  CHECK_OK(f2_fill(ok, 3.0));
  CHECK_OK(f2_cuda_synchronize());
  f2_tensor_free(ok);

  /* Many sizes, allocated and freed in random order: allocated returns to where it started and
   * never exceeds reserved. */
  f2_memory_stats m0 = stats();
  f2_tensor *live[64] = {0};
  uint64_t r = seed;
  int consistent = 1;
  for (int i = 0; i < 2000; i++) {
    r = r * 6364136223846793005ull + 1442695040888963407ull;
    int slot = (int)(r >> 58);
    if (live[slot]) {
      f2_tensor_free(live[slot]);
      live[slot] = NULL;
    } else {
      live[slot] = gpu_bytes(1 + (int64_t)((r >> 20) % (3 << 20)));
    }
    f2_memory_stats s = stats();
    consistent &= s.allocated <= s.reserved && s.peak_allocated >= s.allocated && s.peak_reserved >= s.reserved;
  }
  for (int i = 0; i < 64; i++) f2_tensor_free(live[i]);
  f2_memory_stats m1 = stats();
  print_stats("after random churn", m1);
  CHECK(consistent, "allocated exceeded reserved, or a peak fell below its value, during the churn");
  CHECK(m1.allocated == m0.allocated, "allocated %lld after the churn, %lld before", (long long)m1.allocated,
        (long long)m0.allocated);
  CHECK(m1.num_cuda_mallocs - m0.num_cuda_mallocs < 1000, "%lld cudaMallocs for 2000 operations: the cache is not reused",
        (long long)(m1.num_cuda_mallocs - m0.num_cuda_mallocs));
  CHECK_OK(f2_cuda_empty_cache());
  CHECK(stats().reserved == stats().allocated, "empty_cache after the churn left cached blocks");
  return f2t_done();
}
