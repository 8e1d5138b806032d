/* attention_cudnn.cpp — the causal GQA attention through cuDNN's fused SDPA (forward, and the backward in
 * cuDNN's deterministic mode), used by attention.cu by default (F2_ATTN_CUDNN=0 turns it off) where it
 * applies: bf16 tensors, head dim 64 or 128, libcudnn.so.9 loadable at run time. On an H200 it runs
 * SmolLM2's 8x2048 attention in about 0.11 ms forward and 0.42 ms backward against 0.21 / 0.65 for
 * attention.cu's kernels (docs/performance.md), and two backward runs give the same bits.
 *
 * cuDNN is optional twice over. At build time the graph API comes from NVIDIA's header-only cuDNN
 * frontend (`pip install nvidia-cudnn-frontend`; CMake looks for it and for cudnn.h, and without them this
 * file only says "not available"). At run time the library is opened with dlopen (load() says where it
 * looks; `fairy2 --version` says what it found), so a fairy2 built with the frontend still runs where
 * cuDNN is absent: the first call notes why on stderr and attention.cu's kernels run. A graph is built once
 * per shape (in the first, eager step; never while a CUDA graph is being captured) and kept; a shape cuDNN
 * declines, or whose workspace is over workspace_cap() (F2_CUDNN_WORKSPACE_MB, else an eighth of the
 * card), keeps attention.cu's kernels. lse is cuDNN's softmax statistics, the natural log-sum-exp of the
 * scaled scores, the same quantity attention.cu writes, so either backward can follow either forward. */
#include "attention_host.h"

#include <stdio.h>
#include <stdlib.h>

#if F2_HAVE_CUDNN_FRONTEND
#define NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING
#include <dlfcn.h>

#include <cudnn_frontend.h>

#include <climits>
#include <cstring>
#include <memory>
#include <unordered_map>
#include <vector>

namespace cudnn_frontend {
void *cudnn_dlhandle = nullptr;   /* the frontend's calls into cuDNN go through this handle */
}
namespace fe = cudnn_frontend;
#endif

