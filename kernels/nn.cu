/* nn.cu — the row and elementwise model ops on CUDA: embedding (backward deterministic: ids radix-sorted,
 * each id's rows summed in token order), RMSNorm (+ residual add, + accumulating backward), RoPE, SwiGLU,
 * cross-entropy. CPU references in runtime/nn_cpu.c. Tensors f32 or bf16 each (contiguous; the dispatch
 * checked them); fp32 math. RMSNorm's row sums: fp32 over 8 elements in a fixed tree, fp64 beyond (its
 * fast path, rows in registers); its general path (odd or misaligned rows, long rows) keeps fp64 per
 * element as the reference. No float atomics: every sum has an order fixed by the shape. All work is
 * queued on f2_cuda_stream() without waiting for the GPU; scratch comes from f2_cuda_alloc. */
#include "f2_cuda.cuh"

#include <cub/device/device_radix_sort.cuh>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>

namespace {

/* ---------------------------------------------------------------- loads and stores of V elements
 * V = 4 moves 16 bytes (f32) or 8 bytes (bf16) per access; callers pick V = 4 only when every pointer
 * is aligned for it and the element index is a multiple of 4. bf16 says the tensor is bf16, else f32;
 * it is uniform over a launch, so the branch costs no divergence. */
template <int V>
__device__ __forceinline__ void load_v(const void *p, int bf16, int64_t i, float (&v)[V]) {
  if constexpr (V == 4) {
    if (bf16) {
      uint2 u = *(const uint2 *)((const uint16_t *)p + i);
      v[0] = f2_dev_bf16_to_f32((uint16_t)(u.x & 0xffffu));
      v[1] = f2_dev_bf16_to_f32((uint16_t)(u.x >> 16));
      v[2] = f2_dev_bf16_to_f32((uint16_t)(u.y & 0xffffu));
      v[3] = f2_dev_bf16_to_f32((uint16_t)(u.y >> 16));
    } else {
      float4 f = *(const float4 *)((const float *)p + i);
      v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
    }
  } else if constexpr (V == 8) {   /* 16 bytes (bf16) or two 16-byte accesses (f32) */
    if (bf16) {
      uint4 u = *(const uint4 *)((const uint16_t *)p + i);
      const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int k = 0; k < 4; k++) {
        v[2 * k] = f2_dev_bf16_to_f32((uint16_t)(w[k] & 0xffffu));
        v[2 * k + 1] = f2_dev_bf16_to_f32((uint16_t)(w[k] >> 16));
      }
    } else {
      float4 f = *(const float4 *)((const float *)p + i), g = *(const float4 *)((const float *)p + i + 4);
      v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w, v[4] = g.x, v[5] = g.y, v[6] = g.z, v[7] = g.w;
    }
  } else {
#pragma unroll
    for (int k = 0; k < V; k++)
      v[k] = bf16 ? f2_dev_bf16_to_f32(((const uint16_t *)p)[i + k]) : ((const float *)p)[i + k];
  }
}

template <int V>
__device__ __forceinline__ void store_v(void *p, int bf16, int64_t i, const float (&v)[V]) {
  if constexpr (V == 4) {
    if (bf16) {
      uint2 u;
      u.x = (uint32_t)f2_dev_f32_to_bf16(v[0]) | (uint32_t)f2_dev_f32_to_bf16(v[1]) << 16;
      u.y = (uint32_t)f2_dev_f32_to_bf16(v[2]) | (uint32_t)f2_dev_f32_to_bf16(v[3]) << 16;
      *(uint2 *)((uint16_t *)p + i) = u;
    } else {
      *(float4 *)((float *)p + i) = make_float4(v[0], v[1], v[2], v[3]);
    }
  } else if constexpr (V == 8) {
    if (bf16) {
      uint32_t w[4];
#pragma unroll
      for (int k = 0; k < 4; k++)
        w[k] = (uint32_t)f2_dev_f32_to_bf16(v[2 * k]) | (uint32_t)f2_dev_f32_to_bf16(v[2 * k + 1]) << 16;
      *(uint4 *)((uint16_t *)p + i) = make_uint4(w[0], w[1], w[2], w[3]);
    } else {
      *(float4 *)((float *)p + i) = make_float4(v[0], v[1], v[2], v[3]);
      *(float4 *)((float *)p + i + 4) = make_float4(v[4], v[5], v[6], v[7]);
    }
  } else {
#pragma unroll
    for (int k = 0; k < V; k++) {
      if (bf16) ((uint16_t *)p)[i + k] = f2_dev_f32_to_bf16(v[k]);
      else ((float *)p)[i + k] = v[k];
    }
  }
}

__device__ __forceinline__ float load1(const void *p, int bf16, int64_t i) {
  return bf16 ? f2_dev_bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

/* v rounded to the storage dtype and back (what a store then a load would give). */
__device__ __forceinline__ float round_to(int bf16, float v) {
  return bf16 ? f2_dev_bf16_to_f32(f2_dev_f32_to_bf16(v)) : v;
}

int is_bf16(const f2_tensor *t) { return t->dtype == F2_BF16; }

/* 4-wide access is safe for t when its data is aligned to 4 elements (views can start anywhere). */
bool aligned4(const f2_tensor *t) {
  return !t || ((uintptr_t)t->data % (4 * f2_dtype_size(t->dtype))) == 0;
}

/* 16-byte access (8 elements: 8-wide vectors) is safe for t when its data is 16-byte aligned and the
 * element index is a multiple of 8. */
bool aligned16(const f2_tensor *t) { return !t || ((uintptr_t)t->data % 16) == 0; }

/* Lanes per row for the row kernels: enough that each lane handles about 4 vectors, 4 to 32 (a warp). */
int lanes_per_row(int64_t vectors) {
  int g = 4;
  while (g < 32 && (int64_t)g * 4 < vectors) g *= 2;
  return g;
}

/* Sum over the G lanes of a row group (xor butterfly: every lane gets the sum; fixed order). */
template <int G, typename T>
__device__ __forceinline__ T group_sum(T v) {
#pragma unroll
  for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

unsigned grid_for(int64_t items, int per_block) {
  int64_t b = (items + per_block - 1) / per_block;
  return (unsigned)(b < 1 ? 1 : b > 65535 * 16 ? 65535 * 16 : b);
}

/* ---------------------------------------------------------------- embedding */

/* One warp per token row; an id outside [0, vocab) gives a zero row. */
template <int V>
__global__ void embedding_forward_kernel(void *out, int out_bf, const void *weight, int w_bf, const int32_t *ids,
                                         int64_t n, int64_t vocab, int64_t dim) {
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  for (int64_t r = (int64_t)blockIdx.x * warps + (threadIdx.x >> 5); r < n; r += (int64_t)gridDim.x * warps) {
    int64_t id = ids[r];
    bool valid = id >= 0 && id < vocab;
    for (int64_t c = (int64_t)lane * V; c < dim; c += 32 * V) {
      float v[V];
      if (valid) load_v<V>(weight, w_bf, id * dim + c, v);
      else
#pragma unroll
        for (int k = 0; k < V; k++) v[k] = 0.0f;
      store_v<V>(out, out_bf, r * dim + c, v);
    }
  }
}

/* Sort keys: the id, or vocab (sorted last, skipped) when outside [0, vocab); values: token index. */
__global__ void embedding_keys_kernel(int32_t *keys, int32_t *tokens, const int32_t *ids, int64_t n, int64_t vocab) {
  F2_GRID_STRIDE(i, n) {
    int32_t id = ids[i];
    keys[i] = id >= 0 && id < vocab ? id : (int32_t)vocab;
    tokens[i] = (int32_t)i;
  }
}

/* Warp (p, chunk): when sorted position p starts a run of one id, adds that id's dout rows, in token
 * order (the radix sort is stable), into dweight's columns [chunk * 32V, (chunk + 1) * 32V): the same
 * fp32 additions in the same order as the CPU reference, so the same bits. A run is serial: up to kAhead
 * rows are loaded before they are added, so an id repeated k times costs about k / kAhead memory round
 * trips (~50 us for 1000 repeats; padding a batch by half would cost ~0.4 ms). */
constexpr int kAhead = 16;
template <int V>
__global__ void embedding_backward_kernel(float *dweight, const void *dout, int dout_bf, const int32_t *keys,
                                          const int32_t *tokens, int64_t n, int64_t vocab, int64_t dim,
                                          int64_t chunks) {
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  int64_t item = (int64_t)blockIdx.x * warps + (threadIdx.x >> 5);
  if (item >= n * chunks) return;
  int64_t p = item / chunks, c = (item % chunks) * 32 * V + (int64_t)lane * V;
  int32_t id = keys[p];
  if (id >= vocab || (p > 0 && keys[p - 1] == id)) return;   /* whole warp: uniform */
  bool active = c < dim;
  float acc[V];
  float *row = dweight + (int64_t)id * dim + c;
  if (active)
#pragma unroll
    for (int k = 0; k < V; k++) acc[k] = row[k];
  /* The sorted entries 32 at a time; the run goes on for cnt of them. The next 32 are loaded while
   * these are added. */
  int32_t key = p + lane < n ? keys[p + lane] : -1, token = p + lane < n ? tokens[p + lane] : 0;
  for (int64_t q = p;; q += 32) {
    unsigned same = __ballot_sync(0xffffffffu, key == id);
    int cnt = ~same ? __ffs(~same) - 1 : 32;
    int32_t next_key = -1, next_token = 0;
    if (cnt == 32 && q + 32 + lane < n) next_key = keys[q + 32 + lane], next_token = tokens[q + 32 + lane];
    for (int j = 0; j < cnt; j += kAhead) {
      float v[kAhead][V];
#pragma unroll
      for (int u = 0; u < kAhead; u++) {
        int64_t t = __shfl_sync(0xffffffffu, token, (j + u) & 31);
        if (active && j + u < cnt) load_v<V>(dout, dout_bf, t * dim + c, v[u]);
      }
#pragma unroll
      for (int u = 0; u < kAhead; u++)
        if (active && j + u < cnt)
#pragma unroll
          for (int k = 0; k < V; k++) acc[k] += v[u][k];
    }
    if (cnt < 32) break;
    key = next_key, token = next_token;
  }
  if (active)
#pragma unroll
    for (int k = 0; k < V; k++) row[k] = acc[k];
}

/* ---------------------------------------------------------------- RMSNorm
 * G lanes per row (a warp holds 32 / G rows), V elements per access. Loops run over row bases that are
 * uniform across the block, so every lane reaches the shuffles. */

/* out = w * (x * rstd), rstd = (mean x^2 + eps)^-1/2; with b, x = sum = a + b rounded to sum's dtype
 * first (sum may be a or b: each lane reads an element before it writes it). */
template <int G, int V>
__global__ void rmsnorm_forward_kernel(void *out, int out_bf, float *rstd, void *sum, int sum_bf, const void *a,
                                       int a_bf, const void *b, int b_bf, const void *weight, int w_bf,
                                       int64_t rows, int64_t dim, float eps) {
  const int lane = threadIdx.x % G, per_block = blockDim.x / G;
  for (int64_t base = (int64_t)blockIdx.x * per_block; base < rows; base += (int64_t)gridDim.x * per_block) {
    int64_t r = base + threadIdx.x / G;
    bool valid = r < rows;
    double ss = 0;
    if (valid) {
      for (int64_t c = (int64_t)lane * V; c < dim; c += G * V) {
        float x[V];
        load_v<V>(a, a_bf, r * dim + c, x);
        if (b) {
          float y[V];
          load_v<V>(b, b_bf, r * dim + c, y);
#pragma unroll
          for (int k = 0; k < V; k++) x[k] = round_to(sum_bf, x[k] + y[k]);
          store_v<V>(sum, sum_bf, r * dim + c, x);
        }
#pragma unroll
        for (int k = 0; k < V; k++) ss += (double)x[k] * x[k];
      }
    }
    ss = group_sum<G>(ss);
    if (!valid) continue;
    float rs = (float)(1.0 / sqrt(ss / (double)dim + (double)eps));
    const void *x_src = b ? sum : a;
    int x_bf = b ? sum_bf : a_bf;
    for (int64_t c = (int64_t)lane * V; c < dim; c += G * V) {
      float x[V], w[V];
      load_v<V>(x_src, x_bf, r * dim + c, x);
      load_v<V>(weight, w_bf, c, w);
#pragma unroll
      for (int k = 0; k < V; k++) x[k] = w[k] * (x[k] * rs);
      store_v<V>(out, out_bf, r * dim + c, x);
    }
    if (rstd && lane == 0) rstd[r] = rs;
  }
}

/* dx = r (g - xhat mean(g xhat)), g = dy w, xhat = x r, in fp64 as the reference; accumulate: dx +=
 * (rounded in fp32 then to dx's dtype). dx may be dy when not accumulating (same lane, read first).
 * With partial (dweight wanted): each row group adds the reference's terms (float)(dy xhat) of its rows
 * into its own shared-memory row of dim floats (a lane owns its columns: no races), and the block
 * writes the sum of its groups, in group order, to partial[block, dim]. The grid is a function of the
 * shape only, so the sums have one order. */
template <int G, int V>
__global__ void rmsnorm_backward_kernel(void *dx, int dx_bf, float *partial, const void *dy, int dy_bf, const void *x,
                                        int x_bf, const void *weight, int w_bf, const float *rstd, int64_t rows,
                                        int64_t dim, int accumulate) {
  extern __shared__ float column_sums[];   /* [groups, dim] when partial */
  const int lane = threadIdx.x % G, per_block = blockDim.x / G;
  float *my_sums = column_sums + (threadIdx.x / G) * dim;
  if (partial) {
    for (int64_t i = threadIdx.x; i < per_block * dim; i += blockDim.x) column_sums[i] = 0.0f;
    __syncthreads();
  }
  for (int64_t base = (int64_t)blockIdx.x * per_block; base < rows; base += (int64_t)gridDim.x * per_block) {
    int64_t r = base + threadIdx.x / G;
    bool valid = r < rows;
    double rs = valid ? (double)rstd[r] : 0, dot = 0;
    if (valid) {
      for (int64_t c = (int64_t)lane * V; c < dim; c += G * V) {
        float g[V], xv[V], w[V];
        load_v<V>(dy, dy_bf, r * dim + c, g);
        load_v<V>(x, x_bf, r * dim + c, xv);
        load_v<V>(weight, w_bf, c, w);
#pragma unroll
        for (int k = 0; k < V; k++) dot += (double)g[k] * w[k] * xv[k] * rs;
      }
    }
    dot = group_sum<G>(dot);
    if (!valid) continue;
    double mean = dot / (double)dim;
    for (int64_t c = (int64_t)lane * V; c < dim; c += G * V) {
      float g[V], xv[V], w[V], out[V];
      load_v<V>(dy, dy_bf, r * dim + c, g);
      load_v<V>(x, x_bf, r * dim + c, xv);
      load_v<V>(weight, w_bf, c, w);
      if (accumulate) load_v<V>(dx, dx_bf, r * dim + c, out);
#pragma unroll
      for (int k = 0; k < V; k++) {
        double xhat = xv[k] * rs, gk = (double)g[k] * w[k];
        float v = (float)(rs * (gk - xhat * mean));
        out[k] = accumulate ? out[k] + v : v;
        if (partial) my_sums[c + k] += (float)(g[k] * xhat);
      }
      store_v<V>(dx, dx_bf, r * dim + c, out);
    }
  }
  if (partial) {
    __syncthreads();
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
      float total = 0.0f;
      for (int grp = 0; grp < per_block; grp++) total += column_sums[grp * dim + d];
      partial[blockIdx.x * dim + d] = total;
    }
  }
}

/* dweight[d] += the sum over blocks of partial[block, d]: a block of 32 columns x 32 strides of blocks
 * (coalesced reads), then the 32 strides added in order (fp64). */
__global__ void rmsnorm_dweight_kernel(float *dweight, const float *partial, int64_t blocks, int64_t dim) {
  __shared__ double sums[32][33];
  int64_t d = (int64_t)blockIdx.x * 32 + threadIdx.x;
  double acc = 0;
  if (d < dim)
#pragma unroll 8
    for (int64_t b = threadIdx.y; b < blocks; b += 32) acc += partial[b * dim + d];
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && d < dim) {
    double total = 0;
    for (int k = 0; k < 32; k++) total += sums[k][threadIdx.x];
    dweight[d] = (float)(dweight[d] + total);
  }
}

