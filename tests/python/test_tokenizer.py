#!/usr/bin/env python3
"""test_tokenizer.py — fairy2's tokenizer against Hugging Face tokenizers (PyPI), exact ids.

Builds (a) a SmolLM2-like tokenizer (Digits + ByteLevel), (b) a Qwen2-like one (NFC + Split + ByteLevel),
(c) a GPT-2-like one (ByteLevel alone), each trained with the tokenizers BpeTrainer on a varied corpus and
saved as tokenizer.json (merges in pair form, and (a) again in string form), plus (d) the real SmolLM2
from models/smollm2-135m-instruct.gguf when present (HF built from the GGUF metadata in Python, fairy2
through gguf.lua + tokenizer.from_gguf). fairy2 runs through its Lua API (F2_BIN); the per-code-point
sweeps of the pre-tokenizers and NFC run through ctypes (F2_LIB). Every text: encode ids equal, decode
equal to HF's (after UTF-8 repair), decode(encode(x)) == x where HF round-trips too. Texts: a fixed set
(prose, code, whitespace runs, numbers, accented Latin NFC/NFD, CJK, emoji incl. ZWJ, invalid UTF-8,
special tokens) and fresh random mixes each run (seed printed; F2_TEST_SEED replays).
Needs: pip install tokenizers (gguf for (d)). Exit 77 when tokenizers is missing.
"""
import ctypes
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import unicodedata

try:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
except ImportError:
    print("skipped: the Python package tokenizers is not installed (pip install tokenizers)")
    sys.exit(77)