namespace f2attn {

#if F2_HAVE_CUDNN_FRONTEND
namespace {

struct Graph {
  int64_t key[8];   /* device, backward, B, T, H, Hkv, D, scale bits */
  std::shared_ptr<fe::graph::Graph> g;
  int64_t workspace;
  bool ok;   /* false: cuDNN declined this shape */
};

struct State {
  bool tried = false, ok = false;
  char why[512] = "";    /* why not, when !ok */
  char from[1024] = "";  /* the library opened */
  size_t version = 0;
  cudnnHandle_t handle[64] = {};
  std::vector<Graph> graphs;
};
State state;

enum : int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV };

bool enabled() {   /* on unless F2_ATTN_CUDNN=0 */
  const char *e = getenv("F2_ATTN_CUDNN");
  return !(e && e[0] == '0' && e[1] == 0);
}

/* The folder of the cuDNN that python3's nvidia-cudnn package holds (PyTorch's wheels bring one), or "". */
void python_cudnn_dir(char *out, size_t size) {
  out[0] = 0;
  FILE *p = popen("python3 -c \"import nvidia.cudnn as m; print(list(m.__path__)[0])\" 2>/dev/null", "r");
  if (!p) return;
  char line[900] = "";
  if (fgets(line, sizeof line, p)) {
    line[strcspn(line, "\n")] = 0;
    if (line[0] == '/') snprintf(out, size, "%s/lib/libcudnn.so.9", line);
  }
  pclose(p);
}

/* Opens libcudnn once per process: F2_CUDNN_LIB, else libcudnn.so.9 on the loader path, else the one in
 * python3's nvidia-cudnn package (its libraries find each other through their $ORIGIN run path). On
 * failure state.why says why; loud: also on stderr (once). */
bool load(bool loud) {
  if (!state.tried) {
    state.tried = true;
    const char *env = getenv("F2_CUDNN_LIB");
    void *h = nullptr;
    if (env && *env) {
      if ((h = dlopen(env, RTLD_NOW | RTLD_GLOBAL)))
        snprintf(state.from, sizeof state.from, "%s", env);
      else
        snprintf(state.why, sizeof state.why, "F2_CUDNN_LIB=%s: %s", env, dlerror());
    } else {
      for (const char *n : {"libcudnn.so.9", "libcudnn.so"})
        if ((h = dlopen(n, RTLD_NOW | RTLD_GLOBAL))) {
          snprintf(state.from, sizeof state.from, "%s on the loader path", n);
          break;
        }
      if (!h) {
        char path[1024];
        python_cudnn_dir(path, sizeof path);
        if (path[0] && (h = dlopen(path, RTLD_NOW | RTLD_GLOBAL))) snprintf(state.from, sizeof state.from, "%s", path);
      }
    }
    if (!h) {
      if (!state.why[0])
        snprintf(state.why, sizeof state.why, "libcudnn.so.9 not found (F2_CUDNN_LIB, the loader path, python3's "
                                              "nvidia-cudnn package)");
    } else {
      fe::cudnn_dlhandle = h;
      try {
        state.version = fe::detail::get_backend_version();
        if (state.version < 90000)
          snprintf(state.why, sizeof state.why, "cuDNN %zu is older than 9.0", state.version);
        else
          state.ok = true;
      } catch (const std::exception &e) {
        snprintf(state.why, sizeof state.why, "%s", e.what());
      }
    }
  }
  if (!state.ok && loud) {
    static bool said;
    if (!said) fprintf(stderr, "fairy2: cuDNN attention not used: %s\n", state.why);
    said = true;
  }
  return state.ok;
}

cudnnHandle_t handle_here() {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return nullptr;
  if (!state.handle[dev] && fe::detail::create_handle(&state.handle[dev]) != CUDNN_STATUS_SUCCESS) return nullptr;
  return state.handle[dev];
}

/* t as [B, heads, T, D] over [B, T, heads, D] memory (fairy2's layout), under uid. */
fe::graph::Tensor_attributes &heads_layout(fe::graph::Tensor_attributes &t, int64_t uid, dims d, int64_t heads) {
  return t.set_uid(uid).set_dim({d.B, heads, d.T, d.D}).set_stride({d.T * heads * d.D, d.D, heads * d.D, 1});
}
/* t as cuDNN's softmax statistics over lse [B, H, T] (f32). */
fe::graph::Tensor_attributes &stats_layout(fe::graph::Tensor_attributes &t, dims d) {
  return t.set_uid(kStats).set_data_type(fe::DataType_t::FLOAT).set_dim({d.B, d.H, d.T, 1})
      .set_stride({d.H * d.T, d.T, 1, 1});
}
std::shared_ptr<fe::graph::Tensor_attributes> heads(fe::graph::Graph &g, const char *name, int64_t uid, dims d,
                                                    int64_t heads) {
  return g.tensor(heads_layout(fe::graph::Tensor_attributes().set_name(name), uid, d, heads));
}
void as_output(std::shared_ptr<fe::graph::Tensor_attributes> t, int64_t uid, dims d, int64_t heads) {
  heads_layout(t->set_output(true), uid, d, heads);
}

/* The most workspace a graph may take (its deterministic backward's grows as B H T^2: 604 MB for SmolLM2 at
 * 8 x 2048), so that cuDNN never runs a card out of memory where attention.cu's kernels, which take none,
 * would not: F2_CUDNN_WORKSPACE_MB when set, else an eighth of the card's memory. */
int64_t workspace_cap(int dev) {
  const char *env = getenv("F2_CUDNN_WORKSPACE_MB");
  if (env && *env) {
    char *end;
    long long mb = strtoll(env, &end, 10);
    if (*end == 0 && mb >= 0) return mb > (INT64_MAX >> 20) ? INT64_MAX : (int64_t)mb << 20;
    static bool said;
    if (!said) fprintf(stderr, "fairy2: F2_CUDNN_WORKSPACE_MB=%s is not a whole number of MiB; ignored\n", env);
    said = true;
  }
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, dev) != cudaSuccess) return INT64_MAX;
  return (int64_t)(prop.totalGlobalMem / 8);
}

