"""test_gguf.py — fairy2's GGUF reader against the gguf Python package (llama.cpp's own reader/writer):
  1. a GGUF written by gguf.GGUFWriter with fresh random F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors and
     metadata of every value type: values equal gguf.quants.dequantize to fp32 rounding, bf16 output is
     the round-to-nearest-even of that, metadata equal; lua gguf.to_hf's q/k un-permutation equals an
     independent numpy one, and (semantically) rotate-half RoPE on the HF rows gives the same attention
     scores as llama.cpp's interleaved RoPE on the file's rows;
  2. malformed GGUFs (truncated, lying counts and lengths, bad magic/version, offsets beyond the file,
     bad tokenizer metadata) give one clear error each, never a crash; plus a fuzz run;
  3. the real SmolLM2-135M-Instruct (scripts/get_smollm2.sh) when it is there or can be fetched: every
     tensor and metadata value cross-checked, and a numpy forward pass over fairy2's HF state dict
     completes "The capital of France is" with " Paris".
Seed printed; F2_TEST_SEED replays."""
import ctypes
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT, GGUFValueType as VT
from gguf.quants import dequantize, quantize
from safetensors import safe_open

LIB, BIN, SRC = os.environ.get("F2_LIB"), os.environ.get("F2_BIN"), os.environ.get("F2_SOURCE_DIR")
if not LIB or not BIN or not SRC:
    sys.exit("F2_LIB, F2_BIN and F2_SOURCE_DIR must be set (run through ctest)")

from f2harness import Tensor, check, summary, test_seed  # noqa: E402

seed = test_seed()
rng = np.random.default_rng(seed)


# ---------------------------------------------------------------- C API through ctypes


lib = ctypes.CDLL(LIB)
P, T, I64, I32, S, D = ctypes.c_void_p, ctypes.POINTER(Tensor), ctypes.c_int64, ctypes.c_int32, ctypes.c_char_p, ctypes.c_double
for name, res, args in [
    ("f2_last_error", S, []), ("f2_clear_error", None, []),
    ("f2_gguf_open", P, [S]), ("f2_gguf_close", None, [P]), ("f2_gguf_version", ctypes.c_uint32, [P]),
    ("f2_gguf_metadata_count", I64, [P]), ("f2_gguf_metadata_key", S, [P, I64]),
    ("f2_gguf_metadata_find", I64, [P, S]), ("f2_gguf_metadata_type", I32, [P, I64]),
    ("f2_gguf_metadata_array_type", I32, [P, I64]), ("f2_gguf_metadata_array_count", I64, [P, I64]),
    ("f2_gguf_metadata_number", ctypes.c_int, [ctypes.POINTER(D), P, I64, I64]),
    ("f2_gguf_metadata_string", ctypes.c_int, [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(I64), P, I64, I64]),
    ("f2_gguf_tensor_count", I64, [P]), ("f2_gguf_tensor_name", S, [P, I64]),
    ("f2_gguf_tensor_find", I64, [P, S]), ("f2_gguf_tensor_type", I32, [P, I64]),
    ("f2_gguf_tensor_shape", I32, [ctypes.POINTER(I64), P, I64]), ("f2_gguf_tensor", T, [P, I64, I32]),
    ("f2_gguf_type_name", S, [I32]), ("f2_gguf_unpermute_rows", ctypes.c_int, [T, T, I32]),
    ("f2_tensor_free", None, [T]), ("f2_tensor_new", T, [I32, I32, I32, ctypes.POINTER(I64)]),
]:
    fn = getattr(lib, name)
    fn.restype, fn.argtypes = res, args
F2_F32, F2_BF16 = 0, 1
NP_OF = {0: np.float32, 1: np.uint16, 2: np.float16, 3: np.int32, 4: np.int64, 5: np.uint8, 6: np.int8}


def last_error():
    msg = lib.f2_last_error().decode(errors="replace")
    lib.f2_clear_error()
    return msg


def to_numpy(t):
    c = t.contents
    shape = tuple(c.shape[d] for d in range(c.ndim))
    dt = np.dtype(NP_OF[c.dtype])
    n = int(np.prod(shape, dtype=np.int64))
    a = np.frombuffer(ctypes.string_at(c.data, n * dt.itemsize), dtype=dt).reshape(shape).copy()
    lib.f2_tensor_free(t)
    return a


def c_tensor(h, name, dtype=-1):
    i = lib.f2_gguf_tensor_find(h, name.encode())
    t = lib.f2_gguf_tensor(h, i, dtype)
    if not t:
        raise RuntimeError(last_error())
    return to_numpy(t)


