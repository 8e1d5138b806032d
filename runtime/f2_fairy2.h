/* f2_fairy2.h — the per-entry arithmetic of Fairy2i quantization (FAIRY2I.md), shared by the CPU
 * reference (runtime/fairy2.c) and the CUDA kernels (kernels/fairy2.cu), so both give the same bits.
 * Compiled by gcc and nvcc (host and device). docs/fairy2.md explains the choices.
 *
 * Bit-exactness rules followed here: only comparisons, additions, subtractions, a halving in double,
 * one division and conversions; never a multiply feeding an add (a compiler could fuse it into an FMA
 * on one side and not the other); no transcendental functions. */
#ifndef F2_FAIRY2_H
#define F2_FAIRY2_H
#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define F2Q_HD __host__ __device__ __forceinline__
#else
#define F2Q_HD static inline
#endif

/* The canonical reduction shape (docs/fairy2.md, "Scales"). Per tensor: P = LANES * BLOCKS lanes; entry
 * e (row-major over the n x m complex entries) goes to lane e mod P; each lane sums its entries in
 * increasing e, in double; the lanes of a block of LANES reduce by the tree a[i] += a[i + s] for
 * s = LANES/2 .. 1, then the BLOCKS block sums by the same tree. Per row or group: entry c of the group
 * goes to lane c mod GROUP_LANES, then one tree over GROUP_LANES. The GPU runs exactly this shape (one
 * thread per lane), the CPU replays it, so the sums are the same doubles on both. */
enum { F2Q_LANES = 256, F2Q_BLOCKS = 128, F2Q_GROUP_LANES = 32 };

/* Per-lane accumulators: |Re| over the +-1-coded entries (A), |Im| over the +-i-coded (B), |A|, for U
 * then W, and the count of complex entries with a non-finite part. |B| = group size - |A|. */
enum {
  F2Q_SUM_RE_U = 0, F2Q_SUM_IM_U, F2Q_COUNT_RE_U, F2Q_SUM_RE_W, F2Q_SUM_IM_W, F2Q_COUNT_RE_W, F2Q_NONFINITE,
  F2Q_ACCS
};

/* The code k of w = re + i im, the k of i^k nearest in angle: k = floor(2 theta / pi + 1/2) mod 4 with
 * theta = atan2(im, re), boundaries (the diagonals |re| = |im|) belonging to the sector counter-clockwise
 * of them, and w = 0 (any signs of zero) coded +1.
 * Derivation, with p = im - re and q = im + re (their signs are exact comparisons, never computed):
 *   k = 0: theta in [-pi/4, pi/4)    <=> re > 0 and -re <= im < re    <=> p < 0 and q >= 0
 *   k = 1: theta in [pi/4, 3pi/4)    <=> im >= re and im > -re         <=> p >= 0 and q > 0
 *   k = 2: theta in [3pi/4, 5pi/4)   <=> im > re and im <= -re         <=> p > 0 and q <= 0
 *   k = 3: theta in [-3pi/4, -pi/4)  <=> im <= re and im < -re         <=> p <= 0 and q < 0
 * These four sets and the origin (p = q = 0) partition the plane; each closed diagonal ray goes to the
 * set counter-clockwise of it (re = im > 0 is theta = pi/4: k = 1, as floor(1/2 + 1/2) = 1 says).
 * Comparisons treat -0 as +0 and compare denormals exactly, so CPU and GPU agree on every finite input.
 * NaN compares false everywhere and lands on 0 (such R is rejected or poisons its scales anyway). */
F2Q_HD int f2q_code(float re, float im) {
  int p_neg = im < re, p_pos = im > re, q_neg = im < -re, q_pos = im > -re;
  /* At most one of the three holds; none: k = 0 or the origin. Branch-free (random data mispredicts). */
  return ((!p_neg) & q_pos) + 2 * (p_pos & (!q_pos)) + 3 * ((!p_pos) & q_neg);
}

/* The complex halves of one entry (i, j): R11 = R[i, j], R12 = R[i, m+j], R21 = R[n+i, j],
 * R22 = R[n+i, m+j]. Re U = (R11 + R22)/2, Im U = (R21 - R12)/2, Re W = (R11 - R22)/2, Im W = (R12 + R21)/2,
 * each summed in double (no overflow for any finite fp32), halved exactly, rounded once to fp32. */