/* ---------------------------------------------------------------- RMSNorm, row in registers
 * The fast path when dim is a multiple of 8 and every tensor is 16-byte aligned: G lanes per row, lane l
 * owns the 8-element vectors l, l + G, ... (at most N of them), so a row is loaded once, with all its
 * loads in flight, and kept in registers for the second half. Sums: the 8 terms of a vector in a fixed
 * fp32 tree, added to a per-lane fp64 sum (one fp64 conversion per 8 elements: fp64 per element cost
 * the old kernels more than their memory traffic), then the fp64 butterfly over the G lanes. */

/* Sum of the 8 terms in a fixed order (pairs, then pairs of pairs). */
__device__ __forceinline__ float tree8(const float (&t)[8]) {
  return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
}

/* Loops that load come before loops that store: a load after a store to a pointer that may alias it
 * (out may be x, sum may be a or b) would wait for the data the store needs, one round trip per vector. */
template <int G, int N>
__global__ void __launch_bounds__(F2_THREADS) rmsnorm_forward_fast_kernel(
    void *out, int out_bf, float *rstd, void *sum, int sum_bf, const void *a, int a_bf, const void *b, int b_bf,
    const void *weight, int w_bf, int64_t rows, int64_t dim, float eps) {
  const int lane = threadIdx.x % G, per_block = blockDim.x / G;
  const int64_t vectors = dim / 8;
  for (int64_t base = (int64_t)blockIdx.x * per_block; base < rows; base += (int64_t)gridDim.x * per_block) {
    int64_t r = base + threadIdx.x / G;
    bool valid = r < rows;
    float x[N][8];
    double ss = 0;
    if (valid) {
#pragma unroll
      for (int i = 0; i < N; i++) {
        int64_t j = lane + (int64_t)i * G;
        if (j < vectors) {
          load_v<8>(a, a_bf, r * dim + j * 8, x[i]);
          if (b) {
            float y[8];
            load_v<8>(b, b_bf, r * dim + j * 8, y);
#pragma unroll
            for (int k = 0; k < 8; k++) x[i][k] = round_to(sum_bf, x[i][k] + y[k]);
          }
        }
      }
#pragma unroll
      for (int i = 0; i < N; i++) {
        int64_t j = lane + (int64_t)i * G;
        if (j < vectors) {
          if (b) store_v<8>(sum, sum_bf, r * dim + j * 8, x[i]);
          float t[8];
#pragma unroll
          for (int k = 0; k < 8; k++) t[k] = x[i][k] * x[i][k];
          ss += (double)tree8(t);
        }
      }
    }
    ss = group_sum<G>(ss);
    if (!valid) continue;
    float rs = (float)(1.0 / sqrt(ss / (double)dim + (double)eps));
#pragma unroll
    for (int i = 0; i < N; i++) {
      int64_t j = lane + (int64_t)i * G;
      if (j < vectors) {
        float w[8];
        load_v<8>(weight, w_bf, j * 8, w);
#pragma unroll
        for (int k = 0; k < 8; k++) x[i][k] = w[k] * (x[i][k] * rs);
      }
    }
#pragma unroll
    for (int i = 0; i < N; i++) {
      int64_t j = lane + (int64_t)i * G;
      if (j < vectors) store_v<8>(out, out_bf, r * dim + j * 8, x[i]);
    }
    if (rstd && lane == 0) rstd[r] = rs;
  }
}

/* The backward's fast path: dy, x (and dx when accumulating) of a row in registers, all loaded before
 * anything is stored (dx may be dy). With partial, a row group adds the dweight terms (float)(dy xhat)
 * of its rows, in row order, into its own shared-memory row [dim] (a lane owns its columns: no races;
 * shared rather than registers, which would cost a block per SM), then the block adds its groups in
 * group order and writes partial[block, dim]. The grid depends on the shape only, so every sum has
 * one order. */
