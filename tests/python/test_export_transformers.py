#!/usr/bin/env python3
"""test_export_transformers.py — fairy2's exports as transformers sees them. fairy2 (F2_BIN, through a Lua
script) trains nothing: it builds tiny random Llama (untied, biases, llama3 rope, W2 per-group) and Qwen3
(tied, W1 per-row) models, converts them, writes checkpoints in the training layout and exports each to a
Hugging Face directory and a packed file. Then:
  - transformers' AutoModelForCausalLM loads the HF directory (float32) and its logits on fresh random ids
    equal fairy2's on the same directory (same bf16 weights) within 1e-4 relative, and the checkpoint
    model's (fp32 R_hat, STE forward) within bf16 rounding (||d|| / ||b|| < 2e-2); so do the packed file's;
  - the packed file, decoded by a numpy reader written from docs/export.md's byte layout, gives the HF
    export's bf16 R_hat bit for bit, and the same other tensors;
  - with the real SmolLM2 GGUF (models/smollm2-135m-instruct.gguf) as the model source, the tokenizer.json
    the export writes encodes like fairy2's GGUF tokenizer under the Python `tokenizers` library and under
    AutoTokenizer (ids, decode, and the chat template).
Needs torch, transformers, safetensors, tokenizers; prints "skipped: ..." and exits 77 without torch or
transformers. Fresh random weights, ids and texts each run (seed printed; F2_TEST_SEED replays).
"""
import json
import os
import random
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    import transformers
    from safetensors.numpy import load_file
except ImportError as e:
    print(f"skipped: {e} (pip install torch transformers safetensors numpy)")
    sys.exit(77)

BIN = os.environ.get("F2_BIN", "build/fairy2")
SRC = os.environ.get("F2_SOURCE_DIR", os.getcwd())
GGUF = os.path.join(SRC, "models", "smollm2-135m-instruct.gguf")
from f2harness import check, summary, test_seed  # noqa: E402


