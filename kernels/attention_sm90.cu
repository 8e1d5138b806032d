/* attention_sm90.cu — the Hopper kernel of the causal GQA attention's backward (attention.cu dispatches
 * here on a compute capability 9.0 GPU): dK/dV per key block, looping over its group's query blocks in a
 * fixed order (no atomics), as attention.cu's bwd_dkdv_tc, with its four GEMMs as warpgroup MMAs
 * (wgmma.mma_async, sm_90a): a warpgroup of 4 warps owns 64 keys, the tensor cores read Q, dO, K and V
 * straight from shared memory, and P^T and dS^T feed their GEMMs from registers. Head dim 64 (SmolLM2).
 * On an H200 it beats the best mma.sync dK/dV by 4% (bench_attention); the forward and dQ written the
 * same way did not beat attention.cu's (nor did a version queueing the next block's GEMMs behind this
 * block's, which ptxas serializes), so they are not here (docs/performance.md).
 *
 * Tiles are staged by cp.async in the layout wgmma reads without swizzling: 8 x 8 "core matrices" of
 * 128 contiguous bytes (8 rows of 16 B), the D/8 of a row group side by side, row groups one after the
 * other. A tile read K-major (its rows are the GEMM's M or N index, its columns the K index: K, V, Q, dO
 * in S^T = K Q^T and dP^T = V dO^T) has core matrices 128 B apart along K and 16 D bytes apart along M/N;
 * read MN-major (rows the K index, columns N: dO in P^T dO, Q in dS^T Q) the same bytes have them 16 D
 * bytes apart along K and 128 B apart along N. Accumulators come back in mma.sync's C layout per warp
 * (warp w of the warpgroup: rows 16w..16w+15), so the masking code is attention.cu's. Built for sm_90a
 * only (CMakeLists.txt); elsewhere the kernel is empty and sm90_available() is false. */
#include "attention.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define F2_SM90A 1
#endif

namespace f2attn {
namespace {

#if F2_SM90A   /* the device helpers exist in the sm_90a build only, as the kernels' bodies */

/* ---------------------------------------------------------------- staging and descriptors */

/* ROWS rows of D bf16 from global (row r at g + r*ld; rows >= n_valid zero-filled) into the core-matrix
 * layout: element (r, c) at (r/8) 8D + (c/8) 64 + (r%8) 8 + c%8. Consecutive threads fill consecutive
 * 16-byte rows of a core matrix (no bank conflicts on the stores). */
template <int ROWS, int D, int NT>
__device__ __forceinline__ void load_core(uint16_t *s, const uint16_t *g, int64_t ld, int n_valid) {
  constexpr int CH = D / 8;
#pragma unroll
  for (int c = threadIdx.x; c < ROWS * CH; c += NT) {
    const int r8 = c & 7, ch = (c >> 3) % CH, rg = c / (8 * CH), r = rg * 8 + r8;
    const bool ok = r < n_valid;
    cp_async16(s + rg * 8 * D + ch * 64 + r8 * 8, g + (ok ? (int64_t)r * ld + ch * 8 : 0), ok);
  }
}

/* A shared-memory matrix descriptor, no swizzle: start address, LBO = the byte distance between core
 * matrices along K, SBO = along M/N (each field in 16-byte units). */
__device__ __forceinline__ uint64_t sdesc(const uint16_t *p, uint32_t lbo, uint32_t sbo) {
  const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
  return (uint64_t)((a & 0x3FFFF) >> 4) | (uint64_t)(lbo >> 4) << 16 | (uint64_t)(sbo >> 4) << 32;
}
/* K-step kk (columns 16kk..16kk+15) of a tile read K-major, from its row `tile` on. */
template <int D>
__device__ __forceinline__ uint64_t kmajor(const uint16_t *tile, int kk) {
  return sdesc(tile + kk * 128, 128, 16 * D);
}
/* K-step kk (rows 16kk..16kk+15) of a tile read MN-major. */
template <int D>
__device__ __forceinline__ uint64_t mnmajor(const uint16_t *tile, int kk) {
  return sdesc(tile + kk * 16 * D, 16 * D, 128);
}

/* cp.async writes shared memory through the generic proxy, wgmma reads it through the async proxy. */
__device__ __forceinline__ void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

/* ---------------------------------------------------------------- warpgroup MMA */

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
/* Keeps the compiler from moving accesses of an accumulator across the asynchronous MMAs. */
__device__ __forceinline__ void reg_fence(float (&d)[8][4]) {
#pragma unroll
  for (int j = 0; j < 8; j++)
#pragma unroll
    for (int e = 0; e < 4; e++) asm volatile("" : "+f"(d[j][e])::"memory");
}
__device__ __forceinline__ void zero(float (&d)[8][4]) {
#pragma unroll
  for (int j = 0; j < 8; j++) d[j][0] = d[j][1] = d[j][2] = d[j][3] = 0;
}
/* An accumulator's columns 16kb..16kb+15 as the A operand of the next MMA (bf16, as every flash attention). */
__device__ __forceinline__ void to_a(uint32_t (&a)[4], const float (&p)[8][4], int kb) {
  a[0] = pack_bf16(p[2 * kb][0], p[2 * kb][1]);
  a[1] = pack_bf16(p[2 * kb][2], p[2 * kb][3]);
  a[2] = pack_bf16(p[2 * kb + 1][0], p[2 * kb + 1][1]);
  a[3] = pack_bf16(p[2 * kb + 1][2], p[2 * kb + 1][3]);
}

/* d[64 x 64] += A[64 x 16] B[16 x 64], both from shared memory (descriptors); TB: B is MN-major. */
template <int TB>
__device__ __forceinline__ void wgmma_ss(float (&d)[8][4], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, %35;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),
        "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
        "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
        "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
      : "l"(a), "l"(b), "r"(1), "n"(TB));
}
/* d[64 x 64] += A[64 x 16] B[16 x 64], A from registers (each warp its 16 rows, in mma.sync's A fragment
 * layout), B from shared memory; TB: B is MN-major. */
