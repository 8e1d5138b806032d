/* alloc.cu — the GPU caching allocator: plain cudaMalloc underneath (never managed memory),
 * freed blocks kept in size-keyed free lists and reused, statistics for Lua.
 * Sizes round up to 512 B (small) or 2 MiB (large) so blocks are reusable across similar requests.
 * Not thread-safe: one host thread drives the GPU. Frees are stream-ordered on the fairy2 stream. */
#include "f2_cuda.cuh"

#include <map>
#include <unordered_map>

namespace {
struct Allocator {
  std::multimap<size_t, void *> free_blocks;      /* size -> block */
  std::unordered_map<void *, size_t> live;         /* block -> size */
  f2_memory_stats stats = {};
};
Allocator &allocator() {
  static Allocator a;
  return a;
}
size_t round_size(size_t n) {
  const size_t small = 512, large = 2u << 20;
  return n < (1u << 20) ? (n + small - 1) / small * small : (n + large - 1) / large * large;
}
void update_peaks(f2_memory_stats &s) {
  if (s.allocated > s.peak_allocated) s.peak_allocated = s.allocated;
  if (s.reserved > s.peak_reserved) s.peak_reserved = s.reserved;
}
int release_cached(Allocator &a) {
  /* Blocks freed by the host may still be in use by queued kernels. */
  F2_CUDA_CHECK(cudaStreamSynchronize(f2_cuda_stream()));
  for (auto &kv : a.free_blocks) {
    F2_CUDA_CHECK(cudaFree(kv.second));
    a.stats.reserved -= (int64_t)kv.first;
  }
  a.free_blocks.clear();
  return F2_OK;
}
}  // namespace

extern "C" int f2_cuda_alloc(void **ptr, size_t nbytes) {
  *ptr = nullptr;
  F2_TRY(f2_cuda_require("GPU memory"));
  Allocator &a = allocator();
  if (nbytes > ((size_t)1 << 62)) /* absurd (likely an overflowed size): rounding would wrap */
    return F2_FAIL(F2_ERR_MEM, "GPU allocation of %zu bytes is impossibly large", nbytes);
  size_t size = round_size(nbytes);
  /* Best fit, but never hand out a block more than twice the request (keeps waste bounded). */
  auto it = a.free_blocks.lower_bound(size);
  if (it != a.free_blocks.end() && it->first <= 2 * size) {
    size = it->first;
    *ptr = it->second;
    a.free_blocks.erase(it);
  } else {
    cudaError_t e = cudaMalloc(ptr, size);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      F2_TRY(release_cached(a));
      e = cudaMalloc(ptr, size);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      *ptr = nullptr;
      return F2_FAIL(e == cudaErrorMemoryAllocation ? F2_ERR_MEM : F2_ERR_CUDA,
                     "cudaMalloc of %zu bytes failed: %s (allocated %lld, reserved %lld)", size,
                     cudaGetErrorString(e), (long long)a.stats.allocated, (long long)a.stats.reserved);
    }
    a.stats.reserved += (int64_t)size;
    a.stats.num_cuda_mallocs++;
  }
  a.live[*ptr] = size;
  a.stats.allocated += (int64_t)size;
  a.stats.num_allocs++;
  update_peaks(a.stats);
  return F2_OK;
}

extern "C" void f2_cuda_free(void *ptr) {
  if (!ptr) return;
  Allocator &a = allocator();
  auto it = a.live.find(ptr);
  if (it == a.live.end()) return; /* not ours: ignore rather than corrupt the lists */
  a.stats.allocated -= (int64_t)it->second;
  a.free_blocks.emplace(it->second, ptr);
  a.live.erase(it);
}

extern "C" int f2_cuda_memory_stats(f2_memory_stats *out) {
  F2_TRY(f2_cuda_require("GPU memory statistics"));
  *out = allocator().stats;
  return F2_OK;
}

extern "C" int f2_cuda_reset_peak(void) {
  F2_TRY(f2_cuda_require("GPU memory statistics"));
  f2_memory_stats &s = allocator().stats;
  s.peak_allocated = s.allocated;
  s.peak_reserved = s.reserved;
  return F2_OK;
}

extern "C" int f2_cuda_empty_cache(void) {
  F2_TRY(f2_cuda_require("the GPU allocator"));
  return release_cached(allocator());
}