template <int G, int N>
__global__ void __launch_bounds__(F2_THREADS) rmsnorm_backward_fast_kernel(
    void *dx, int dx_bf, float *partial, const void *dy, int dy_bf, const void *x, int x_bf, const void *weight,
    int w_bf, const float *rstd, int64_t rows, int64_t dim, int accumulate) {
  extern __shared__ float group_sums[];   /* [groups, dim] when partial */
  const int lane = threadIdx.x % G, per_block = blockDim.x / G;
  const int64_t vectors = dim / 8;
  float *mine = group_sums + (threadIdx.x / G) * dim;
  if (partial) {
    for (int64_t i = threadIdx.x; i < per_block * dim; i += blockDim.x) group_sums[i] = 0.0f;
    __syncthreads();
  }
  for (int64_t base = (int64_t)blockIdx.x * per_block; base < rows; base += (int64_t)gridDim.x * per_block) {
    int64_t r = base + threadIdx.x / G;
    bool valid = r < rows;
    float g[N][8], xv[N][8], o[N][8];
    float rs = valid ? rstd[r] : 0.0f;
    double dot = 0;
    if (valid) {
#pragma unroll
      for (int i = 0; i < N; i++) {
        int64_t j = lane + (int64_t)i * G;
        if (j < vectors) {
          load_v<8>(dy, dy_bf, r * dim + j * 8, g[i]);
          load_v<8>(x, x_bf, r * dim + j * 8, xv[i]);
          if (accumulate) load_v<8>(dx, dx_bf, r * dim + j * 8, o[i]);
        }
      }
#pragma unroll
      for (int i = 0; i < N; i++) {
        int64_t j = lane + (int64_t)i * G;
        if (j < vectors) {
          float w[8], t[8];
          load_v<8>(weight, w_bf, j * 8, w);
#pragma unroll
          for (int k = 0; k < 8; k++) {
            xv[i][k] *= rs;   /* xhat from here on */
            if (partial) mine[j * 8 + k] += g[i][k] * xv[i][k];
            g[i][k] *= w[k];  /* dy w from here on */
            t[k] = g[i][k] * xv[i][k];
          }
          dot += (double)tree8(t);
        }
      }
    }
    dot = group_sum<G>(dot);
    if (!valid) continue;
    float mean = (float)(dot / (double)dim);
#pragma unroll
    for (int i = 0; i < N; i++) {
      int64_t j = lane + (int64_t)i * G;
      if (j < vectors) {
#pragma unroll
        for (int k = 0; k < 8; k++) {
          float v = rs * (g[i][k] - xv[i][k] * mean);
          o[i][k] = accumulate ? o[i][k] + v : v;
        }
        store_v<8>(dx, dx_bf, r * dim + j * 8, o[i]);
      }
    }
  }
  if (partial) {
    __syncthreads();
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
      float total = 0.0f;
      for (int grp = 0; grp < per_block; grp++) total += group_sums[grp * dim + d];
      partial[blockIdx.x * dim + d] = total;
    }
  }
}

/* ---------------------------------------------------------------- RMSNorm, persistent variants
 * The default where they apply (variant 1 of F2_NORM_VARIANT, see read_norm_variant; 0 runs the kernels
 * above).
 * Why the ones above miss bandwidth: a row group loads its row, then computes (butterfly, fp64 divide)
 * and stores with nothing in flight, and the backward adds every dweight term into shared memory (a
 * read-modify-write per element, lanes 8 words apart: 8-way bank conflicts). These keep a fixed grid
 * resident (blocks per SM from the occupancy API: fixed per kernel, shape and device, so every sum
 * still has one order), every row group walks rows r, r + groups, ...; the forward issues the next
 * row's loads before the current row is computed (a different row: no alias with its stores), the
 * backward adds its dweight terms into conflict-free shared planes. Rows are held as loaded (bf16: 8
 * elements in 4 words) to halve the registers. They take the fast path's shapes up to 1024 elements
 * with the activations all of one dtype (BF). */

/* 8 elements of the activation dtype as loaded: 4 words of bf16 pairs, or 8 f32 words. */
template <int BF>
__device__ __forceinline__ void load_raw(const void *p, int64_t i, uint32_t (&v)[BF ? 4 : 8]) {
  if constexpr (BF) {
    uint4 u = *(const uint4 *)((const uint16_t *)p + i);
    v[0] = u.x, v[1] = u.y, v[2] = u.z, v[3] = u.w;
  } else {
    uint4 u = *(const uint4 *)((const float *)p + i), w = *(const uint4 *)((const float *)p + i + 4);
    v[0] = u.x, v[1] = u.y, v[2] = u.z, v[3] = u.w, v[4] = w.x, v[5] = w.y, v[6] = w.z, v[7] = w.w;
  }
}
template <int BF>
__device__ __forceinline__ float raw_at(const uint32_t (&v)[BF ? 4 : 8], int k) {
  if constexpr (BF) return __uint_as_float(k & 1 ? v[k >> 1] & 0xffff0000u : v[k >> 1] << 16);
  else return __uint_as_float(v[k]);
}
template <int BF>
__device__ __forceinline__ void store_raw(void *p, int64_t i, const uint32_t (&v)[BF ? 4 : 8]) {
  if constexpr (BF) {
    *(uint4 *)((uint16_t *)p + i) = make_uint4(v[0], v[1], v[2], v[3]);
  } else {
    *(uint4 *)((float *)p + i) = make_uint4(v[0], v[1], v[2], v[3]);
    *(uint4 *)((float *)p + i + 4) = make_uint4(v[4], v[5], v[6], v[7]);
  }
}

/* The forward (with b: sum = a + b first, all of dtype BF): the same arithmetic as
 * rmsnorm_forward_fast_kernel, so the same bits. The row x (a, or the sum rounded to BF) is held as
 * stored: exact, and half the registers for bf16. */
template <int G, int N, int BF>
__global__ void __launch_bounds__(F2_THREADS) rmsnorm_forward_pipe_kernel(
    void *out, float *rstd, void *sum, const void *a, const void *b, const void *weight, int w_bf, int64_t rows,
    int64_t dim, float eps) {
  constexpr int W = BF ? 4 : 8;
  const int lane = threadIdx.x % G, group = threadIdx.x / G, per_block = F2_THREADS / G;
  const int64_t vectors = dim / 8, groups = (int64_t)gridDim.x * per_block, first = (int64_t)blockIdx.x * per_block;
  uint32_t ra[N][W], rb[N][W];
  auto load_row = [&](int64_t r) {
    if (r >= rows) return;
#pragma unroll
    for (int i = 0; i < N; i++) {
      int64_t j = lane + (int64_t)i * G;
      if (j < vectors) {
        load_raw<BF>(a, r * dim + j * 8, ra[i]);
        if (b) load_raw<BF>(b, r * dim + j * 8, rb[i]);
      }
    }
  };
  load_row(first + group);
  for (int64_t base = first; base < rows; base += groups) {   /* uniform over the block: shuffles */
    int64_t r = base + group;
    bool valid = r < rows;
    uint32_t xr[N][W];
#pragma unroll
    for (int i = 0; i < N; i++) {
      if (!b)
#pragma unroll
        for (int m = 0; m < W; m++) xr[i][m] = ra[i][m];
      else if constexpr (BF)
#pragma unroll
        for (int m = 0; m < W; m++)
          xr[i][m] = (uint32_t)f2_dev_f32_to_bf16(raw_at<BF>(ra[i], 2 * m) + raw_at<BF>(rb[i], 2 * m)) |
                     (uint32_t)f2_dev_f32_to_bf16(raw_at<BF>(ra[i], 2 * m + 1) + raw_at<BF>(rb[i], 2 * m + 1)) << 16;
      else
#pragma unroll
        for (int m = 0; m < W; m++) xr[i][m] = __float_as_uint(raw_at<BF>(ra[i], m) + raw_at<BF>(rb[i], m));
    }
    load_row(r + groups);   /* the next row's loads in flight while this one is computed */
    double ss = 0;
    if (valid) {
#pragma unroll
      for (int i = 0; i < N; i++) {
        int64_t j = lane + (int64_t)i * G;
        if (j < vectors) {
          if (b) store_raw<BF>(sum, r * dim + j * 8, xr[i]);
          float t[8];
#pragma unroll
          for (int k = 0; k < 8; k++) t[k] = raw_at<BF>(xr[i], k) * raw_at<BF>(xr[i], k);
          ss += (double)tree8(t);
        }
      }
    }
    ss = group_sum<G>(ss);
    if (!valid) continue;
    float rs = (float)(1.0 / sqrt(ss / (double)dim + (double)eps));
#pragma unroll
    for (int i = 0; i < N; i++) {
      int64_t j = lane + (int64_t)i * G;
      if (j < vectors) {
        float w[8], o[8];
        load_v<8>(weight, w_bf, j * 8, w);
#pragma unroll
        for (int k = 0; k < 8; k++) o[k] = w[k] * (raw_at<BF>(xr[i], k) * rs);
        store_v<8>(out, BF, r * dim + j * 8, o);
      }
    }
    if (rstd && lane == 0) rstd[r] = rs;
  }
}

/* The backward (dy, x, dx of dtype BF): the row's dot as the fast kernel computes it (fp32 trees of 8,
 * then fp64: the same dx bits). With partial, each lane adds its columns' dweight terms of its group's
 * rows, in row order, into the group's shared row as they come, split in two planes of 4-element halves
 * (a lane's 16-byte accesses are then 16 bytes from its neighbours': no bank conflicts); at the end the
 * block adds its groups in group order into partial[block, dim]. That keeps the registers low enough
 * for three blocks per SM (bf16). */
template <int G, int N, int BF>
__global__ void __launch_bounds__(F2_THREADS, BF ? 3 : 1) rmsnorm_backward_pipe_kernel(
    void *dx, float *partial, const void *dy, const void *x, const void *weight, int w_bf, const float *rstd,
    int64_t rows, int64_t dim, int accumulate) {
  constexpr int W = BF ? 4 : 8;
  extern __shared__ __align__(16) float norm_dw_sums[];   /* [groups, dim] when partial */
  const int lane = threadIdx.x % G, group = threadIdx.x / G, per_block = F2_THREADS / G;
  const int64_t vectors = dim / 8, groups = (int64_t)gridDim.x * per_block, first = (int64_t)blockIdx.x * per_block;
  float *planes = norm_dw_sums + group * dim;   /* [2][dim / 2], elements 0-3 then 4-7 of each vector */
  if (partial)
#pragma unroll
    for (int i = 0; i < N; i++) {
      int64_t j = lane + (int64_t)i * G;
      if (j < vectors) {   /* a lane's own entries: no barrier until the end */
        *(float4 *)(planes + j * 4) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        *(float4 *)(planes + dim / 2 + j * 4) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
    }
  for (int64_t base = first; base < rows; base += groups) {   /* uniform over the block: shuffles */
    int64_t r = base + group;
    bool valid = r < rows;
    uint32_t cy[N][W], cx[N][W], co[N][W];
    float rs = 0.0f;
    double dot = 0;
    if (valid) {
      rs = rstd[r];
#pragma unroll
      for (int i = 0; i < N; i++) {
        int64_t j = lane + (int64_t)i * G;
        if (j < vectors) {
          load_raw<BF>(dy, r * dim + j * 8, cy[i]);
          load_raw<BF>(x, r * dim + j * 8, cx[i]);
          if (accumulate) load_raw<BF>(dx, r * dim + j * 8, co[i]);
        }
      }
#pragma unroll
      for (int i = 0; i < N; i++) {
        int64_t j = lane + (int64_t)i * G;
        if (j < vectors) {
          float w[8], t[8], terms[8];
          load_v<8>(weight, w_bf, j * 8, w);
#pragma unroll
          for (int k = 0; k < 8; k++) {
            float xhat = raw_at<BF>(cx[i], k) * rs, g = raw_at<BF>(cy[i], k);
            terms[k] = g * xhat;
            t[k] = (g * w[k]) * xhat;
          }
          if (partial) {
            float4 *lo = (float4 *)(planes + j * 4), *hi = (float4 *)(planes + dim / 2 + j * 4);
            float4 l = *lo, h = *hi;
            l.x += terms[0], l.y += terms[1], l.z += terms[2], l.w += terms[3];
            h.x += terms[4], h.y += terms[5], h.z += terms[6], h.w += terms[7];
            *lo = l, *hi = h;
          }
          dot += (double)tree8(t);
        }
      }
    }
    dot = group_sum<G>(dot);
    if (!valid) continue;
    float mean = (float)(dot / (double)dim);
#pragma unroll
    for (int i = 0; i < N; i++) {
      int64_t j = lane + (int64_t)i * G;
      if (j < vectors) {
        float w[8], o[8];
        load_v<8>(weight, w_bf, j * 8, w);
#pragma unroll
        for (int k = 0; k < 8; k++) {
          float xhat = raw_at<BF>(cx[i], k) * rs, v = rs * (raw_at<BF>(cy[i], k) * w[k] - xhat * mean);
          o[k] = accumulate ? raw_at<BF>(co[i], k) + v : v;
        }
        store_v<8>(dx, BF, r * dim + j * 8, o);
      }
    }
  }
  if (partial) {
    __syncthreads();
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
      int64_t at = (d & 4 ? dim / 2 : 0) + (d >> 3) * 4 + (d & 3);   /* element d%8 of vector d/8, in its plane */
      float total = 0.0f;
      for (int grp = 0; grp < per_block; grp++) total += norm_dw_sums[grp * dim + at];
      partial[blockIdx.x * dim + d] = total;
    }
  }
}

