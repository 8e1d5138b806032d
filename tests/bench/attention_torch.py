#!/usr/bin/env python3
"""attention_torch.py — PyTorch's own causal attention at bench_attention's shapes, for its side-by-side
table: torch.nn.functional.scaled_dot_product_attention (bf16, is_causal, grouped KV heads through
enable_gqa) under each fused backend PyTorch has for that (flash: FlashAttention-2; cuDNN), forward
and backward (dq, dk, dv from one retained graph), timed with CUDA events: the median over `samples` of
the mean of back-to-back calls, TFLOP/s counted as bench_attention counts them (causal: forward
2*2*B*H*T*T*Dh/2, backward 2.5x that). q, k, v are contiguous [B, heads, T, Dh]. A backend that refuses
a shape prints why and the next one runs.

When NVIDIA's cuDNN frontend for Python is importable (`pip install nvidia-cudnn-frontend`, optional), its
SDPA ops run too: forward, and backward in its default and its deterministic mode
(`use_deterministic_algorithm`), each backward run twice to say whether the two runs' bits agree, since
fairy2's rule is a deterministic backward.

Usage: python3 tests/bench/attention_torch.py [samples (20)]   (bench_attention runs it at its end)
"""
import statistics
import sys
import warnings

SHAPES = [  # name, B, T, H, Hkv, Dh: as bench_attention.c
    ("SmolLM2 8x2048", 8, 2048, 9, 3, 64),
    ("SmolLM2 32x512", 32, 512, 9, 3, 64),
    ("Qwen3-4B 1x2048", 1, 2048, 32, 8, 128),
    ("Qwen3-4B 4x2048", 4, 2048, 32, 8, 128),
]


def first_line(e, width):
    """An exception's first line, at most width characters (its type when it has no message)."""
    text = str(e).strip()
    return text.splitlines()[0][:width] if text else type(e).__name__


def main():
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    try:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except Exception as e:  # no PyTorch here: say so, not fail
        print(f"PyTorch SDPA: skipped (import failed: {e})")
        return 0
    if not torch.cuda.is_available():
        print("PyTorch SDPA: skipped (no CUDA device)")
        return 0
    # The memory-efficient backend takes no grouped KV heads (enable_gqa), so it is not here.
    backends = [("torch flash", SDPBackend.FLASH_ATTENTION), ("torch cuDNN", SDPBackend.CUDNN_ATTENTION)]
    warnings.filterwarnings("ignore", category=UserWarning)   # why a backend refused: printed as one line
    print(f"PyTorch {torch.__version__} scaled_dot_product_attention on {torch.cuda.get_device_name()} "
          f"(bf16, causal, enable_gqa; median of {samples} samples)")
    print("%-18s %-9s %-14s %9s %9s" % ("shape", "pass", "backend", "ms", "TFLOP/s"))

    def timed(fn, calls):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(3):
            fn()
        times = []
        for _ in range(samples):
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / calls)
        return statistics.median(times)

    for name, B, T, H, Hkv, D in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(1)
        mk = lambda heads: torch.randn(B, heads, T, D, device="cuda", dtype=torch.bfloat16, generator=g)
        q, k, v, dout = mk(H), mk(Hkv), mk(Hkv), mk(H)
        for t in (q, k, v):
            t.requires_grad_(True)
        flops = 4.0 * B * H * T * T * D / 2
        calls = 5 if B * T >= 8192 else 20
        for label, backend in backends:
            try:
                with sdpa_kernel(backend):
                    fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                    with torch.no_grad():
                        f_ms = timed(fwd, calls)
                    out = fwd()
                    bwd = lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
                    b_ms = timed(bwd, calls)
                    del out
            except Exception as e:  # this backend does not take the shape (or is not built)
                print("%-18s %-9s %-14s skipped: %s" % (name, "-", label, first_line(e, 90)))
                continue
            print("%-18s %-9s %-14s %9.3f %9.1f" % (name, "forward", label, f_ms, flops / (f_ms * 1e9)))
            print("%-18s %-9s %-14s %9.3f %9.1f" % (name, "backward", label, b_ms, 2.5 * flops / (b_ms * 1e9)))
        cudnn_frontend_rows(torch, name, q, k, v, dout, D, flops, calls, timed)
        del q, k, v, dout
        torch.cuda.empty_cache()
    return 0


def cudnn_frontend_rows(torch, name, q, k, v, dout, D, flops, calls, timed):
    """The cuDNN frontend's SDPA ops (torch.ops.cudnn.sdpa_fwd / sdpa_bwd) when the package is there."""
    try:
        import cudnn  # noqa: F401  (registers torch.ops.cudnn)
        import cudnn.sdpa.fwd.torch_op  # noqa: F401
        fwd_op, bwd_op = torch.ops.cudnn.sdpa_fwd, torch.ops.cudnn.sdpa_bwd
    except Exception as e:
        if name.startswith("SmolLM2 8x2048"):
            print("cuDNN frontend: skipped (%s)" % first_line(e, 80))
        return
    scale = 1.0 / D ** 0.5
    qd, kd, vd, dd = (t.detach() for t in (q, k, v, dout))
    try:
        f_ms = timed(lambda: fwd_op(qd, kd, vd, scale, is_causal=True, return_lse=True), calls)
        o, lse = fwd_op(qd, kd, vd, scale, is_causal=True, return_lse=True)
        print("%-18s %-9s %-14s %9.3f %9.1f" % (name, "forward", "cuDNN FE", f_ms, flops / (f_ms * 1e9)))
        for det in (False, True):
            bwd = lambda: bwd_op(dd, qd, kd, vd, o, lse, scale, is_causal=True, is_deterministic=det)
            b_ms = timed(bwd, calls)
            a, b = bwd(), bwd()
            same = all(torch.equal(x, y) for x, y in zip(a, b))
            label = "cuDNN FE det" if det else "cuDNN FE"
            print("%-18s %-9s %-14s %9.3f %9.1f   two runs %s" % (name, "backward", label, b_ms,
                                                            2.5 * flops / (b_ms * 1e9), "bit-equal" if same else "DIFFER"))
    except Exception as e:
        print("%-18s %-9s %-14s failed: %s" % (name, "-", "cuDNN FE", first_line(e, 120)))


if __name__ == "__main__":
    sys.exit(main())