def c_value(h, i, j, vtype):
    if vtype == VT.STRING:
        p, n = ctypes.c_void_p(), I64()
        assert lib.f2_gguf_metadata_string(ctypes.byref(p), ctypes.byref(n), h, i, j) == 0, last_error()
        return ctypes.string_at(p, n.value).decode(errors="replace")
    d = D()
    assert lib.f2_gguf_metadata_number(ctypes.byref(d), h, i, j) == 0, last_error()
    return bool(d.value) if vtype == VT.BOOL else d.value


def c_metadata(h):
    out = {}
    for i in range(lib.f2_gguf_metadata_count(h)):
        key = lib.f2_gguf_metadata_key(h, i).decode(errors="replace")
        vt = lib.f2_gguf_metadata_type(h, i)
        if vt == VT.ARRAY:
            et = lib.f2_gguf_metadata_array_type(h, i)
            out[key] = (vt, et, [c_value(h, i, j, et) for j in range(lib.f2_gguf_metadata_array_count(h, i))])
        else:
            out[key] = (vt, None, c_value(h, i, 0, vt))
    return out


def ref_metadata(reader):
    out = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        v = f.contents()
        if f.types[0] == VT.ARRAY:
            out[key] = (VT.ARRAY, f.types[1], [float(x) if not isinstance(x, str) else x for x in v])
        elif f.types[0] == VT.BOOL or f.types[0] == VT.STRING:
            out[key] = (f.types[0], None, v)
        else:
            out[key] = (f.types[0], None, float(v))
    return out


def bf16_rne(a):
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def ref_dequant(t):
    """A GGUFReader tensor as f32 in row-major (HF) shape, by gguf-py."""
    shape = tuple(int(x) for x in reversed(t.shape))
    if t.tensor_type == QT.BF16:
        return (t.data.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)