/* ---------------------------------------------------------------- RoPE */

/* cos/sin[t, i] of the fp32 angle t * inv_freq[i], evaluated in fp64 as the reference. */
__global__ void rope_tables_kernel(float *cos_table, float *sin_table, const float *inv_freq, int64_t positions,
                                   int64_t half) {
  F2_GRID_STRIDE(i, positions * half) {
    float angle = (float)(i / half) * inv_freq[i % half];
    cos_table[i] = (float)cos((double)angle);
    sin_table[i] = (float)sin((double)angle);
  }
}

/* Item i of n = rows * per_row, rows of `heads` heads after each other and per_row items a head row:
 * its (b, t) row bt, position t = bt % seq, head h and first element j (items take V pairs). 32-bit
 * division when it fits (64-bit is emulated, several times slower). */
template <int V>
__device__ __forceinline__ void head_item(int64_t i, int64_t n, int64_t per_row, int64_t heads, int64_t seq,
                                          int64_t &bt, int64_t &t, int64_t &h, int64_t &j) {
  if (n <= 0xffffffffll) {
    uint32_t r = (uint32_t)i / (uint32_t)per_row, b = r / (uint32_t)heads;
    bt = b, t = b % (uint32_t)seq, h = r - b * (uint32_t)heads, j = ((uint32_t)i - r * (uint32_t)per_row) * V;
  } else {
    int64_t row = i / per_row;
    bt = row / heads, t = bt % seq, h = row % heads, j = (i % per_row) * V;
  }
}

/* V pairs (x1, x2) rotated by the angles of position t, pairs j.. of the tables (sign -1: back). */
template <int V>
__device__ __forceinline__ void rotate(float (&o1)[V], float (&o2)[V], const float (&x1)[V], const float (&x2)[V],
                                       const float *cos_table, const float *sin_table, int64_t at, float sign) {
  float c[V], s[V];
  load_v<V>(cos_table, 0, at, c);
  load_v<V>(sin_table, 0, at, s);
#pragma unroll
  for (int k = 0; k < V; k++) {
    float sk = sign * s[k];
    o1[k] = x1[k] * c[k] - x2[k] * sk;
    o2[k] = x2[k] * c[k] + x1[k] * sk;
  }
}

/* A thread per V pairs (i, i + half) of one head row: both halves read before either is written (out may
 * be x). Rows are (b, t, h); position t = row / heads % seq. The (b, t) rows of H heads sit ldx (x) and
 * ldo (out) elements apart: contiguous, or heads inside a fused q/k/v projection's rows. */
template <int V>
__global__ void rope_kernel(void *out, int out_bf, const void *x, int x_bf, const float *cos_table,
                            const float *sin_table, int64_t rows, int64_t seq, int64_t heads, int64_t half,
                            int64_t ldx, int64_t ldo, float sign) {
  const int64_t per_row = half / V, n = rows * per_row;
  F2_GRID_STRIDE(i, n) {
    int64_t bt, t, h, j;
    head_item<V>(i, n, per_row, heads, seq, bt, t, h, j);
    const int64_t xb = bt * ldx + h * 2 * half + j, ob = bt * ldo + h * 2 * half + j;
    float x1[V], x2[V], o1[V], o2[V];
    load_v<V>(x, x_bf, xb, x1);
    load_v<V>(x, x_bf, xb + half, x2);
    rotate<V>(o1, o2, x1, x2, cos_table, sin_table, t * half + j, sign);
    store_v<V>(out, out_bf, ob, o1);
    store_v<V>(out, out_bf, ob + half, o2);
  }
}

/* f2_qkv_rope_*: the fused q/k/v rows y (row stride ldy; q's H heads, then k's Hkv, then v's Hkv) and the
 * contiguous q, k, v. merge 0 reads y and writes q and k rotated (as rope_kernel, sign +1) and v copied;
 * merge 1 reads q, k, v and writes y, rotating back (sign -1). A thread per V pairs (i, i + half) of one
 * head of one (b, t) row (a thread per V pairs of 4 heads, the table read once, measured 1.7x slower). */
template <int V>
__global__ void qkv_rope_kernel(void *y, void *q, void *k, void *v, int bf, const float *cos_table,
                                const float *sin_table, int64_t rows, int64_t seq, int64_t H, int64_t Hkv,
                                int64_t half, int64_t ldy, int merge) {
  const int64_t heads = H + 2 * Hkv, per_row = half / V, n = rows * heads * per_row, hd = 2 * half;
  F2_GRID_STRIDE(i, n) {
    int64_t bt, t, h, j;
    head_item<V>(i, n, per_row, heads, seq, bt, t, h, j);
    void *part = h < H ? q : h < H + Hkv ? k : v;
    const int64_t ph = h < H ? h : h < H + Hkv ? h - H : h - H - Hkv, pheads = h < H ? H : Hkv;
    const int64_t pb = (bt * pheads + ph) * hd + j, yb = bt * ldy + h * hd + j;
    const void *src = merge ? part : y;
    void *dst = merge ? y : part;
    const int64_t sb = merge ? pb : yb, db = merge ? yb : pb;
    float x1[V], x2[V];
    load_v<V>(src, bf, sb, x1);
    load_v<V>(src, bf, sb + half, x2);
    if (h < H + Hkv) {
      float o1[V], o2[V];
      rotate<V>(o1, o2, x1, x2, cos_table, sin_table, t * half + j, merge ? -1.0f : 1.0f);
      store_v<V>(dst, bf, db, o1);
      store_v<V>(dst, bf, db + half, o2);
    } else {
      store_v<V>(dst, bf, db, x1);
      store_v<V>(dst, bf, db + half, x2);
    }
  }
}

/* ---------------------------------------------------------------- SwiGLU: out = silu(gate) * up */

/* Operands are [rows, cols] with their own row strides (lg, lu, lo, ...: contiguous, or the gate/up
 * halves of a fused projection's rows); a thread per V elements of one row. */
__device__ __forceinline__ void swiglu_index(int64_t i, int64_t n, int64_t per_row, int64_t &r, int64_t &c) {
  if (n <= 0xffffffffll) {   /* 32-bit division when it fits */
    uint32_t q = (uint32_t)i / (uint32_t)per_row;
    r = q, c = (uint32_t)i - q * (uint32_t)per_row;
  } else {
    r = i / per_row, c = i % per_row;
  }
}

template <int V>
__global__ void swiglu_forward_kernel(void *out, int out_bf, const void *gate, int g_bf, const void *up, int u_bf,
                                      int64_t rows, int64_t cols, int64_t lo, int64_t lg, int64_t lu) {
  const int64_t per_row = cols / V, n = rows * per_row;
  F2_GRID_STRIDE(i, n) {
    int64_t r, c;
    swiglu_index(i, n, per_row, r, c);
    c *= V;
    float g[V], u[V], o[V];
    load_v<V>(gate, g_bf, r * lg + c, g);
    load_v<V>(up, u_bf, r * lu + c, u);
#pragma unroll
    for (int k = 0; k < V; k++) o[k] = g[k] / (1.0f + expf(-g[k])) * u[k];
    store_v<V>(out, out_bf, r * lo + c, o);
  }
}

/* dgate and dup may be gate and up: a thread reads its elements before it writes them. */
template <int V>
__global__ void swiglu_backward_kernel(void *dgate, int dg_bf, void *dup, int du_bf, const void *dout, int dy_bf,
                                       const void *gate, int g_bf, const void *up, int u_bf, int64_t rows,
                                       int64_t cols, int64_t ldg, int64_t ldu, int64_t ldy, int64_t lg, int64_t lu) {
  const int64_t per_row = cols / V, n = rows * per_row;
  F2_GRID_STRIDE(i, n) {
    int64_t r, c;
    swiglu_index(i, n, per_row, r, c);
    c *= V;
    float g[V], u[V], dy[V], dg[V], du[V];
    load_v<V>(gate, g_bf, r * lg + c, g);
    load_v<V>(up, u_bf, r * lu + c, u);
    load_v<V>(dout, dy_bf, r * ldy + c, dy);
#pragma unroll
    for (int k = 0; k < V; k++) {
      float s = 1.0f / (1.0f + expf(-g[k]));
      dg[k] = dy[k] * u[k] * s * (1.0f + g[k] * (1.0f - s));
      du[k] = dy[k] * g[k] * s;
    }
    store_v<V>(dgate, dg_bf, r * ldg + c, dg);
    store_v<V>(dup, du_bf, r * ldu + c, du);
  }
}

/* ---------------------------------------------------------------- cross-entropy
 * A block per row. One pass keeps an online (max, sum of exp(x - max)) per thread; the block merges them
 * in a fixed tree. NaN logits make the row's loss NaN (as the reference); -inf logits add 0. */
constexpr int kCeThreads = 512, kReduceThreads = 256;

