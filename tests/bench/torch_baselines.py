"""torch_baselines.py — the PyTorch baselines of the GPU training benchmark (shared PERFORMANCE.md): one
SmolLM2-135M-shaped LlamaForCausalLM (random init, built from a config, nothing downloaded) trained on random
tokens, one optimizer step = forward, backward, clip, fused AdamW (lr 1e-4), bf16 autocast over fp32 master
weights, sdpa attention. Variants (--only):

  hf_eager, hf_compile            HF transformers, eager / torch.compile of the model
  port_w2, port_w1 (+ _compile)   the third-party port (WrinkleFree packages/fairy2, its convert_to_fairy2
                                  with its defaults: U/W parameters, int8 activations), imported from
                                  third_party/wrinklefree/src (scripts/get_port.sh puts it there)
  ours_w2, ours_w1                our Fairy2i QAT from FAIRY2I.md (tests/bench/fairy2i_torch.py), eager
  ours_w2_compile, ours_w1_compile            same, torch.compile of the quantizer only
  ours_w2_compile_full, ours_w1_compile_full  same, the model compiled too

Each (variant, B x T) runs in its own subprocess under a wall-clock cap; it prints one JSON line
{"name", "bt", "tokens_per_s", "mfu", "peak_gib", "step_ms", ...} (median of --steps device-timed steps
after --warmup steps), or {"name", "bt", "error"} when it failed or timed out, and the run goes on.
JSON lines go to stdout and to --out; progress and a table go to stderr.

  python3 tests/bench/torch_baselines.py --only hf_eager,ours_w2 --bt 8x2048,32x512 --steps 10 \\
      --timeout 240 --out FILE.jsonl
  python3 tests/bench/torch_baselines.py --device cpu --tiny --bt 2x64 --steps 2   # a check without a GPU
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
RESULT_TAG = "F2_TORCH_RESULT "
PEAK_FLOPS = 989e12  # dense bf16, H100/H200 SXM datasheet (PERFORMANCE.md)

NAMES = ["hf_eager", "hf_compile", "port_w2", "port_w1", "port_w2_compile", "port_w1_compile",
         "ours_w2", "ours_w1", "ours_w2_compile", "ours_w1_compile", "ours_w2_compile_full",
         "ours_w1_compile_full"]
DEFAULT_ONLY = ["hf_eager", "ours_w2", "ours_w1", "port_w2", "port_w1", "ours_w2_compile", "hf_compile",
                "ours_w2_compile_full", "port_w2_compile"]

SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
                    rope_theta=100000.0, rms_norm_eps=1e-5, max_position_embeddings=8192)
# Same structure, small enough for a CPU check (even dims everywhere, GQA, tied head).
TINY = dict(SMOLLM2_135M, vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024)


def parse_bt(text):
    b, sep, t = text.partition("x")
    if not sep or not b.isdigit() or not t.isdigit() or int(b) < 1 or int(t) < 2:
        raise ValueError(f"--bt: '{text}' is not BxT (e.g. 8x2048)")
    return int(b), int(t)


def parse_variant(name):
    """name -> (family, stages, compile_mode) with compile_mode None, 'quantizer' or 'model'."""
    if name not in NAMES:
        raise ValueError(f"unknown baseline '{name}' (known: {', '.join(NAMES)})")
    parts = name.split("_")
    family = parts[0]
    stages = int(parts[1][1:]) if family != "hf" else 0
    if family == "hf":
        mode = "model" if parts[1] == "compile" else None
    elif family == "port":
        mode = "model" if parts[2:] == ["compile"] else None
    else:
        mode = {(): None, ("compile",): "quantizer", ("compile", "full"): "model"}[tuple(parts[2:])]
    return family, stages, mode


def matmul_params(cfg):
    """N_matmul: every weight used in a matmul, the LM head included (PERFORMANCE.md)."""
    d, hd = cfg["hidden_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * cfg["intermediate_size"]
    return cfg["num_hidden_layers"] * per_layer + cfg["vocab_size"] * d


def flops_per_token(cfg, seq_len):
    """6 N_matmul + 6 L d T (attention counted causal-full, as PERFORMANCE.md)."""
    return 6 * matmul_params(cfg) + 6 * cfg["num_hidden_layers"] * cfg["hidden_size"] * seq_len


# ---- one baseline, in a subprocess ------------------------------------------------------------------

def build_model(cfg, torch):
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(**cfg, attn_implementation="sdpa", use_cache=False)
    model = LlamaForCausalLM(config)
    # transformers 5 moved rope_theta into rope_parameters; make sure it took effect either way.
    inv_freq = model.model.rotary_emb.inv_freq
    want = cfg["rope_theta"] ** (-2.0 / cfg["head_dim"])
    if abs(inv_freq[1].item() - want) > 1e-6 * want:
        raise RuntimeError(f"rope_theta not applied: inv_freq[1] = {inv_freq[1].item()}, want {want}")
    if model.lm_head.weight is not model.model.embed_tokens.weight:
        raise RuntimeError("lm_head is not tied to embed_tokens")
    return model


def compiled_vs_eager(bank, torch, fq):
    """Compares the compiled quantizer's R_hat with the eager one on the model's own groups: fraction of
    entries not bit-equal and the largest difference (scales may round differently when reductions fuse)."""
    mismatched, total, max_abs = 0, 0, 0.0
    with torch.no_grad():
        for R in bank.groups:
            R = R.detach()  # as QuantSTE passes it: the same guards, no second compile
            a = fq.quantize_rebuild(R, bank.stages, bank.out_dtype).float()
            b = bank.qfn(R, bank.stages, bank.out_dtype).float()
            mismatched += int((a != b).sum())
            total += a.numel()
            max_abs = max(max_abs, (a - b).abs().max().item())
    return mismatched / total, max_abs


def run_worker(args):
    import torch
    import transformers

    name = args.worker
    family, stages, compile_mode = parse_variant(name)
    batch, seq_len = parse_bt(args.bt)
    cfg = TINY if args.tiny else SMOLLM2_135M
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    if on_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
    torch.manual_seed(0)
    extra = {}

    model = build_model(cfg, torch)
    bank = None
    if family == "port":
        src = os.path.abspath(args.port_dir)
        if not os.path.isfile(os.path.join(src, "fairy2", "__init__.py")):
            raise RuntimeError(f"the port is not at {src}: run scripts/get_port.sh first")
        sys.path.insert(0, src)
        from fairy2.models.converter import convert_to_fairy2, count_fairy2_layers
        convert_to_fairy2(model, num_stages=stages, verbose=False)
        extra["port_layers"] = count_fairy2_layers(model)
        commit_file = os.path.join(os.path.dirname(src), "COMMIT")
        if os.path.isfile(commit_file):
            extra["port_commit"] = open(commit_file).read().strip()[:12]
    elif family == "ours":
        sys.path.insert(0, HERE)
        import fairy2i_torch as fq
        bank, skipped = fq.convert_decoder_linears(model, stages)
        extra["ours_groups"] = [list(R.shape) for R in bank.groups]
        if skipped:
            extra["ours_unconverted"] = skipped
    model.to(device)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())

    amp_dtype = torch.bfloat16
    if bank is not None:
        bank.out_dtype = amp_dtype
        # Correct before timing: the unit check on this device, and the compiled quantizer against eager.
        fq.self_check(args.device, verbose=False)
        extra["self_check"] = "passed"
        if compile_mode is not None:
            bank.compile_quantizer()
            frac, max_abs = compiled_vs_eager(bank, torch, fq)
            extra["compiled_quantizer_mismatch_frac"] = frac
            extra["compiled_quantizer_max_abs"] = max_abs
            # Inductor reorders the per-plane sums behind the scales, so a scale can differ in its last
            # fp32 bit and an R_hat entry by one bf16 step (seen: 0.2% of entries, max 0.0098 on an
            # H200); more than 1% would be a real difference.
            if frac > 1e-2:
                raise RuntimeError(f"compiled quantizer differs from eager on {frac:.2e} of the entries "
                                   f"(max abs {max_abs:.3g})")

    fused = on_cuda
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, fused=fused)
    forward = torch.compile(model) if compile_mode == "model" else model
    params = [p for p in model.parameters()]

    gen = torch.Generator(device="cpu").manual_seed(1)
    batches = [torch.randint(0, cfg["vocab_size"], (batch, seq_len), generator=gen).to(device)
               for _ in range(4)]

    def step(i):
        tokens = batches[i % len(batches)]
        if bank is not None:
            bank.refresh()
        with torch.autocast(device_type=device.type, dtype=amp_dtype):
            loss = forward(input_ids=tokens, labels=tokens, use_cache=False).loss
        loss.backward()
        if bank is not None:
            bank.release()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(params, args.clip, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    def sync():
        if on_cuda:
            torch.cuda.synchronize()

    def graphs():
        try:
            from torch._dynamo.utils import counters
            return int(counters["stats"]["unique_graphs"])
        except Exception:
            return -1

    t0 = time.perf_counter()
    losses = []
    for i in range(args.warmup):
        losses.append(step(i))
    sync()
    warmup_s = time.perf_counter() - t0
    graphs_after_warmup = graphs()

    step_ms = []
    wall0 = time.perf_counter()
    if on_cuda:
        events = []
        for i in range(args.steps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            losses.append(step(args.warmup + i))
            end.record()
            events.append((start, end))
        sync()
        step_ms = [s.elapsed_time(e) for s, e in events]
    else:
        for i in range(args.steps):
            t = time.perf_counter()
            losses.append(step(args.warmup + i))
            step_ms.append((time.perf_counter() - t) * 1e3)
    wall_ms = (time.perf_counter() - wall0) * 1e3 / args.steps

    median_ms = statistics.median(step_ms)
    tokens_per_s = batch * seq_len / (median_ms / 1e3)
    losses = [float(x) for x in losses]
    if not all(map(lambda v: v == v and abs(v) != float("inf"), losses)):
        raise RuntimeError(f"non-finite loss: {losses}")
    result = {
        "name": name,
        "bt": args.bt,
        "tokens_per_s": round(tokens_per_s, 1),
        "mfu": round(tokens_per_s * flops_per_token(cfg, seq_len) / PEAK_FLOPS, 4),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_cuda else None,
        "step_ms": round(median_ms, 2),
        "step_ms_min": round(min(step_ms), 2),
        "step_ms_max": round(max(step_ms), 2),
        "wall_step_ms": round(wall_ms, 2),
        "warmup_s": round(warmup_s, 1),
        "steps": args.steps,
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "params_m": round(n_params / 1e6, 2),
        "flops_per_token": flops_per_token(cfg, seq_len),
        "device": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if args.tiny:
        result["tiny"] = True
    if compile_mode is not None:
        result["compiled"] = compile_mode
        result["dynamo_graphs"] = graphs()
        if graphs_after_warmup >= 0 and graphs() > graphs_after_warmup:
            result["recompiled_while_timing"] = graphs() - graphs_after_warmup
    result.update(extra)
    return result


def worker_main(args):
    try:
        result = run_worker(args)
        code = 0
    except Exception as e:  # the parent turns this into an error line and goes on
        traceback.print_exc()
        kind = "out of memory" if "out of memory" in str(e).lower() else type(e).__name__
        result = {"name": args.worker, "bt": args.bt, "error": f"{kind}: {str(e).splitlines()[0][:300]}"
                  if str(e) else kind}
        code = 1
    sys.stdout.write(RESULT_TAG + json.dumps(result) + "\n")
    sys.stdout.flush()
    return code


# ---- the driver -----------------------------------------------------------------------------------

def run_one(args, name, bt):
    family, _, compile_mode = parse_variant(name)
    cap = args.compile_timeout if compile_mode is not None and args.compile_timeout else args.timeout
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--bt", bt, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--device", args.device, "--clip", str(args.clip), "--lr", str(args.lr),
           "--port-dir", args.port_dir] + (["--tiny"] if args.tiny else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    # A session of its own, so a timeout can end the worker and whatever it started (compile workers).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=cap)
        timed_out = False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        timed_out = True
    wall = time.perf_counter() - t0
    result = None
    for line in out.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
    if timed_out:
        result = {"name": name, "bt": bt, "error": f"timed out after {cap} s (cap; compile or steps too slow)"}
    elif result is None:
        tail = " | ".join(l for l in err.strip().splitlines()[-3:])
        result = {"name": name, "bt": bt, "error": f"worker exited {proc.returncode} with no result: {tail[-400:]}"}
    if "error" in result and err.strip():
        sys.stderr.write(f"--- {name} {bt}: last lines of its stderr\n")
        sys.stderr.write("\n".join(err.strip().splitlines()[-25:]) + "\n")
    result["wall_s"] = round(wall, 1)
    return result


def print_table(results):
    w = sys.stderr.write
    w(f"\n{'baseline':<24} {'BxT':>8} {'tokens/s':>10} {'MFU':>6} {'step ms':>9} {'peak GiB':>9} {'wall s':>7}\n")
    for r in results:
        if "error" in r:
            w(f"{r['name']:<24} {r['bt']:>8}  error: {r['error'][:70]}\n")
            continue
        peak = "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.1f}"
        w(f"{r['name']:<24} {r['bt']:>8} {r['tokens_per_s']:>10,.0f} {100 * r['mfu']:>5.1f}% "
          f"{r['step_ms']:>9.1f} {peak:>9} {r['wall_s']:>7.0f}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--only", default=",".join(DEFAULT_ONLY),
                    help="comma-separated baselines, run in this order (default: %(default)s)")
    ap.add_argument("--bt", default="8x2048,32x512", help="comma-separated BxT shapes (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    ap.add_argument("--timeout", type=float, default=240, help="wall-clock cap per baseline and shape, s")
    ap.add_argument("--compile-timeout", type=float, default=None,
                    help="cap for the compiled variants (default: --timeout)")
    ap.add_argument("--out", help="also write the JSON lines to this file (replaced)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model of the same structure")
    ap.add_argument("--clip", type=float, default=1.0, help="grad-norm clip, 0 = none (default: %(default)s)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--port-dir", default=os.path.join(REPO, "third_party", "wrinklefree", "src"),
                    help="where the port's fairy2 package is (default: %(default)s)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    try:
        for bt in args.bt.split(","):
            parse_bt(bt)
        names = [n for n in args.only.split(",") if n]
        for n in names:
            parse_variant(n)
    except ValueError as e:
        ap.error(str(e))
    if args.worker:
        return worker_main(args)

    out = open(args.out, "w") if args.out else None
    results = []
    for name in names:
        for bt in args.bt.split(","):
            sys.stderr.write(f"torch_baselines: {name} {bt} ...\n")
            sys.stderr.flush()
            r = run_one(args, name, bt)
            results.append(r)
            line = json.dumps(r)
            print(line, flush=True)
            if out:
                out.write(line + "\n")
                out.flush()
    if out:
        out.close()
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
