"""fairy2_ref.py — an independent numpy reference of Fairy2i quantization, written from
/work/shared/FAIRY2I.md (and docs/fairy2.md for the rounding fairy2 fixes), sharing no code with the C path.

Codes come from the literal angle formula k = floor(2*theta/pi + 1/2) mod 4 with np.arctan2 in float64;
entries exactly on a diagonal (|re| == |im| != 0) and zeros follow the spec's tie rules explicitly, since
the rounded arctan2 cannot be trusted to land exactly on the boundary. Scales are float64 means
(np.sum), rounded to float32 once.
"""
import numpy as np

F32 = np.float32
SCALE_MIN = F32(1e-6)
PER_TENSOR, PER_ROW, PER_GROUP = 0, 1, 2


def split(r):
    """R (2n x 2m) float32 -> (U re, U im, W re, W im), each n x m float32 (halves of double sums)."""
    r = np.asarray(r, dtype=F32).astype(np.float64)
    n, m = r.shape[0] // 2, r.shape[1] // 2
    r11, r12, r21, r22 = r[:n, :m], r[:n, m:], r[n:, :m], r[n:, m:]
    return tuple(((a) * 0.5).astype(F32) for a in (r11 + r22, r21 - r12, r11 - r22, r12 + r21))


def rebuild(u_re, u_im, w_re, w_im):
    """The inverse map in float32: [[Re U + Re W, Im W - Im U], [Im U + Im W, Re U - Re W]]."""
    top = np.concatenate([u_re + w_re, w_im - u_im], axis=1)
    bottom = np.concatenate([u_im + w_im, u_re - w_re], axis=1)
    return np.concatenate([top, bottom], axis=0).astype(F32)


def codes_of(re, im):
    """k in 0..3 (i^k) by the angle rule, as uint8."""
    re = np.asarray(re, dtype=F32)
    im = np.asarray(im, dtype=F32)
    theta = np.arctan2(im.astype(np.float64), re.astype(np.float64))
    k = np.mod(np.floor(2.0 * theta / np.pi + 0.5), 4).astype(np.int64)
    # Exact diagonals: theta is an odd multiple d of pi/4 (d in 1, 3, -3, -1), where the formula is
    # exactly (d + 1)/2 -- the sector counter-clockwise of the diagonal.
    tie = (np.abs(re) == np.abs(im)) & (re != 0)
    d = np.where(re > 0, np.where(im > 0, 1, -1), np.where(im > 0, 3, -3))
    k = np.where(tie, np.mod((d + 1) // 2, 4), k)
    k = np.where((re == 0) & (im == 0), 0, k)   # zero (any signs) -> +1
    return k.astype(np.uint8)


def group_slices(n, m, granularity, group_size):
    """[(rows, cols), ...] of the scale groups in scale order (row-major for per row/group)."""
    if granularity == PER_TENSOR:
        return [(slice(0, n), slice(0, m))]
    g = m if granularity == PER_ROW else min(group_size, m)
    return [(slice(i, i + 1), slice(j, min(j + g, m))) for i in range(n) for j in range(0, m, g)]


def _mean_scale(values):
    if values.size == 0:
        return SCALE_MIN
    s = F32(np.sum(np.abs(values.astype(np.float64))) / values.size)
    return max(s, SCALE_MIN)


def quantize_complex(re, im, stages, groups):
    """T-stage residual quantization of one complex matrix: codes (T, n, m), scales (T, 2, S), hat."""
    re, im = re.copy(), im.copy()
    hat_re = np.zeros_like(re)
    hat_im = np.zeros_like(im)
    codes, scales = [], []
    for _ in range(stages):
        k = codes_of(re, im)
        q_re = np.where(k == 0, F32(1), np.where(k == 2, F32(-1), F32(0))).astype(F32)
        q_im = np.where(k == 1, F32(1), np.where(k == 3, F32(-1), F32(0))).astype(F32)
        s_re = np.zeros_like(re)
        s_im = np.zeros_like(im)
        stage_scales = []
        for rows, cols in groups:
            kk = k[rows, cols]
            a = _mean_scale(re[rows, cols][kk % 2 == 0])
            b = _mean_scale(im[rows, cols][kk % 2 == 1])
            s_re[rows, cols] = a
            s_im[rows, cols] = b
            stage_scales.append((a, b))
        re = (re - q_re * s_re).astype(F32)
        im = (im - q_im * s_im).astype(F32)
        hat_re = (hat_re + q_re * s_re).astype(F32)
        hat_im = (hat_im + q_im * s_im).astype(F32)
        codes.append(k)
        scales.append(np.array(stage_scales, dtype=F32).T)   # (2, S)
    return np.stack(codes), np.stack(scales), hat_re, hat_im


def quantize(r, stages=1, granularity=PER_TENSOR, group_size=0):
    """R -> (R_hat float32, scales (T, 4, S) float32, codes (T, 2, n, m) uint8), as FAIRY2I.md says."""
    u_re, u_im, w_re, w_im = split(r)
    n, m = u_re.shape
    groups = group_slices(n, m, granularity, group_size)
    cu, su, hu_re, hu_im = quantize_complex(u_re, u_im, stages, groups)
    cw, sw, hw_re, hw_im = quantize_complex(w_re, w_im, stages, groups)
    scales = np.concatenate([su, sw], axis=1)        # (T, 4, S): U re, U im, W re, W im
    codes = np.stack([cu, cw], axis=1)               # (T, 2, n, m)
    return rebuild(hu_re, hu_im, hw_re, hw_im), scales, codes


def to_bf16_bits(x):
    """float32 -> bf16 bits (uint16), round to nearest even."""
    u = np.asarray(x, dtype=F32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(h):
    return (np.asarray(h, dtype=np.uint32) << 16).view(F32)