SRC = os.environ.get("F2_SOURCE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BIN = os.environ.get("F2_BIN", os.path.join(SRC, "build", "fairy2"))
LIB = os.environ.get("F2_LIB", os.path.join(SRC, "build", "libfairy2.so"))
GGUF = os.path.join(SRC, "models", "smollm2-135m-instruct.gguf")

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

from f2harness import check, summary, test_seed  # noqa: E402


# ---------------------------------------------------------------- texts

PROSE = ("The quick brown fox jumps over the lazy dog. It wasn't the first time; she'd seen it before, "
         "and they'll see it again. \"Really?\" he asked -- and I'M sure we've heard THAT'S what 'tis.\n\n"
         "In 1969, 600,000 people watched 3.14159 rockets (or 2.5e10?) at 12:30pm on 07/20.")
CODE = ('def f(x, y=2):\n    """Docstring."""\n    return {"a": [x ** y, x // y]}  # comment\n\n'
        "int main(void) {\n\tfor (int i = 0; i < 10; i++) printf(\"%d\\n\", i);\n\treturn 0;\n}\n"
        "    if (a != b && c >= d) { x->y = z[0x1F]; }\r\n")
WHITESPACE = ["   ", "\t\t", "\n\n\n", "a  b   c", "trailing   ", "   leading", " \t \n \r\n x", "\u00a0\u2003\u3000 x",
              "x \n\n  \n y", "\r\r\n\n", "  \t", "end \n"]
NUMBERS = ["12345678901234567890", "3.14159", "1,000,000", "x=42;y=-7", "٣٤٥ ½ Ⅻ ² ⁴₂", "1st 2nd 3rd", "0x1F 0b101"]
ACCENTED = "café naïve Ångström résumé Œuvre façade Dvořák Łódź São Paulo Ελληνικά Русский"
CJK = ["日本語のテキストです。", "中文文本，包括标点。", "한국어 텍스트입니다", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ"]
EMOJI = ["👍🏽 👨‍👩‍👧‍👦 🇺🇸🇫🇷 ❤️ 🙂", "a😀b", "☕️ ✈︎ 1️⃣"]
CONTRACTIONS = ["don't I'LL we've 'S 'sure ''s 'ſ x'Re 'rE 'Ve 'lL x'ſ y'ſt", "'", "''", "'t'm'd", "a'B'LL'll"]
INVALID = [b"\xff\xfe abc", b"\xc3\x28 x", b"\xe2\x82 y", b"\xf0\x9f\x98 z", b"\xed\xa0\x80 surrogate",
           b"\xc0\xaf overlong", b"\xf4\x90\x80\x80 big", b"end\xe2", b"\x80\x80\x80", b"ok\xf0\x9f"]
SPECIAL_TEXT = ["<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|><|endoftext|>x",
                "a<|im_sta b<|im_end|", "<|im_start|><|im_end|>", " <|endoftext|> "]


def nfd(s):
    return unicodedata.normalize("NFD", s)


def fixed_texts():
    out = [PROSE, CODE, ACCENTED, nfd(ACCENTED), nfd("한국어 가각"), ""]
    out += WHITESPACE + NUMBERS + CJK + EMOJI + CONTRACTIONS + SPECIAL_TEXT
    out += ["\u1e0b\u0323", "q\u0307\u0323", "\u0041\u030a\u0301", "e\u0301\u0301", "\u1100\u1161\u11a8 \u1100\u1161",
            "ḍ̇ ǖ ᾂ \u0958 \u2126 \u212b", "A\u0308\u0304 \u00c5\u0316"]
    return [t.encode("utf-8") for t in out] + INVALID


RANGES = [(0x20, 0x7e), (0xa0, 0x24f), (0x300, 0x36f), (0x370, 0x52f), (0x590, 0x6ff), (0x900, 0xdff),
          (0x1100, 0x11ff), (0x1e00, 0x1fff), (0x2000, 0x206f), (0x2070, 0x2bff), (0x3000, 0x30ff),
          (0x4e00, 0x4fff), (0xac00, 0xd7a3), (0xff00, 0xffef), (0x10000, 0x1ffff), (0x1f300, 0x1faff),
          (0x20000, 0x2a6df), (0xe0000, 0xe007f)]


def random_text(rng, pieces):
    parts = []
    for _ in range(rng.randint(1, 12)):
        r = rng.random()
        if r < 0.45:
            p = rng.choice(pieces)
            if len(p) > 20:
                a = rng.randrange(len(p))
                p = p[a:a + rng.randint(1, 60)]
            parts.append(p)
        elif r < 0.75:
            lo, hi = rng.choice(RANGES)
            s = "".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 8)))
            s = "".join(c for c in s if not 0xd800 <= ord(c) < 0xe000)
            parts.append(s.encode("utf-8"))
        elif r < 0.9:
            parts.append(rng.choice([b" ", b"  ", b"\t", b"\n", b"\r\n", b" \n ", b"'", b"'s", b"0", b"9", b"\xc2\xa0"]))
        else:
            parts.append(bytes(rng.randrange(256) for _ in range(rng.randint(1, 4))))
    return b"".join(parts)


# ---------------------------------------------------------------- the HF tokenizers

def corpus():
    """Real text on any machine with Python: stdlib sources (code + English docstrings), plus the test pieces."""
    import email, json as _json, textwrap  # noqa: F401 (their source files are the corpus)
    files = [email.__file__.replace("__init__.py", "message.py"), _json.__file__, textwrap.__file__,
             os.path.join(os.path.dirname(os.__file__), "argparse.py")]
    texts = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            texts.append(fh.read())
    texts += [t.decode("utf-8", "replace") for t in fixed_texts()] * 20
    return texts


def train(pre, normalizer=None, vocab_size=3000):
    tok = Tokenizer(models.BPE())
    if normalizer:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    # an added (not special) token and one that is normalized, to check both kinds of matching
    tok.add_tokens([AddedToken("<tool>", special=False, normalized=False), AddedToken("café!", normalized=True)])
    return tok


def smollm_pre():
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])


def qwen_pre():
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def gpt2_pre():
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def hf_from_gguf(path):
    import gguf
    r = gguf.GGUFReader(path)

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    tokens, merges = strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges")
    f = r.fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[i][0]) for i in f.data]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, [tuple(m.split(" ")) for m in merges]))
    tok.pre_tokenizer = smollm_pre()
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    return tok


