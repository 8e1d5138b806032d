#!/usr/bin/env python3
"""bench_tokenizer.py — encode throughput (MB/s, one core) of fairy2's tokenizer against Hugging Face
tokenizers, same tokenizer, same text, same run.

    python3 tests/bench/bench_tokenizer.py [TOKENIZER] [TEXT_FILE ...]

TOKENIZER: a tokenizer.json, or a .gguf (default models/smollm2-135m-instruct.gguf). TEXT: default
English prose from this machine (/usr/share/common-licenses, vim's help files) and Python sources
(the standard library), about 4 MB each, one document per file. fairy2 through ctypes on F2_LIB
(default build/libfairy2.so), one f2_tokenizer_encode call per document; HF's Tokenizer.encode likewise
(one text at a time: single-threaded). Both tokenizers are built afresh before each timed pass, so
their word caches start cold; the best of 3 passes is shown. Both must give the same ids.
"""
import ctypes
import glob
import json
import os
import sys
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers  # noqa: E402

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
LIB = os.environ.get("F2_LIB", os.path.join(SRC, "build", "libfairy2.so"))


class Spec(ctypes.Structure):
    _fields_ = [("vocab", ctypes.POINTER(ctypes.c_char_p)), ("n_vocab", ctypes.c_int32),
                ("merge_left", ctypes.POINTER(ctypes.c_char_p)), ("merge_right", ctypes.POINTER(ctypes.c_char_p)),
                ("n_merges", ctypes.c_int32), ("added", ctypes.POINTER(ctypes.c_char_p)),
                ("added_ids", ctypes.POINTER(ctypes.c_int32)), ("added_flags", ctypes.POINTER(ctypes.c_int32)),
                ("n_added", ctypes.c_int32), ("pretokenizer", ctypes.c_int32), ("nfc", ctypes.c_int32),
                ("ignore_merges", ctypes.c_int32), ("fuse_unk", ctypes.c_int32), ("bos_id", ctypes.c_int32),
                ("eos_id", ctypes.c_int32), ("pad_id", ctypes.c_int32), ("unk_id", ctypes.c_int32)]


def load(path):
    """(HF tokenizer, vocab list, merges, added [(content, id)], pretokenizer kind, nfc)."""
    if path.endswith(".gguf"):
        import gguf
        r = gguf.GGUFReader(path)

        def strings(key):
            f = r.fields[key]
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        tokens, merges = strings("tokenizer.ggml.tokens"), [m.split(" ") for m in strings("tokenizer.ggml.merges")]
        f = r.fields["tokenizer.ggml.token_type"]
        added = [(t, i) for i, t in enumerate(tokens) if int(f.parts[f.data[i]][0]) == 3]
        hf = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, [tuple(m) for m in merges]))
        hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                    pre_tokenizers.ByteLevel(add_prefix_space=False)])
        hf.decoder = decoders.ByteLevel()
        hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, _ in added])
        return hf, tokens, merges, added, 1, 0
    j = json.load(open(path))
    n = max(j["model"]["vocab"].values()) + 1
    tokens = [None] * n
    for t, i in j["model"]["vocab"].items():
        tokens[i] = t
    merges = [m.split(" ") if isinstance(m, str) else m for m in j["model"]["merges"]]
    added = [(a["content"], a["id"]) for a in j["added_tokens"]]
    text = json.dumps(j["pre_tokenizer"])
    kind = 2 if "(?i:" in text else 1 if "Digits" in text else 0
    return Tokenizer.from_file(path), tokens, merges, added, kind, 1 if j.get("normalizer") else 0


def main():
    args = sys.argv[1:]
    tok_path = args[0] if args else os.path.join(SRC, "models", "smollm2-135m-instruct.gguf")
    if args[1:]:
        corpora = [(os.path.basename(p), [open(p, "rb").read()]) for p in args[1:]]
    else:
        prose = sorted(glob.glob("/usr/share/common-licenses/*")) + sorted(glob.glob("/usr/share/vim/vim*/doc/*.txt"))
        code = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))
        corpora = []
        for name, files in (("English prose (licenses, vim help)", prose), ("Python source (stdlib)", code)):
            docs, size = [], 0
            for p in files:
                if os.path.isfile(p) and size < 4 << 20:
                    docs.append(open(p, "rb").read())
                    size += len(docs[-1])
            if docs:
                corpora.append((name, docs))

    hf, tokens, merges, added, kind, nfc = load(tok_path)
    lib = ctypes.CDLL(LIB)
    lib.f2_tokenizer_new.restype = ctypes.c_void_p
    lib.f2_tokenizer_new.argtypes = [ctypes.POINTER(Spec)]
    lib.f2_last_error.restype = ctypes.c_char_p
    lib.f2_tokenizer_encode.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int64),
                                        ctypes.c_char_p, ctypes.c_int64, ctypes.c_int64]
    enc = [t.encode() if t is not None else None for t in tokens]
    left = [m[0].encode() for m in merges]
    right = [m[1].encode() for m in merges]
    spec = Spec(vocab=(ctypes.c_char_p * len(enc))(*enc), n_vocab=len(enc),
                merge_left=(ctypes.c_char_p * len(left))(*left), merge_right=(ctypes.c_char_p * len(right))(*right),
                n_merges=len(left), added=(ctypes.c_char_p * len(added))(*[a[0].encode() for a in added]),
                added_ids=(ctypes.c_int32 * len(added))(*[a[1] for a in added]), added_flags=None,
                n_added=len(added), pretokenizer=kind, nfc=nfc, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=-1)
    lib.f2_tokenizer_free.argtypes = [ctypes.c_void_p]
    t0 = time.perf_counter()
    h = lib.f2_tokenizer_new(ctypes.byref(spec))
    build_ms = (time.perf_counter() - t0) * 1e3
    if not h:
        sys.exit("fairy2: " + lib.f2_last_error().decode())
    hf_json = hf.to_str()

    print(f"tokenizer {tok_path} ({len(tokens)} tokens, {len(merges)} merges; fairy2 builds it in {build_ms:.0f} ms)")
    print(f"{'text':38s} {'MB':>6s} {'tokens':>9s} {'fairy2 MB/s':>12s} {'HF MB/s':>9s} {'ratio':>6s} same ids")
    for name, docs in corpora:
        texts = [d.decode("utf-8", "replace") for d in docs]
        cap = max(len(d) for d in docs) + 16
        ids = (ctypes.c_int32 * cap)()
        n = ctypes.c_int64()
        best_f2 = best_hf = 1e9
        for _ in range(3):
            lib.f2_tokenizer_free(h)
            h = lib.f2_tokenizer_new(ctypes.byref(spec))   # a new tokenizer: its word cache starts empty
            got = []
            t0 = time.perf_counter()
            for d in docs:
                rc = lib.f2_tokenizer_encode(h, ids, ctypes.byref(n), d, len(d), cap)
                assert rc == 0 and n.value <= cap, lib.f2_last_error()
                got.append(ids[:n.value])
            best_f2 = min(best_f2, time.perf_counter() - t0)
            hf = Tokenizer.from_str(hf_json)
            t0 = time.perf_counter()
            want = [hf.encode(t, add_special_tokens=False).ids for t in texts]
            best_hf = min(best_hf, time.perf_counter() - t0)
        mb = sum(len(d) for d in docs) / 1e6
        print(f"{name:38s} {mb:6.2f} {sum(len(w) for w in want):9d} {mb / best_f2:12.1f} {mb / best_hf:9.1f} "
              f"{best_hf / best_f2:6.1f} {'yes' if got == want else 'NO'}")


if __name__ == "__main__":
    main()