/* The cached graph of this shape, built on first use; nullptr when cuDNN declines it, when its workspace
 * is over the cap, or during a capture, where nothing new is built. */
Graph *graph_for(cudnnHandle_t handle, bool backward, dims d, float scale) {
  int dev = 0;
  cudaGetDevice(&dev);
  int32_t sbits;
  memcpy(&sbits, &scale, 4);
  const int64_t key[8] = {dev, backward, d.B, d.T, d.H, d.Hkv, d.D, sbits};
  for (auto &e : state.graphs)
    if (!memcmp(e.key, key, sizeof key)) return e.ok ? &e : nullptr;
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(f2_cuda_stream(), &cap) != cudaSuccess || cap != cudaStreamCaptureStatusNone)
    return nullptr;
  Graph e;
  memcpy(e.key, key, sizeof key);
  e.ok = false;
  e.workspace = 0;
  try {
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    auto q = heads(*g, "q", kQ, d, d.H), k = heads(*g, "k", kK, d, d.Hkv), v = heads(*g, "v", kV, d, d.Hkv);
    if (!backward) {
      auto opts = fe::graph::SDPA_attributes().set_name("sdpa").set_generate_stats(true).set_attn_scale(scale)
                      .set_causal_mask(true);
      auto [o, stats] = g->sdpa(q, k, v, opts);
      as_output(o, kO, d, d.H);
      stats_layout(stats->set_output(true), d);
    } else {
      auto o = heads(*g, "o", kO, d, d.H), dout = heads(*g, "dO", kDO, d, d.H);
      auto stats = g->tensor(stats_layout(fe::graph::Tensor_attributes().set_name("stats"), d));
      auto opts = fe::graph::SDPA_backward_attributes().set_name("sdpa_backward").set_attn_scale(scale)
                      .set_causal_mask(true).set_deterministic_algorithm(true);
      auto [dq, dk, dv] = g->sdpa_backward(q, k, v, o, dout, stats, opts);
      as_output(dq, kDQ, d, d.H);
      as_output(dk, kDK, d, d.Hkv);
      as_output(dv, kDV, d, d.Hkv);
    }
    bool good = g->validate().is_good() && g->build_operation_graph(handle).is_good() &&
                g->create_execution_plans({fe::HeurMode_t::A}).is_good() && g->check_support(handle).is_good() &&
                g->build_plans(handle).is_good() && g->get_workspace_size(e.workspace).is_good();
    const int64_t cap = workspace_cap(dev);
    if (good && e.workspace > cap) {
      fprintf(stderr, "fairy2: cuDNN attention (B=%lld T=%lld H=%lld/%lld D=%lld %s) wants a %.1f MiB workspace, "
                      "over its cap of %.1f MiB (F2_CUDNN_WORKSPACE_MB); attention.cu's kernels run for this shape\n",
              (long long)d.B, (long long)d.T, (long long)d.H, (long long)d.Hkv, (long long)d.D,
              backward ? "backward" : "forward", e.workspace / 1048576.0, cap / 1048576.0);
      good = false;
    }
    if (good) {
      e.g = g;
      e.ok = true;
    }
  } catch (const std::exception &ex) {
    fprintf(stderr, "fairy2: cuDNN attention (B=%lld T=%lld H=%lld/%lld D=%lld %s): %s; attention.cu's kernels run\n",
            (long long)d.B, (long long)d.T, (long long)d.H, (long long)d.Hkv, (long long)d.D,
            backward ? "backward" : "forward", ex.what());
  }
  state.graphs.push_back(e);
  return e.ok ? &state.graphs.back() : nullptr;
}