def unpermute_np(w, n_head):
    """Independent numpy inverse of llama.cpp's convert_hf_to_gguf permute (rows of q or k)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_np(w, n_head):
    """llama.cpp's permute, as its converter writes it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def lua(code, timeout=300):
    r = subprocess.run([BIN, "-e", code], capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def rope_scores(q, k, theta, interleaved):
    """Attention scores q.k after RoPE over positions 0..T-1; q: [T, hd], k: [T, hd]. HF layout rotates
    halves (i, i + hd/2); llama.cpp's file layout rotates neighbours (2i, 2i + 1)."""
    T, hd = q.shape
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(T)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)

    def rot(x):
        x = x.astype(np.float64)
        if interleaved:
            a, b = x[:, 0::2], x[:, 1::2]
        else:
            a, b = x[:, :hd // 2], x[:, hd // 2:]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=1)
    return rot(q) @ rot(k).T


tmp = tempfile.mkdtemp(prefix="f2_gguf_")

# ================================================================ 1. synthetic GGUF from gguf.GGUFWriter
hidden, n_head, n_kv, hd, inter, vocab = 64, 4, 2, 16, 96, 40
tokens = [f"tok{i}" for i in range(vocab - 2)] + ["\u0120caf\u00e9", "<|end|>"]
merges = ["t o", "to k", "\u0120 c"]
W = {}   # gguf name -> (qtype, f32 data in HF row-major layout before any permute)
W["token_embd.weight"] = (QT.Q8_0, rng.standard_normal((vocab, hidden)).astype(np.float32))
W["output_norm.weight"] = (QT.F32, rng.standard_normal(hidden).astype(np.float32))
W["output.weight"] = (QT.F16, rng.standard_normal((vocab, hidden)).astype(np.float32))
for L, qt in [(0, QT.Q4_1), (1, QT.Q4_0)]:
    p = f"blk.{L}."
    W[p + "attn_norm.weight"] = (QT.F32, rng.standard_normal(hidden).astype(np.float32))
    W[p + "ffn_norm.weight"] = (QT.F32, rng.standard_normal(hidden).astype(np.float32))
    W[p + "attn_q.weight"] = (qt, rng.standard_normal((n_head * hd, hidden)).astype(np.float32))
    W[p + "attn_k.weight"] = (QT.F32 if L == 0 else QT.BF16, rng.standard_normal((n_kv * hd, hidden)).astype(np.float32))
    W[p + "attn_v.weight"] = (QT.Q8_0, rng.standard_normal((n_kv * hd, hidden)).astype(np.float32))
    W[p + "attn_output.weight"] = (qt, rng.standard_normal((hidden, n_head * hd)).astype(np.float32))
    W[p + "ffn_gate.weight"] = (QT.Q4_1, rng.standard_normal((inter, hidden)).astype(np.float32))
    W[p + "ffn_up.weight"] = (QT.Q4_0, rng.standard_normal((inter, hidden)).astype(np.float32))
    W[p + "ffn_down.weight"] = (QT.Q8_0, rng.standard_normal((hidden, inter)).astype(np.float32))

syn = os.path.join(tmp, "synthetic.gguf")
w = gguf.GGUFWriter(syn, "llama")
w.add_uint32("llama.block_count", 2)
w.add_uint32("llama.context_length", 512)
w.add_uint32("llama.embedding_length", hidden)
w.add_uint32("llama.feed_forward_length", inter)
w.add_uint32("llama.attention.head_count", n_head)
w.add_uint32("llama.attention.head_count_kv", n_kv)
w.add_float32("llama.rope.freq_base", 10000.0)
w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
w.add_string("tokenizer.ggml.model", "gpt2")
w.add_string("tokenizer.ggml.pre", "smollm")
w.add_key_value("tokenizer.ggml.tokens", tokens, VT.ARRAY, sub_type=VT.STRING)
w.add_key_value("tokenizer.ggml.merges", merges, VT.ARRAY, sub_type=VT.STRING)
w.add_key_value("tokenizer.ggml.token_type", [1] * (vocab - 1) + [3], VT.ARRAY, sub_type=VT.INT32)
w.add_uint32("tokenizer.ggml.bos_token_id", vocab - 1)
w.add_uint32("tokenizer.ggml.eos_token_id", vocab - 1)
w.add_bool("tokenizer.ggml.add_bos_token", False)
rand_i = lambda lo, hi: int(rng.integers(lo, hi))
w.add_uint8("test.u8", rand_i(0, 256))
w.add_int8("test.i8", rand_i(-128, 128))
w.add_uint16("test.u16", rand_i(0, 65536))
w.add_int16("test.i16", rand_i(-32768, 32768))
w.add_int32("test.i32", rand_i(-2**31, 2**31))
w.add_uint64("test.u64", rand_i(0, 2**52))
w.add_int64("test.i64", rand_i(-2**52, 2**52))
w.add_float64("test.f64", float(rng.standard_normal()))
w.add_float32("test.f32", float(rng.standard_normal()))
w.add_bool("test.bool", True)
w.add_key_value("test.floats", [float(x) for x in rng.standard_normal(7).astype(np.float32)], VT.ARRAY, sub_type=VT.FLOAT32)
w.add_key_value("test.i64s", [rand_i(-2**40, 2**40) for _ in range(5)], VT.ARRAY, sub_type=VT.INT64)
for name, (qt, data) in W.items():
    stored = data
    if name.endswith(("attn_q.weight", "attn_k.weight")):   # the file holds llama.cpp's rotary layout
        stored = permute_np(data, n_head if "attn_q" in name else n_kv)
    if qt == QT.F32:
        w.add_tensor(name, stored)
    elif qt == QT.F16:
        w.add_tensor(name, stored.astype(np.float16))
    else:
        w.add_tensor(name, quantize(stored, qt), raw_dtype=qt)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

reader = gguf.GGUFReader(syn)
h = lib.f2_gguf_open(syn.encode())
check(bool(h), f"open synthetic: {last_error() if not h else ''}")
check(lib.f2_gguf_version(h) == 3, "version 3")
check(c_metadata(h) == ref_metadata(reader), "metadata of every type equals gguf-py's")
check(lib.f2_gguf_tensor_count(h) == len(reader.tensors), "tensor count")
shape_buf = (I64 * 8)()
for t in reader.tensors:
    i = lib.f2_gguf_tensor_find(h, t.name.encode())
    ndim = lib.f2_gguf_tensor_shape(shape_buf, h, i)
    ref = ref_dequant(t)
    check(tuple(shape_buf[:ndim]) == ref.shape, f"{t.name}: shape {tuple(shape_buf[:ndim])} vs {ref.shape}")
    check(lib.f2_gguf_type_name(lib.f2_gguf_tensor_type(h, i)).decode() == t.tensor_type.name, f"{t.name}: type name")
    got = c_tensor(h, t.name, F2_F32)
    check(got.shape == ref.shape and np.allclose(got, ref, rtol=2e-7, atol=0), f"{t.name} ({t.tensor_type.name}) "
          f"dequantized: max diff {np.max(np.abs(got - ref)) if got.shape == ref.shape else 'shape'}")
    got16 = c_tensor(h, t.name, F2_BF16)
    check(np.array_equal(got16, bf16_rne(ref)), f"{t.name} ({t.tensor_type.name}) as bf16 = RNE of the f32 values")
    native = c_tensor(h, t.name)
    want_dtype = {QT.F16: np.float16, QT.BF16: np.uint16}.get(t.tensor_type, np.float32)
    check(native.dtype == want_dtype, f"{t.name}: native dtype {native.dtype}")
# the kernel of to_hf on its own: un-permutation vs numpy, 2-D and 1-D
for rows, cols, nh in [(n_head * hd, 8, n_head), (24, 1, 3), (12, 5, 1)]:
    a = rng.standard_normal((rows, cols)).astype(np.float32)
    if cols == 1:
        a = a[:, 0]
    sh = (I64 * 8)(*a.shape)
    tin, tout = lib.f2_tensor_new(0, 0, a.ndim, sh), lib.f2_tensor_new(0, 0, a.ndim, sh)
    ctypes.memmove(tin.contents.data, a.ctypes.data, a.nbytes)
    check(lib.f2_gguf_unpermute_rows(tout, tin, nh) == 0, f"unpermute rc {last_error()}")
    check(np.array_equal(to_numpy(tout), unpermute_np(a, nh)), f"unpermute rows {a.shape} / {nh} heads equals numpy")
    check(lib.f2_gguf_unpermute_rows(tin, tin, nh) != 0 and "overlap" in last_error(), "in-place unpermute refused")
    lib.f2_tensor_free(tin)
lib.f2_gguf_close(h)

# Lua: to_hf -> safetensors (fairy2's writer, tested elsewhere) -> numpy; config and tokenizer data.
hf_path = os.path.join(tmp, "synthetic_hf.safetensors")
rc, out, err = lua(f"""
local gguf = require "fairy2.gguf"
local config = require "fairy2.config"
local st = require "fairy2.safetensors"
local g = assert(gguf.open({json.dumps(syn)}))
local state = gguf.to_hf(g)
assert(st.save({json.dumps(hf_path)}, state))
local cfg = config.from_json(gguf.config_from_gguf(g))
local tok = gguf.tokenizer_data(g)
print(require("cjson").encode({{cfg = {{arch = cfg.arch, hidden = cfg.hidden, layers = cfg.layers, heads = cfg.heads,
  kv_heads = cfg.kv_heads, head_dim = cfg.head_dim, intermediate = cfg.intermediate, vocab = cfg.vocab_size,
  rms_eps = cfg.rms_eps, rope_theta = cfg.rope_theta, tie = cfg.tie_embeddings, max_position = cfg.max_position}},
  ntok = #tok.tokens, last = tok.tokens[#tok.tokens], merge = tok.merges[3], tt = tok.token_type[#tok.token_type],
  bos = tok.bos_id, model = tok.model, pre = tok.pre}}))
""")
check(rc == 0, f"lua to_hf on the synthetic file: {err}")
if rc == 0:
    info = json.loads(out.strip().splitlines()[-1])
    check(info["cfg"] == {"arch": "llama", "hidden": hidden, "layers": 2, "heads": n_head, "kv_heads": n_kv,
                          "head_dim": hd, "intermediate": inter, "vocab": vocab, "rms_eps": 1e-5, "rope_theta": 10000,
                          "tie": False, "max_position": 512}, f"config_from_gguf: {info['cfg']}")
    check(info["ntok"] == vocab and info["last"] == "<|end|>" and info["merge"] == "\u0120 c" and info["tt"] == 3
          and info["bos"] == vocab - 1 and info["model"] == "gpt2" and info["pre"] == "smollm", f"tokenizer data {info}")
    by_name = {t.name: t for t in reader.tensors}
    names_hf = {
        "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight", "attn_norm.weight": "input_layernorm.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight", "attn_q.weight": "self_attn.q_proj.weight",
        "attn_k.weight": "self_attn.k_proj.weight", "attn_v.weight": "self_attn.v_proj.weight",
        "attn_output.weight": "self_attn.o_proj.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
        "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight"}
    with safe_open(hf_path, framework="numpy") as f:
        check(len(f.keys()) == len(W), f"to_hf gives every tensor ({len(f.keys())})")
        for gname, (qt, data) in W.items():
            if gname.startswith("blk."):
                L, rest = gname.split(".", 2)[1:]
                hf = f"model.layers.{L}.{names_hf[rest]}"
            else:
                hf = names_hf[gname]
            got = f.get_tensor(hf)
            want = ref_dequant(by_name[gname])
            if "attn_q" in gname or "attn_k" in gname:
                nh = n_head if "attn_q" in gname else n_kv
                want = unpermute_np(want, nh)
                if qt == QT.F32:   # lossless: the HF rows we started from come back exactly
                    check(np.array_equal(got, data), f"{gname}: HF rows restored exactly")
            check(np.allclose(got, want, rtol=2e-7, atol=0), f"to_hf {gname} -> {hf}")
        # Semantics: rotate-half RoPE on fairy2's HF rows = interleaved RoPE on the file's rows.
        x = rng.standard_normal((6, hidden)).astype(np.float32)
        qf, kf = ref_dequant(by_name["blk.0.attn_q.weight"]), ref_dequant(by_name["blk.0.attn_k.weight"])
        qh, kh = f.get_tensor("model.layers.0.self_attn.q_proj.weight"), f.get_tensor("model.layers.0.self_attn.k_proj.weight")
        ok = True
        for head in range(n_head):
            kv = head // (n_head // n_kv)
            sl, kl = slice(head * hd, (head + 1) * hd), slice(kv * hd, (kv + 1) * hd)
            s_file = rope_scores(x @ qf[sl].T, x @ kf[kl].T, 10000.0, interleaved=True)
            s_hf = rope_scores(x @ qh[sl].T, x @ kh[kl].T, 10000.0, interleaved=False)
            ok &= np.allclose(s_file, s_hf, rtol=1e-4, atol=1e-3)
        check(ok, "HF-layout rotate-half RoPE scores equal llama.cpp's interleaved ones")

# ================================================================ 2. malformed GGUFs
def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, payload):
    return gstr(key) + struct.pack("<I", vtype) + payload


