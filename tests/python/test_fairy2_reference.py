"""test_fairy2_reference.py — the C Fairy2i quantizer (libfairy2.so via ctypes) against the independent
numpy reference in fairy2_ref.py: identical codes, matching scales and R_hat on fresh random matrices of
several shapes, stages and scale granularities, and on hostile inputs (planted diagonal ties, exact and
signed zeros, denormals, huge and tiny magnitudes, an empty axis set); bad input gives clear errors.
Env: F2_LIB = libfairy2.so; F2_TEST_SEED replays a run."""
import ctypes as C
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fairy2_ref as ref  # noqa: E402

F32, BF16, U8 = 0, 1, 5
lib = C.CDLL(os.environ.get("F2_LIB") or os.path.join(os.environ.get("F2_BUILD_DIR", "build"), "libfairy2.so"))
lib.f2_tensor_wrap.restype = C.c_void_p
lib.f2_tensor_wrap.argtypes = [C.c_void_p, C.c_int32, C.c_int32, C.c_int32, C.POINTER(C.c_int64), C.c_void_p,
                               C.c_void_p]
lib.f2_tensor_free.argtypes = [C.c_void_p]
# numpy owns the memory: the release callback does nothing (a NULL release would free() it).
KEEP = C.CFUNCTYPE(None, C.c_void_p)(lambda owner: None)
lib.f2_last_error.restype = C.c_char_p


class Config(C.Structure):
    _fields_ = [("stages", C.c_int32), ("granularity", C.c_int32), ("group_size", C.c_int32),
                ("skip_finite_check", C.c_int32)]


for name, nargs in [("f2_fairy2_quantize", 4), ("f2_fairy2_split", 5), ("f2_fairy2_rebuild", 5),
                    ("f2_fairy2_dequantize", 3), ("f2_fairy2_pack", 2), ("f2_fairy2_unpack", 2)]:
    fn = getattr(lib, name)
    fn.restype = C.c_int
    fn.argtypes = [C.c_void_p] * nargs + ([C.POINTER(Config)] if name in ("f2_fairy2_quantize",
                                                                            "f2_fairy2_dequantize") else [])
lib.f2_fairy2_scale_groups.restype = C.c_int64
lib.f2_fairy2_scale_groups.argtypes = [C.POINTER(Config), C.c_int64, C.c_int64]

from f2harness import check, summary, test_seed  # noqa: E402


class Wrapped:
    """f2_tensor views over numpy arrays (kept alive here), freed on exit."""

    def __init__(self):
        self.handles = []

    def __call__(self, a, dtype):
        if a is None:
            return None
        assert a.flags.c_contiguous
        shape = (C.c_int64 * max(a.ndim, 1))(*a.shape)
        h = lib.f2_tensor_wrap(a.ctypes.data, dtype, 0, a.ndim, shape, C.cast(KEEP, C.c_void_p), None)
        assert h, lib.f2_last_error()
        self.handles.append(h)
        return h

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            lib.f2_tensor_free(h)


def c_quantize(r, cfg, r_hat_dtype=F32):
    """Runs f2_fairy2_quantize; returns (rc, R_hat, scales, codes)."""
    n, m = r.shape[0] // 2, r.shape[1] // 2
    groups = lib.f2_fairy2_scale_groups(C.byref(cfg), r.shape[0], r.shape[1])
    scales = np.full((cfg.stages, 4, groups), np.nan, dtype=np.float32)
    codes = np.full((cfg.stages, 2, n, m), 255, dtype=np.uint8)
    r_hat = np.zeros(r.shape, dtype=np.float32 if r_hat_dtype == F32 else np.uint16)
    with Wrapped() as w:
        rc = lib.f2_fairy2_quantize(w(r_hat, r_hat_dtype), w(scales, F32), w(codes, U8), w(r, F32), C.byref(cfg))
    return rc, r_hat, scales, codes


def compare(r, stages, granularity=0, group_size=0, what=""):
    cfg = Config(stages, granularity, group_size, 0)
    label = f"{what} {r.shape} T={stages} gran={granularity} G={group_size}"
    rc, r_hat, scales, codes = c_quantize(r, cfg)
    check(rc == 0, f"{label}: quantize failed: {lib.f2_last_error()}")
    if rc != 0:
        return
    e_hat, e_scales, e_codes = ref.quantize(r, stages, granularity, group_size)
    check(scales.shape == e_scales.shape, f"{label}: scales shape {scales.shape} vs {e_scales.shape}")
    if scales.shape != e_scales.shape:
        return
    bad = np.argwhere(codes != e_codes)
    check(len(bad) == 0, f"{label}: {len(bad)} codes differ, first at {bad[:3].tolist()}")
    check(np.allclose(scales, e_scales, rtol=2e-6, atol=0),
          f"{label}: scales differ, max rel {np.max(np.abs(scales / e_scales - 1))}")
    check(np.allclose(r_hat, e_hat, rtol=1e-5, atol=1e-30 + 1e-6 * np.max(np.abs(e_hat))),
          f"{label}: R_hat differs, max abs {np.max(np.abs(r_hat - e_hat))}")
    # bf16 R_hat: the fp32 one rounded to nearest even.
    rc, r_hat16, _, _ = c_quantize(r, cfg, BF16)
    check(rc == 0 and np.array_equal(r_hat16, ref.to_bf16_bits(r_hat)), f"{label}: bf16 R_hat != RNE(fp32 R_hat)")
    # Dequantize from the codes and scales gives the same bits.
    again = np.zeros_like(r_hat)
    with Wrapped() as w:
        rc = lib.f2_fairy2_dequantize(w(again, F32), w(scales, F32), w(codes, U8), C.byref(cfg))
    check(rc == 0 and np.array_equal(again.view(np.uint32), r_hat.view(np.uint32)), f"{label}: dequantize != R_hat")


