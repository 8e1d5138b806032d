-- test_data.lua — the data pipeline end to end on small generated text: tokenizing text and JSONL
-- files (against the tokenizer's own encode, identical for any thread count), the corpus split
-- (stable, disjoint, by the documented hash rule), the tokens manifest, and the Lua loader (the
-- resume property, seeds, the evaluation walk). The real SmolLM2 GGUF is used when present.
local t = dofile("tests/lua/harness.lua")
local ffi = require "ffi"
local cjson = require "cjson"
local f2 = require "fairy2"
local data = require "fairy2.data"
local tokenizer = require "fairy2.tokenizer"
local tool = require "fairy2.tools.data"
local C = f2.C

local seed = t.seed()
math.randomseed(seed)

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p '" .. dir .. "/texts/sub'") == 0)

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end
local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- ---------------------------------------------------------------- a tiny byte-level BPE tokenizer
-- GPT-2's byte map, 256 byte tokens, a few merges, <|endoftext|> as the special EOS.
local function utf8_char(cp)
  if cp < 0x80 then return string.char(cp) end
  return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64)   -- cp < 0x800 here
end
local byte_char, n = {}, 0
for b = 0, 255 do
  if (b >= 33 and b <= 126) or (b >= 161 and b <= 172) or (b >= 174 and b <= 255) then
    byte_char[b] = utf8_char(b)
  else
    byte_char[b] = utf8_char(256 + n)
    n = n + 1
  end
