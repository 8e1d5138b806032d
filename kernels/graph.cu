/* graph.cu — CUDA graphs of the fairy2 stream (f2.h): begin/end capture, replay, free. Each graph owns
 * a private pool of the caching allocator (alloc.cu) holding the memory its capture allocated, so a
 * replay only ever writes memory that nobody else has been handed.
 *
 * The capture is thread-local: a CUDA call on this thread that cannot be recorded, or that would run
 * at once instead of on each replay (a synchronous copy, a device-wide sync, ...), invalidates the
 * capture instead of quietly missing from the graph. The allocator's cudaMalloc is the one such call
 * that is safe and is let through (alloc.cu). Waiting for the stream (cudaStreamSynchronize, a copy
 * to the host) fails in any mode and invalidates the capture; f2_cuda_graph_end then reports it and
 * the runtime carries on as before the capture. */
#include "f2_cuda.cuh"

#include <new>
#include <stdio.h>
#include <string.h>

/* The allocator's pool hooks (alloc.cu): begin starts a pool that serves every allocation until end;
 * release gives a pool's blocks back to the global cache. */

struct f2_cuda_graph {
  cudaGraphExec_t exec;
  int pool;
};

namespace {
int capture_pool;   /* the pool of the capture in progress; 0 when none */
}  // namespace

extern "C" int f2_cuda_is_capturing(void) { return capture_pool != 0; }

extern "C" int f2_cuda_graph_begin(void) {
  F2_TRY(f2_cuda_require("a CUDA graph"));
  if (capture_pool)
    return F2_FAIL(F2_ERR_ARG, "f2_cuda_graph_begin: a capture is already in progress (end it with f2_cuda_graph_end)");
  cudaStream_t stream = f2_cuda_stream();
  if (!stream)
    return F2_FAIL(F2_ERR_CUDA, "f2_cuda_graph_begin: the fairy2 stream could not be created, and the default "
                                "stream cannot be captured");
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  F2_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  if (status != cudaStreamCaptureStatusNone)
    return F2_FAIL(F2_ERR_ARG, "f2_cuda_graph_begin: the fairy2 stream is already being captured by someone else");
  /* A stale error would otherwise be taken for the capture's own by the first launch check (or by
   * f2_cuda_graph_end's report). */
  cudaGetLastError();
  f2_clear_error();
  int pool = f2_cuda_pool_begin();
  cudaError_t e = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal);
  if (e != cudaSuccess) {
    cudaGetLastError();
    f2_cuda_pool_end();
    f2_cuda_pool_release(pool);
    return F2_FAIL(F2_ERR_CUDA, "f2_cuda_graph_begin: cudaStreamBeginCapture failed: %s", cudaGetErrorString(e));
  }
  capture_pool = pool;
  return F2_OK;
}

extern "C" f2_cuda_graph *f2_cuda_graph_end(void) {
  if (!capture_pool)
    return (f2_cuda_graph *)F2_FAIL_NULL(F2_ERR_ARG, "f2_cuda_graph_end: no capture in progress (f2_cuda_graph_begin "
                                                     "starts one)");
  int pool = capture_pool;
  capture_pool = 0;
  f2_cuda_pool_end();
  /* The last error raised during the capture (begin cleared older ones): usually the operation that
   * broke it, when the caller stopped there. */
  char cause[400] = "";
  if (strcmp(f2_last_error(), "no error") != 0) snprintf(cause, sizeof cause, "%s", f2_last_error());
  cudaStream_t stream = f2_cuda_stream();
  cudaGraph_t graph = nullptr;
  cudaError_t e = cudaStreamEndCapture(stream, &graph);
  if (e != cudaSuccess || !graph) {
    cudaGetLastError(); /* not sticky: clear it so the next launch check does not report it */
    if (graph) cudaGraphDestroy(graph);
    /* Nothing of the capture ran, so its memory can go back at once. */
    f2_cuda_pool_release(pool);
    return (f2_cuda_graph *)F2_FAIL_NULL(
        F2_ERR_CUDA,
        "CUDA graph capture failed: %s. Something during the capture waited for the GPU (a copy to the host, a "
        "synchronize) or could not be recorded%s%s",
        cudaGetErrorString(e != cudaSuccess ? e : cudaErrorStreamCaptureInvalidated), cause[0] ? "; the error during the capture: " : "",
        cause);
  }
  cudaGraphExec_t exec = nullptr;
  e = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  if (e == cudaSuccess) e = cudaGraphUpload(exec, stream); /* so the first launch is not slower than the rest */
  f2_cuda_graph *g = e == cudaSuccess ? new (std::nothrow) f2_cuda_graph{exec, pool} : nullptr;
  if (!g) {
    cudaGetLastError();
    if (exec) cudaGraphExecDestroy(exec);
    f2_cuda_pool_release(pool);
    if (e != cudaSuccess)
      return (f2_cuda_graph *)F2_FAIL_NULL(F2_ERR_CUDA, "f2_cuda_graph_end: instantiating the captured graph failed: %s",
                                           cudaGetErrorString(e));
    return (f2_cuda_graph *)F2_FAIL_NULL(F2_ERR_MEM, "f2_cuda_graph_end: out of host memory");
  }
  return g;
}

extern "C" int f2_cuda_graph_launch(const f2_cuda_graph *g) {
  if (!g) return F2_FAIL(F2_ERR_ARG, "f2_cuda_graph_launch: graph is NULL");
  if (capture_pool) return F2_FAIL(F2_ERR_ARG, "f2_cuda_graph_launch: not during a capture");
  F2_CUDA_CHECK(cudaGraphLaunch(g->exec, f2_cuda_stream()));
  return F2_OK;
}

/* A replay still queued keeps running: CUDA frees the executable graph when it completes, and the
 * pool's blocks are reused only by work queued after it. */
extern "C" void f2_cuda_graph_free(f2_cuda_graph *g) {
  if (!g) return;
  if (g->exec) cudaGraphExecDestroy(g->exec);
  f2_cuda_pool_release(g->pool);
  delete g;
}