template <int TB>
__device__ __forceinline__ void wgmma_rs(float (&d)[8][4], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, %38;\n}\n"
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),
        "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
        "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
        "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1), "n"(TB));
}

#endif  // F2_SM90A

/* ---------------------------------------------------------------- backward: dK, dV
 * Block: NWG warpgroups of 64 keys (BN = 64 NWG) of one (batch, KV head); loops over the heads of the group,
 * then the query blocks of 64 (double-buffered) from the diagonal on, in that fixed order. Per block,
 * transposed: S^T = K Q^T, P^T = exp(S^T - lse), dP^T = V dO^T, dV += P^T dO, dS^T = P^T (dP^T - D),
 * dK += dS^T Q; dk = scale dK. PAIR: block x does key blocks x and nkb-1-x (balanced causal work, as in
 * attention.cu's bwd_dkdv_tc). */
template <int D, int NWG, int MINB, bool PAIR>
__global__ void __launch_bounds__(NWG * 128, MINB)
dkdv_wg(void *dk, int32_t dk_dtype, void *dv, int32_t dv_dtype, const uint16_t *__restrict__ q,
        const uint16_t *__restrict__ k, const uint16_t *__restrict__ v, const uint16_t *__restrict__ dout,
        const float *__restrict__ lse, const float *__restrict__ dvec, int T, int H, int Hkv, float scale_log2,
        float scale) {
#if F2_SM90A
  constexpr int BM = 64, BN = 64 * NWG, NT = NWG * 128;
  uint16_t *sK = (uint16_t *)attn_smem, *sV = sK + BN * D, *sQ = sV + BN * D, *sO = sQ + 2 * BM * D;
  float *sL = (float *)(sO + 2 * BM * D), *sD = sL + 2 * BM;
  const int bg = blockIdx.y, b = bg / Hkv, g = bg % Hkv, group = H / Hkv;
  const int wg = threadIdx.x / 128, warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int64_t qld = (int64_t)H * D, kld = (int64_t)Hkv * D;
  const uint16_t *kb = k + ((int64_t)b * T * Hkv + g) * D, *vb = v + ((int64_t)b * T * Hkv + g) * D;
  const int nkb = (T + BN - 1) / BN, partner = nkb - 1 - (int)blockIdx.x;
  const int passes = PAIR && partner != (int)blockIdx.x ? 2 : 1;
  for (int pass = 0; pass < passes; pass++) {
    if (pass) __syncthreads();   /* the first pass's last readers of shared memory are done */
    const int nb = pass ? partner : blockIdx.x, n0 = nb * BN;
    const int m_first = n0 / BM, m_count = (T + BM - 1) / BM - m_first, iters = group * m_count;

    /* Stages query block `it` (head, block) into buffer buf: Q, dO, lse and D (0 past T, masked anyway). */
    auto stage = [&](int it, int buf) {
      const int h = g * group + it / m_count, m0 = (m_first + it % m_count) * BM;
      const int64_t off = ((int64_t)b * T * H + h) * D + (int64_t)m0 * qld;
      load_core<BM, D, NT>(sQ + buf * BM * D, q + off, qld, T - m0);
      load_core<BM, D, NT>(sO + buf * BM * D, dout + off, qld, T - m0);
      const int64_t bh = ((int64_t)b * H + h) * T;
      stage_row_stats<BM, NT>(sL + buf * BM, sD + buf * BM, lse + bh, dvec + bh, m0, T);
    };

    load_core<BN, D, NT>(sK, kb + (int64_t)n0 * kld, kld, T - n0);
    load_core<BN, D, NT>(sV, vb + (int64_t)n0 * kld, kld, T - n0);
    stage(0, 0);
    cp_async_commit();

    float dK[8][4], dV[8][4];
    zero(dK);
    zero(dV);
    const int wg_key_min = n0 + wg * 64, warp_key_min = wg_key_min + warp * 16, key0 = warp_key_min + lane / 4;
    const uint16_t *myK = sK + wg * 64 * D, *myV = sV + wg * 64 * D;

    for (int it = 0; it < iters; it++) {
      const int buf = it & 1, m0 = (m_first + it % m_count) * BM;
      if (it + 1 < iters) {
        stage(it + 1, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      fence_async_smem();
      __syncthreads();
      if (wg_key_min <= m0 + BM - 1 && wg_key_min < T) {   /* uniform over the warpgroup */
        const uint16_t *cQ = sQ + buf * BM * D, *cO = sO + buf * BM * D;
        const float *cL = sL + buf * BM, *cD = sD + buf * BM;
        float p[8][4], dp[8][4];
        zero(p);
        zero(dp);
        reg_fence(p);
        reg_fence(dp);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) wgmma_ss<0>(p, kmajor<D>(myK, kk), kmajor<D>(cQ, kk));
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) wgmma_ss<0>(dp, kmajor<D>(myV, kk), kmajor<D>(cO, kk));
        wg_commit();
        wg_wait();
        reg_fence(p);
        reg_fence(dp);
        const bool masked = warp_key_min + 15 > m0 || m0 + BM > T;
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
          for (int e = 0; e < 4; e++) {
            const int c = j * 8 + (lane % 4) * 2 + (e & 1);   /* query within the block */
            float pe = fast_exp2(p[j][e] * scale_log2 - cL[c] * kLog2e);
            if (masked && (key0 + (e >> 1) * 8 > m0 + c || m0 + c >= T)) pe = 0;
            p[j][e] = pe;
            dp[j][e] = pe * (dp[j][e] - cD[c]);   /* dS^T */
          }
        uint32_t pa[4][4], sa[4][4];
#pragma unroll
        for (int kb2 = 0; kb2 < 4; kb2++) {
          to_a(pa[kb2], p, kb2);
          to_a(sa[kb2], dp, kb2);
        }
        reg_fence(dV);
        reg_fence(dK);
        wg_fence();
#pragma unroll
        for (int kb2 = 0; kb2 < BM / 16; kb2++) wgmma_rs<1>(dV, pa[kb2], mnmajor<D>(cO, kb2));
#pragma unroll
        for (int kb2 = 0; kb2 < BM / 16; kb2++) wgmma_rs<1>(dK, sa[kb2], mnmajor<D>(cQ, kb2));
        wg_commit();
        wg_wait();
        reg_fence(dV);
        reg_fence(dK);
      }
      __syncthreads();
    }
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
      const int key = key0 + rr * 8;
      if (key >= T) continue;
      const int64_t base = (((int64_t)b * T + key) * Hkv + g) * D + (lane % 4) * 2;
#pragma unroll
      for (int jd = 0; jd < 8; jd++) {
        store2(dk, dk_dtype, base + jd * 8, dK[jd][2 * rr] * scale, dK[jd][2 * rr + 1] * scale);
        store2(dv, dv_dtype, base + jd * 8, dV[jd][2 * rr], dV[jd][2 * rr + 1]);
      }
    }
  }   /* pass */