CASES = {
    "llama": ({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 97, "hidden_size": 48,
               "intermediate_size": 76, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
               "head_dim": 12, "tie_word_embeddings": False, "attention_bias": True, "mlp_bias": True,
               "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 256,
               "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 16}, "bos_token_id": 1, "eos_token_id": 2},
              {"stages": 2, "granularity": "group", "group_size": 8}),
    "qwen3": ({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": 89, "hidden_size": 32,
               "intermediate_size": 60, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
               "head_dim": 16, "tie_word_embeddings": True, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
               "max_position_embeddings": 128},
              {"stages": 1, "granularity": "row"}),
}

LUA = r"""
local tmp, name, cfg_json, quant_json, source, seed, texts_path = ...
local cjson = require "cjson"
local f2 = require "fairy2"
local config = require "fairy2.config"
local export = require "fairy2.export"
local fairy2 = require "fairy2.fairy2"
local hub = require "fairy2.hub"
local llama = require "fairy2.models.llama"
local safetensors = require "fairy2.safetensors"
seed = tonumber(seed)
local desc = config.from_json(cfg_json)
local quant = cjson.decode(quant_json)
local model = llama.build(desc)
-- O(1) activations: every weight N(0, 1/hidden), norms 1 + N(0, 0.1^2)
llama.init_random(model, seed, { std = 1 / math.sqrt(desc.hidden) })
for i, p in ipairs(model:named_parameters()) do
  if p.name:match("norm%.weight$") then p.value:add_(f2.randn(p.value:shape(), { seed = seed + 1000 + i, std = 0.1 })) end
end
quant.quiet = true
fairy2.convert(model, quant)
local ck = tmp .. "/" .. name .. "_run/checkpoints/step_000001"
assert(os.execute("mkdir -p '" .. ck .. "'"))
local list = {}
for _, p in ipairs(model:named_parameters()) do list[#list + 1] = { p.name, p.value } end
assert(safetensors.save(ck .. "/model.safetensors", list))
quant.quiet = nil
local f = assert(io.open(ck .. "/state.json", "wb"))
f:write(cjson.encode({ step = 1, recipe = { model = source, quant = quant }, model_desc = desc }))
f:close()
assert(io.open(ck .. "/DONE", "wb")):close()

local run = tmp .. "/" .. name .. "_run"
assert(export.hf(run, tmp .. "/" .. name .. "_hf"))
local rep = assert(export.packed(run, tmp .. "/" .. name .. ".f2.safetensors"))
print(export.format_packed_report(rep))

math.randomseed(seed)
local rows = {}
for b = 1, 2 do
  rows[b] = {}
  for j = 1, 9 do rows[b][j] = math.random(0, desc.vocab_size - 1) end
end
local ids = f2.tensor(rows, { dtype = "i32" })
local r = assert(hub.resolve(tmp .. "/" .. name .. "_hf"))
local from_hf = llama.load_state(llama.build(r.config), r.state)
local packed = assert(export.load_packed(tmp .. "/" .. name .. ".f2.safetensors"))
assert(safetensors.save(tmp .. "/" .. name .. "_logits.safetensors", {
  { "ids", ids }, { "checkpoint", model:forward(ids) }, { "hf", from_hf:forward(ids) }, { "packed", packed:forward(ids) } }))

if texts_path ~= "" then
  local tokenizer = require "fairy2.tokenizer"
  local gguf = require "fairy2.gguf"
  local g = assert(gguf.open(source:match("^gguf:(.+)$")))
  local tok = tokenizer.from_gguf(gguf.tokenizer_data(g))
  g:close()
  local out = assert(io.open(texts_path .. ".ids", "wb"))
  local texts = {}
  for line in io.lines(texts_path) do
    local text = line:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)
    out:write(table.concat(tok:encode(text), " "), "\n")
  end
  local chat = tok:apply_chat_template({ { role = "user", content = "Hi there" }, { role = "assistant", content = "Hello!" },
    { role = "user", content = "2+2?" } }, { add_generation_prompt = true })
  out:write((chat:gsub(".", function(c) return string.format("%02x", c:byte()) end)), "\n")
  out:close()
end
"""

WORDS = ["Hello", "world", "the", "quantization", "café", "naïve", "東京", "🙂", "x=3.14", "def", "f():", "\n", "\t",
         "  ", "<|im_start|>", "<|im_end|>", "user", "<|endoftext|>", "1234567", "don't", "I'LL"]


def texts_for(rng):
    fixed = ["Hello world!", "The year 2025 has 365 days.", "  leading spaces\tand tabs\n\nnew lines  ",
             "<|im_start|>user\nWhat is 12*34?<|im_end|>\n<|im_start|>assistant\n", "naïve café, 東京 🙂👍🏽", ""]
    rand = ["".join(rng.choice(WORDS) + rng.choice(["", " ", "  "]) for _ in range(rng.randint(1, 12)))
            for _ in range(40)]
    return fixed + rand


def decode_packed(codes, scales, shape, granularity, group_size):
    """R_hat (float32) of one packed layer, written from docs/export.md's byte layout: codes u8 [T, 2, n, ceil(m/4)]
    (4 codes a byte, first column in the low bits; code k is i^k), scales f32 [T, 4, S] (U re, U im, W re, W im);
    each plane summed over the stages in order from 0 in float32, then R = [[Ur+Wr, Wi-Ui], [Ui+Wi, Ur-Wr]]."""
    n, m = shape[0] // 2, shape[1] // 2
    j = np.arange(m)
    k = (codes[..., j // 4] >> (2 * (j % 4))) & 3
    q = (np.array([1, 0, -1, 0], np.float32)[k], np.array([0, 1, 0, -1], np.float32)[k])
    i = np.arange(n)[:, None]
    group = {"tensor": np.zeros((n, m), np.int64), "row": np.broadcast_to(i, (n, m)),
             "group": i * -(-m // max(group_size, 1)) + j[None, :] // max(group_size, 1)}[granularity]
    planes = [np.zeros((n, m), np.float32) for _ in range(4)]
    for t in range(codes.shape[0]):
        for c in range(4):
            planes[c] = planes[c] + scales[t, c][group] * q[c % 2][t, c // 2]
    u_re, u_im, w_re, w_im = planes
    return np.block([[u_re + w_re, w_im - u_im], [u_im + w_im, u_re - w_re]])


def check_packed(name, path, hf_dir, quant):
    """The packed file against the HF export, read with the Python safetensors library only."""
    from safetensors import safe_open
    from safetensors.torch import load_file as load_torch
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    packed, hf = load_torch(path), load_torch(os.path.join(hf_dir, "model.safetensors"))
    with open(os.path.join(hf_dir, "config.json")) as f:
        hf_config = json.load(f)
    check(meta["format"] == "fairy2-packed" and meta["version"] == "1" and int(meta["stages"]) == quant["stages"]
          and meta["granularity"] == quant["granularity"] and json.loads(meta["config"]) == hf_config,
          f"{name}: packed metadata")
    layers = json.loads(meta["layers"])
    check(len(layers) > 0 and set(hf) == {n for n in packed if not n.endswith((".codes", ".scales"))}
          | {layer + ".weight" for layer in layers}, f"{name}: packed tensors cover the HF export's")
    exact = 0
    for layer, shape in layers.items():
        r_hat = decode_packed(packed[layer + ".codes"].numpy(), packed[layer + ".scales"].numpy(), shape,
                              meta["granularity"], int(meta["group_size"]))
        exact += torch.equal(torch.from_numpy(r_hat).to(torch.bfloat16), hf[layer + ".weight"])
    check(exact == len(layers), f"{name}: {exact} of {len(layers)} layers decoded with numpy give the HF export's bf16 R_hat")
    same = all(torch.equal(packed[n], hf[n]) for n in packed if not n.endswith((".codes", ".scales")))
    check(same, f"{name}: the packed file's other tensors equal the HF export's")
    print(f"{name}: packed file decoded with numpy: {exact} of {len(layers)} layers give the HF export's R_hat bit for bit")


def rel(a, b):
    """(max|a-b| / max|b|, ||a-b|| / ||b||) in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max()), float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main():
    seed = test_seed()
    rng = random.Random(seed)
    transformers.utils.logging.disable_progress_bar()
    major = int(transformers.__version__.split(".")[0])
    dtype_kw = {"dtype": torch.float32} if major >= 5 else {"torch_dtype": torch.float32}
    have_gguf = os.path.exists(GGUF)
    if not have_gguf:
        print(f"tokenizer from GGUF: skipped ({GGUF} is absent; scripts/get_smollm2.sh fetches it)")
    with tempfile.TemporaryDirectory(prefix="f2export") as tmp:
        script = os.path.join(tmp, "make.lua")
        with open(script, "w") as f:
            f.write(LUA)
        for i, (name, (cfg, quant)) in enumerate(CASES.items()):
            use_gguf = have_gguf and name == "llama"
            texts = texts_for(rng) if use_gguf else []
            texts_path = os.path.join(tmp, "texts.hex") if use_gguf else ""
            if use_gguf:
                with open(texts_path, "w") as f:
                    f.write("".join(t.encode("utf-8").hex() + "\n" for t in texts))
            source = "gguf:" + GGUF if use_gguf else "hf:none/none"
            p = subprocess.run([BIN, script, tmp, name, json.dumps(cfg), json.dumps(quant), source, str(seed + i),
                                texts_path], capture_output=True, text=True, cwd=SRC, timeout=300)
            if not check(p.returncode == 0, f"{name}: fairy2 export failed:\n{p.stdout}\n{p.stderr}"):
                continue
            print(p.stdout.strip())
            hf_dir = os.path.join(tmp, name + "_hf")
            got = load_file(os.path.join(tmp, name + "_logits.safetensors"))

            model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager", **dtype_kw)
            model.eval()
            c = model.config
            check(c.tie_word_embeddings == cfg["tie_word_embeddings"] and c.num_key_value_heads == cfg["num_key_value_heads"]
                  and c.head_dim == cfg["head_dim"] and abs(c.rms_norm_eps - cfg["rms_norm_eps"]) < 1e-12,
                  f"{name}: transformers reads config.json as written")
            check(next(model.parameters()).dtype == torch.float32, f"{name}: loaded as float32")
            ids = torch.from_numpy(got["ids"].astype(np.int64))
            with torch.no_grad():
                logits = model(input_ids=ids).logits.reshape(-1, cfg["vocab_size"]).numpy()
            m, fro = rel(logits, got["hf"])
            check(m < 1e-4, f"{name}: transformers == fairy2 on the exported directory (max rel {m:.2e})")
            m2, fro2 = rel(logits, got["checkpoint"])
            check(fro2 < 2e-2, f"{name}: transformers on the export vs the checkpoint model: ||d||/||b|| {fro2:.2e}")
            check_packed(name, os.path.join(tmp, name + ".f2.safetensors"), hf_dir, quant)
            m3, fro3 = rel(got["packed"], got["checkpoint"])
            check(fro3 < 2e-2, f"{name}: packed vs the checkpoint model: ||d||/||b|| {fro3:.2e}")
            print(f"{name}: transformers vs fairy2 on the HF export: max rel {m:.1e}; vs the checkpoint model: "
                  f"||d||/||b|| {fro2:.1e} (max rel {m2:.1e}); packed vs checkpoint {fro3:.1e}")

            if use_gguf:
                from tokenizers import Tokenizer
                with open(texts_path + ".ids") as f:
                    lines = f.read().split("\n")
                want = [[int(x) for x in line.split()] for line in lines[:len(texts)]]
                chat = bytes.fromhex(lines[len(texts)]).decode("utf-8")
                raw = Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))
                auto = transformers.AutoTokenizer.from_pretrained(hf_dir)
                bad = 0
                for text, ids_f2 in zip(texts, want):
                    ok = raw.encode(text, add_special_tokens=False).ids == ids_f2
                    ok = ok and auto(text)["input_ids"] == ids_f2
                    ok = ok and auto.decode(ids_f2) == raw.decode(ids_f2, skip_special_tokens=False)
                    if not check(ok, f"tokenizer: ids differ for {text!r}: fairy2 {ids_f2}, "
                                     f"tokenizers {raw.encode(text, add_special_tokens=False).ids}"):
                        bad += 1
                check(auto.bos_token == "<|im_start|>" and auto.eos_token == "<|im_end|>", "tokenizer: special tokens")
                messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
                            {"role": "user", "content": "2+2?"}]
                check(auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == chat,
                      "tokenizer: the chat template renders as fairy2's")
                print(f"tokenizer from the GGUF: {len(texts) - bad} of {len(texts)} texts encode as fairy2's "
                      f"(tokenizers and AutoTokenizer)")
    return summary()


if __name__ == "__main__":
    sys.exit(main())
