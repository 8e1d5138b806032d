/* attention.cu — causal GQA attention on CUDA: forward (out, lse), backward (dq, dk, dv), decode.
 * q/out/dout/dq [B,T,H,Dh], k/v/dk/dv [B,T,Hkv,Dh], lse [B,H,T] f32; CPU reference: runtime/nn_cpu.c.
 *
 * Hot path (q, k, v and, backward, dout all bf16; Dh 64 or 128): flash attention on tensor cores
 * (mma.sync m16n8k16 bf16, fp32 accumulation), tiles staged in shared memory by cp.async, online
 * softmax in fp32 (exp2 of scores pre-scaled by scale*log2e), KV blocks above the diagonal skipped.
 * Each warp owns RM tiles of 16 rows, so a K/V/Q/dO fragment read from shared memory feeds RM MMAs;
 * tile shapes per head dim come in variants picked at run time (F2_ATTN_VARIANT, "tile variants"
 * below). P and dS are rounded to bf16 for their GEMMs, as every flash attention does. The backward is
 * deterministic without atomics: D_i = dout_i . out_i first, then one kernel per KV block for dK/dV
 * (looping over the query blocks of every head of its group in a fixed order) and either one per query
 * block for dQ (recomputing P and dP) or, fused, dQ partials per KV block written by the dK/dV kernel
 * to scratch and summed in KV-block order by a second kernel. Every other case (f32 or mixed inputs,
 * other head dims up to 1024, decode) takes a plain fp32 path: one block per query (or key) row, online
 * softmax over chunks of keys, sums in a fixed order; it matches the CPU to fp32 rounding. */
#include <stdlib.h>
#include <string.h>

#include "attention.cuh"

using namespace f2attn;

namespace {

/* ---------------------------------------------------------------- mma.sync helpers (sm_80+) */

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const uint16_t *p) {
  unsigned s = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const uint16_t *p) {
  unsigned s = (unsigned)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}
/* c[16x8] += a[16x16] b[16x8]; fragments as in the PTX ISA (thread t: rows t/4 and t/4+8, columns
 * 2(t%4), 2(t%4)+1 of c). */
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
/* ROWS rows of D bf16 from global (row r at g + r*ld; rows >= n_valid zero-filled) into shared memory
 * with row stride D+8 (the 16-byte pad keeps ldmatrix's eight row reads on distinct banks). */
template <int ROWS, int D, int NT>
__device__ __forceinline__ void load_tile(uint16_t *s, const uint16_t *g, int64_t ld, int n_valid) {
  constexpr int CH = D / 8;
#pragma unroll
  for (int c = threadIdx.x; c < ROWS * CH; c += NT) {
    int r = c / CH, col = (c % CH) * 8;
    bool ok = r < n_valid;
    cp_async16(s + r * (D + 8) + col, g + (ok ? (int64_t)r * ld + col : 0), ok);
  }
}

/* A warp's GEMMs work on RM tiles of 16 rows (rows 16r.. of the warp's slice) so that every B fragment
 * read from shared memory feeds RM MMAs.
 * acc[r][16 x 8*NB] = A[16 x D] B^T, tile r of A at sA + 16r rows (row stride D+8), B rows (the n index)
 * at sB. */