typedef struct f2q_uw {
  float u_re, u_im, w_re, w_im;
} f2q_uw;

F2Q_HD f2q_uw f2q_split(float r11, float r12, float r21, float r22) {
  f2q_uw v;
  v.u_re = (float)(((double)r11 + (double)r22) * 0.5);
  v.u_im = (float)(((double)r21 - (double)r12) * 0.5);
  v.w_re = (float)(((double)r11 - (double)r22) * 0.5);
  v.w_im = (float)(((double)r12 + (double)r21) * 0.5);
  return v;
}

/* The inverse map, in fp32: R11 = Re U + Re W, R12 = Im W - Im U, R21 = Im U + Im W, R22 = Re U - Re W. */
F2Q_HD void f2q_rebuild(float *r11, float *r12, float *r21, float *r22, f2q_uw v) {
  *r11 = v.u_re + v.w_re;
  *r12 = v.w_im - v.u_im;
  *r21 = v.u_im + v.w_im;
  *r22 = v.u_re - v.w_re;
}

/* Code k's dequantized value s_re * Re(i^k) + i s_im * Im(i^k) as (d_re, d_im): one of them is +-s,
 * the other +0. Adding +0 or subtracting it changes no value (-0 - +0 = -0), and the reconstruction,
 * which starts at +0 and adds the stages in order 0..T-1, never holds -0; so these branch-free updates
 * give the bits of updating only the coded component. */
F2Q_HD void f2q_value(float *d_re, float *d_im, int k, float s_re, float s_im) {
  *d_re = k == 0 ? s_re : (k == 2 ? -s_re : 0.0f);
  *d_im = k == 1 ? s_im : (k == 3 ? -s_im : 0.0f);
}

/* Adds code k's dequantized value to the reconstruction (re, im). */
F2Q_HD void f2q_add(float *re, float *im, int k, float s_re, float s_im) {
  float d_re, d_im;
  f2q_value(&d_re, &d_im, k, s_re, s_im);
  *re = *re + d_re;
  *im = *im + d_im;
}

/* One stage on one complex residual (re, im): returns its code, subtracts the stage's dequantized
 * value from the residual and adds it to the reconstruction (hat_re, hat_im). */
F2Q_HD int f2q_stage(float *re, float *im, float *hat_re, float *hat_im, float s_re, float s_im) {
  int k = f2q_code(*re, *im);
  float d_re, d_im;
  f2q_value(&d_re, &d_im, k, s_re, s_im);
  *re = *re - d_re;
  *im = *im - d_im;
  *hat_re = *hat_re + d_re;
  *hat_im = *hat_im + d_im;
  return k;
}

/* Adds one residual value (after its code k) to a lane's accumulators at acc[base..base+2]. */
F2Q_HD void f2q_accumulate(double *acc, int base, int k, float re, float im) {
  int real = (k & 1) == 0;   /* adding +0 to a sum of |values| (never -0) changes nothing */
  acc[base] += real ? (double)fabsf(re) : 0.0;
  acc[base + 1] += real ? 0.0 : (double)fabsf(im);
  acc[base + 2] += real ? 1.0 : 0.0;
}

/* A scale from a reduced sum and count: the mean, rounded once to fp32, clamped to >= 1e-6; an empty
 * set gives 1e-6. */
F2Q_HD float f2q_scale(double sum, double count) {
  if (count == 0) return 1e-6f;
  float s = (float)(sum / count);
  return s > 1e-6f ? s : 1e-6f;
}

/* The four scales of one group from its reduced accumulators (entries: the group's size). A group
 * that saw a non-finite value gets NaN scales, so the damage shows instead of hiding. */
F2Q_HD void f2q_scales_from(float *out4, const double *acc, double entries) {
  if (acc[F2Q_NONFINITE] != 0) {
    out4[0] = out4[1] = out4[2] = out4[3] = NAN;
    return;
  }
  out4[0] = f2q_scale(acc[F2Q_SUM_RE_U], acc[F2Q_COUNT_RE_U]);
  out4[1] = f2q_scale(acc[F2Q_SUM_IM_U], entries - acc[F2Q_COUNT_RE_U]);
  out4[2] = f2q_scale(acc[F2Q_SUM_RE_W], acc[F2Q_COUNT_RE_W]);
  out4[3] = f2q_scale(acc[F2Q_SUM_IM_W], entries - acc[F2Q_COUNT_RE_W]);
}
#endif