/* Runs graph e with the tensors by uid; workspace from the caching allocator (stream-ordered). */
int run(cudnnHandle_t handle, Graph *e, std::unordered_map<int64_t, void *> &pack, const char *op) {
  if (fe::detail::set_stream(handle, f2_cuda_stream()) != CUDNN_STATUS_SUCCESS)
    return F2_FAIL(F2_ERR_CUDA, "%s: cudnnSetStream failed", op);
  void *ws = nullptr;
  if (e->workspace > 0) F2_TRY(f2_cuda_alloc(&ws, (size_t)e->workspace));
  auto status = e->g->execute(handle, pack, ws);
  if (ws) f2_cuda_free(ws);
  if (!status.is_good()) return F2_FAIL(F2_ERR_CUDA, "%s: cuDNN SDPA failed: %s", op, status.get_message().c_str());
  return F2_OK;
}

/* The cases cuDNN takes: every tensor bf16 (and 16-byte aligned, as use_tc asks), head dim 64 or 128. */
bool applies(dims d, const f2_tensor *const *t, int n) {
  if (!enabled() || (d.D != 64 && d.D != 128) || d.T > INT32_MAX) return false;
  for (int i = 0; i < n; i++)
    if (!t[i] || t[i]->dtype != F2_BF16 || (uintptr_t)t[i]->data % 16) return false;
  return load(true);
}

}  // namespace

int cudnn_forward(f2_tensor *out, f2_tensor *lse, const f2_tensor *q, const f2_tensor *k, const f2_tensor *v,
                  dims d, float scale) {
  const f2_tensor *t[4] = {out, q, k, v};
  if ((lse && lse->dtype != F2_F32) || !applies(d, t, 4)) return 0;
  cudnnHandle_t h = handle_here();
  Graph *e = h ? graph_for(h, false, d, scale) : nullptr;
  if (!e) return 0;
  /* Without lse wanted the statistics go to a scratch buffer: the same graph, so out has the same bits
   * either way. */
  float *scratch = nullptr;
  if (!lse) F2_TRY(f2_cuda_alloc((void **)&scratch, (size_t)(d.B * d.H * d.T) * sizeof(float)));
  std::unordered_map<int64_t, void *> pack = {
      {kQ, q->data}, {kK, k->data}, {kV, v->data}, {kO, out->data}, {kStats, lse ? lse->data : scratch}};
  const int rc = run(h, e, pack, "f2_attention_forward");
  if (scratch) f2_cuda_free(scratch);   /* stream-ordered */
  return rc == F2_OK ? 1 : rc;
}

int cudnn_backward(const bwd_args &a, const f2_tensor *out) {
  const f2_tensor *t[8] = {a.dq, a.dk, a.dv, a.dout, a.q, a.k, a.v, out};
  if (!applies(a.d, t, 8)) return 0;
  cudnnHandle_t h = handle_here();
  Graph *e = h ? graph_for(h, true, a.d, a.scale) : nullptr;
  if (!e) return 0;
  std::unordered_map<int64_t, void *> pack = {
      {kQ, a.q->data},   {kK, a.k->data},   {kV, a.v->data},   {kO, out->data},  {kDO, a.dout->data},
      {kStats, (void *)a.lse}, {kDQ, a.dq->data}, {kDK, a.dk->data}, {kDV, a.dv->data}};
  F2_TRY(run(h, e, pack, "f2_attention_backward"));
  return 1;
}

int cudnn_describe(char *buf, size_t size) {
  if (!load(false)) return snprintf(buf, size, "cuDNN attention: off, %s\n", state.why);
  return snprintf(buf, size, "cuDNN attention: cuDNN %zu.%zu.%zu (%s)%s\n",
                  state.version / 10000, state.version / 100 % 100, state.version % 100, state.from,
                  enabled() ? "" : ", turned off by F2_ATTN_CUDNN=0");
}

#else   /* built without the cuDNN frontend */

int cudnn_forward(f2_tensor *, f2_tensor *, const f2_tensor *, const f2_tensor *, const f2_tensor *, dims, float) {
  return 0;
}
int cudnn_backward(const bwd_args &, const f2_tensor *) { return 0; }
int cudnn_describe(char *buf, size_t size) {
  return snprintf(buf, size, "cuDNN attention: not built (no cuDNN frontend headers at build time)\n");
}

#endif

}  // namespace f2attn