template <int D, int RM, int NB>
__device__ __forceinline__ void warp_gemm_abt(float (&acc)[RM][NB][4], const uint16_t *sA, const uint16_t *sB,
                                              int lane) {
  constexpr int SD = D + 8;
#pragma unroll
  for (int r = 0; r < RM; r++)
#pragma unroll
    for (int j = 0; j < NB; j++) acc[r][j][0] = acc[r][j][1] = acc[r][j][2] = acc[r][j][3] = 0;
#pragma unroll
  for (int kk = 0; kk < D / 16; kk++) {
    uint32_t a[RM][4];
#pragma unroll
    for (int r = 0; r < RM; r++)
      ldmatrix_x4(a[r], sA + (r * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * SD + kk * 16 + (lane >> 4) * 8);
#pragma unroll
    for (int j = 0; j < NB; j += 2) {
      uint32_t b[4];
      ldmatrix_x4(b, sB + (j * 8 + (lane & 7) + (lane >> 4) * 8) * SD + kk * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
      for (int r = 0; r < RM; r++) {
        mma_bf16(acc[r][j], a[r], b[0], b[1]);
        mma_bf16(acc[r][j + 1], a[r], b[2], b[3]);
      }
    }
  }
}

/* acc[r][16 x D] += P_r[16 x 16*KB] B with P in accumulator layout (p[r][2kb], p[r][2kb+1] hold columns
 * 16kb..16kb+15) and B rows (the k index) at sB, row stride D+8. */
template <int D, int RM, int KB>
__device__ __forceinline__ void warp_gemm_pb(float (&acc)[RM][D / 8][4], const float (&p)[RM][2 * KB][4],
                                             const uint16_t *sB, int lane) {
  constexpr int SD = D + 8;
#pragma unroll
  for (int kb = 0; kb < KB; kb++) {
    uint32_t a[RM][4];
#pragma unroll
    for (int r = 0; r < RM; r++) {
      a[r][0] = pack_bf16(p[r][2 * kb][0], p[r][2 * kb][1]);
      a[r][1] = pack_bf16(p[r][2 * kb][2], p[r][2 * kb][3]);
      a[r][2] = pack_bf16(p[r][2 * kb + 1][0], p[r][2 * kb + 1][1]);
      a[r][3] = pack_bf16(p[r][2 * kb + 1][2], p[r][2 * kb + 1][3]);
    }
#pragma unroll
    for (int jd = 0; jd < D / 8; jd += 2) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, sB + (kb * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * SD + jd * 8 + (lane >> 4) * 8);
#pragma unroll
      for (int r = 0; r < RM; r++) {
        mma_bf16(acc[r][jd], a[r], b[0], b[1]);
        mma_bf16(acc[r][jd + 1], a[r], b[2], b[3]);
      }
    }
  }
}

/* ---------------------------------------------------------------- tensor-core forward
 * Block: NW warps, each owning WR = 16 RM query rows, BM = WR NW queries of one (batch, head). KV blocks
 * of BN keys, double-buffered. Grid (ceil(T/BM), B*H), the longest (last) query blocks first. */
template <int D, int NW, int RM, int BN, int MINB>
__global__ void __launch_bounds__(NW * 32, MINB)
fwd_tc(void *out, int32_t out_dtype, float *lse, const uint16_t *__restrict__ q, const uint16_t *__restrict__ k,
       const uint16_t *__restrict__ v, int T, int H, int Hkv, float scale_log2) {
  constexpr int WR = 16 * RM, BM = WR * NW, SD = D + 8, NT = NW * 32;
  uint16_t *sQ = (uint16_t *)attn_smem, *sK = sQ + BM * SD, *sV = sK + 2 * BN * SD;
  const int mb = gridDim.x - 1 - blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, g = h / (H / Hkv);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, m0 = mb * BM;
  const int64_t qld = (int64_t)H * D, kld = (int64_t)Hkv * D;
  const uint16_t *qb = q + ((int64_t)b * T * H + h) * D;
  const uint16_t *kb = k + ((int64_t)b * T * Hkv + g) * D, *vb = v + ((int64_t)b * T * Hkv + g) * D;
  const int kv_end = min(T, m0 + BM), nblocks = (kv_end + BN - 1) / BN;

  load_tile<BM, D, NT>(sQ, qb + (int64_t)m0 * qld, qld, T - m0);
  load_tile<BN, D, NT>(sK, kb, kld, T);
  load_tile<BN, D, NT>(sV, vb, kld, T);
  cp_async_commit();

  float o[RM][D / 8][4];
  float mrow[RM][2], lrow[RM][2];
#pragma unroll
  for (int r = 0; r < RM; r++) {
#pragma unroll
    for (int j = 0; j < D / 8; j++) o[r][j][0] = o[r][j][1] = o[r][j][2] = o[r][j][3] = 0;
    mrow[r][0] = mrow[r][1] = -INFINITY;
    lrow[r][0] = lrow[r][1] = 0;
  }
  const int row0 = m0 + warp * WR + lane / 4, warp_row_min = m0 + warp * WR, warp_row_max = warp_row_min + WR - 1;

  for (int n = 0; n < nblocks; n++) {
    const int buf = n & 1;
    if (n + 1 < nblocks) {
      int next = (n + 1) * BN;
      load_tile<BN, D, NT>(sK + (buf ^ 1) * BN * SD, kb + (int64_t)next * kld, kld, T - next);
      load_tile<BN, D, NT>(sV + (buf ^ 1) * BN * SD, vb + (int64_t)next * kld, kld, T - next);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (n * BN <= warp_row_max) {   /* else every key of the block is after every row of this warp */
      const uint16_t *cK = sK + buf * BN * SD, *cV = sV + buf * BN * SD;
      float s[RM][BN / 8][4];
      warp_gemm_abt<D, RM, BN / 8>(s, sQ + warp * WR * SD, cK, lane);
      const bool masked = n * BN + BN - 1 > warp_row_min;   /* some key after some row: the diagonal */
#pragma unroll
      for (int r = 0; r < RM; r++)
#pragma unroll
        for (int j = 0; j < BN / 8; j++)
#pragma unroll
          for (int e = 0; e < 4; e++) {
            float x = s[r][j][e] * scale_log2;
            if (masked && n * BN + j * 8 + (lane % 4) * 2 + (e & 1) > row0 + r * 16 + (e >> 1) * 8) x = -INFINITY;
            s[r][j][e] = x;
          }
      /* Online softmax of the thread's rows (the 4 threads of a row share its max and rescaling). Block 0
       * holds key 0, which every row sees, so the running max is finite from then on. */
#pragma unroll
      for (int r = 0; r < RM; r++)
#pragma unroll
        for (int rr = 0; rr < 2; rr++) {
          float mx = -INFINITY;
#pragma unroll
          for (int j = 0; j < BN / 8; j++) mx = fmaxf(mx, fmaxf(s[r][j][2 * rr], s[r][j][2 * rr + 1]));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
          float mnew = fmaxf(mrow[r][rr], mx), msafe = mnew == -INFINITY ? 0.f : mnew;
          float alpha = fast_exp2(mrow[r][rr] - msafe), sum = 0;
          mrow[r][rr] = mnew;
#pragma unroll
          for (int j = 0; j < BN / 8; j++) {
            float p0 = fast_exp2(s[r][j][2 * rr] - msafe), p1 = fast_exp2(s[r][j][2 * rr + 1] - msafe);
            s[r][j][2 * rr] = p0;
            s[r][j][2 * rr + 1] = p1;
            sum += p0 + p1;
          }
          lrow[r][rr] = lrow[r][rr] * alpha + sum;
#pragma unroll
          for (int jd = 0; jd < D / 8; jd++) {
            o[r][jd][2 * rr] *= alpha;
            o[r][jd][2 * rr + 1] *= alpha;
          }
        }
      warp_gemm_pb<D, RM, BN / 16>(o, s, cV, lane);
    }
    __syncthreads();   /* the buffer is refilled next iteration */
  }

#pragma unroll
  for (int r = 0; r < RM; r++)
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
      float l = lrow[r][rr];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int row = row0 + r * 16 + rr * 8;
      if (row >= T) continue;
      const float inv = 1.0f / l;
      const int64_t base = (((int64_t)b * T + row) * H + h) * D + (lane % 4) * 2;
#pragma unroll
      for (int jd = 0; jd < D / 8; jd++)
        store2(out, out_dtype, base + jd * 8, o[r][jd][2 * rr] * inv, o[r][jd][2 * rr + 1] * inv);
      if (lse && lane % 4 == 0) lse[((int64_t)b * H + h) * T + row] = mrow[r][rr] * kLn2 + logf(l);
    }
}

/* ---------------------------------------------------------------- tensor-core backward
 * D_i = dout_i . out_i (fp32), one warp per row, written [B,H,T] like lse. */
__global__ void bwd_rowdot(float *dvec, const void *dout, int32_t dout_dtype, const void *out, int32_t out_dtype,
                           int64_t rows, int T, int H, int D) {
  const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int64_t r = (int64_t)blockIdx.x * warps + threadIdx.x / 32; r < rows; r += (int64_t)gridDim.x * warps) {
    float acc = 0;
    for (int d = lane; d < D; d += 32)
      acc += f2_load<float>(dout, dout_dtype, r * D + d) * f2_load<float>(out, out_dtype, r * D + d);
#pragma unroll
    for (int o = 16; o; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) {
      int64_t bt = r / H, h = r % H, b = bt / T, t = bt % T;
      dvec[(b * H + h) * T + t] = acc;
    }
  }
}

/* dQ: block of BM = 16 RM NW query rows of one (batch, head), WR = 16 RM per warp; KV blocks of BN keys,
 * double-buffered; per block S = Q K^T, P = exp(S - lse), dP = dO V^T, dS = P (dP - D), dQ += dS K;
 * dq = scale dQ. Grid (ceil(T/BM), B*H), the longest (last) query blocks first. */
template <int D, int NW, int RM, int BN, int MINB>
__global__ void __launch_bounds__(NW * 32, MINB)
bwd_dq_tc(void *dq, int32_t dq_dtype, const uint16_t *__restrict__ q, const uint16_t *__restrict__ k,
          const uint16_t *__restrict__ v, const uint16_t *__restrict__ dout, const float *__restrict__ lse,
          const float *__restrict__ dvec, int T, int H, int Hkv, float scale_log2, float scale) {
  constexpr int WR = 16 * RM, BM = WR * NW, SD = D + 8, NT = NW * 32;
  uint16_t *sQ = (uint16_t *)attn_smem, *sO = sQ + BM * SD, *sK = sO + BM * SD, *sV = sK + 2 * BN * SD;
  const int mb = gridDim.x - 1 - blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, g = h / (H / Hkv);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, m0 = mb * BM;
  const int64_t qld = (int64_t)H * D, kld = (int64_t)Hkv * D;
  const uint16_t *qb = q + ((int64_t)b * T * H + h) * D, *ob = dout + ((int64_t)b * T * H + h) * D;
  const uint16_t *kb = k + ((int64_t)b * T * Hkv + g) * D, *vb = v + ((int64_t)b * T * Hkv + g) * D;
  const int kv_end = min(T, m0 + BM), nblocks = (kv_end + BN - 1) / BN;

  load_tile<BM, D, NT>(sQ, qb + (int64_t)m0 * qld, qld, T - m0);
  load_tile<BM, D, NT>(sO, ob + (int64_t)m0 * qld, qld, T - m0);
  load_tile<BN, D, NT>(sK, kb, kld, T);
  load_tile<BN, D, NT>(sV, vb, kld, T);
  cp_async_commit();

  const int row0 = m0 + warp * WR + lane / 4, warp_row_min = m0 + warp * WR, warp_row_max = warp_row_min + WR - 1;
  float lse2[RM][2], dd[RM][2], acc[RM][D / 8][4];
#pragma unroll
  for (int r = 0; r < RM; r++) {
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
      const int row = row0 + r * 16 + rr * 8;
      const int64_t at = ((int64_t)b * H + h) * T + row;
      lse2[r][rr] = row < T ? lse[at] * kLog2e : 0.f;
      dd[r][rr] = row < T ? dvec[at] : 0.f;
    }
#pragma unroll
    for (int j = 0; j < D / 8; j++) acc[r][j][0] = acc[r][j][1] = acc[r][j][2] = acc[r][j][3] = 0;
  }

  for (int n = 0; n < nblocks; n++) {
    const int buf = n & 1;
    if (n + 1 < nblocks) {
      int next = (n + 1) * BN;
      load_tile<BN, D, NT>(sK + (buf ^ 1) * BN * SD, kb + (int64_t)next * kld, kld, T - next);
      load_tile<BN, D, NT>(sV + (buf ^ 1) * BN * SD, vb + (int64_t)next * kld, kld, T - next);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (n * BN <= warp_row_max) {
      const uint16_t *cK = sK + buf * BN * SD, *cV = sV + buf * BN * SD;
      float p[RM][BN / 8][4], dp[RM][BN / 8][4];
      warp_gemm_abt<D, RM, BN / 8>(p, sQ + warp * WR * SD, cK, lane);
      warp_gemm_abt<D, RM, BN / 8>(dp, sO + warp * WR * SD, cV, lane);
      const bool masked = n * BN + BN - 1 > warp_row_min;
#pragma unroll
      for (int r = 0; r < RM; r++)
#pragma unroll
        for (int j = 0; j < BN / 8; j++)
#pragma unroll
          for (int e = 0; e < 4; e++) {
            const int rr = e >> 1;
            float pe = fast_exp2(p[r][j][e] * scale_log2 - lse2[r][rr]);
            if (masked && n * BN + j * 8 + (lane % 4) * 2 + (e & 1) > row0 + r * 16 + rr * 8) pe = 0;
            p[r][j][e] = pe * (dp[r][j][e] - dd[r][rr]);   /* dS */
          }
      warp_gemm_pb<D, RM, BN / 16>(acc, p, cK, lane);
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < RM; r++)
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
      const int row = row0 + r * 16 + rr * 8;
      if (row >= T) continue;
      const int64_t base = (((int64_t)b * T + row) * H + h) * D + (lane % 4) * 2;
#pragma unroll
      for (int jd = 0; jd < D / 8; jd++)
        store2(dq, dq_dtype, base + jd * 8, acc[r][jd][2 * rr] * scale, acc[r][jd][2 * rr + 1] * scale);
    }
}

