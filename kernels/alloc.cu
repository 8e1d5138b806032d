/* alloc.cu — the GPU caching allocator: plain cudaMalloc underneath (never managed memory),
 * freed blocks kept in size-keyed free lists and reused, statistics for Lua.
 * Sizes round up to 512 B (small) or 2 MiB (large) so blocks are reusable across similar requests.
 * Not thread-safe: one host thread drives the GPU. Frees are stream-ordered on the fairy2 stream.
 *
 * CUDA graphs (graph.cu) get private pools: while a capture is in progress every allocation comes
 * from its pool (the pool's own free list first, else the global cache, else cudaMalloc) and the
 * block belongs to that pool from then on. A pool block that is freed, during the capture or after
 * it, goes back to its pool's free list, never to the global one, because each replay writes it
 * again: handing it to anyone else would let a replay clobber their data. A block allocated outside
 * any capture but freed during one joins the capturing pool for the same reason (the graph may use
 * it). Freeing the graph releases its pool: free blocks move to the global cache, live ones become
 * ordinary blocks that go there when freed. */
#include "f2_cuda.cuh"

#include <map>
#include <unordered_map>

/* The pool hooks graph.cu calls are declared in f2_internal.h. */

namespace {
typedef std::multimap<size_t, void *> FreeList;   /* size -> block */
struct Block {
  size_t size;
  int pool;   /* 0: the global cache; else the graph pool it belongs to */
};
struct Allocator {
  FreeList free_blocks;                         /* the global cache */
  std::map<int, FreeList> pools;                /* free blocks of each live graph pool */
  std::unordered_map<void *, Block> live;       /* block -> size, pool */
  int capturing = 0;                            /* pool of the capture in progress, 0 when none */
  int next_pool = 1;
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
/* Best fit, but never a block more than twice the request (keeps waste bounded). */
void *take(FreeList &list, size_t *size) {
  auto it = list.lower_bound(*size);
  if (it == list.end() || it->first > 2 * *size) return nullptr;
  void *p = it->second;
  *size = it->first;
  list.erase(it);
  return p;
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
/* cudaMalloc is not a stream operation, so a capture in the default and thread-local modes forbids
 * it (graph.cu captures thread-local to catch everything else that would silently escape the graph);
 * the allocation itself is safe: the graph refers to the block, which its pool keeps. */
cudaError_t device_malloc(void **ptr, size_t size, int capturing) {
  if (!capturing) return cudaMalloc(ptr, size);
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  cudaThreadExchangeStreamCaptureMode(&mode);
  cudaError_t e = cudaMalloc(ptr, size);
  cudaThreadExchangeStreamCaptureMode(&mode);
  return e;
}
}  // namespace

extern "C" int f2_cuda_alloc(void **ptr, size_t nbytes) {
  *ptr = nullptr;
  F2_TRY(f2_cuda_require("GPU memory"));
  Allocator &a = allocator();
  if (nbytes > ((size_t)1 << 62)) /* absurd (likely an overflowed size): rounding would wrap */
    return F2_FAIL(F2_ERR_MEM, "GPU allocation of %zu bytes is impossibly large", nbytes);
  size_t size = round_size(nbytes);
  if (a.capturing) *ptr = take(a.pools[a.capturing], &size);
  if (!*ptr) *ptr = take(a.free_blocks, &size);
  if (!*ptr) {
    cudaError_t e = device_malloc(ptr, size, a.capturing);
    if (e == cudaErrorMemoryAllocation && !a.capturing) { /* releasing the cache waits for the GPU: not in a capture */
      cudaGetLastError();
      F2_TRY(release_cached(a));
      e = cudaMalloc(ptr, size);
    }
    if (e != cudaSuccess) {
      cudaGetLastError();
      *ptr = nullptr;
      return F2_FAIL(e == cudaErrorMemoryAllocation ? F2_ERR_MEM : F2_ERR_CUDA,
                     "cudaMalloc of %zu bytes failed: %s (allocated %lld, reserved %lld%s)", size,
                     cudaGetErrorString(e), (long long)a.stats.allocated, (long long)a.stats.reserved,
                     a.capturing ? "; during a CUDA graph capture, so the cache was not released" : "");
    }
    a.stats.reserved += (int64_t)size;
    a.stats.num_cuda_mallocs++;
  }
  a.live[*ptr] = Block{size, a.capturing};
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
  Block b = it->second;
  a.live.erase(it);
  a.stats.allocated -= (int64_t)b.size;
  int pool = b.pool ? b.pool : a.capturing;
  (pool ? a.pools[pool] : a.free_blocks).emplace(b.size, ptr);
}

/* A new pool, which serves every allocation until f2_cuda_pool_end. */
extern "C" int f2_cuda_pool_begin(void) {
  Allocator &a = allocator();
  int pool = a.next_pool++;
  a.pools[pool];
  a.capturing = pool;
  return pool;
}

extern "C" void f2_cuda_pool_end(void) { allocator().capturing = 0; }

/* The graph of pool is gone (or its capture failed): its free blocks join the global cache, its live
 * blocks become ordinary ones. Work a replay queued may still be running: stream order keeps it ahead
 * of anything that reuses these blocks. */
extern "C" void f2_cuda_pool_release(int pool) {
  Allocator &a = allocator();
  auto it = a.pools.find(pool);
  if (it == a.pools.end()) return;
  for (auto &kv : it->second) a.free_blocks.emplace(kv.first, kv.second);
  a.pools.erase(it);
  for (auto &kv : a.live)
    if (kv.second.pool == pool) kv.second.pool = 0;
  if (a.capturing == pool) a.capturing = 0;
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

/* Only the global cache: a pool's free blocks are its graph's, for every replay. */
extern "C" int f2_cuda_empty_cache(void) {
  F2_TRY(f2_cuda_require("the GPU allocator"));
  if (allocator().capturing)
    return F2_FAIL(F2_ERR_ARG, "empty_cache during a CUDA graph capture: releasing memory waits for the GPU; "
                               "call it before f2_cuda_graph_begin or after f2_cuda_graph_end");
  return release_cached(allocator());
}