struct MaxSum {
  float m, s;
};
__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return {m, a.s + b.s};
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}
/* Adds V logits: one rescale when their max exceeds the running max. */
template <int V>
__device__ __forceinline__ void add_logits(MaxSum &acc, const float (&x)[V]) {
  float m = acc.m;
#pragma unroll
  for (int k = 0; k < V; k++) m = fmaxf(m, x[k]);
  if (m > acc.m) {
    acc.s = acc.m == -INFINITY ? 0.0f : acc.s * expf(acc.m - m);
    acc.m = m;
  }
  float shift = m == -INFINITY ? 0.0f : m;
#pragma unroll
  for (int k = 0; k < V; k++) acc.s += expf(x[k] - shift);
}

/* The row's (max, sum) in every thread of the block. */
template <int V>
__device__ MaxSum row_max_sum(const void *logits, int bf, int64_t base, int64_t vocab) {
  __shared__ MaxSum warp_part[kCeThreads / 32];
  MaxSum acc = {-INFINITY, 0.0f};
  for (int64_t c = (int64_t)threadIdx.x * V; c < vocab; c += kCeThreads * V) {
    float x[V];
    load_v<V>(logits, bf, base + c, x);
    add_logits<V>(acc, x);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum other = {__shfl_xor_sync(0xffffffffu, acc.m, o), __shfl_xor_sync(0xffffffffu, acc.s, o)};
    acc = merge(acc, other);
  }
  if ((threadIdx.x & 31) == 0) warp_part[threadIdx.x >> 5] = acc;
  __syncthreads();
  acc = warp_part[0];
  for (int w = 1; w < kCeThreads / 32; w++) acc = merge(acc, warp_part[w]);
  __syncthreads();   /* warp_part is reused by the block's next row */
  return acc;
}

/* row_loss[r] = lse - logit[target]; 0 when ignored; NaN for a target outside [0, vocab). */
template <int V>
__global__ void ce_forward_kernel(float *row_loss, const void *logits, int bf, const int32_t *targets, int64_t rows,
                                  int64_t vocab, int32_t ignore_index) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int32_t t = targets[r];
    if (t == ignore_index) {   /* uniform over the block */
      if (threadIdx.x == 0) row_loss[r] = 0.0f;
      continue;
    }
    MaxSum ms = row_max_sum<V>(logits, bf, r * vocab, vocab);
    if (threadIdx.x == 0) {
      float lse = ms.m + logf(ms.s);
      row_loss[r] = t >= 0 && t < vocab ? lse - load1(logits, bf, r * vocab + t) : NAN;
    }
  }
}

/* loss = sum of the row losses (fp64, fixed tree) / counted rows, 0 when none. One block. */
__global__ void ce_mean_kernel(float *loss, const float *row_loss, const int32_t *targets, int64_t rows,
                               int32_t ignore_index) {
  __shared__ double warp_sum[kReduceThreads / 32];
  __shared__ long long warp_count[kReduceThreads / 32];
  double acc = 0;
  long long count = 0;
  for (int64_t r = threadIdx.x; r < rows; r += kReduceThreads) {
    float l = row_loss[r];
    acc += l;
    count += targets[r] != ignore_index;
  }
  acc = group_sum<32>(acc);
  count = group_sum<32>(count);
  if ((threadIdx.x & 31) == 0) warp_sum[threadIdx.x >> 5] = acc, warp_count[threadIdx.x >> 5] = count;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0;
    long long counted = 0;
    for (int w = 0; w < kReduceThreads / 32; w++) total += warp_sum[w], counted += warp_count[w];
    *loss = counted ? (float)(total / (double)counted) : 0.0f;
  }
}

/* Rows whose target is not ignore_index, into *count (one block, before the backward's rows). */
__global__ void ce_count_kernel(int64_t *count, const int32_t *targets, int64_t rows, int32_t ignore_index) {
  __shared__ long long warp_count[kReduceThreads / 32];
  long long c = 0;
  for (int64_t r = threadIdx.x; r < rows; r += kReduceThreads) c += targets[r] != ignore_index;
  c = group_sum<32>(c);
  if ((threadIdx.x & 31) == 0) warp_count[threadIdx.x >> 5] = c;
  __syncthreads();
  if (threadIdx.x == 0) {
    long long total = 0;
    for (int w = 0; w < kReduceThreads / 32; w++) total += warp_count[w];
    *count = total;
  }
}

/* dlogits = g softmax(row) - g onehot(target), g = dloss / counted; zeros on ignored rows (and all rows
 * when none is counted); NaN on a row whose target is outside [0, vocab). */
template <int V>
__global__ void ce_backward_kernel(void *dlogits, int d_bf, const void *logits, int bf, const int32_t *targets,
                                   const int64_t *count, int64_t rows, int64_t vocab, int32_t ignore_index,
                                   float dloss) {
  const int64_t counted = *count;
  const float g = counted ? (float)((double)dloss / (double)counted) : 0.0f;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int32_t t = targets[r];
    int64_t base = r * vocab;
    if (t == ignore_index || (t >= 0 && t < vocab)) {
      bool ignored = t == ignore_index;
      MaxSum ms = {0.0f, 1.0f};
      if (!ignored) ms = row_max_sum<V>(logits, bf, base, vocab);
      float scale = ignored ? 0.0f : g / ms.s, shift = ms.m == -INFINITY ? 0.0f : ms.m;
      for (int64_t c = (int64_t)threadIdx.x * V; c < vocab; c += kCeThreads * V) {
        float x[V];
        load_v<V>(logits, bf, base + c, x);
#pragma unroll
        for (int k = 0; k < V; k++) x[k] = ignored ? 0.0f : scale * expf(x[k] - shift) - (c + k == t ? g : 0.0f);
        store_v<V>(dlogits, d_bf, base + c, x);
      }
    } else {
      for (int64_t c = (int64_t)threadIdx.x * V; c < vocab; c += kCeThreads * V) {
        float x[V];
#pragma unroll
        for (int k = 0; k < V; k++) x[k] = NAN;
        store_v<V>(dlogits, d_bf, base + c, x);
      }
    }
  }
}

/* ---------------------------------------------------------------- launch helpers */

/* GPU scratch for one op, freed (stream-ordered) when it goes out of scope. */
struct Scratch {
  void *p = nullptr;
  ~Scratch() { f2_cuda_free(p); }
  int alloc(size_t nbytes) { return f2_cuda_alloc(&p, nbytes ? nbytes : 1); }
};

}  // namespace

/* ---------------------------------------------------------------- entry points */

extern "C" int f2_cuda_embedding_forward(f2_tensor *out, const f2_tensor *weight, const f2_tensor *ids) {
  int64_t n = f2_tensor_numel(ids), vocab = weight->shape[0], dim = weight->shape[1];
  if (n == 0 || dim == 0) return F2_OK;
  unsigned blocks = grid_for(n, F2_THREADS / 32);
  if (dim % 4 == 0 && aligned4(out) && aligned4(weight))
    embedding_forward_kernel<4><<<blocks, F2_THREADS, 0, f2_cuda_stream()>>>(
        out->data, is_bf16(out), weight->data, is_bf16(weight), (const int32_t *)ids->data, n, vocab, dim);
  else
    embedding_forward_kernel<1><<<blocks, F2_THREADS, 0, f2_cuda_stream()>>>(
        out->data, is_bf16(out), weight->data, is_bf16(weight), (const int32_t *)ids->data, n, vocab, dim);
  F2_CUDA_CHECK_LAUNCH("embedding_forward_kernel");
  return F2_OK;
}

extern "C" int f2_cuda_embedding_backward(f2_tensor *dweight, const f2_tensor *dout, const f2_tensor *ids) {
  int64_t n = f2_tensor_numel(ids), vocab = dweight->shape[0], dim = dweight->shape[1];
  if (n == 0 || dim == 0) return F2_OK;
  if (n > INT32_MAX - 32 || vocab >= INT32_MAX)
    return F2_FAIL(F2_ERR_UNSUPPORTED, "embedding backward: %lld ids or a vocabulary of %lld is too large for the GPU sort",
                   (long long)n, (long long)vocab);
  cudaStream_t stream = f2_cuda_stream();
  int end_bit = 1;
  while (end_bit < 31 && ((int64_t)1 << end_bit) <= vocab) end_bit++;   /* keys are 0 .. vocab */
  /* One scratch block: keys and tokens in and out, then CUB's temporary storage. */
  size_t temp_bytes = 0, arrays = ((size_t)n * 4 * sizeof(int32_t) + 255) / 256 * 256;
  F2_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, (const int32_t *)nullptr, (int32_t *)nullptr,
                                                (const int32_t *)nullptr, (int32_t *)nullptr, (int)n, 0, end_bit,
                                                stream));
  Scratch scratch;
  F2_TRY(scratch.alloc(arrays + temp_bytes));
  int32_t *keys_in = (int32_t *)scratch.p, *tokens_in = keys_in + n, *keys = tokens_in + n, *tokens = keys + n;
  embedding_keys_kernel<<<f2_blocks(n, F2_THREADS), F2_THREADS, 0, stream>>>(keys_in, tokens_in,
                                                                            (const int32_t *)ids->data, n, vocab);
  F2_CUDA_CHECK_LAUNCH("embedding_keys_kernel");
  F2_CUDA_CHECK(cub::DeviceRadixSort::SortPairs((char *)scratch.p + arrays, temp_bytes, keys_in, keys, tokens_in,
                                                tokens, (int)n, 0, end_bit, stream));
  bool vec = dim % 4 == 0 && aligned4(dweight) && aligned4(dout);
  int64_t width = vec ? 128 : 32, chunks = (dim + width - 1) / width, warps = F2_THREADS / 32;
  int64_t blocks = (n * chunks + warps - 1) / warps;
  if (blocks > INT32_MAX) return F2_FAIL(F2_ERR_UNSUPPORTED, "embedding backward: %lld ids of dim %lld need too many blocks",
                                         (long long)n, (long long)dim);
  if (vec)
    embedding_backward_kernel<4><<<(unsigned)blocks, F2_THREADS, 0, stream>>>(
        (float *)dweight->data, dout->data, is_bf16(dout), keys, tokens, n, vocab, dim, chunks);
  else
    embedding_backward_kernel<1><<<(unsigned)blocks, F2_THREADS, 0, stream>>>(
        (float *)dweight->data, dout->data, is_bf16(dout), keys, tokens, n, vocab, dim, chunks);
  F2_CUDA_CHECK_LAUNCH("embedding_backward_kernel");
  return F2_OK;
}