def tinfo(name, dims, ggml_type, offset):
    return gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + \
        struct.pack("<IQ", ggml_type, offset)


def build(kvs, infos, data=b"", version=3, magic=b"GGUF", n_kv=None, n_t=None, align=32):
    head = magic + struct.pack("<IQQ", version, len(infos) if n_t is None else n_t, len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(infos)
    body += bytes(-len(body) % align)
    return body + data


arch_kv = kv("general.architecture", VT.STRING, gstr("llama"))
good_info = [tinfo("a", [8], QT.F32, 0), tinfo("b", [32, 2], QT.Q8_0, 32)]
good_data = np.arange(8, dtype=np.float32).tobytes() + bytes(68)   # a: 8 x f32 at 0; b: 2 Q8_0 blocks at 32
good = build([arch_kv], good_info, good_data)
cases = [
    ("bad magic", build([arch_kv], good_info, good_data, magic=b"GGML"), ["bad magic"]),
    ("version 1", build([arch_kv], good_info, good_data, version=1), ["version 1", "not supported"]),
    ("version 99", build([arch_kv], good_info, good_data, version=99), ["version 99"]),
    ("truncated header", good[:12], ["truncated", "tensor count"]),
    ("truncated in a string", build([kv("k", VT.STRING, gstr("x" * 100))], [])[:90], ["metadata 'k'", "length 100", "beyond the end"]),
    ("truncated in a value", build([kv("k", VT.UINT64, bytes(8))], [])[:40], ["truncated", "value of metadata 'k'"]),
    ("truncated in tensor infos", good[:len(good) - len(good_data) - 40], ["truncated"]),
    ("truncated data", good[:-10], ["tensor 'b'", "beyond the end of the file"]),
    ("lying metadata count", build([arch_kv], good_info, good_data, n_kv=1 << 60), ["metadata count", "cannot fit"]),
    ("lying tensor count", build([arch_kv], good_info, good_data, n_t=1 << 40), ["tensor count", "cannot fit"]),
    ("lying key length", build([struct.pack("<Q", 1 << 62) + b"general"], []), ["length 4611686018427387904", "beyond the end"]),
    ("lying string length", build([kv("k", VT.STRING, struct.pack("<Q", 10**12) + b"abc")], []), ["metadata 'k'", "beyond the end"]),
    ("lying array count", build([kv("k", VT.ARRAY, struct.pack("<IQ", VT.UINT32, 1 << 61))], []),
     ["metadata 'k'", "claims 2305843009213693952 elements", "cannot hold"]),
    ("lying string array", build([kv("k", VT.ARRAY, struct.pack("<IQ", VT.STRING, 3) + gstr("a") + struct.pack("<Q", 999))], []),
     ["metadata 'k'", "length 999", "beyond the end"]),
    ("unknown value type", build([kv("k", 13, b"\0" * 8)], []), ["metadata 'k'", "unknown value type 13"]),
    ("array of arrays", build([kv("k", VT.ARRAY, struct.pack("<IQ", VT.ARRAY, 1))], []), ["metadata 'k'", "array of arrays"]),
    ("duplicate key", build([arch_kv, arch_kv], []), ["metadata key 'general.architecture' appears twice"]),
    ("NUL in key", build([kv("a\0b", VT.UINT8, b"\1")], []), ["NUL byte"]),
    ("alignment not power of two", build([kv("general.alignment", VT.UINT32, struct.pack("<I", 24))], []),
     ["general.alignment", "power of two"]),
    ("alignment wrong type", build([kv("general.alignment", VT.STRING, gstr("32"))], []), ["general.alignment"]),
    ("tensor offset beyond file", build([arch_kv], [tinfo("a", [8], QT.F32, 1 << 40)], good_data), ["tensor 'a'", "beyond the end"]),
    ("tensor data beyond file", build([arch_kv], [tinfo("a", [1 << 20], QT.F32, 0)], good_data), ["tensor 'a'", "beyond the end"]),
    ("misaligned offset", build([arch_kv], [tinfo("a", [2], QT.F32, 4)], good_data), ["tensor 'a'", "not a multiple of the alignment"]),
    ("0 dims", build([arch_kv], [tinfo("a", [], QT.F32, 0)], good_data), ["tensor 'a'", "0 dims"]),
    ("5 dims", build([arch_kv], [tinfo("a", [1] * 5, QT.F32, 0)], good_data), ["tensor 'a'", "5 dims"]),
    ("dims overflow", build([arch_kv], [tinfo("a", [1 << 40, 1 << 40], QT.F32, 0)], good_data), ["tensor 'a'", "too large"]),
    ("unknown ggml type", build([arch_kv], [tinfo("a", [8], 77, 0)], good_data), ["tensor 'a'", "unknown ggml type 77"]),
    ("partial block", build([arch_kv], [tinfo("a", [16], QT.Q8_0, 0)], good_data), ["tensor 'a'", "not whole Q8_0 blocks"]),
    ("duplicate tensor", build([arch_kv], [tinfo("a", [8], QT.F32, 0), tinfo("a", [8], QT.F32, 0)], good_data),
     ["tensor 'a' appears twice"]),
    ("empty file", b"", ["bad magic"]),
]
for k, (what, blob, needles) in enumerate(cases):
    p = os.path.join(tmp, f"bad{k}.gguf")
    with open(p, "wb") as f:
        f.write(blob)
    hh = lib.f2_gguf_open(p.encode())
    err = last_error() if not hh else "(opened)"
    if hh:
        lib.f2_gguf_close(hh)
    check(not hh and p in err and all(n in err for n in needles) and "\n" not in err,
          f"malformed GGUF '{what}': got {err!r}, want {needles}")
# the valid one opens, and a type fairy2 cannot decode is refused by name when asked for
p = os.path.join(tmp, "good.gguf")
with open(p, "wb") as f:
    f.write(build([arch_kv], good_info + [tinfo("q6", [256], QT.Q6_K, 128)], good_data + bytes(28 + 210)))
hh = lib.f2_gguf_open(p.encode())
check(bool(hh), f"hand-built GGUF opens: {last_error() if not hh else ''}")
if hh:
    check(np.array_equal(c_tensor(hh, "a"), np.arange(8, dtype=np.float32)), "hand-built F32 tensor")
    try:
        c_tensor(hh, "q6")
        check(False, "Q6_K decoded?")
    except RuntimeError as e:
        check("q6" in str(e) and "Q6_K" in str(e) and "does not decode" in str(e), f"Q6_K refused: {e}")
    try:
        c_tensor(hh, "a", 3)
        check(False, "F32 read as i32?")
    except RuntimeError as e:
        check("cannot be read as i32" in str(e), f"bad dtype refused: {e}")
    lib.f2_gguf_close(hh)

# bad model / tokenizer metadata through the Lua layer: one clear error each
def lua_error(blob, call):
    p = os.path.join(tmp, "meta.gguf")
    with open(p, "wb") as f:
        f.write(blob)
    rc, out, err = lua(f"""
local gguf = require "fairy2.gguf"
local g = assert(gguf.open({json.dumps(p)}))
local ok, e = pcall(gguf.{call}, g)
print(ok and "no error" or e)
""")
    return out.strip()


tok_ok = [kv("tokenizer.ggml.model", VT.STRING, gstr("gpt2")),
          kv("tokenizer.ggml.tokens", VT.ARRAY, struct.pack("<IQ", VT.STRING, 2) + gstr("a") + gstr("b"))]
tok_cases = [
    ("tokens missing", [tok_ok[0]], ["lacks tokenizer metadata 'tokenizer.ggml.tokens'"]),
    ("tokens not strings", [tok_ok[0], kv("tokenizer.ggml.tokens", VT.ARRAY, struct.pack("<IQ", VT.INT32, 2) + bytes(8))],
     ["'tokenizer.ggml.tokens'", "array of i32", "expected array of string"]),
    ("model not string", [kv("tokenizer.ggml.model", VT.UINT32, bytes(4)), tok_ok[1]], ["'tokenizer.ggml.model'", "is u32"]),
    ("token_type length", tok_ok + [kv("tokenizer.ggml.token_type", VT.ARRAY, struct.pack("<IQ", VT.INT32, 1) + bytes(4))],
     ["token_type has 1 entries for 2 tokens"]),
    ("bos out of range", tok_ok + [kv("tokenizer.ggml.bos_token_id", VT.UINT32, struct.pack("<I", 7))], ["bos_id 7", "outside"]),
]
for what, kvs, needles in tok_cases:
    msg = lua_error(build([arch_kv] + kvs, []), "tokenizer_data")
    check(all(n in msg for n in needles) and "meta.gguf" in msg, f"tokenizer '{what}': {msg!r}")
msg = lua_error(build([kv("general.architecture", VT.STRING, gstr("gpt2"))] + tok_ok, []), "config_from_gguf")
check("architecture 'gpt2'" in msg and "not supported" in msg, f"unsupported arch: {msg!r}")
msg = lua_error(build([arch_kv] + tok_ok, []), "config_from_gguf")
check("lacks metadata 'llama.attention.head_count'" in msg, f"missing model metadata: {msg!r}")
msg = lua_error(build([arch_kv, kv("llama.attention.head_count", VT.UINT32, struct.pack("<I", 2))] + tok_ok,
                      [tinfo("blk.0.attn_q.weight", [8], QT.F32, 0), tinfo("blk.0.weird.weight", [8], QT.F32, 32)],
                      bytes(64)), "to_hf")
check("blk.0.weird.weight" in msg and "no Hugging Face name" in msg, f"unknown tensor name: {msg!r}")

# fuzz: truncations and byte flips of the synthetic file: no crash, every refusal names the file
with open(syn, "rb") as f:
    valid = f.read()
header_end = reader.data_offset
fuzz_ok = True
for k in range(300):
    b = bytearray(valid)
    if k % 3 == 0:
        b = b[:int(rng.integers(0, header_end + 64))]
    else:
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, header_end))] = int(rng.integers(0, 256))
    p = os.path.join(tmp, "fuzz.gguf")
    with open(p, "wb") as f:
        f.write(bytes(b))
    hh = lib.f2_gguf_open(p.encode())
    if hh:   # it parsed: reading every tensor and value must stay in bounds too
        c_metadata(hh)
        for i in range(lib.f2_gguf_tensor_count(hh)):
            t = lib.f2_gguf_tensor(hh, i, 0)
            if t:
                lib.f2_tensor_free(t)
            else:
                last_error()
        lib.f2_gguf_close(hh)
    else:
        err = last_error()
        if p not in err:
            fuzz_ok = False
            print("fuzz: error without the file name:", err, file=sys.stderr)