# ---------------------------------------------------------------- fairy2 through Lua

LUA = r"""
local kind, src, in_path, out_path = ...
local tokenizer = require "fairy2.tokenizer"
local tok
if kind == "gguf" then
  local gguf = require "fairy2.gguf"
  local g = assert(gguf.open(src))
  tok = tokenizer.from_gguf(gguf.tokenizer_data(g))
  g:close()
else
  tok = tokenizer.from_json(src)
end
local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end
local out = assert(io.open(out_path, "wb"))
for line in io.lines(in_path) do
  local text = line:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)
  local ids = tok:encode(text)
  local t = tok:encode(text, { tensor = true, add_bos = tok.bos_id ~= nil })
  assert(tonumber(t.shape[0]) == #ids + (tok.bos_id and 1 or 0), "tensor length")
  for i = 1, #ids do assert(t.data ~= nil and require("ffi").cast("int32_t *", t.data)[i - 1 + (tok.bos_id and 1 or 0)] == ids[i], "tensor ids") end
  out:write(table.concat(ids, " "), "\t", hex(tok:decode(ids)), "\t", hex(tok:decode(ids, { skip_special = true })), "\n")
end
out:close()
"""


def fairy2_run(kind, src, texts, tmp):
    script, inp, outp = (os.path.join(tmp, n) for n in ("enc.lua", "in.hex", "out.tsv"))
    with open(script, "w") as f:
        f.write(LUA)
    with open(inp, "w") as f:
        f.write("".join(t.hex() + "\n" for t in texts))
    t0 = time.time()
    p = subprocess.run([BIN, script, kind, src, inp, outp], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("fairy2 failed: " + p.stderr)
    rows = []
    with open(outp) as f:
        for line in f:
            ids, dec, dec_skip = line.rstrip("\n").split("\t")
            rows.append(([int(x) for x in ids.split()], bytes.fromhex(dec), bytes.fromhex(dec_skip)))
    return rows, time.time() - t0


def compare(name, hf, kind, src, texts, tmp):
    rows, secs = fairy2_run(kind, src, texts, tmp)
    check(len(rows) == len(texts), f"{name}: {len(rows)} results for {len(texts)} texts")
    bad = 0
    for text, (ids, dec, dec_skip) in zip(texts, rows):
        s = text.decode("utf-8", "replace")
        want = hf.encode(s, add_special_tokens=False).ids
        if not check(ids == want, f"{name}: ids differ for {text!r}:\n  fairy2 {ids}\n  hf     {want}"):
            bad += 1
            continue
        check(dec.decode("utf-8", "replace") == hf.decode(want, skip_special_tokens=False),
              f"{name}: decode differs for {text!r}: {dec!r}")
        check(dec_skip.decode("utf-8", "replace") == hf.decode(want, skip_special_tokens=True),
              f"{name}: decode(skip_special) differs for {text!r}: {dec_skip!r}")
        if hf.decode(want) == s and s.encode("utf-8") == text:
            check(dec == text, f"{name}: decode(encode(x)) != x for {text!r}: {dec!r}")
    print(f"{name}: {len(texts)} texts, {len(texts) - bad} exact ({secs:.2f} s in fairy2)", flush=True)


# ---------------------------------------------------------------- per-code-point sweeps through ctypes

class Spec(ctypes.Structure):
    _fields_ = [("vocab", ctypes.POINTER(ctypes.c_char_p)), ("n_vocab", ctypes.c_int32),
                ("merge_left", ctypes.POINTER(ctypes.c_char_p)), ("merge_right", ctypes.POINTER(ctypes.c_char_p)),
                ("n_merges", ctypes.c_int32), ("added", ctypes.POINTER(ctypes.c_char_p)),
                ("added_ids", ctypes.POINTER(ctypes.c_int32)), ("added_flags", ctypes.POINTER(ctypes.c_int32)),
                ("n_added", ctypes.c_int32), ("pretokenizer", ctypes.c_int32), ("nfc", ctypes.c_int32),
                ("ignore_merges", ctypes.c_int32), ("fuse_unk", ctypes.c_int32), ("bos_id", ctypes.c_int32),
                ("eos_id", ctypes.c_int32), ("pad_id", ctypes.c_int32), ("unk_id", ctypes.c_int32)]


def byte_level(b):
    """GPT-2's byte -> character map, written out independently of fairy2's."""
    keep = list(range(0x21, 0x7f)) + list(range(0xa1, 0xad)) + list(range(0xae, 0x100))
    table, n = {}, 0
    for x in range(256):
        if x in keep:
            table[x] = chr(x)
        else:
            table[x] = chr(0x100 + n)
            n += 1
    return "".join(table[x] for x in b)


def sweeps(lib, seed):
    lib.f2_tokenizer_new.restype = ctypes.c_void_p
    lib.f2_tokenizer_new.argtypes = [ctypes.POINTER(Spec)]
    lib.f2_tokenizer_free.argtypes = [ctypes.c_void_p]
    lib.f2_last_error.restype = ctypes.c_char_p
    i64p = ctypes.POINTER(ctypes.c_int64)
    lib.f2_tokenizer_pretokenize.argtypes = [ctypes.c_void_p, i64p, i64p, ctypes.c_char_p, ctypes.c_int64, ctypes.c_int64]
    lib.f2_tokenizer_normalize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, i64p, ctypes.c_char_p, ctypes.c_int64,
                                           ctypes.c_int64]
    byte_tokens = [byte_level(bytes([b])).encode("utf-8") for b in range(256)]
    vocab = (ctypes.c_char_p * 256)(*byte_tokens)

    def make(kind, nfc):
        spec = Spec(vocab=vocab, n_vocab=256, pretokenizer=kind, nfc=nfc, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=-1)
        h = lib.f2_tokenizer_new(ctypes.byref(spec))
        assert h, lib.f2_last_error()
        return h

    def pieces(h, text):
        b = text.encode("utf-8")
        ends = (ctypes.c_int64 * (len(b) + 1))()
        n = ctypes.c_int64()
        rc = lib.f2_tokenizer_pretokenize(h, ends, ctypes.byref(n), b, len(b), len(b) + 1)
        assert rc == 0, lib.f2_last_error()
        out, start = [], 0
        for i in range(n.value):
            out.append(b[start:ends[i]].decode("utf-8"))
            start = ends[i]
        return out

    def normalize(h, text):
        b = text.encode("utf-8")
        cap = 4 * len(b) + 16
        buf = ctypes.create_string_buffer(cap)
        n = ctypes.c_int64()
        assert lib.f2_tokenizer_normalize(h, buf, ctypes.byref(n), b, len(b), cap) == 0, lib.f2_last_error()
        return buf.raw[:n.value].decode("utf-8")

    # Code points: the whole BMP, a fresh random eighth of the rest (F2_TOKENIZER_SWEEP=full: all).
    rng = random.Random(seed)
    full = os.environ.get("F2_TOKENIZER_SWEEP") == "full"
    cps = [c for c in range(0x110000) if not 0xd800 <= c < 0xe000 and (c < 0x10000 or full or rng.random() < 0.125)]
    gpt2_split = pre_tokenizers.Split(Regex(GPT2_REGEX), behavior="isolated")
    # Each code point in contexts that tell its class apart (letter, number, space, other, numeric);
    # the regex alone (HF's Split, the regex of ByteLevel) for GPT-2, Digits + regex for SmolLM2.
    sweeps = (("gpt2", 0, gpt2_split, ["|a{c}1 {c}"]),
              ("smollm", 1, pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2_split]),
               ["{c}a"]),
              ("qwen2", 2, pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated"),
               ["x'{c}x\n", "\n{c}\r\n", " {c}1", ".{c}a", " {c}{c} "]))
    for name, kind, pre, contexts in sweeps:
        h = make(kind, 0)
        bad = 0
        for start in range(0, len(cps), 4096):
            chunk = cps[start:start + 4096]
            text = "".join(ctx.format(c=chr(c)) for c in chunk for ctx in contexts)
            if pieces(h, text) != [p for p, _ in pre.pre_tokenize_str(text)]:
                bad += 1
                if bad <= 3:   # narrow down to the first differing code point for the message
                    for c in chunk:
                        t = "".join(ctx.format(c=chr(c)) for ctx in contexts)
                        g, w = pieces(h, t), [p for p, _ in pre.pre_tokenize_str(t)]
                        if g != w:
                            check(False, f"pre-tokenizer {name} at U+{c:04X}: fairy2 {g} hf {w}")
                            break
        check(bad == 0, f"pre-tokenizer {name}: {bad} chunks of code points differ")
        print(f"pre-tokenizer {name}: {len(cps)} code points x {len(contexts)} contexts, "
              f"{'equal' if bad == 0 else 'DIFFERENT'}", flush=True)
        lib.f2_tokenizer_free(h)

    h = make(2, 1)
    hf_nfc = normalizers.NFC()
    # each code point, its NFD, and it before/after combining marks of several classes
    bad = 0
    for start in range(0, len(cps), 4096):
        chunk = cps[start:start + 4096]
        text = "".join(chr(c) + "|" + nfd(chr(c)) + "\u0301" + chr(c) + "\u0323a" + chr(c) + "\u0334\u0308|"
                       for c in chunk)
        if normalize(h, text) != hf_nfc.normalize_str(text):
            bad += 1
            for c in chunk:
                t = chr(c) + "|" + nfd(chr(c)) + "\u0301" + chr(c) + "\u0323a" + chr(c) + "\u0334\u0308|"
                if normalize(h, t) != hf_nfc.normalize_str(t):
                    check(False, f"NFC at U+{c:04X}: fairy2 {normalize(h, t)!r} hf {hf_nfc.normalize_str(t)!r}")
                    break
    check(bad == 0, f"NFC: {bad} chunks of code points differ")
    print(f"NFC: {len(cps)} code points in 4 contexts, {'equal' if bad == 0 else 'DIFFERENT'}", flush=True)
    lib.f2_tokenizer_free(h)