#endif
}

/* Sets *flag when the kernel that runs is the sm_90a build. */
__global__ void probe_kernel(int *flag) {
#if F2_SM90A
  *flag = 1;
#endif
}

/* ---------------------------------------------------------------- launchers */

template <int NWG, int MINB, bool PAIR>
int launch_dkdv(const bwd_args &a) {
  constexpr int D = 64, BM = 64, BN = 64 * NWG;
  const size_t smem = (size_t)(2 * BN + 4 * BM) * D * sizeof(uint16_t) + 4 * BM * sizeof(float);
  auto kernel = dkdv_wg<D, NWG, MINB, PAIR>;
  static bool opted;
  F2_TRY(smem_opt_in(kernel, smem, opted));
  const int64_t nkb = (a.d.T + BN - 1) / BN;
  dim3 grid((unsigned)(PAIR ? (nkb + 1) / 2 : nkb), (unsigned)(a.d.B * a.d.Hkv));
  kernel<<<grid, NWG * 128, smem, f2_cuda_stream()>>>(a.dk->data, a.dk->dtype, a.dv->data, a.dv->dtype, u16(a.q),
                                                      u16(a.k), u16(a.v), u16(a.dout), a.lse, a.dvec, (int)a.d.T,
                                                      (int)a.d.H, (int)a.d.Hkv, a.scale * kLog2e, a.scale);
  F2_CUDA_CHECK_LAUNCH("attention backward dK/dV (sm_90 warpgroup MMA)");
  return F2_OK;
}

}  // namespace