namespace {
template <int G, int V>
int launch_rmsnorm_forward(f2_tensor *sum, f2_tensor *out, f2_tensor *rstd, const f2_tensor *a, const f2_tensor *b,
                           const f2_tensor *weight, int64_t rows, int64_t dim, float eps) {
  rmsnorm_forward_kernel<G, V><<<grid_for(rows, F2_THREADS / G), F2_THREADS, 0, f2_cuda_stream()>>>(
      out->data, is_bf16(out), rstd ? (float *)rstd->data : nullptr, sum ? sum->data : nullptr, sum && is_bf16(sum),
      a->data, is_bf16(a), b ? b->data : nullptr, b && is_bf16(b), weight->data, is_bf16(weight), rows, dim, eps);
  F2_CUDA_CHECK_LAUNCH("rmsnorm_forward_kernel");
  return F2_OK;
}

template <int G, int N>
int launch_rmsnorm_forward_fast(f2_tensor *sum, f2_tensor *out, f2_tensor *rstd, const f2_tensor *a,
                                const f2_tensor *b, const f2_tensor *weight, int64_t rows, int64_t dim, float eps) {
  rmsnorm_forward_fast_kernel<G, N><<<grid_for(rows, F2_THREADS / G), F2_THREADS, 0, f2_cuda_stream()>>>(
      out->data, is_bf16(out), rstd ? (float *)rstd->data : nullptr, sum ? sum->data : nullptr, sum && is_bf16(sum),
      a->data, is_bf16(a), b ? b->data : nullptr, b && is_bf16(b), weight->data, is_bf16(weight), rows, dim, eps);
  F2_CUDA_CHECK_LAUNCH("rmsnorm_forward_fast_kernel");
  return F2_OK;
}

/* The fast path's shape for rows of `vectors` 8-element vectors: G lanes, each holding up to N vectors
 * (G N >= vectors; fewer lanes for short rows, so a warp holds several); 0 when a row is longer than
 * max_vectors (then the general kernels). */
struct FastShape {
  int g, n;
};
FastShape fast_shape(int64_t vectors, int64_t max_vectors) {
  if (vectors > max_vectors) return {0, 0};
  if (vectors <= 16) return {4, 4};
  if (vectors <= 32) return {8, 4};
  if (vectors <= 64) return {16, 4};
  if (vectors <= 96) return {32, 3};
  if (vectors <= 128) return {32, 4};
  if (vectors <= 256) return {32, 8};
  if (vectors <= 384) return {32, 12};
  return {32, 16};
}

/* ---------------------------------------------------------------- RMSNorm variants (F2_NORM_VARIANT)
 * F2_NORM_VARIANT, e.g. "fwd=1,bwd=2": per direction an index into the lists below (a direction not
 * named keeps its default, a later entry overrides an earlier one). Read at every call (a getenv) so
 * that bench_nn and test_gpu_nn can run every variant in one process. A variant other than 0 applies
 * to the fast path's rows of 8k elements up to 1024 whose activations share one dtype; other calls run
 * variant 0. fwd: 0 the fast kernel (a row group per row, one pass), 1 persistent with the next row
 * prefetched. bwd: 0 the fast kernel (dweight terms in shared memory, 264 blocks), 1 persistent, dweight
 * in conflict-free shared planes, dx loaded late (3 blocks per SM), fp64 row dot. Defaults from bench_nn
 * on an H200 (SmolLM2, 16384 x 576 bf16): residual forward 37.3 -> 26.9 us, backward_add 59.9 -> 32.8 us;
 * persistent without the prefetch, dweight in registers and fp32 row dots measured within 2 us of these
 * and were dropped (docs/performance.md). */
struct norm_variant {
  int fwd, bwd;
};
constexpr norm_variant kNormDefault = {1, 1}, kNormCount = {2, 2};

int read_norm_variant(const char *op, norm_variant *v) {
  *v = kNormDefault;
  const char *env = getenv("F2_NORM_VARIANT");
  if (!env) return F2_OK;
  for (const char *s = env; *s;) {
    if (*s == ',' || *s == ' ') {
      s++;
      continue;
    }
    int *dst = !strncmp(s, "fwd=", 4) ? &v->fwd : !strncmp(s, "bwd=", 4) ? &v->bwd : nullptr;
    if (!dst)
      return F2_FAIL(F2_ERR_ARG, "%s: F2_NORM_VARIANT \"%s\": expected fwd=N, bwd=N separated by commas", op, env);
    s += 4;
    char *end;
    long n = strtol(s, &end, 10);
    if (end == s || n < 0 || n > 1000)
      return F2_FAIL(F2_ERR_ARG, "%s: F2_NORM_VARIANT \"%s\": expected a variant index after '='", op, env);
    *dst = (int)n;
    s = end;
  }
  if (v->fwd >= kNormCount.fwd || v->bwd >= kNormCount.bwd)
    return F2_FAIL(F2_ERR_ARG, "%s: F2_NORM_VARIANT \"%s\": variant out of range (fwd 0..%d, bwd 0..%d)", op, env,
                   kNormCount.fwd - 1, kNormCount.bwd - 1);
  return F2_OK;
}

/* Blocks of a persistent launch: as many as fit on every SM at once (the occupancy API; fixed for a
 * kernel, its shared memory and the device, so the dweight sums keep one order). Cached per kernel. */
struct ResidentCache {
  int device = -1;
  size_t smem = 0;
  int64_t blocks = 0;
};
template <typename K>
int resident_blocks(const char *name, K kernel, size_t smem, ResidentCache &cache, int64_t *blocks) {
  int device = 0;
  F2_CUDA_CHECK(cudaGetDevice(&device));
  if (cache.device != device || cache.smem != smem) {
    int per_sm = 0, sms = 0;
    F2_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, F2_THREADS, smem));
    F2_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    if (per_sm < 1 || sms < 1)
      return F2_FAIL(F2_ERR_CUDA, "%s: no block of %d threads and %zu bytes of shared memory fits an SM", name,
                     (int)F2_THREADS, smem);
    cache.device = device, cache.smem = smem, cache.blocks = (int64_t)per_sm * sms;
  }
  *blocks = cache.blocks;
  return F2_OK;
}

template <int G, int N, int BF>
int launch_rmsnorm_forward_pipe(f2_tensor *sum, f2_tensor *out, f2_tensor *rstd, const f2_tensor *a,
                                const f2_tensor *b, const f2_tensor *weight, int64_t rows, int64_t dim, float eps) {
  static ResidentCache cache;
  auto kernel = rmsnorm_forward_pipe_kernel<G, N, BF>;
  const int64_t per_block = F2_THREADS / G;
  int64_t blocks = 0;
  F2_TRY(resident_blocks("rmsnorm_forward_pipe_kernel", kernel, 0, cache, &blocks));
  if (blocks > (rows + per_block - 1) / per_block) blocks = (rows + per_block - 1) / per_block;
  kernel<<<(unsigned)blocks, F2_THREADS, 0, f2_cuda_stream()>>>(
      out->data, rstd ? (float *)rstd->data : nullptr, sum ? sum->data : nullptr, a->data, b ? b->data : nullptr,
      weight->data, is_bf16(weight), rows, dim, eps);
  F2_CUDA_CHECK_LAUNCH("rmsnorm_forward_pipe_kernel");
  return F2_OK;
}

template <int G, int N, int BF>
int launch_rmsnorm_backward_pipe(f2_tensor *dx, f2_tensor *dweight, const f2_tensor *dy, const f2_tensor *x,
                                 const f2_tensor *weight, const f2_tensor *rstd, int64_t rows, int64_t dim,
                                 int accumulate) {
  static ResidentCache cache;
  cudaStream_t stream = f2_cuda_stream();
  auto kernel = rmsnorm_backward_pipe_kernel<G, N, BF>;
  const int64_t per_block = F2_THREADS / G;
  size_t smem = dweight ? (size_t)(per_block * dim) * sizeof(float) : 0;   /* <= 32 KiB: G N 8 >= dim */
  int64_t blocks = 0;
  F2_TRY(resident_blocks("rmsnorm_backward_pipe_kernel", kernel, smem, cache, &blocks));
  if (blocks > (rows + per_block - 1) / per_block) blocks = (rows + per_block - 1) / per_block;
  Scratch scratch;
  if (dweight) F2_TRY(scratch.alloc((size_t)(blocks * dim) * sizeof(float)));
  kernel<<<(unsigned)blocks, F2_THREADS, smem, stream>>>(
      dx->data, dweight ? (float *)scratch.p : nullptr, dy->data, x->data, weight->data, is_bf16(weight),
      (const float *)rstd->data, rows, dim, accumulate);
  F2_CUDA_CHECK_LAUNCH("rmsnorm_backward_pipe_kernel");
  if (!dweight) return F2_OK;
  rmsnorm_dweight_kernel<<<(unsigned)((dim + 31) / 32), dim3(32, 32), 0, stream>>>(
      (float *)dweight->data, (const float *)scratch.p, blocks, dim);
  F2_CUDA_CHECK_LAUNCH("rmsnorm_dweight_kernel");
  return F2_OK;
}

/* Variant 1's kernel for a fast shape (G, N) with N <= 4; bf: the activations are bf16. */
template <int G, int N>
int rmsnorm_forward_variant(bool bf, f2_tensor *sum, f2_tensor *out, f2_tensor *rstd,
                            const f2_tensor *a, const f2_tensor *b, const f2_tensor *weight, int64_t rows,
                            int64_t dim, float eps) {
  return bf ? launch_rmsnorm_forward_pipe<G, N, 1>(sum, out, rstd, a, b, weight, rows, dim, eps)
            : launch_rmsnorm_forward_pipe<G, N, 0>(sum, out, rstd, a, b, weight, rows, dim, eps);
}

template <int G, int N>
int rmsnorm_backward_variant(bool bf, f2_tensor *dx, f2_tensor *dweight, const f2_tensor *dy,
                             const f2_tensor *x, const f2_tensor *weight, const f2_tensor *rstd, int64_t rows,
                             int64_t dim, int accumulate) {
  return bf ? launch_rmsnorm_backward_pipe<G, N, 1>(dx, dweight, dy, x, weight, rstd, rows, dim, accumulate)
            : launch_rmsnorm_backward_pipe<G, N, 0>(dx, dweight, dy, x, weight, rstd, rows, dim, accumulate);
}