check(fuzz_ok, "300 fuzzed GGUFs: no crash, every refusal names the file")

# ================================================================ 3. the real SmolLM2-135M-Instruct
real = os.path.join(SRC, "models", "smollm2-135m-instruct.gguf")
if not os.path.exists(real):
    r = subprocess.run(["bash", os.path.join(SRC, "scripts", "get_smollm2.sh")], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        print("real SmolLM2: not available (" + (r.stderr.strip().splitlines() or ["?"])[-1] + "); skipped that part")
if os.path.exists(real):
    reader = gguf.GGUFReader(real)
    h = lib.f2_gguf_open(real.encode())
    check(bool(h), f"open the real SmolLM2: {last_error() if not h else ''}")
    meta = c_metadata(h)
    check(meta == ref_metadata(reader), "SmolLM2 metadata (tokens, merges, ...) equals gguf-py's")
    worst, exact = 0.0, True
    for t in reader.tensors:
        ref = ref_dequant(t)
        got = c_tensor(h, t.name, F2_F32)
        if got.shape != ref.shape:
            check(False, f"{t.name}: shape {got.shape} vs {ref.shape}")
            continue
        exact &= bool(np.array_equal(got, ref))
        worst = max(worst, float(np.max(np.abs(got - ref) / (np.abs(ref) + 1e-30))))
        check(np.allclose(got, ref, rtol=2e-7, atol=0), f"SmolLM2 {t.name} ({t.tensor_type.name}) dequantized")
    print(f"real SmolLM2: {len(reader.tensors)} tensors, max relative difference to gguf-py {worst:.3g} "
          f"({'bit-identical' if exact else 'not bit-identical'})")
    lib.f2_gguf_close(h)

    hf_path = os.path.join(tmp, "smollm2_hf.safetensors")
    rc, out, err = lua(f"""
local hub = require "fairy2.hub"
local st = require "fairy2.safetensors"
local m = assert(hub.resolve("gguf:{real}"))
assert(st.save({json.dumps(hf_path)}, {{ names = m.names, tensors = m.state }}))
local c = m.config
print(c.arch, c.vocab_size, c.hidden, c.layers, c.heads, c.kv_heads, c.head_dim, c.intermediate, c.rope_theta,
      c.rms_eps, tostring(c.tie_embeddings), c.bos_id, c.eos_id, m.tokenizer_source.kind)
""")
    check(rc == 0, f"hub.resolve(gguf:SmolLM2): {err}")
    if rc == 0:
        check(out.split() == ["llama", "49152", "576", "30", "9", "3", "64", "1536", "100000", "1e-05", "true", "1", "2",
                              "gguf"], f"SmolLM2 config: {out.strip()}")
        by_name = {t.name: t for t in reader.tensors}
        with safe_open(hf_path, framework="numpy") as f:
            wts = {k: f.get_tensor(k) for k in f.keys()}
        check(len(wts) == 272 and "lm_head.weight" not in wts, f"272 HF tensors, tied (no lm_head): {len(wts)}")
        for L in (0, 17, 29):
            for proj, nh in (("q", 9), ("k", 3)):
                want = unpermute_np(ref_dequant(by_name[f"blk.{L}.attn_{proj}.weight"]), nh)
                check(np.allclose(wts[f"model.layers.{L}.self_attn.{proj}_proj.weight"], want, rtol=2e-7, atol=0),
                      f"SmolLM2 layer {L} {proj}_proj un-permuted as numpy does")

        # A numpy forward pass of the HF-layout model (rotate-half RoPE) over fairy2's weights must give the
        # logits of llama.cpp's layout (the file's q/k rows, interleaved RoPE), and complete the sentence.
        vocab_list = meta["tokenizer.ggml.tokens"][2]
        index = {s: i for i, s in enumerate(vocab_list)}
        prompt = ["The", "\u0120capital", "\u0120of", "\u0120France", "\u0120is"]
        if all(p in index for p in prompt):
            ids = [index[p] for p in prompt]
            T, hd, nh, nkv, eps, theta = len(ids), 64, 9, 3, 1e-5, 100000.0
            inv = theta ** (-np.arange(0, hd, 2) / hd)
            ang = np.arange(T)[:, None] * inv[None, :]
            cos, sin = np.cos(ang), np.sin(ang)

            def rms(x, wgt):
                return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * wgt

            def rope(x, interleaved):   # x: [heads, T, hd]
                if interleaved:
                    a, b = x[..., 0::2], x[..., 1::2]
                    out = np.empty_like(x)
                    out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
                    return out
                a, b = x[..., :hd // 2], x[..., hd // 2:]
                return np.concatenate([a * cos - b * sin, a * sin + b * cos], -1)

            def forward(wts, interleaved):
                x = wts["model.embed_tokens.weight"][ids].astype(np.float64)
                mask = np.triu(np.full((T, T), -np.inf), 1)
                for L in range(30):
                    p = f"model.layers.{L}."
                    a = rms(x, wts[p + "input_layernorm.weight"])
                    q = (a @ wts[p + "self_attn.q_proj.weight"].T).reshape(T, nh, hd).transpose(1, 0, 2)
                    k = (a @ wts[p + "self_attn.k_proj.weight"].T).reshape(T, nkv, hd).transpose(1, 0, 2)
                    v = (a @ wts[p + "self_attn.v_proj.weight"].T).reshape(T, nkv, hd).transpose(1, 0, 2)
                    q, k = rope(q, interleaved), rope(k, interleaved)
                    k, v = np.repeat(k, nh // nkv, 0), np.repeat(v, nh // nkv, 0)
                    s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
                    s = np.exp(s - s.max(-1, keepdims=True))
                    s /= s.sum(-1, keepdims=True)
                    o = (s @ v).transpose(1, 0, 2).reshape(T, nh * hd)
                    x = x + o @ wts[p + "self_attn.o_proj.weight"].T
                    a = rms(x, wts[p + "post_attention_layernorm.weight"])
                    g = a @ wts[p + "mlp.gate_proj.weight"].T
                    x = x + ((g / (1 + np.exp(-g))) * (a @ wts[p + "mlp.up_proj.weight"].T)) @ wts[p + "mlp.down_proj.weight"].T
                return rms(x[-1], wts["model.norm.weight"]) @ wts["model.embed_tokens.weight"].T

            logits = forward(wts, interleaved=False)
            file_layout = dict(wts)
            for L in range(30):
                for proj in ("q", "k"):
                    file_layout[f"model.layers.{L}.self_attn.{proj}_proj.weight"] = ref_dequant(by_name[f"blk.{L}.attn_{proj}.weight"])
            ref_logits = forward(file_layout, interleaved=True)
            check(np.allclose(logits, ref_logits, rtol=1e-6, atol=1e-6 * np.max(np.abs(ref_logits))),
                  f"HF-layout forward = llama.cpp-layout forward (max diff {np.max(np.abs(logits - ref_logits)):.3g})")
            top = [vocab_list[i] for i in np.argsort(-logits)[:5]]
            print("real SmolLM2 (numpy forward over fairy2's weights): 'The capital of France is' ->", top)
            check(top[0] == "\u0120Paris", f"SmolLM2 completes with Paris: {top}")
        else:
            check(False, "prompt tokens missing from the SmolLM2 vocabulary")

sys.exit(summary())