# ---------------------------------------------------------------- main

def main():
    seed = test_seed()
    rng = random.Random(seed)
    texts = fixed_texts()
    pieces = texts[:]
    texts += [random_text(rng, pieces) for _ in range(600)]

    with tempfile.TemporaryDirectory() as tmp:
        cases = [("smollm-like", smollm_pre(), None), ("qwen2-like", qwen_pre(), normalizers.NFC()),
                 ("gpt2-like", gpt2_pre(), None)]
        for name, pre, norm in cases:
            hf = train(pre, norm)
            path = os.path.join(tmp, name + ".json")
            hf.save(path)
            compare(name, hf, "json", path, texts, tmp)
            if name == "smollm-like":   # merges in the older "a b" string form
                j = json.load(open(path))
                j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
                with open(path, "w") as f:
                    json.dump(j, f)
                compare(name + " (string merges)", Tokenizer.from_file(path), "json", path, texts[:100], tmp)

        if os.path.exists(GGUF):
            try:
                hf = hf_from_gguf(GGUF)
            except ImportError:
                print("real SmolLM2: skipped (pip install gguf)")
            else:
                compare("smollm2 (gguf)", hf, "gguf", GGUF, texts, tmp)
        else:
            print(f"real SmolLM2: skipped ({GGUF} is absent)")

    sweeps(ctypes.CDLL(LIB), seed)
    return summary()


if __name__ == "__main__":
    sys.exit(main())