end
local vocab, merges = {}, {}
for b = 0, 255 do vocab[byte_char[b]] = b end
local next_id = 256
local function merge(a, b)
  merges[#merges + 1] = a .. " " .. b
  vocab[a .. b] = next_id
  next_id = next_id + 1
end
local sp = byte_char[32]
merge(sp, "t"); merge("h", "e"); merge(sp .. "t", "he"); merge("i", "n"); merge("e", "r"); merge(sp, "s")
merge("o", "n"); merge("a", "n"); merge("an", "d"); merge(sp, "and")
local eos_id = next_id
write(dir .. "/tokenizer.json", cjson.encode {
  version = "1.0",
  added_tokens = { { id = eos_id, content = "<|endoftext|>", special = true, normalized = false } },
  normalizer = cjson.null,
  pre_tokenizer = { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = true },
  decoder = { type = "ByteLevel", add_prefix_space = true, trim_offsets = true, use_regex = true },
  model = { type = "BPE", vocab = vocab, merges = merges },
})
write(dir .. "/tokenizer_config.json", cjson.encode { eos_token = "<|endoftext|>" })
local tok = tokenizer.from_json(dir .. "/tokenizer.json")
t.check(tok.eos_id == eos_id, "the tiny tokenizer's EOS")

-- ---------------------------------------------------------------- random documents
local WORDS = { "the", "and", "an", "in", "on", "ser", "there", "fox", "Alpha", "42", "3.14", "café", "日本", "😀",
  "tab\there", "quote\"d", "back\\slash", "a/b", "line\nbreak", "  spaces  ", "<|endoftext|>" }
local function random_text(max_words)
  local parts = {}
  for i = 1, math.random(1, max_words) do parts[i] = WORDS[math.random(#WORDS)] end
  return table.concat(parts, math.random() < 0.8 and " " or "\n")
end

local docs = {}   -- in the order f2_tokenize_files must see them
local inputs = {}
for i = 1, 6 do
  local path = string.format("%s/texts/doc%02d.txt", dir, i)
  local text = random_text(300)
  write(path, text)
  inputs[#inputs + 1] = path
  docs[#docs + 1] = text
end
do   -- invalid UTF-8: each byte becomes U+FFFD, 3 ids per byte, more ids than the text has bytes
  local path = dir .. "/texts/invalid.txt"
  local text = string.rep("\255", 100 + math.random(100)) .. " and"
  write(path, text)
  inputs[#inputs + 1] = path
  docs[#docs + 1] = text
end
do
  local path = dir .. "/texts/sub/lines.jsonl"
  local lines = {}
  for i = 1, 40 do
    local text = random_text(60)
    if i % 7 == 0 then
      -- other fields around "text", nested values and escapes to skip over
      lines[#lines + 1] = '{"meta": {"a": [1, 2, {"text": "not this"}], "s": "}\\""}, "text": ' .. cjson.encode(text) ..
        ', "n": -1.5e3, "ok": true, "z": null}'
    else
      lines[#lines + 1] = cjson.encode { text = text }
    end
    docs[#docs + 1] = text
    if i % 10 == 0 then lines[#lines + 1] = "   " end   -- blank lines are no documents
  end
  lines[#lines + 1] = '{"text": "\\u00e9\\ud83d\\ude00\\n\\t\\/"}'   -- escapes, a surrogate pair
  docs[#docs + 1] = "é😀\n\t/"
  lines[#lines + 1] = '{"text": ""}'   -- empty: skipped
  write(path, table.concat(lines, "\n") .. "\n")
  inputs[#inputs + 1] = path
end

-- ---------------------------------------------------------------- f2_tokenize_files
local handle = tok.handle
local id_out = ffi.new("uint64_t[1]")
f2.check(C.f2_data_tokenizer_id(id_out, handle))
local tok_id = id_out[0]
local stats = ffi.new("f2_tokenize_stats[1]")
local function tokenize(out, paths, threads, token_bytes)
  local arr = ffi.new("const char *[?]", #paths, paths)
  local rc = C.f2_tokenize_files(stats, out, handle, arr, #paths, token_bytes or 0, eos_id, tok_id, threads)
  if rc ~= 0 then
    local msg = f2.last_error()
    C.f2_clear_error()
    return nil, msg
  end
  return stats[0]
end

local st = assert(tokenize(dir .. "/t1.bin", inputs, 1))
t.check(tonumber(st.documents) == #docs and tonumber(st.empty_documents) == 1,
  "documents " .. tonumber(st.documents) .. " (want " .. #docs .. "), empty " .. tonumber(st.empty_documents))
local want = {}
local bytes = 0
for _, text in ipairs(docs) do
  for _, id in ipairs(tok:encode(text)) do want[#want + 1] = id end
  want[#want + 1] = eos_id
  bytes = bytes + #text
end
t.check(tonumber(st.bytes) == bytes, "text bytes " .. tonumber(st.bytes) .. " vs " .. bytes)
local function shard_tokens(path)
  local s = C.f2_shard_open(path)
  if s == nil then return nil, f2.last_error() end
  local info = ffi.new("f2_shard_info[1]")
  C.f2_shard_get_info(info, s)
  local count = tonumber(info[0].token_count)
  local buf = ffi.new("int32_t[?]", math.max(count, 1))
  f2.check(C.f2_shard_read(buf, s, 0, count))
  local out = {}
  for i = 0, count - 1 do out[i + 1] = buf[i] end
  C.f2_shard_close(s)
  return out, info[0]
end
local got, info = shard_tokens(dir .. "/t1.bin")
local same = #got == #want
for i = 1, math.min(#got, #want) do same = same and got[i] == want[i] end
t.check(same, "the shard holds each document's tok:encode ids then EOS (" .. #got .. " vs " .. #want .. " tokens)")
t.check(info.tokenizer_id == tok_id and info.eos_id == eos_id and info.token_bytes == 2 and
  tonumber(info.document_count) == #docs, "shard header: tokenizer id, EOS, width, documents")

-- the same shard, byte for byte, for any thread count and width 4 has the same tokens
for _, threads in ipairs { 2, 3, 8 } do
  assert(tokenize(dir .. "/t" .. threads .. ".bin", inputs, threads))
  t.check(read(dir .. "/t" .. threads .. ".bin") == read(dir .. "/t1.bin"), threads .. " threads: identical shard")
end
assert(tokenize(dir .. "/w4.bin", inputs, 2, 4))
local got4, info4 = shard_tokens(dir .. "/w4.bin")
local same4 = info4.token_bytes == 4 and #got4 == #got
for i = 1, #got do same4 = same4 and got4[i] == got[i] end
t.check(same4, "4-byte tokens: the same ids")

-- errors name the file and line
write(dir .. "/bad.jsonl", cjson.encode { text = "fine" } .. "\n" .. '{"title": "no text here"}\n')
local ok, err = tokenize(dir .. "/bad.bin", { dir .. "/bad.jsonl" }, 2)
t.check(not ok and err:find("bad.jsonl:2", 1, true) and err:find('no "text" field', 1, true), "missing text field: " .. tostring(err))
t.check(read(dir .. "/bad.bin") == nil and read(dir .. "/bad.bin.tmp") == nil, "a failed tokenize leaves no shard")
write(dir .. "/bad2.jsonl", '{"text": "unterminated}\n')
ok, err = tokenize(dir .. "/bad.bin", { dir .. "/bad2.jsonl" }, 1)
t.check(not ok and err:find("bad2.jsonl:1", 1, true) and err:find("unterminated", 1, true), "unterminated string: " .. tostring(err))
write(dir .. "/bad3.jsonl", '{"text": 5}\n')
ok, err = tokenize(dir .. "/bad.bin", { dir .. "/bad3.jsonl" }, 1)
t.check(not ok and err:find("not a string", 1, true), "text not a string: " .. tostring(err))
ok, err = tokenize(dir .. "/bad.bin", { dir .. "/missing.txt" }, 1)
t.check(not ok and err:find("missing.txt", 1, true) and err:find("cannot open", 1, true), "missing input: " .. tostring(err))

-- tokenizer ids: the same tokenizer twice agrees, another tokenizer (one merge less) differs
f2.check(C.f2_data_tokenizer_id(id_out, tokenizer.from_json(dir .. "/tokenizer.json").handle))
t.check(id_out[0] == tok_id, "the tokenizer id is stable")
local fewer = cjson.decode(read(dir .. "/tokenizer.json"))
table.remove(fewer.model.merges, 2)   -- "h e": "the" no longer forms
write(dir .. "/other.json", cjson.encode(fewer))
f2.check(C.f2_data_tokenizer_id(id_out, tokenizer.from_json(dir .. "/other.json", { eos_token = "<|endoftext|>" }).handle))
t.check(id_out[0] ~= tok_id, "another tokenizer has another id")

-- ---------------------------------------------------------------- corpus: the held-out split
local fraction = 0.25
local function corpus(out, extra)
  local args = { "corpus", "--out", out, "--from", dir .. "/texts=mine", "--from", dir .. "/junk.txt",
    "--holdout-fraction", tostring(fraction) }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  return tool.main(args)
end
write(dir .. "/junk.txt", "a single file is a source of one document")
t.check(corpus(dir .. "/corpus") == 0, "fairy2 data corpus --from")
local cm = assert(data.read_json(dir .. "/corpus/manifest.json"))
local function jsonl_docs(path)
  local out = {}
  for line in io.lines(path) do out[#out + 1] = cjson.decode(line) end
  return out
end
local train = jsonl_docs(dir .. "/corpus/train/mine.jsonl")
local eval = jsonl_docs(dir .. "/corpus/eval/mine.jsonl")
local seen, rule_ok, texts = {}, true, {}
for _, split in ipairs { { train, false }, { eval, true } } do
  for _, d in ipairs(split[1]) do
    t.check(not seen[d.path], "document " .. d.path .. " in one split only")
    seen[d.path] = true
    texts[d.text] = (texts[d.text] or 0) + 1
    rule_ok = rule_ok and data.held_out(d.path, fraction) == split[2] and d.source == "mine"
  end
end
t.check(#train + #eval == #docs and #eval > 0 and #train > 0,
  "every document lands in train or eval (" .. #train .. " + " .. #eval .. " of " .. #docs .. ")")
t.check(rule_ok, "held out exactly when hash(path) says so")
local all_texts = true
for _, text in ipairs(docs) do all_texts = all_texts and (texts[text] or 0) > 0 end
t.check(all_texts, "every document's text survives the JSONL round trip")
t.check(cm.sources[1].name == "mine" and cm.sources[1].train.documents == #train and cm.sources[1].eval.documents == #eval,
  "corpus manifest counts")
t.check(corpus(dir .. "/corpus2") == 0 and read(dir .. "/corpus2/eval/mine.jsonl") == read(dir .. "/corpus/eval/mine.jsonl")
  and read(dir .. "/corpus2/train/mine.jsonl") == read(dir .. "/corpus/train/mine.jsonl"), "the split is stable across runs")
t.check(corpus(dir .. "/corpus3", { "--holdout-source", "junk" }) == 0, "--holdout-source")
local cm3 = assert(data.read_json(dir .. "/corpus3/manifest.json"))
t.check(cm3.sources[2].name == "junk" and cm3.sources[2].train.documents == 0 and cm3.sources[2].eval.documents == 1 and
  cm3.sources[2].held_out == true, "a held-out source has everything in eval")
-- The split rule is fixed forever (docs/data.md; tests/c/test_shards.c checks the hash against the
-- documented definition): these values pin it, so a change to the hash cannot slip through.
t.check(data.hex64(data.hash64("fairy2")) == "11f1d4a0d12b1a9b", "f2_hash64('fairy2', 0)")
t.check(data.hex64(data.hash64("gcide/Arrival", data.SPLIT_SEED)) == "5f0e39640e577842", "f2_hash64('gcide/Arrival', SPLIT_SEED)")

-- ---------------------------------------------------------------- tokenize tool + loader
t.check(tool.main { "tokenize", "--tokenizer", dir .. "/tokenizer.json", "--in", dir .. "/corpus", "--out", dir .. "/tokens",
  "--threads", "2" } == 0, "fairy2 data tokenize")
local tm = assert(data.read_json(dir .. "/tokens/manifest.json"))
t.check(tm.format == "fairy2-tokens" and tm.tokenizer.id == data.hex64(tok_id) and tm.tokenizer.eos_id == eos_id,
  "tokens manifest: tokenizer id and EOS")
local mine = tm.sources[1]
local shard_info = assert(data.shard_info(dir .. "/tokens/" .. mine.train[1].path, true))
t.check(mine.train[1].tokens == shard_info.tokens and mine.train[1].hash == shard_info.content_hash and
  mine.train[1].documents == #train, "manifest counts and hash match the shard")
t.check(tool.main { "stats", dir .. "/tokens", "--verify" } == 0, "fairy2 data stats --verify")

local T, B = 12, 4
local l1 = data.open(dir .. "/tokens", { seq_len = T, batch = B, seed = 77 })
local l2 = data.open(dir .. "/tokens", { seq_len = T, batch = B, seed = 77 })
local l3 = data.open(dir .. "/tokens", { seq_len = T, batch = B, seed = 78 })
local function rows(x)
  local out = {}
  local p = ffi.cast("int32_t *", x.data)
  for i = 0, tonumber(x.shape[0] * x.shape[1]) - 1 do out[#out + 1] = p[i] end
  return table.concat(out, ",")
end
-- a run of 30 steps x 2 micro-batches; a "resumed" loader asked for step k directly gives the same
local seq = {}
for step = 0, 29 do
  for micro = 0, 1 do
    local x, y = l1:batch(step, micro)
    seq[step * 2 + micro + 1] = rows(x) .. "|" .. rows(y)
  end
end
local resumed, differs = true, 0
for k = 1, 10 do
  local step, micro = math.random(0, 29), math.random(0, 1)
  local x, y = l2:batch(step, micro)
  resumed = resumed and rows(x) .. "|" .. rows(y) == seq[step * 2 + micro + 1]
  local x3 = l3:batch(step, micro)
  if rows(x3) ~= rows(x) then differs = differs + 1 end
end
t.check(resumed, "a fresh loader gives step k's batches exactly (resume)")
t.check(differs >= 9, "another seed gives other batches")
local x, y = l1:batch(3, 1)
local xp, yp = ffi.cast("int32_t *", x.data), ffi.cast("int32_t *", y.data)
local shifted = true
for r = 0, B - 1 do
  for j = 0, T - 2 do shifted = shifted and xp[r * T + j + 1] == yp[r * T + j] end
end
t.check(shifted, "targets are inputs shifted by one")
local name, path, start = l1:window(3, 1 * B + 0)
local stoks = shard_tokens(path)
local match = name == "mine"
for j = 0, T - 1 do match = match and stoks[start + j + 1] == xp[j] end
t.check(match, "window() names the tokens of batch row 0")

-- the evaluation walk scores every held-out token but each shard's first exactly once
local eval_tokens = 0
for _, s in ipairs(tm.sources) do
  for _, sh in ipairs(s.eval) do eval_tokens = eval_tokens + math.max(sh.tokens - 1, 0) end
end
local scored_total = 0
for _, _, scored in l1:eval_batches() do scored_total = scored_total + scored end
t.check(scored_total == eval_tokens and eval_tokens > 0, "eval scores " .. scored_total .. " of " .. eval_tokens .. " targets")
local one = 0
for _, _, scored in l1:eval_batches("mine") do one = one + scored end
t.check(one == math.max(mine.eval[1].tokens - 1, 0), "eval over one source")

-- misuse raises at the caller
t.raises(function() data.open(dir .. "/tokens", { seq_len = 0, batch = 1 }) end, "seq_len")
t.raises(function() data.open(dir .. "/tokens", { seq_len = 8, batch = 1, weights = { nope = 1 } }) end, "no source 'nope'")
t.raises(function() data.open(dir .. "/nowhere", { seq_len = 8, batch = 1 }) end, "cannot read the token manifest")
t.raises(function() data.open(dir .. "/tokens", { seq_len = 100000, batch = 1 }) end, "seq_len + 1")
t.raises(function() l1:batch(-1) end, "step")
l1:close(); l2:close(); l3:close()

-- ---------------------------------------------------------------- the real SmolLM2 tokenizer, when present
local gguf_path = "models/smollm2-135m-instruct.gguf"
if read(gguf_path) then
  local gguf = require "fairy2.gguf"
  local g = assert(gguf.open(gguf_path))
  local okr, real = pcall(tokenizer.from_gguf, gguf.tokenizer_data(g))
  g:close()
  t.check(okr, "the SmolLM2 tokenizer loads: " .. tostring(real))
  if okr then
    local id = ffi.new("uint64_t[1]")
    f2.check(C.f2_data_tokenizer_id(id, real.handle))
    local arr = ffi.new("const char *[?]", #inputs, inputs)
    f2.check(C.f2_tokenize_files(stats, dir .. "/real.bin", real.handle, arr, #inputs, 0, real.eos_id, id[0], 2))
    local rg, ri = shard_tokens(dir .. "/real.bin")
    local rw = {}
    for _, text in ipairs(docs) do
      for _, tid in ipairs(real:encode(text)) do rw[#rw + 1] = tid end
      rw[#rw + 1] = real.eos_id
    end
    local rsame = #rg == #rw and ri.vocab_size == real.vocab_size
    for i = 1, #rw do rsame = rsame and rg[i] == rw[i] end
    t.check(rsame, "SmolLM2: the shard holds tok:encode's ids (" .. #rg .. " tokens)")
  end
else
  print("skipped the SmolLM2 part: no " .. gguf_path .. " (scripts/get_smollm2.sh)")
end

os.execute("rm -rf '" .. dir .. "'")
t.done()