/* The forward with (sum, a, b) or (a = x, no b). */
int rmsnorm_forward(f2_tensor *sum, f2_tensor *out, f2_tensor *rstd, const f2_tensor *a, const f2_tensor *b,
                    const f2_tensor *weight, float eps) {
  int64_t dim = weight->shape[0], rows = f2_tensor_numel(a) / dim;
  norm_variant nv;
  F2_TRY(read_norm_variant(b ? "f2_rmsnorm_residual_forward" : "f2_rmsnorm_forward", &nv));
  if (rows == 0) return F2_OK;
  if (dim % 8 == 0 && aligned16(out) && aligned16(a) && aligned16(b) && aligned16(sum) && aligned16(weight)) {
    FastShape fs = fast_shape(dim / 8, 512);   /* rows up to 4096 elements (N = 16: 128 floats a lane) */
    bool one_dtype = out->dtype == a->dtype && (!b || (b->dtype == a->dtype && sum->dtype == a->dtype));
    if (nv.fwd && one_dtype && fs.n <= 4) {
#define F2_NN_FWD_VARIANT(G, N) \
  if (fs.g == G && fs.n == N)   \
  return rmsnorm_forward_variant<G, N>(is_bf16(a), sum, out, rstd, a, b, weight, rows, dim, eps)
      F2_NN_FWD_VARIANT(4, 4);
      F2_NN_FWD_VARIANT(8, 4);
      F2_NN_FWD_VARIANT(16, 4);
      F2_NN_FWD_VARIANT(32, 3);
      F2_NN_FWD_VARIANT(32, 4);
#undef F2_NN_FWD_VARIANT
    }
#define F2_NN_FWD_FAST(G, N) \
  if (fs.g == G && fs.n == N) return launch_rmsnorm_forward_fast<G, N>(sum, out, rstd, a, b, weight, rows, dim, eps)
    F2_NN_FWD_FAST(4, 4);
    F2_NN_FWD_FAST(8, 4);
    F2_NN_FWD_FAST(16, 4);
    F2_NN_FWD_FAST(32, 3);
    F2_NN_FWD_FAST(32, 4);
    F2_NN_FWD_FAST(32, 8);
    F2_NN_FWD_FAST(32, 12);
    F2_NN_FWD_FAST(32, 16);
#undef F2_NN_FWD_FAST
  }
  bool vec = dim % 4 == 0 && aligned4(out) && aligned4(a) && aligned4(b) && aligned4(sum) && aligned4(weight);
#define F2_NN_FWD(G) \
  return vec ? launch_rmsnorm_forward<G, 4>(sum, out, rstd, a, b, weight, rows, dim, eps) \
             : launch_rmsnorm_forward<G, 1>(sum, out, rstd, a, b, weight, rows, dim, eps)
  switch (lanes_per_row(vec ? dim / 4 : dim)) {
    case 4: F2_NN_FWD(4);
    case 8: F2_NN_FWD(8);
    case 16: F2_NN_FWD(16);
    default: F2_NN_FWD(32);
  }
#undef F2_NN_FWD
}

/* Blocks of the backward when it also sums dweight: at most this many partial rows (fixed, so the
 * summation order depends on the shape only); enough blocks to fill an H200. */
constexpr int64_t kNormBlocks = 1024;
/* The same for the fast path: ~113 registers a thread fit 2 blocks per SM, so 264 is one full wave on
 * an H200 (132 SMs), and few partial rows keep rmsnorm_dweight_kernel to one round of loads. */
constexpr int64_t kFastNormBlocks = 264;

template <int G, int N>
int launch_rmsnorm_backward_fast(f2_tensor *dx, f2_tensor *dweight, const f2_tensor *dy, const f2_tensor *x,
                                 const f2_tensor *weight, const f2_tensor *rstd, int64_t rows, int64_t dim,
                                 int accumulate) {
  cudaStream_t stream = f2_cuda_stream();
  const int64_t per_block = F2_THREADS / G;
  if (!dweight) {
    rmsnorm_backward_fast_kernel<G, N><<<grid_for(rows, (int)per_block), F2_THREADS, 0, stream>>>(
        dx->data, is_bf16(dx), nullptr, dy->data, is_bf16(dy), x->data, is_bf16(x), weight->data, is_bf16(weight),
        (const float *)rstd->data, rows, dim, accumulate);
    F2_CUDA_CHECK_LAUNCH("rmsnorm_backward_fast_kernel");
    return F2_OK;
  }
  size_t smem = (size_t)per_block * dim * sizeof(float);   /* <= 32 KiB: G N 8 >= dim */
  int64_t blocks = (rows + per_block - 1) / per_block;
  if (blocks > kFastNormBlocks) blocks = kFastNormBlocks;
  Scratch scratch;
  F2_TRY(scratch.alloc((size_t)(blocks * dim) * sizeof(float)));
  rmsnorm_backward_fast_kernel<G, N><<<(unsigned)blocks, F2_THREADS, smem, stream>>>(
      dx->data, is_bf16(dx), (float *)scratch.p, dy->data, is_bf16(dy), x->data, is_bf16(x), weight->data,
      is_bf16(weight), (const float *)rstd->data, rows, dim, accumulate);
  F2_CUDA_CHECK_LAUNCH("rmsnorm_backward_fast_kernel");
  rmsnorm_dweight_kernel<<<(unsigned)((dim + 31) / 32), dim3(32, 32), 0, stream>>>(
      (float *)dweight->data, (const float *)scratch.p, blocks, dim);
  F2_CUDA_CHECK_LAUNCH("rmsnorm_dweight_kernel");
  return F2_OK;
}

template <int G, int V>
int launch_rmsnorm_backward(f2_tensor *dx, f2_tensor *dweight, const f2_tensor *dy, const f2_tensor *x,
                            const f2_tensor *weight, const f2_tensor *rstd, int64_t rows, int64_t dim,
                            int accumulate) {
  cudaStream_t stream = f2_cuda_stream();
  if (!dweight) {
    rmsnorm_backward_kernel<G, V><<<grid_for(rows, F2_THREADS / G), F2_THREADS, 0, stream>>>(
        dx->data, is_bf16(dx), nullptr, dy->data, is_bf16(dy), x->data, is_bf16(x), weight->data, is_bf16(weight),
        (const float *)rstd->data, rows, dim, accumulate);
    F2_CUDA_CHECK_LAUNCH("rmsnorm_backward_kernel");
    return F2_OK;
  }
  /* Fewer row groups per block for long rows, so their column sums fit the default 48 KiB. */
  const size_t smem_limit = 48 << 10;
  int threads = F2_THREADS;
  while (threads > 32 && (size_t)(threads / G) * dim * sizeof(float) > smem_limit) threads /= 2;   /* whole warps */
  size_t smem = (size_t)(threads / G) * dim * sizeof(float);
  if (smem > smem_limit)
    return F2_FAIL(F2_ERR_UNSUPPORTED, "RMSNorm backward on the GPU: dweight of dim %lld (its column sums fit "
                   "shared memory up to dim %zu)", (long long)dim, smem_limit / sizeof(float));
  int64_t per_block = threads / G, blocks = (rows + per_block - 1) / per_block;
  if (blocks > kNormBlocks) blocks = kNormBlocks;
  Scratch scratch;
  F2_TRY(scratch.alloc((size_t)(blocks * dim) * sizeof(float)));
  rmsnorm_backward_kernel<G, V><<<(unsigned)blocks, threads, smem, stream>>>(
      dx->data, is_bf16(dx), (float *)scratch.p, dy->data, is_bf16(dy), x->data, is_bf16(x), weight->data,
      is_bf16(weight), (const float *)rstd->data, rows, dim, accumulate);
  F2_CUDA_CHECK_LAUNCH("rmsnorm_backward_kernel");
  rmsnorm_dweight_kernel<<<(unsigned)((dim + 31) / 32), dim3(32, 32), 0, stream>>>(
      (float *)dweight->data, (const float *)scratch.p, blocks, dim);
  F2_CUDA_CHECK_LAUNCH("rmsnorm_dweight_kernel");
  return F2_OK;
}
}  // namespace

extern "C" int f2_cuda_rmsnorm_forward(f2_tensor *out, f2_tensor *rstd, const f2_tensor *x, const f2_tensor *weight,
                                       float eps) {
  return rmsnorm_forward(nullptr, out, rstd, x, nullptr, weight, eps);
}

extern "C" int f2_cuda_rmsnorm_residual_forward(f2_tensor *sum, f2_tensor *out, f2_tensor *rstd, const f2_tensor *a,
                                                const f2_tensor *b, const f2_tensor *weight, float eps) {
  return rmsnorm_forward(sum, out, rstd, a, b, weight, eps);
}

extern "C" int f2_cuda_rmsnorm_backward(f2_tensor *dx, f2_tensor *dweight, const f2_tensor *dy, const f2_tensor *x,
                                        const f2_tensor *weight, const f2_tensor *rstd, int accumulate) {
  int64_t dim = weight->shape[0], rows = f2_tensor_numel(x) / dim;
  norm_variant nv;
  F2_TRY(read_norm_variant(accumulate ? "f2_rmsnorm_backward_add" : "f2_rmsnorm_backward", &nv));
  if (rows == 0) return F2_OK;
  if (dim % 8 == 0 && aligned16(dx) && aligned16(dy) && aligned16(x) && aligned16(weight)) {
    FastShape fs = fast_shape(dim / 8, 128);   /* rows up to 1024 elements: dy, x, dweight in registers */
    if (nv.bwd && dy->dtype == x->dtype && dx->dtype == x->dtype) {
#define F2_NN_BWD_VARIANT(G, N) \
  if (fs.g == G && fs.n == N)   \
  return rmsnorm_backward_variant<G, N>(is_bf16(x), dx, dweight, dy, x, weight, rstd, rows, dim, accumulate)
      F2_NN_BWD_VARIANT(4, 4);
      F2_NN_BWD_VARIANT(8, 4);
      F2_NN_BWD_VARIANT(16, 4);
      F2_NN_BWD_VARIANT(32, 3);
      F2_NN_BWD_VARIANT(32, 4);
#undef F2_NN_BWD_VARIANT
    }
#define F2_NN_BWD_FAST(G, N)                                                                                  \
  if (fs.g == G && fs.n == N)                                                                                 \
    return launch_rmsnorm_backward_fast<G, N>(dx, dweight, dy, x, weight, rstd, rows, dim, accumulate)
    F2_NN_BWD_FAST(4, 4);
    F2_NN_BWD_FAST(8, 4);
    F2_NN_BWD_FAST(16, 4);
    F2_NN_BWD_FAST(32, 3);
    F2_NN_BWD_FAST(32, 4);
#undef F2_NN_BWD_FAST
  }
  bool vec = dim % 4 == 0 && aligned4(dx) && aligned4(dy) && aligned4(x) && aligned4(weight);
#define F2_NN_BWD(G) \
  return vec ? launch_rmsnorm_backward<G, 4>(dx, dweight, dy, x, weight, rstd, rows, dim, accumulate) \
             : launch_rmsnorm_backward<G, 1>(dx, dweight, dy, x, weight, rstd, rows, dim, accumulate)
  switch (lanes_per_row(vec ? dim / 4 : dim)) {
    case 4: F2_NN_BWD(4);
    case 8: F2_NN_BWD(8);
    case 16: F2_NN_BWD(16);
    default: F2_NN_BWD(32);
  }
#undef F2_NN_BWD
}

