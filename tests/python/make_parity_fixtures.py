#!/usr/bin/env python3
"""make_parity_fixtures.py — writes the transformers parity fixtures that tests/lua/test_parity.lua checks
fairy2's CPU model against: tiny random-weight Llama and Qwen3 models with odd shapes, fp32, one batch.

Each fixture tests/fixtures/<name>.safetensors holds, under these names:
  <HF parameter name>           every weight, as in the model's state dict (tied: no lm_head.weight)
  grad.<HF parameter name>      d(loss)/d(weight)
  input_ids, targets            int32 [B, T]; targets are aligned with positions (no shift), -100 = ignored
  logits                        f32 [B*T, V];   loss  f32 [1]: mean cross-entropy over counted targets
  rope.inv_freq                 f32 [head_dim/2] as transformers computes it (llama3 scaling included)
and in __metadata__: "config" (the config.json text) and "desc" (fairy2's normalized description, JSON).

Needs torch + transformers + safetensors. Runs on the CPU by default; --device cuda regenerates on a GPU
(fp32, TF32 off). Usage: python3 tests/python/make_parity_fixtures.py [--out DIR] [--device cpu|cuda]
"""
import argparse
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

BATCH, SEQ, IGNORE = 2, 7, -100

# Odd-ish shapes: heads not a power of two, one KV head, head_dim independent of hidden/heads (Qwen3),
# intermediate not a multiple of 64, tied and untied heads, llama3 rope scaling, biases. Small enough
# that each fixture stays well under 1 MB.
FIXTURES = {
    "llama_tied": (LlamaConfig, LlamaForCausalLM, dict(
        vocab_size=151, hidden_size=60, intermediate_size=84, num_hidden_layers=2, num_attention_heads=5,
        num_key_value_heads=1, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
        max_position_embeddings=64)),
    "llama3_untied": (LlamaConfig, LlamaForCausalLM, dict(
        vocab_size=151, hidden_size=48, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, rms_norm_eps=1e-6, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 32},
        tie_word_embeddings=False, attention_bias=True, mlp_bias=True, max_position_embeddings=256)),
    "qwen3_tied": (Qwen3Config, Qwen3ForCausalLM, dict(
        vocab_size=151, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=5,
        num_key_value_heads=1, head_dim=48, rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        max_position_embeddings=128)),
}


def desc_of(arch, cfg):
    """fairy2's normalized model description (what lua/fairy2/config.lua produces from config.json)."""
    rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", None))
    scaling = None
    if rope.get("rope_type", "default") == "llama3":
        scaling = {k: rope[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                        "original_max_position_embeddings")}
        scaling["type"] = "llama3"
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {
        "arch": arch, "vocab_size": cfg.vocab_size, "hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers,
        "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads, "head_dim": head_dim,
        "intermediate": cfg.intermediate_size, "rope_theta": theta, "rope_scaling": scaling,
        "rms_eps": cfg.rms_norm_eps, "tie_embeddings": bool(cfg.tie_word_embeddings),
        "attention_bias": bool(getattr(cfg, "attention_bias", False)), "mlp_bias": bool(getattr(cfg, "mlp_bias", False)),
        "qk_norm": arch == "qwen3", "max_position": cfg.max_position_embeddings,
    }


def randomize(model, gen):
    """Weights with O(1) activations so that softmaxes are neither flat nor one-hot: linear N(0, 1/in),
    biases N(0, 0.1), norm weights 1 + N(0, 0.2), embeddings N(0, 1/hidden) (logits O(1) when tied)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if "norm" in name:
                p.copy_(1 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:   # linear weights are (out, in), embeddings (vocab, hidden)
                p.copy_(noise / p.shape[1] ** 0.5)


def make(name, out_dir, device):
    config_cls, model_cls, kwargs = FIXTURES[name]
    seed = sum(map(ord, name))   # fixed per fixture: regenerating gives the same weights and inputs
    gen = torch.Generator().manual_seed(seed)
    cfg = config_cls(**kwargs)
    cfg._attn_implementation = "eager"
    model = model_cls(cfg).to(torch.float32)
    randomize(model, gen)
    model.to(device)

    ids = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=gen)
    targets = torch.randint(0, cfg.vocab_size, (BATCH, SEQ), generator=gen)
    targets[0, 2] = targets[1, 0] = targets[1, 5] = IGNORE
    logits = model(input_ids=ids.to(device)).logits.reshape(BATCH * SEQ, cfg.vocab_size)
    loss = F.cross_entropy(logits, targets.reshape(-1).to(device), ignore_index=IGNORE)
    loss.backward()

    tensors = {}
    for pname, p in model.named_parameters():   # tied weights appear once, under the embedding's name
        tensors[pname] = p.detach()
        tensors["grad." + pname] = p.grad
    arch = cfg.model_type
    tensors.update({
        "input_ids": ids.to(torch.int32), "targets": targets.to(torch.int32), "logits": logits.detach(),
        "loss": loss.detach().reshape(1), "rope.inv_freq": model.model.rotary_emb.inv_freq.float(),
    })
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    metadata = {"config": cfg.to_json_string(), "desc": json.dumps(desc_of(arch, cfg)),
                "generator": "tests/python/make_parity_fixtures.py (torch %s, %s)" % (torch.__version__, device)}
    path = os.path.join(out_dir, name + ".safetensors")
    save_file(tensors, path, metadata=metadata)
    print("%s: %d tensors, %d bytes, loss %.6f" % (path, len(tensors), os.path.getsize(path), loss.item()))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(here, "..", "fixtures"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("names", nargs="*", default=list(FIXTURES))
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    os.makedirs(args.out, exist_ok=True)
    for name in args.names:
        make(name, args.out, args.device)


if __name__ == "__main__":
    main()