def main():
    seed = test_seed()
    rng = np.random.default_rng(seed)

    # Split and rebuild against the formula, and the round trip.
    r = rng.standard_normal((12, 20)).astype(np.float32)
    planes = [np.zeros((6, 10), np.float32) for _ in range(4)]
    back = np.zeros_like(r)
    with Wrapped() as w:
        check(lib.f2_fairy2_split(*[w(p, F32) for p in planes], w(r, F32)) == 0, "split")
        check(lib.f2_fairy2_rebuild(w(back, F32), *[w(p, F32) for p in planes]) == 0, "rebuild")
    for got, want, name in zip(planes, ref.split(r), ("U re", "U im", "W re", "W im")):
        check(np.array_equal(got, want), f"split {name}")
    # Each element comes back as a sum of two halves rounded to f32, so its error is a few ulps of the
    # larger of the entries it was mixed with (r11 with r22, r12 with r21), not of itself.
    ulp_scale = np.finfo(np.float32).eps * np.abs(r).max()
    check(np.all(np.abs(back - r) <= 4 * ulp_scale), "rebuild(split(R)) == R to float rounding",
          f"max error {np.abs(back - r).max():.3g}, bound {4 * ulp_scale:.3g}")

    # Random matrices: shapes, stages, granularities.
    shapes = [(2, 2), (4, 6), (6, 4), (2, 64), (64, 2), (34, 70), (128, 96), (256, 256), (192, 576)]
    for shape in shapes:
        scale = float(np.exp(rng.uniform(-3, 3)))
        r = (rng.standard_normal(shape) * scale).astype(np.float32)
        for stages in (1, 2, 3):
            compare(r, stages, what="gaussian")
        compare(r, 2, ref.PER_ROW, what="gaussian")
        compare(r, 2, ref.PER_GROUP, int(rng.integers(1, 9)), what="gaussian")
        compare(r, 1, ref.PER_GROUP, 64, what="gaussian")
    compare(rng.standard_normal((64, 1000)).astype(np.float32), 4, what="T=4")
    compare(rng.laplace(size=(100, 300)).astype(np.float32), 2, ref.PER_GROUP, 32, what="laplace")

    # Planted ties: U, W with |re| == |im| in every sign pattern, small dyadic values so R = rebuild(U, W)
    # is exact and split(R) gives them back bit for bit.
    n, m = 40, 48
    mag = rng.integers(1, 64, size=(4, n, m)).astype(np.float32) / 16
    signs = rng.choice(np.array([-1, 1], np.float32), size=(4, n, m))
    tie = rng.random((2, n, m)) < 0.5
    u_re, w_re = mag[0] * signs[0], mag[1] * signs[1]
    u_im = np.where(tie[0], np.abs(u_re), mag[2]) * signs[2]
    w_im = np.where(tie[1], np.abs(w_re), mag[3]) * signs[3]
    r_ties = ref.rebuild(u_re, u_im, w_re, w_im)
    back = ref.split(r_ties)
    check(all(np.array_equal(a, b) for a, b in zip(back, (u_re, u_im, w_re, w_im))), "planted ties survive the split")
    for stages in (1, 2):
        compare(r_ties, stages, what="ties")
        compare(r_ties, stages, ref.PER_ROW, what="ties")
    k = ref.codes_of(u_re, u_im)
    check(np.all(k[tie[0] & (u_re > 0) & (u_im > 0)] == 1) and np.all(k[tie[0] & (u_re < 0) & (u_im > 0)] == 2)
          and np.all(k[tie[0] & (u_re < 0) & (u_im < 0)] == 3) and np.all(k[tie[0] & (u_re > 0) & (u_im < 0)] == 0),
          "reference: diagonal ties go counter-clockwise")

    # Exact zeros and signed zeros, mixed with ordinary values.
    r = rng.standard_normal((32, 64)).astype(np.float32)
    r[rng.random(r.shape) < 0.4] = 0.0
    r[rng.random(r.shape) < 0.3] = -0.0
    r[:4] = -0.0
    compare(r, 2, what="zeros")
    compare(r, 1, ref.PER_GROUP, 4, what="zeros")
    compare(np.zeros((8, 8), np.float32), 2, what="all zero")
    compare(np.full((8, 8), -0.0, np.float32), 1, ref.PER_ROW, what="all -0")

    # Denormals, tiny, huge (R11 + R22 overflows fp32 but not the double sum).
    for label, lo, hi in [("denormal", 1e-45, 1e-38), ("tiny", 1e-37, 1e-30), ("huge", 1e36, 3.4e38)]:
        mags = np.exp(rng.uniform(np.log(lo), np.log(hi), size=(24, 40)))
        r = (mags * rng.choice([-1.0, 1.0], size=mags.shape)).astype(np.float32)
        for stages in (1, 2):
            compare(r, stages, what=label)
        compare(r, 2, ref.PER_ROW, what=label)
    mixed = rng.standard_normal((24, 40)).astype(np.float32)
    mixed[rng.random(mixed.shape) < 0.2] = 1e-44
    mixed[rng.random(mixed.shape) < 0.1] = 3e38
    compare(mixed, 3, what="mixed magnitudes")

    # One axis set empty: Im U = Im W = 0 everywhere (all +-1), then Re U = Re W = 0 (all +-i).
    u, w = rng.standard_normal((2, 20, 30)).astype(np.float32)
    zero = np.zeros_like(u)
    for label, planes in [("no +-i codes", (u, zero, w, zero)), ("no +-1 codes", (zero, u, zero, w))]:
        r = ref.rebuild(*planes)
        compare(r, 1, what=label)
        compare(r, 2, ref.PER_ROW, what=label)
        rc, _, scales, codes = c_quantize(r, Config(1, 0, 0, 0))
        empty_axis = 1 if label.startswith("no +-i") else 0
        check(rc == 0 and np.all(scales[0, [empty_axis, empty_axis + 2], 0] == np.float32(1e-6)),
              f"{label}: the empty set's scale is 1e-6, got {scales[0, :, 0]}")

    # Pack / unpack round trip on the codes of a random layer with a ragged last byte.
    r = rng.standard_normal((10, 26)).astype(np.float32)
    rc, _, _, codes = c_quantize(r, Config(3, 0, 0, 0))
    packed = np.zeros(codes.shape[:-1] + ((codes.shape[-1] + 3) // 4,), np.uint8)
    unpacked = np.zeros_like(codes)
    with Wrapped() as w:
        check(lib.f2_fairy2_pack(w(packed, U8), w(codes, U8)) == 0, "pack")
        check(lib.f2_fairy2_unpack(w(unpacked, U8), w(packed, U8)) == 0, "unpack")
    check(np.array_equal(unpacked, codes), "unpack(pack(codes)) == codes")
    expect = np.zeros_like(packed)
    for j in range(codes.shape[-1]):
        expect[..., j // 4] |= (codes[..., j] << (2 * (j % 4))).astype(np.uint8)
    check(np.array_equal(packed, expect), "packed bytes follow the documented layout")

    # Bad input: odd dimensions, T < 1, non-finite weights.
    for shape in [(3, 4), (4, 5), (1, 2)]:
        rc, *_ = c_quantize(np.ones((4, 4), np.float32), Config(1, 0, 0, 0))
        r = np.ones(shape, np.float32)
        scales = np.zeros((1, 4, 1), np.float32)
        with Wrapped() as w:
            rc = lib.f2_fairy2_quantize(None, w(scales, F32), None, w(r, F32), C.byref(Config(1, 0, 0, 0)))
        check(rc != 0 and b"even" in lib.f2_last_error(), f"odd shape {shape}: {lib.f2_last_error()}")
    r = np.ones((4, 4), np.float32)
    for bad_t in (0, -1):
        with Wrapped() as w:
            rc = lib.f2_fairy2_quantize(None, w(np.zeros((1, 4, 1), np.float32), F32), None, w(r, F32),
                                        C.byref(Config(bad_t, 0, 0, 0)))
        check(rc != 0 and b"T >= 1" in lib.f2_last_error(), f"T={bad_t}: {lib.f2_last_error()}")
    for bad in (np.nan, np.inf, -np.inf):
        r = rng.standard_normal((8, 12)).astype(np.float32)
        i, j = int(rng.integers(0, 8)), int(rng.integers(0, 12))
        r[i, j] = bad
        rc, _, scales, _ = c_quantize(r, Config(2, 0, 0, 0))
        msg = lib.f2_last_error().decode()
        check(rc != 0 and "non-finite" in msg and f"[{i}, {j}]" in msg, f"non-finite {bad} at [{i}, {j}]: {msg}")
        rc, r_hat, scales, _ = c_quantize(r, Config(2, 0, 0, 1))
        check(rc == 0 and np.all(np.isnan(scales)) and np.mean(np.isnan(r_hat)) > 0.4,
              "skip_finite_check: non-finite R poisons the scales and so R_hat")

    return summary()


if __name__ == "__main__":
    sys.exit(main())