extern "C" int f2_cuda_rope_tables(f2_tensor *cos_table, f2_tensor *sin_table, const f2_tensor *inv_freq) {
  int64_t positions = cos_table->shape[0], half = cos_table->shape[1];
  if (positions * half == 0) return F2_OK;
  rope_tables_kernel<<<f2_blocks(positions * half, F2_THREADS), F2_THREADS, 0, f2_cuda_stream()>>>(
      (float *)cos_table->data, (float *)sin_table->data, (const float *)inv_freq->data, positions, half);
  F2_CUDA_CHECK_LAUNCH("rope_tables_kernel");
  return F2_OK;
}

/* Elements a thread of an elementwise row kernel takes, for rows of cols contiguous elements whose starts
 * sit ld elements apart in each operand: 8 (16-byte bf16 accesses) when every operand keeps each
 * thread's elements aligned (to their size, at most 16 bytes), else 4 when that holds for 4, else 1. */
struct vec_operand {
  const void *data;
  int64_t size, ld;   /* element size in bytes; row stride in elements */
};
static int vec_width(int64_t cols, const vec_operand *ops, int n) {
  for (int v = 8; v >= 4; v /= 2) {
    bool ok = cols % v == 0;
    for (int i = 0; i < n && ok; i++) {
      const int64_t bytes = v * ops[i].size;
      ok = (uintptr_t)ops[i].data % (bytes < 16 ? bytes : 16) == 0 && ops[i].ld % v == 0;
    }
    if (ok) return v;
  }
  return 1;
}

/* Calls launch(V) with V = std::integral_constant<int, v> for v = 8, 4 or 1 (vec_width's answer): the
 * elementwise row kernels are templates on their width. */
template <typename F>
static void with_width(int v, F &&launch) {
  if (v == 8)
    launch(std::integral_constant<int, 8>());
  else if (v == 4)
    launch(std::integral_constant<int, 4>());
  else
    launch(std::integral_constant<int, 1>());
}

/* out and x come from the dispatch with strides {T*ld, ld, Dh, 1} (nn_cpu.c: rope_layout). */
extern "C" int f2_cuda_rope(f2_tensor *out, const f2_tensor *x, const f2_tensor *cos_table, const f2_tensor *sin_table,
                            float sign) {
  int64_t seq = x->shape[1], heads = x->shape[2], half = x->shape[3] / 2, rows = x->shape[0] * seq * heads;
  int64_t ldx = x->stride[1], ldo = out->stride[1];
  if (rows * half == 0) return F2_OK;
  /* Pairs a thread takes: the rows are the head rows' halves of x and out and the tables' rows. */
  const vec_operand ops[4] = {{x->data, (int64_t)f2_dtype_size(x->dtype), ldx},
                              {out->data, (int64_t)f2_dtype_size(out->dtype), ldo},
                              {cos_table->data, 4, half},
                              {sin_table->data, 4, half}};
  with_width(vec_width(half, ops, 4), [&](auto V) {
    rope_kernel<V><<<f2_blocks(rows * half / V, F2_THREADS), F2_THREADS, 0, f2_cuda_stream()>>>(
        out->data, is_bf16(out), x->data, is_bf16(x), (const float *)cos_table->data,
        (const float *)sin_table->data, rows, seq, heads, half, ldx, ldo, sign);
  });
  F2_CUDA_CHECK_LAUNCH("rope_kernel");
  return F2_OK;
}

/* The dispatch checked shapes and dtypes: q, k, v contiguous, y rows of (H + 2 Hkv) Dh at stride ldy. */
extern "C" int f2_cuda_qkv_rope(f2_tensor *y, f2_tensor *q, f2_tensor *k, f2_tensor *v, const f2_tensor *cos_table,
                                const f2_tensor *sin_table, int64_t ldy, int merge) {
  const int64_t seq = q->shape[1], H = q->shape[2], hd = q->shape[3], half = hd / 2, Hkv = k->shape[2];
  const int64_t rows = q->shape[0] * seq, esz = (int64_t)f2_dtype_size(y->dtype);
  if (rows * half == 0) return F2_OK;
  /* Pairs a thread takes: every head row's halves (y at its stride, q/k/v heads hd apart) and the tables. */
  const vec_operand ops[6] = {{y->data, esz, ldy},          {q->data, esz, hd},   {k->data, esz, hd},
                              {v->data, esz, hd},           {cos_table->data, 4, half},
                              {sin_table->data, 4, half}};
  with_width(vec_width(half, ops, 6), [&](auto V) {
    qkv_rope_kernel<V><<<f2_blocks(rows * (H + 2 * Hkv) * half / V, F2_THREADS), F2_THREADS, 0, f2_cuda_stream()>>>(
        y->data, q->data, k->data, v->data, is_bf16(y), (const float *)cos_table->data,
        (const float *)sin_table->data, rows, seq, H, Hkv, half, ldy, merge);
  });
  F2_CUDA_CHECK_LAUNCH("qkv_rope_kernel");
  return F2_OK;
}

/* The SwiGLU operands come from the dispatch as 2-D [rows, cols] with strides {ld, 1} (nn_cpu.c:
 * rows_layout; all contiguous: one row, whose stride does not matter). */
static int swiglu_width(int64_t cols, const f2_tensor *const *t, int n) {
  vec_operand ops[5];
  for (int i = 0; i < n; i++)
    ops[i] = {t[i]->data, (int64_t)f2_dtype_size(t[i]->dtype), t[i]->shape[0] <= 1 ? 0 : t[i]->stride[0]};
  return vec_width(cols, ops, n);
}

extern "C" int f2_cuda_swiglu_forward(f2_tensor *out, const f2_tensor *gate, const f2_tensor *up) {
  int64_t rows = gate->shape[0], cols = gate->shape[1];
  if (rows * cols == 0) return F2_OK;
  const f2_tensor *all[3] = {out, gate, up};
  with_width(swiglu_width(cols, all, 3), [&](auto V) {
    swiglu_forward_kernel<V><<<f2_blocks(rows * cols / V, F2_THREADS), F2_THREADS, 0, f2_cuda_stream()>>>(
        out->data, is_bf16(out), gate->data, is_bf16(gate), up->data, is_bf16(up), rows, cols, out->stride[0],
        gate->stride[0], up->stride[0]);
  });
  F2_CUDA_CHECK_LAUNCH("swiglu_forward_kernel");
  return F2_OK;
}

extern "C" int f2_cuda_swiglu_backward(f2_tensor *dgate, f2_tensor *dup, const f2_tensor *dout, const f2_tensor *gate,
                                       const f2_tensor *up) {
  int64_t rows = gate->shape[0], cols = gate->shape[1];
  if (rows * cols == 0) return F2_OK;
  const f2_tensor *all[5] = {dgate, dup, dout, gate, up};
  with_width(swiglu_width(cols, all, 5), [&](auto V) {
    swiglu_backward_kernel<V><<<f2_blocks(rows * cols / V, F2_THREADS), F2_THREADS, 0, f2_cuda_stream()>>>(
        dgate->data, is_bf16(dgate), dup->data, is_bf16(dup), dout->data, is_bf16(dout), gate->data,
        is_bf16(gate), up->data, is_bf16(up), rows, cols, dgate->stride[0], dup->stride[0], dout->stride[0],
        gate->stride[0], up->stride[0]);
  });
  F2_CUDA_CHECK_LAUNCH("swiglu_backward_kernel");
  return F2_OK;
}

extern "C" int f2_cuda_cross_entropy_forward(f2_tensor *loss, f2_tensor *losses, const f2_tensor *logits,
                                             const f2_tensor *targets, int32_t ignore_index) {
  int64_t rows = f2_tensor_numel(targets), vocab = logits->shape[logits->ndim - 1];
  cudaStream_t stream = f2_cuda_stream();
  Scratch scratch;
  float *row_loss = losses ? (float *)losses->data : nullptr;
  if (!row_loss) {
    F2_TRY(scratch.alloc((size_t)rows * sizeof(float)));
    row_loss = (float *)scratch.p;
  }
  const int32_t *t = (const int32_t *)targets->data;
  if (rows > 0) {
    unsigned blocks = grid_for(rows, 1);
    if (vocab % 4 == 0 && aligned4(logits))
      ce_forward_kernel<4><<<blocks, kCeThreads, 0, stream>>>(row_loss, logits->data, is_bf16(logits), t, rows, vocab,
                                                              ignore_index);
    else
      ce_forward_kernel<1><<<blocks, kCeThreads, 0, stream>>>(row_loss, logits->data, is_bf16(logits), t, rows, vocab,
                                                              ignore_index);
    F2_CUDA_CHECK_LAUNCH("ce_forward_kernel");
  }
  ce_mean_kernel<<<1, kReduceThreads, 0, stream>>>((float *)loss->data, row_loss, t, rows, ignore_index);
  F2_CUDA_CHECK_LAUNCH("ce_mean_kernel");
  return F2_OK;
}

extern "C" int f2_cuda_cross_entropy_backward(f2_tensor *dlogits, const f2_tensor *logits, const f2_tensor *targets,
                                              int32_t ignore_index, float dloss) {
  int64_t rows = f2_tensor_numel(targets), vocab = logits->shape[logits->ndim - 1];
  if (rows == 0) return F2_OK;
  cudaStream_t stream = f2_cuda_stream();
  Scratch scratch;
  F2_TRY(scratch.alloc(sizeof(int64_t)));
  const int32_t *t = (const int32_t *)targets->data;
  ce_count_kernel<<<1, kReduceThreads, 0, stream>>>((int64_t *)scratch.p, t, rows, ignore_index);
  F2_CUDA_CHECK_LAUNCH("ce_count_kernel");
  unsigned blocks = grid_for(rows, 1);
  if (vocab % 4 == 0 && aligned4(logits) && aligned4(dlogits))
    ce_backward_kernel<4><<<blocks, kCeThreads, 0, stream>>>(dlogits->data, is_bf16(dlogits), logits->data,
                                                             is_bf16(logits), t, (const int64_t *)scratch.p, rows,
                                                             vocab, ignore_index, dloss);
  else
    ce_backward_kernel<1><<<blocks, kCeThreads, 0, stream>>>(dlogits->data, is_bf16(dlogits), logits->data,
                                                             is_bf16(logits), t, (const int64_t *)scratch.p, rows,
                                                             vocab, ignore_index, dloss);
  F2_CUDA_CHECK_LAUNCH("ce_backward_kernel");
  return F2_OK;
}