/* dK, dV: block of BN = 16 RM NW keys of one (batch, KV head), WK = 16 RM per warp; loops over the heads
 * of the group, then the query blocks (BM queries, double-buffered) from the diagonal on, in that fixed
 * order. Per block, transposed: S^T = K Q^T, P^T = exp(S^T - lse), dP^T = V dO^T, dV += P^T dO,
 * dS^T = P^T (dP^T - D), dK += dS^T Q; dk = scale dK. Grid (ceil(T/BN), B*Hkv), the longest (first)
 * key blocks first. PAIR: block x does key blocks x and nkb-1-x one after the other (grid x ceil(nkb/2)),
 * so every block has the same work: with causal masking key block x sees T - x BN queries, and the
 * few longest blocks otherwise set the kernel's time when the grid is about one wave. FUSEDQ: per query
 * block also dQ's partial over these keys, dS K, with dS^T through shared memory, to scratch dqp (fp32,
 * no atomics); bwd_dq_reduce sums the partials. Costs one GEMM and the partials' traffic (about
 * nkb/2 fp32 copies of dq) instead of the dQ kernel's three GEMMs. */
template <int D, int NW, int RM, int BM, int MINB, bool PAIR, bool FUSEDQ>
__global__ void __launch_bounds__(NW * 32, MINB)
bwd_dkdv_tc(void *dk, int32_t dk_dtype, void *dv, int32_t dv_dtype, float *__restrict__ dqp,
            const uint16_t *__restrict__ q, const uint16_t *__restrict__ k, const uint16_t *__restrict__ v,
            const uint16_t *__restrict__ dout, const float *__restrict__ lse, const float *__restrict__ dvec, int T,
            int H, int Hkv, float scale_log2, float scale) {
  constexpr int WK = 16 * RM, BN = WK * NW, SD = D + 8, NT = NW * 32, SS = BM + 8;
  static_assert(!FUSEDQ || BN % BM == 0, "fused dQ: query blocks start on the key block");
  uint16_t *sK = (uint16_t *)attn_smem, *sV = sK + BN * SD, *sQ = sV + BN * SD, *sO = sQ + 2 * BM * SD;
  float *sL = (float *)(sO + 2 * BM * SD), *sD = sL + 2 * BM;
  uint16_t *sS = (uint16_t *)(sD + 2 * BM);   /* FUSEDQ: dS^T [BN keys][BM queries], row stride SS */
  const int bg = blockIdx.y, b = bg / Hkv, g = bg % Hkv, group = H / Hkv;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t qld = (int64_t)H * D, kld = (int64_t)Hkv * D;
  const uint16_t *kb = k + ((int64_t)b * T * Hkv + g) * D, *vb = v + ((int64_t)b * T * Hkv + g) * D;
  const int nkb = (T + BN - 1) / BN, partner = nkb - 1 - (int)blockIdx.x;
  const int passes = PAIR && partner != (int)blockIdx.x ? 2 : 1;
  for (int pass = 0; pass < passes; pass++) {
    if (pass) __syncthreads();   /* the first pass's last readers of shared memory are done */
    const int nb = pass ? partner : blockIdx.x, n0 = nb * BN;
    const int m_first = n0 / BM, m_count = (T + BM - 1) / BM - m_first, iters = group * m_count;
    /* FUSEDQ: dqp holds, per (batch, head), the dQ partial of key block n for rows t >= n BN at row
     * n T - BN n (n-1) / 2 + t - n BN (the blocks' row ranges packed one after the other), R rows in all. */
    const int64_t R = (int64_t)nkb * T - (int64_t)BN * nkb * (nkb - 1) / 2,
                  prow = (int64_t)nb * T - (int64_t)BN * nb * (nb - 1) / 2;

    /* Stages query block `it` (head, block) into buffer buf, all by cp.async: Q, dO, lse and D (0 past T,
     * where the mask zeroes P anyway). */
    auto stage = [&](int it, int buf) {
      const int h = g * group + it / m_count, m0 = (m_first + it % m_count) * BM;
      const int64_t off = ((int64_t)b * T * H + h) * D + (int64_t)m0 * qld;
      load_tile<BM, D, NT>(sQ + buf * BM * SD, q + off, qld, T - m0);
      load_tile<BM, D, NT>(sO + buf * BM * SD, dout + off, qld, T - m0);
      const int64_t bh = ((int64_t)b * H + h) * T;
      stage_row_stats<BM, NT>(sL + buf * BM, sD + buf * BM, lse + bh, dvec + bh, m0, T);
    };

    load_tile<BN, D, NT>(sK, kb + (int64_t)n0 * kld, kld, T - n0);
    load_tile<BN, D, NT>(sV, vb + (int64_t)n0 * kld, kld, T - n0);
    stage(0, 0);
    cp_async_commit();

    float dK[RM][D / 8][4], dV[RM][D / 8][4];
#pragma unroll
    for (int r = 0; r < RM; r++)
#pragma unroll
      for (int j = 0; j < D / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) dK[r][j][e] = dV[r][j][e] = 0;
    const int key0 = n0 + warp * WK + lane / 4, warp_key_min = n0 + warp * WK, warp_key_max = warp_key_min + WK - 1;

    for (int it = 0; it < iters; it++) {
      const int buf = it & 1, m0 = (m_first + it % m_count) * BM;
      if (it + 1 < iters) {
        stage(it + 1, buf ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      if (warp_key_min <= m0 + BM - 1 && warp_key_min < T) {   /* else no query of the block sees these keys */
        const uint16_t *cQ = sQ + buf * BM * SD, *cO = sO + buf * BM * SD;
        const float *cL = sL + buf * BM, *cD = sD + buf * BM;
        float p[RM][BM / 8][4], dp[RM][BM / 8][4];
        warp_gemm_abt<D, RM, BM / 8>(p, sK + warp * WK * SD, cQ, lane);
        warp_gemm_abt<D, RM, BM / 8>(dp, sV + warp * WK * SD, cO, lane);
        const bool masked = warp_key_max > m0 || m0 + BM > T;
#pragma unroll
        for (int r = 0; r < RM; r++)
#pragma unroll
          for (int j = 0; j < BM / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
              const int c = j * 8 + (lane % 4) * 2 + (e & 1);   /* query within the block */
              float pe = fast_exp2(p[r][j][e] * scale_log2 - cL[c] * kLog2e);
              if (masked && (key0 + r * 16 + (e >> 1) * 8 > m0 + c || m0 + c >= T)) pe = 0;
              p[r][j][e] = pe;
              dp[r][j][e] = pe * (dp[r][j][e] - cD[c]);   /* dS^T */
            }
        if constexpr (FUSEDQ) {   /* dS^T of the warp's keys, bf16 as in the GEMMs, for the dQ GEMM below */
#pragma unroll
          for (int r = 0; r < RM; r++)
#pragma unroll
            for (int j = 0; j < BM / 8; j++)
#pragma unroll
              for (int rr = 0; rr < 2; rr++)
                *(uint32_t *)(sS + (warp * WK + r * 16 + lane / 4 + rr * 8) * SS + j * 8 + (lane % 4) * 2) =
                    pack_bf16(dp[r][j][2 * rr], dp[r][j][2 * rr + 1]);
        }
        warp_gemm_pb<D, RM, BM / 16>(dV, p, cO, lane);
        warp_gemm_pb<D, RM, BM / 16>(dK, dp, cQ, lane);
      } else if constexpr (FUSEDQ) {   /* the warp's keys see none of these queries: dS^T = 0 */
        for (int i = lane; i < WK * BM / 2; i += 32)
          *(uint32_t *)(sS + (warp * WK + i / (BM / 2)) * SS + (i % (BM / 2)) * 2) = 0;
      }
      if constexpr (FUSEDQ) {
        /* The query block's dQ partial over this key block, dS [BM x BN] K [BN x D], in 16 x 16 tiles
         * spread over the warps, stored fp32 to dqp (summed over key blocks by bwd_dq_reduce). */
        __syncthreads();
        const int h = g * group + it / m_count;
        float *part = dqp + ((int64_t)(b * H + h) * R + prow + (m0 - n0)) * D;
        for (int item = warp; item < (BM / 16) * (D / 16); item += NW) {
          const int mt = item / (D / 16), nd = item % (D / 16);
          float acc[2][4] = {};
#pragma unroll
          for (int kb = 0; kb < BN / 16; kb++) {
            uint32_t a[4], bk[4];
            ldmatrix_x4_trans(a, sS + (kb * 16 + (lane & 7) + (lane >> 4) * 8) * SS + mt * 16 + ((lane >> 3) & 1) * 8);
            ldmatrix_x4_trans(bk, sK + (kb * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * SD + nd * 16 + (lane >> 4) * 8);
            mma_bf16(acc[0], a, bk[0], bk[1]);
            mma_bf16(acc[1], a, bk[2], bk[3]);
          }
#pragma unroll
          for (int rr = 0; rr < 2; rr++) {
            const int row = mt * 16 + lane / 4 + rr * 8;
            if (m0 + row >= T) continue;
#pragma unroll
            for (int jj = 0; jj < 2; jj++)
              *(float2 *)(part + (int64_t)row * D + nd * 16 + jj * 8 + (lane % 4) * 2) =
                  make_float2(acc[jj][2 * rr], acc[jj][2 * rr + 1]);
          }
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int r = 0; r < RM; r++)
#pragma unroll
      for (int rr = 0; rr < 2; rr++) {
        const int key = key0 + r * 16 + rr * 8;
        if (key >= T) continue;
        const int64_t base = (((int64_t)b * T + key) * Hkv + g) * D + (lane % 4) * 2;
#pragma unroll
        for (int jd = 0; jd < D / 8; jd++) {
          store2(dk, dk_dtype, base + jd * 8, dK[r][jd][2 * rr] * scale, dK[r][jd][2 * rr + 1] * scale);
          store2(dv, dv_dtype, base + jd * 8, dV[r][jd][2 * rr], dV[r][jd][2 * rr + 1]);
        }
      }
  }   /* pass */
}

/* Fused dQ's second step: dq[b,t,h] = scale sum over key blocks n = 0 .. t/BN of the partials (layout in
 * bwd_dkdv_tc), in that order; a thread per 4 columns of a row. */
__global__ void bwd_dq_reduce(void *dq, int32_t dq_dtype, const float *__restrict__ part, int B, int T, int H, int D,
                              int BN, int64_t R, float scale) {
  const int64_t n = (int64_t)B * T * H * (D / 4);
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int c = (int)(i % (D / 4)) * 4;
    const int64_t row = i / (D / 4), bt = row / H;
    const int h = (int)(row % H), t = (int)(bt % T), b = (int)(bt / T);
    const float *p = part + ((int64_t)(b * H + h) * R + t) * D + c;   /* key block 0: its row t */
    float4 s = *(const float4 *)p;
    for (int nb = 1; nb * BN <= t; nb++) {
      p += (int64_t)(T - BN * nb) * D;   /* row of key block nb = row of nb-1 + T - nb BN */
      const float4 x = *(const float4 *)p;
      s.x += x.x;
      s.y += x.y;
      s.z += x.z;
      s.w += x.w;
    }
    const int64_t off = row * D + c;
    store2(dq, dq_dtype, off, s.x * scale, s.y * scale);
    store2(dq, dq_dtype, off + 2, s.z * scale, s.w * scale);
  }
}

/* ---------------------------------------------------------------- plain fp32 path
 * 128 threads per row; each thread owns head dims tid, tid+128, ... (up to 8 of them: Dh <= 1024). */
constexpr int kGT = 128, kGPer = 8;

/* Sum (or max) over the block, the same value in every thread; deterministic (fixed tree). */
template <bool MAX>
__device__ __forceinline__ float block_reduce(float x, float *red) {
#pragma unroll
  for (int o = 16; o; o >>= 1) {
    float y = __shfl_xor_sync(0xffffffffu, x, o);
    x = MAX ? fmaxf(x, y) : x + y;
  }
  __syncthreads();   /* red's previous readers are done */
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = x;
  __syncthreads();
  float r = red[0];
#pragma unroll
  for (int w = 1; w < kGT / 32; w++) r = MAX ? fmaxf(r, red[w]) : r + red[w];
  return r;
}

struct ftensor {   /* a tensor's data and dtype, for the plain path's loads */
  const void *p;
  int32_t dt;
};
__device__ __forceinline__ float ld(ftensor t, int64_t i) { return f2_load<float>(t.p, t.dt, i); }

/* Forward and decode: block (query i, batch*head). Query i is at position n_past + i and sees keys
 * 0 .. n_past+i of k/v [B,Tkv,Hkv,D]. */
__global__ void __launch_bounds__(kGT)
fwd_plain(void *out, int32_t out_dtype, float *lse, ftensor q, ftensor k, ftensor v, int Tq, int Tkv, int H, int Hkv,
          int D, int64_t n_past, float scale) {
  float *sq = (float *)attn_smem, *sp = sq + D, *red = sp + kGT;
  const int i = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, g = h / (H / Hkv), tid = threadIdx.x;
  const int64_t qoff = (((int64_t)b * Tq + i) * H + h) * D, kbase = ((int64_t)b * Tkv * Hkv + g) * D,
                kld = (int64_t)Hkv * D, nkeys = n_past + i + 1;
  for (int d = tid; d < D; d += kGT) sq[d] = ld(q, qoff + d);
  __syncthreads();
  float o[kGPer] = {}, m = -INFINITY, l = 0;
  for (int64_t j0 = 0; j0 < nkeys; j0 += kGT) {
    const int64_t j = j0 + tid;
    float s = -INFINITY;
    if (j < nkeys) {
      float dot = 0;
      for (int d = 0; d < D; d++) dot += sq[d] * ld(k, kbase + j * kld + d);
      s = dot * scale;
    }
    const float mnew = fmaxf(m, block_reduce<true>(s, red));   /* finite: key j0 is in range */
    const float alpha = expf(m - mnew), p = j < nkeys ? expf(s - mnew) : 0.f;
    sp[tid] = p;
    l = l * alpha + block_reduce<false>(p, red);   /* its barriers publish sp */
    m = mnew;
    const int nj = (int)min((int64_t)kGT, nkeys - j0);
#pragma unroll
    for (int c = 0; c < kGPer; c++) {
      const int d = tid + c * kGT;
      if (d >= D) break;
      float acc = o[c] * alpha;
      for (int jj = 0; jj < nj; jj++) acc += sp[jj] * ld(v, kbase + (j0 + jj) * kld + d);
      o[c] = acc;
    }
  }
#pragma unroll
  for (int c = 0; c < kGPer; c++) {
    const int d = tid + c * kGT;
    if (d < D) f2_store<float>(out, out_dtype, qoff + d, o[c] / l);
  }
  if (lse && tid == 0) lse[((int64_t)b * H + h) * Tq + i] = m + logf(l);
}

/* dq: block (query i, batch*head): dq_i = scale sum_j p_ij (dout_i . v_j - D_i) k_j, j = 0..i. */
__global__ void __launch_bounds__(kGT)
bwd_dq_plain(void *dq, int32_t dq_dtype, ftensor q, ftensor k, ftensor v, ftensor dout, const float *lse,
             const float *dvec, int T, int H, int Hkv, int D, float scale) {
  float *sq = (float *)attn_smem, *so = sq + D, *sds = so + D;
  const int i = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H, g = h / (H / Hkv), tid = threadIdx.x;
  const int64_t qoff = (((int64_t)b * T + i) * H + h) * D, kbase = ((int64_t)b * T * Hkv + g) * D,
                kld = (int64_t)Hkv * D, at = ((int64_t)b * H + h) * T + i;
  for (int d = tid; d < D; d += kGT) {
    sq[d] = ld(q, qoff + d);
    so[d] = ld(dout, qoff + d);
  }
  const float lse_i = lse[at], d_i = dvec[at];
  float acc[kGPer] = {};
  for (int j0 = 0; j0 <= i; j0 += kGT) {
    const int j = j0 + tid;
    __syncthreads();   /* sq/so written; sds's previous readers done */
    float ds = 0;
    if (j <= i) {
      float s = 0, dp = 0;
      for (int d = 0; d < D; d++) {
        s += sq[d] * ld(k, kbase + j * kld + d);
        dp += so[d] * ld(v, kbase + j * kld + d);
      }
      ds = expf(s * scale - lse_i) * (dp - d_i);
    }
    sds[tid] = ds;
    __syncthreads();
    const int nj = min(kGT, i + 1 - j0);
#pragma unroll
    for (int c = 0; c < kGPer; c++) {
      const int d = tid + c * kGT;
      if (d >= D) break;
      float a = acc[c];
      for (int jj = 0; jj < nj; jj++) a += sds[jj] * ld(k, kbase + (j0 + jj) * kld + d);
      acc[c] = a;
    }
  }
#pragma unroll
  for (int c = 0; c < kGPer; c++) {
    const int d = tid + c * kGT;
    if (d < D) f2_store<float>(dq, dq_dtype, qoff + d, acc[c] * scale);
  }
}

/* dk, dv: block (key j, batch*kv head), over the group's heads, then queries i = j..T-1 in order:
 * dv_j = sum p_ij dout_i, dk_j = scale sum p_ij (dout_i . v_j - D_i) q_i. */
__global__ void __launch_bounds__(kGT)
bwd_dkdv_plain(void *dk, int32_t dk_dtype, void *dv, int32_t dv_dtype, ftensor q, ftensor k, ftensor v, ftensor dout,
               const float *lse, const float *dvec, int T, int H, int Hkv, int D, float scale) {
  float *sk = (float *)attn_smem, *sv = sk + D, *sp = sv + D, *sds = sp + kGT;
  const int j = blockIdx.x, bg = blockIdx.y, b = bg / Hkv, g = bg % Hkv, group = H / Hkv, tid = threadIdx.x;
  const int64_t koff = (((int64_t)b * T + j) * Hkv + g) * D, qld = (int64_t)H * D;
  for (int d = tid; d < D; d += kGT) {
    sk[d] = ld(k, koff + d);
    sv[d] = ld(v, koff + d);
  }
  float ak[kGPer] = {}, av[kGPer] = {};
  for (int h = g * group; h < (g + 1) * group; h++) {
    const int64_t qbase = ((int64_t)b * T * H + h) * D, lbase = ((int64_t)b * H + h) * T;
    for (int i0 = j; i0 < T; i0 += kGT) {
      const int i = i0 + tid;
      __syncthreads();
      float p = 0, ds = 0;
      if (i < T) {
        float s = 0, dp = 0;
        for (int d = 0; d < D; d++) {
          s += ld(q, qbase + i * qld + d) * sk[d];
          dp += ld(dout, qbase + i * qld + d) * sv[d];
        }
        p = expf(s * scale - lse[lbase + i]);
        ds = p * (dp - dvec[lbase + i]);
      }
      sp[tid] = p;
      sds[tid] = ds;
      __syncthreads();
      const int ni = min(kGT, T - i0);
#pragma unroll
      for (int c = 0; c < kGPer; c++) {
        const int d = tid + c * kGT;
        if (d >= D) break;
        float a = ak[c], w = av[c];
        for (int ii = 0; ii < ni; ii++) {
          const int64_t at = qbase + (i0 + ii) * qld + d;
          a += sds[ii] * ld(q, at);
          w += sp[ii] * ld(dout, at);
        }
        ak[c] = a;
        av[c] = w;
      }
    }
  }
#pragma unroll
  for (int c = 0; c < kGPer; c++) {
    const int d = tid + c * kGT;
    if (d >= D) break;
    f2_store<float>(dk, dk_dtype, koff + d, ak[c] * scale);
    f2_store<float>(dv, dv_dtype, koff + d, av[c]);
  }
}

/* ---------------------------------------------------------------- host side */

dims dims_of(const f2_tensor *q, const f2_tensor *k) {
  return {q->shape[0], q->shape[1], q->shape[2], k->shape[2], q->shape[3]};
}

/* Sizes the kernels index with 32-bit ints and grid dimensions (batch*heads is gridDim.y). */
int check_sizes(const char *op, dims d) {
  if (d.T > INT32_MAX / 2 || d.D > 1024)
    return F2_FAIL(F2_ERR_UNSUPPORTED, "%s: seq %lld / head_dim %lld too large for the CUDA kernels", op,
                   (long long)d.T, (long long)d.D);
  if (d.B * d.H > 65535)
    return F2_FAIL(F2_ERR_UNSUPPORTED, "%s: batch*heads = %lld above the CUDA grid's 65535", op,
                   (long long)(d.B * d.H));
  return F2_OK;
}

bool aligned16(const f2_tensor *t) { return ((uintptr_t)t->data & 15) == 0; }

/* The tensor-core path takes bf16 operands (in), head_dim 64 or 128, and 16-byte aligned data for the
 * operands' cp.async and the outputs' (out) paired stores. */
bool use_tc(dims d, const f2_tensor *const *in, int n_in, const f2_tensor *const *out, int n_out) {
  if (d.D != 64 && d.D != 128) return false;
  for (int i = 0; i < n_in; i++)
    if (in[i]->dtype != F2_BF16 || !aligned16(in[i])) return false;
  for (int i = 0; i < n_out; i++)
    if (out[i] && !aligned16(out[i])) return false;
  return true;
}

ftensor ft(const f2_tensor *t) { return {t->data, t->dtype}; }

/* ---------------------------------------------------------------- tile variants
 * Each tensor-core kernel comes in a few tile shapes per head dim, picked at run time by
 * F2_ATTN_VARIANT, e.g. "fwd=1,dq=0,kv=2": per kernel an index into its list below (kernels not named keep
 * their default, a later entry overrides an earlier one). It is read at every call (a getenv, nothing next
 * to a launch) so that bench_attention can time every variant in one process; a CUDA graph keeps the
 * variants it was captured with. Shapes: NW warps of RM 16-row tiles each (fwd, dQ: query rows; dK/dV:
 * keys), BN keys (fwd, dQ) or BM queries (dK/dV) per inner block; MINB asks the compiler for registers
 * that fit MINB blocks per SM (65536 / (MINB * 32 NW) each, beyond that it spills); PAIR balances dK/dV's
 * causal work (see bwd_dkdv_tc). More rows per warp reuse each fragment read from shared memory more
 * often; fewer keep more warps resident. The defaults are what bench_attention (which times every variant)
 * measured fastest on an H200: kv=5 (4 warps of 1 tile, 64-query blocks, 3 blocks/SM, paired) took the
 * SmolLM2 8x2048 backward from 0.873 to 0.689 ms and Qwen3-4B 4x2048 from 2.394 to 2.110 ms; the other
 * kernels' index 0 was within noise of the best (docs/performance.md).
 * The head dim 64 dK/dV list ends with attention_sm90.cu's warpgroup-MMA kernels (from index kMmaKv64
 * on), the default on a GPU that runs them (sm90_available(): 0.689 -> 0.669 ms for SmolLM2's 8x2048
 * backward on an H200); elsewhere those indices run the mma.sync default. fwd=5 measured 3% under fwd=0
 * on the same card (twice), so it became head dim 64's default. */
struct attn_variant {
  int fwd, dq, kv;
};
constexpr int kMmaKv64 = 15;   /* the mma.sync dK/dV list's length (head dim 64) */
constexpr attn_variant kDefault64 = {5, 0, 5}, kDefaultSm90 = {5, 0, kMmaKv64}, kDefault128 = {0, 0, 5};
constexpr attn_variant kCount64 = {6, 5, kMmaKv64 + kSm90Kv}, kCount128 = {5, 5, 10};   /* the lists' lengths */

int read_variant(const char *op, int64_t D, attn_variant *v) {
  *v = D == 64 ? (sm90_available() ? kDefaultSm90 : kDefault64) : kDefault128;
  const attn_variant cnt = D == 64 ? kCount64 : kCount128;
  const char *env = getenv("F2_ATTN_VARIANT");
  if (!env) return F2_OK;
  for (const char *s = env; *s;) {
    if (*s == ',' || *s == ' ') {
      s++;
      continue;
    }
    int *dst = !strncmp(s, "fwd=", 4)  ? &v->fwd
               : !strncmp(s, "dq=", 3) ? &v->dq
               : !strncmp(s, "kv=", 3) ? &v->kv
                                       : nullptr;
    if (!dst)
      return F2_FAIL(F2_ERR_ARG, "%s: F2_ATTN_VARIANT \"%s\": expected fwd=N, dq=N, kv=N separated by commas", op,
                     env);
    s = strchr(s, '=') + 1;
    char *end;
    long n = strtol(s, &end, 10);
    if (end == s || n < 0 || n > 1000)
      return F2_FAIL(F2_ERR_ARG, "%s: F2_ATTN_VARIANT \"%s\": expected a variant index after '='", op, env);
    *dst = (int)n;
    s = end;
  }
  const char *bad = v->fwd >= cnt.fwd ? "fwd" : v->dq >= cnt.dq ? "dq" : v->kv >= cnt.kv ? "kv" : nullptr;
  if (bad)
    return F2_FAIL(F2_ERR_ARG,
                   "%s: F2_ATTN_VARIANT \"%s\": %s variant out of range for head_dim %d "
                   "(fwd 0..%d, dq 0..%d, kv 0..%d)",
                   op, env, bad, (int)D, cnt.fwd - 1, cnt.dq - 1, cnt.kv - 1);
  return F2_OK;
}

template <int D, int NW, int RM, int BN, int MINB>
int launch_fwd_tc(f2_tensor *out, f2_tensor *lse, const f2_tensor *q, const f2_tensor *k, const f2_tensor *v,
                  dims d, float scale) {
  constexpr int BM = 16 * RM * NW;
  const size_t smem = (size_t)(BM + 4 * BN) * (D + 8) * sizeof(uint16_t);
  auto kernel = fwd_tc<D, NW, RM, BN, MINB>;
  static bool opted;
  F2_TRY(smem_opt_in(kernel, smem, opted));
  dim3 grid((unsigned)((d.T + BM - 1) / BM), (unsigned)(d.B * d.H));
  kernel<<<grid, NW * 32, smem, f2_cuda_stream()>>>(out->data, out->dtype, lse ? (float *)lse->data : nullptr, u16(q),
                                                    u16(k), u16(v), (int)d.T, (int)d.H, (int)d.Hkv, scale * kLog2e);
  F2_CUDA_CHECK_LAUNCH("attention forward (tensor cores)");
  return F2_OK;
}

template <int D, int NW, int RM, int BN, int MINB>
int launch_dq_tc(const bwd_args &a) {
  constexpr int BM = 16 * RM * NW;
  const size_t smem = (size_t)(2 * BM + 4 * BN) * (D + 8) * sizeof(uint16_t);
  auto kernel = bwd_dq_tc<D, NW, RM, BN, MINB>;
  static bool opted;
  F2_TRY(smem_opt_in(kernel, smem, opted));
  dim3 grid((unsigned)((a.d.T + BM - 1) / BM), (unsigned)(a.d.B * a.d.H));
  kernel<<<grid, NW * 32, smem, a.stream>>>(a.dq->data, a.dq->dtype, u16(a.q), u16(a.k), u16(a.v),
                                                    u16(a.dout), a.lse, a.dvec, (int)a.d.T, (int)a.d.H,
                                                    (int)a.d.Hkv, a.scale * kLog2e, a.scale);
  F2_CUDA_CHECK_LAUNCH("attention backward dQ (tensor cores)");
  return F2_OK;
}

/* dK/dV; FUSEDQ: dQ too (partials in scratch, then bwd_dq_reduce), *dq_done set. */
template <int D, int NW, int RM, int BM, int MINB, bool PAIR, bool FUSEDQ = false>
int launch_kv_tc(const bwd_args &a, bool *dq_done) {
  constexpr int BN = 16 * RM * NW;
  const size_t smem = (size_t)(2 * BN + 4 * BM) * (D + 8) * sizeof(uint16_t) + 4 * BM * sizeof(float) +
                      (FUSEDQ ? (size_t)BN * (BM + 8) * sizeof(uint16_t) : 0);
  auto kernel = bwd_dkdv_tc<D, NW, RM, BM, MINB, PAIR, FUSEDQ>;
  static bool opted;
  F2_TRY(smem_opt_in(kernel, smem, opted));
  const int64_t nkb = (a.d.T + BN - 1) / BN, R = nkb * a.d.T - BN * nkb * (nkb - 1) / 2;
  float *part = nullptr;
  if (FUSEDQ) F2_TRY(f2_cuda_alloc((void **)&part, (size_t)(a.d.B * a.d.H * R * D) * sizeof(float)));
  dim3 grid((unsigned)(PAIR ? (nkb + 1) / 2 : nkb), (unsigned)(a.d.B * a.d.Hkv));
  kernel<<<grid, NW * 32, smem, f2_cuda_stream()>>>(a.dk->data, a.dk->dtype, a.dv->data, a.dv->dtype, part, u16(a.q),
                                                    u16(a.k), u16(a.v), u16(a.dout), a.lse, a.dvec, (int)a.d.T,
                                                    (int)a.d.H, (int)a.d.Hkv, a.scale * kLog2e, a.scale);
  cudaError_t e = cudaGetLastError();
  if (FUSEDQ && e == cudaSuccess) {
    const int64_t n = a.d.B * a.d.T * a.d.H * (D / 4);
    bwd_dq_reduce<<<f2_blocks(n, 256), 256, 0, f2_cuda_stream()>>>(a.dq->data, a.dq->dtype, part, (int)a.d.B,
                                                                   (int)a.d.T, (int)a.d.H, D, BN, R, a.scale);
    e = cudaGetLastError();
    *dq_done = true;
  }
  if (part) f2_cuda_free(part);   /* stream-ordered */
  if (e != cudaSuccess)
    return F2_FAIL(F2_ERR_CUDA, "attention backward dK/dV (tensor cores): kernel launch failed: %s",
                   cudaGetErrorString(e));
  return F2_OK;
}

/* The variant lists: <NW, RM, BN, MINB> (fwd, dq), <NW, RM, BM, MINB, PAIR, FUSEDQ> (kv; a fused one
 * makes the dq index moot). */
template <int D>
int launch_fwd_variant(int i, f2_tensor *out, f2_tensor *lse, const f2_tensor *q, const f2_tensor *k,
                       const f2_tensor *v, dims d, float scale) {
  if constexpr (D == 64) {
    switch (i) {
      case 0: return launch_fwd_tc<D, 4, 2, 64, 1>(out, lse, q, k, v, d, scale);
      case 1: return launch_fwd_tc<D, 4, 1, 64, 3>(out, lse, q, k, v, d, scale);
      case 2: return launch_fwd_tc<D, 8, 1, 64, 2>(out, lse, q, k, v, d, scale);
      case 3: return launch_fwd_tc<D, 8, 1, 128, 1>(out, lse, q, k, v, d, scale);
      case 4: return launch_fwd_tc<D, 4, 2, 32, 2>(out, lse, q, k, v, d, scale);
      default: return launch_fwd_tc<D, 4, 2, 128, 1>(out, lse, q, k, v, d, scale);
    }
  } else {
    switch (i) {
      case 0: return launch_fwd_tc<D, 4, 2, 32, 1>(out, lse, q, k, v, d, scale);
      case 1: return launch_fwd_tc<D, 4, 1, 64, 2>(out, lse, q, k, v, d, scale);
      case 2: return launch_fwd_tc<D, 8, 1, 64, 1>(out, lse, q, k, v, d, scale);
      case 3: return launch_fwd_tc<D, 4, 1, 32, 3>(out, lse, q, k, v, d, scale);
      default: return launch_fwd_tc<D, 8, 1, 32, 1>(out, lse, q, k, v, d, scale);
    }
  }
}

template <int D>
int launch_dq_variant(int i, const bwd_args &a) {
  if constexpr (D == 64) {
    switch (i) {
      case 0: return launch_dq_tc<D, 4, 2, 32, 1>(a);
      case 1: return launch_dq_tc<D, 4, 1, 64, 3>(a);
      case 2: return launch_dq_tc<D, 8, 1, 64, 1>(a);
      case 3: return launch_dq_tc<D, 4, 1, 32, 4>(a);
      default: return launch_dq_tc<D, 8, 1, 32, 2>(a);
    }
  } else {
    switch (i) {
      case 0: return launch_dq_tc<D, 4, 1, 64, 1>(a);
      case 1: return launch_dq_tc<D, 4, 1, 32, 3>(a);
      case 2: return launch_dq_tc<D, 8, 1, 64, 1>(a);
      case 3: return launch_dq_tc<D, 8, 1, 32, 1>(a);
      default: return launch_dq_tc<D, 4, 1, 16, 3>(a);
    }
  }
}

template <int D>
int launch_kv_variant(int i, const bwd_args &a, bool *dq_done) {
  if constexpr (D == 64) {
    switch (i) {
      case 0: return launch_kv_tc<D, 4, 2, 32, 1, false>(a, dq_done);
      case 1: return launch_kv_tc<D, 4, 2, 32, 1, true>(a, dq_done);
      case 2: return launch_kv_tc<D, 4, 1, 64, 2, true>(a, dq_done);
      case 3: return launch_kv_tc<D, 8, 1, 64, 1, true>(a, dq_done);
      case 4: return launch_kv_tc<D, 4, 1, 32, 3, true>(a, dq_done);
      case 5: return launch_kv_tc<D, 4, 1, 64, 3, true>(a, dq_done);
      case 6: return launch_kv_tc<D, 4, 2, 16, 1, true>(a, dq_done);
      case 7: return launch_kv_tc<D, 8, 2, 16, 1, true>(a, dq_done);
      case 8: return launch_kv_tc<D, 4, 2, 32, 1, true, true>(a, dq_done);
      case 9: return launch_kv_tc<D, 8, 1, 64, 1, true, true>(a, dq_done);
      case 10: return launch_kv_tc<D, 4, 1, 64, 2, true, true>(a, dq_done);
      case 11: return launch_kv_tc<D, 8, 2, 16, 1, true, true>(a, dq_done);
      case 12: return launch_kv_tc<D, 4, 1, 32, 3, false>(a, dq_done);
      case 13: return launch_kv_tc<D, 4, 2, 32, 1, false, true>(a, dq_done);
      default: return launch_kv_tc<D, 4, 1, 64, 2, false, true>(a, dq_done);
    }
  } else {
    switch (i) {
      case 0: return launch_kv_tc<D, 4, 1, 32, 1, false>(a, dq_done);
      case 1: return launch_kv_tc<D, 4, 1, 32, 1, true>(a, dq_done);
      case 2: return launch_kv_tc<D, 8, 1, 32, 1, true>(a, dq_done);
      case 3: return launch_kv_tc<D, 4, 1, 16, 2, true>(a, dq_done);
      case 4: return launch_kv_tc<D, 8, 1, 16, 1, true>(a, dq_done);
      case 5: return launch_kv_tc<D, 4, 1, 64, 1, true>(a, dq_done);
      case 6: return launch_kv_tc<D, 4, 1, 32, 1, true, true>(a, dq_done);
      case 7: return launch_kv_tc<D, 8, 1, 32, 1, true, true>(a, dq_done);
      case 8: return launch_kv_tc<D, 4, 1, 32, 1, false, true>(a, dq_done);
      default: return launch_kv_tc<D, 4, 1, 16, 2, false>(a, dq_done);
    }
  }
}

}  // namespace

extern "C" int f2_cuda_attention_forward(f2_tensor *out, f2_tensor *lse, const f2_tensor *q, const f2_tensor *k,
                                         const f2_tensor *v, float scale) {
  const char *op = "f2_attention_forward";
  dims d = dims_of(q, k);
  if (d.B * d.H * d.T == 0) return F2_OK;
  F2_TRY(check_sizes(op, d));
  const f2_tensor *in[] = {q, k, v}, *outs[] = {out, lse};
  if (use_tc(d, in, 3, outs, 2)) {
    const int taken = cudnn_forward(out, lse, q, k, v, d, scale);
    if (taken) return taken < 0 ? taken : F2_OK;
    attn_variant var;
    F2_TRY(read_variant(op, d.D, &var));
    if (d.D == 64) return launch_fwd_variant<64>(var.fwd, out, lse, q, k, v, d, scale);
    return launch_fwd_variant<128>(var.fwd, out, lse, q, k, v, d, scale);
  }
  dim3 grid((unsigned)d.T, (unsigned)(d.B * d.H));
  size_t smem = (d.D + kGT + 32) * sizeof(float);
  fwd_plain<<<grid, kGT, smem, f2_cuda_stream()>>>(out->data, out->dtype, lse ? (float *)lse->data : nullptr, ft(q),
                                                   ft(k), ft(v), (int)d.T, (int)d.T, (int)d.H, (int)d.Hkv, (int)d.D, 0,
                                                   scale);
  F2_CUDA_CHECK_LAUNCH("attention forward");
  return F2_OK;
}

namespace {
/* The dQ kernel runs beside the dK/dV kernel, on a second stream forked from and joined back to
 * f2_cuda_stream() (a CUDA graph captures the two branches): neither fills the GPU on its own (registers
 * cap them at a few blocks per SM, and the last blocks of one leave SMs idle that the other can use).
 * Created once; on failure everything stays on the one stream. */
struct side_stream {
  cudaStream_t stream = nullptr;
  cudaEvent_t fork = nullptr, join = nullptr;
  bool tried = false;
};
side_stream *get_side_stream() {
  static side_stream s;
  if (!s.tried) {
    s.tried = true;
    if (cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking) != cudaSuccess ||
        cudaEventCreateWithFlags(&s.fork, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventCreateWithFlags(&s.join, cudaEventDisableTiming) != cudaSuccess) {
      cudaGetLastError();
      s.stream = nullptr;
    }
  }
  return s.stream ? &s : nullptr;
}
}  // namespace

extern "C" int f2_cuda_attention_backward(f2_tensor *dq, f2_tensor *dk, f2_tensor *dv, const f2_tensor *dout,
                                          const f2_tensor *q, const f2_tensor *k, const f2_tensor *v,
                                          const f2_tensor *out, const f2_tensor *lse, float scale) {
  const char *op = "f2_attention_backward";
  dims d = dims_of(q, k);
  if (d.B * d.H * d.T == 0) return F2_OK;
  F2_TRY(check_sizes(op, d));
  const f2_tensor *in[] = {q, k, v, dout}, *outs[] = {dq, dk, dv};
  const bool tc = use_tc(d, in, 4, outs, 3);
  if (tc) {
    const bwd_args a = {dq, dk, dv, dout, q, k, v, (const float *)lse->data, nullptr, d, scale, f2_cuda_stream()};
    const int taken = cudnn_backward(a, out);
    if (taken) return taken < 0 ? taken : F2_OK;
  }
  int64_t rows = d.B * d.T * d.H;
  float *dvec = nullptr;
  F2_TRY(f2_cuda_alloc((void **)&dvec, (size_t)rows * sizeof(float)));
  int rc = F2_OK;
  bwd_rowdot<<<f2_blocks(rows, 8), 256, 0, f2_cuda_stream()>>>(dvec, dout->data, dout->dtype, out->data, out->dtype,
                                                               rows, (int)d.T, (int)d.H, (int)d.D);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) {
    rc = F2_FAIL(F2_ERR_CUDA, "%s: launch of the D = rowsum(dout * out) kernel failed: %s", op, cudaGetErrorString(e));
  } else if (tc) {
    attn_variant var;
    cudaStream_t primary = f2_cuda_stream();
    side_stream *side = get_side_stream();
    if (side && cudaEventRecord(side->fork, primary) != cudaSuccess) side = nullptr;   /* D is ready */
    bwd_args a = {dq, dk, dv, dout, q, k, v, (const float *)lse->data, dvec, d, scale, primary};
    rc = read_variant(op, d.D, &var);
    const bool sm90_kv = d.D == 64 && var.kv >= kMmaKv64;
    if (sm90_kv && !sm90_available()) var.kv = kDefault64.kv;   /* not this GPU: the mma.sync default */
    bool dq_done = false;   /* a fused dK/dV variant does dQ too */
    if (rc == F2_OK)
      rc = d.D == 64 && var.kv >= kMmaKv64 ? sm90_dkdv(var.kv - kMmaKv64, a)
           : d.D == 64                     ? launch_kv_variant<64>(var.kv, a, &dq_done)
                                           : launch_kv_variant<128>(var.kv, a, &dq_done);
    if (rc == F2_OK && !dq_done) {
      const bool forked = side && cudaStreamWaitEvent(side->stream, side->fork, 0) == cudaSuccess;
      if (forked) a.stream = side->stream;
      rc = d.D == 64 ? launch_dq_variant<64>(var.dq, a) : launch_dq_variant<128>(var.dq, a);
      if (forked) {   /* joined whatever happened, so a capture stays whole */
        cudaError_t je = cudaEventRecord(side->join, side->stream);
        if (je == cudaSuccess) je = cudaStreamWaitEvent(primary, side->join, 0);
        if (je != cudaSuccess && rc == F2_OK)
          rc = F2_FAIL(F2_ERR_CUDA, "%s: joining the dQ stream failed: %s", op, cudaGetErrorString(je));
      }
    }
  } else {
    const float *l = (const float *)lse->data;
    bwd_dq_plain<<<dim3((unsigned)d.T, (unsigned)(d.B * d.H)), kGT, (2 * d.D + kGT) * sizeof(float),
                   f2_cuda_stream()>>>(dq->data, dq->dtype, ft(q), ft(k), ft(v), ft(dout), l, dvec, (int)d.T,
                                       (int)d.H, (int)d.Hkv, (int)d.D, scale);
    e = cudaGetLastError();
    if (e == cudaSuccess)
      bwd_dkdv_plain<<<dim3((unsigned)d.T, (unsigned)(d.B * d.Hkv)), kGT, (2 * d.D + 2 * kGT) * sizeof(float),
                       f2_cuda_stream()>>>(dk->data, dk->dtype, dv->data, dv->dtype, ft(q), ft(k), ft(v), ft(dout), l,
                                           dvec, (int)d.T, (int)d.H, (int)d.Hkv, (int)d.D, scale);
    if (e == cudaSuccess) e = cudaGetLastError();
    if (e != cudaSuccess) rc = F2_FAIL(F2_ERR_CUDA, "%s: kernel launch failed: %s", op, cudaGetErrorString(e));
  }
  f2_cuda_free(dvec);   /* stream-ordered: the kernels above finish with it first */
  return rc;
}

extern "C" int f2_cuda_attention_decode(f2_tensor *out, const f2_tensor *q, const f2_tensor *k_cache,
                                        const f2_tensor *v_cache, int64_t n_past, float scale) {
  const char *op = "f2_attention_decode";
  dims d = dims_of(q, k_cache);
  int64_t max_len = k_cache->shape[1];
  if (d.B * d.H * d.T == 0) return F2_OK;
  F2_TRY(check_sizes(op, d));
  if (max_len > INT32_MAX / 2) return F2_FAIL(F2_ERR_UNSUPPORTED, "%s: cache of %lld positions too long", op, (long long)max_len);
  dim3 grid((unsigned)d.T, (unsigned)(d.B * d.H));
  size_t smem = (d.D + kGT + 32) * sizeof(float);
  fwd_plain<<<grid, kGT, smem, f2_cuda_stream()>>>(out->data, out->dtype, nullptr, ft(q), ft(k_cache), ft(v_cache),
                                                   (int)d.T, (int)max_len, (int)d.H, (int)d.Hkv, (int)d.D, n_past,
                                                   scale);
  F2_CUDA_CHECK_LAUNCH("attention decode");
  return F2_OK;
}