bool sm90_available() {
  static int known[64];   /* per device: 0 unknown, 1 yes, 2 no */
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return false;
  if (known[dev]) return known[dev] == 1;
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, dev) != cudaSuccess) return false;
  if (prop.major != 9 || prop.minor != 0) {
    known[dev] = 2;
    return false;
  }
  cudaStream_t s = f2_cuda_stream();
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  if (!s || cudaStreamIsCapturing(s, &cap) != cudaSuccess || cap != cudaStreamCaptureStatusNone) return false;
  int *flag = nullptr, host = 0;
  if (f2_cuda_alloc((void **)&flag, sizeof(int)) != F2_OK) return false;
  bool ok = cudaMemsetAsync(flag, 0, sizeof(int), s) == cudaSuccess;
  if (ok) {
    probe_kernel<<<1, 1, 0, s>>>(flag);
    ok = cudaGetLastError() == cudaSuccess && cudaMemcpyAsync(&host, flag, sizeof(int), cudaMemcpyDeviceToHost, s) == cudaSuccess &&
         cudaStreamSynchronize(s) == cudaSuccess;
  }
  f2_cuda_free(flag);
  known[dev] = ok && host == 1 ? 1 : 2;
  return known[dev] == 1;
}

/* The variant list <NWG, MINB, PAIR> (head dim 64). */
int sm90_dkdv(int variant, const bwd_args &a) {
  switch (variant) {
    case 0: return launch_dkdv<1, 3, true>(a);
    default: return launch_dkdv<2, 1, true>(a);
  }
}

}  // namespace f2attn
