-- test_tokenizer.lua — the Lua tokenizer API (fairy2.tokenizer) on small tokenizers built here:
-- BPE ids against a naive reference BPE in Lua on fresh random words, special tokens, add_bos,
-- tensors, decode, the chat template, from_gguf agreeing with from_json, and clear errors for
-- malformed or unsupported tokenizer.json files. Exactness with Hugging Face: tests/python/test_tokenizer.py.
local t = dofile("tests/lua/harness.lua")
local f2 = require "fairy2"
local ffi = require "ffi"
local cjson = require "cjson"
local tokenizer = require "fairy2.tokenizer"

local seed = t.seed()
math.randomseed(seed)
local tmp = os.tmpname()   -- a fresh name; made a directory below
os.remove(tmp)
os.execute("mkdir -p " .. tmp)

-- GPT-2's byte -> character map, written out here independently of the C one.
local byte_char = {}
do
  local n = 0
  for b = 0, 255 do
    local keep = (b >= 0x21 and b <= 0x7e) or (b >= 0xa1 and b <= 0xac) or (b >= 0xae and b <= 0xff)
    local cp = keep and b or 0x100 + n
    if not keep then n = n + 1 end
    byte_char[b] = cp < 0x80 and string.char(cp) or string.char(0xc0 + math.floor(cp / 64), 0x80 + cp % 64)
  end
end
local function bytelevel(s) return (s:gsub(".", function(c) return byte_char[c:byte()] end)) end

-- A random BPE: the 256 byte tokens, then merges of random adjacent pairs drawn from random words
-- over a small alphabet (so merges chain and compete), each adding the merged token.
local letters = { "a", "b", "c", "d", "e" }
local function random_word(n)
  local w = {}
  for i = 1, n do w[i] = letters[math.random(#letters)] end
  return table.concat(w)
end
local vocab, by_string, merges = {}, {}, {}
for b = 0, 255 do vocab[b] = byte_char[b]; by_string[byte_char[b]] = b end
local rank_of = {}
for _ = 1, 300 do
  local w = " " .. random_word(math.random(2, 8))
  -- segment w with the merges so far (naive BPE below), then merge one random adjacent pair
  local syms = {}
  for c in w:gmatch(".") do syms[#syms + 1] = byte_char[c:byte()] end
  local function bpe_step()
    local best, at = nil, nil
    for i = 1, #syms - 1 do
      local r = rank_of[syms[i] .. " " .. syms[i + 1]]
      if r and (not best or r < best) then best, at = r, i end
    end
    if not at then return false end
    syms[at] = syms[at] .. syms[at + 1]
    table.remove(syms, at + 1)
    return true
  end
  while bpe_step() do end
  if #syms > 1 then
    local i = math.random(#syms - 1)
    local a, b = syms[i], syms[i + 1]
    if not rank_of[a .. " " .. b] then
      merges[#merges + 1] = { a, b }
      rank_of[a .. " " .. b] = #merges
      if not by_string[a .. b] then
        vocab[#vocab + 1] = a .. b
        by_string[a .. b] = #vocab
      end
    end
  end
end
local n_vocab = #vocab + 1
local SPECIAL = { "<|endoftext|>", "<|im_start|>", "<|im_end|>" }
local added = {}
for i, s in ipairs(SPECIAL) do
  added[i] = { id = n_vocab + i - 1, content = s, special = true, normalized = false, lstrip = false, rstrip = false,
    single_word = false }
end

-- The naive reference: pieces of lowercase words split by single spaces are "w", " w", ...; each
-- piece in byte-level characters, merged lowest rank first (leftmost on ties).
local function reference(text)
  local ids, first = {}, true
  for word in text:gmatch("[^ ]+") do
    local piece = first and word or " " .. word
    first = false
    local syms = {}
    for c in piece:gmatch(".") do syms[#syms + 1] = byte_char[c:byte()] end
    while true do
      local best, at
      for i = 1, #syms - 1 do
        local r = rank_of[syms[i] .. " " .. syms[i + 1]]
        if r and (not best or r < best) then best, at = r, i end
      end
      if not at then break end
      syms[at] = syms[at] .. syms[at + 1]
      table.remove(syms, at + 1)
    end
    for _, s in ipairs(syms) do ids[#ids + 1] = by_string[s] end
  end
  return ids
end

local function vocab_object()
  local o = {}
  for id = 0, #vocab do o[vocab[id]] = id end
  return o
end
local function merges_strings()
  local m = {}
  for i, p in ipairs(merges) do m[i] = p[1] .. " " .. p[2] end
  return m
end

local function tokenizer_json(over)
  local j = {
    version = "1.0", added_tokens = added, normalizer = cjson.null,
    pre_tokenizer = { type = "Sequence", pretokenizers = {
      { type = "Digits", individual_digits = true },
      { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = true } } },
    post_processor = cjson.null, decoder = { type = "ByteLevel", add_prefix_space = true, trim_offsets = true, use_regex = true },
    model = { type = "BPE", dropout = cjson.null, unk_token = cjson.null, continuing_subword_prefix = cjson.null,
      end_of_word_suffix = cjson.null, fuse_unk = false, byte_fallback = false, ignore_merges = false,
      vocab = vocab_object(), merges = merges },
  }
  for k, v in pairs(over or {}) do
    if type(k) == "string" and k:match("^model%.") then j.model[k:sub(7)] = v else j[k] = v end
  end
  return j
end

local n_files = 0
local function write_json(j, raw)
  n_files = n_files + 1
  local dir = tmp .. "/t" .. n_files
  os.execute("mkdir -p " .. dir)
  local path = dir .. "/tokenizer.json"
  local f = assert(io.open(path, "wb"))
  f:write(raw or cjson.encode(j))
  f:close()
  return path, dir
end

-- ---------------------------------------------------------------- encode against the reference
local path, dir = write_json(tokenizer_json())
do   -- tokenizer_config.json beside it names bos/eos/pad
  local f = assert(io.open(dir .. "/tokenizer_config.json", "wb"))
  f:write(cjson.encode { bos_token = "<|im_start|>", eos_token = { content = "<|im_end|>" }, pad_token = "<|endoftext|>" })
  f:close()
end
local tok = tokenizer.from_json(path)
t.check(tok.vocab_size == n_vocab + 3, "vocab size " .. tok.vocab_size .. " vs " .. (n_vocab + 3))
t.check(tok.bos_id == n_vocab + 1 and tok.eos_id == n_vocab + 2 and tok.pad_id == n_vocab, "special ids from tokenizer_config.json")

local function same(a, b)
  if #a ~= #b then return false end
  for i = 1, #a do if a[i] ~= b[i] then return false end end
  return true
end

local mismatches = 0
for _ = 1, 300 do
  local words = {}
  for i = 1, math.random(1, 12) do words[i] = random_word(math.random(1, 10)) end
  local text = table.concat(words, " ")
  local ids, want = tok:encode(text), reference(text)
  if not same(ids, want) then
    mismatches = mismatches + 1
    if mismatches <= 3 then t.check(false, "ids for '" .. text .. "': " .. table.concat(ids, ",") .. " vs " .. table.concat(want, ",")) end
  end
  t.check(tok:decode(ids) == text, "decode(encode(x)) == x for '" .. text .. "'")
end
t.check(mismatches == 0, mismatches .. " of 300 random texts differ from the reference BPE")

-- a long word: many merges, one piece
local long = random_word(5000)
local long_ids = tok:encode(long)
t.check(same(long_ids, reference(long)), "a 5000-letter word")
t.check(#merges > 100 and #long_ids < 4000, #merges .. " merges, " .. #long_ids .. " ids for 5000 letters: BPE merged")

-- ---------------------------------------------------------------- specials, bos, tensors, decode
do
  local text = "<|im_start|>user\n" .. "abc dea" .. "<|im_end|><|endoftext|>"
  local ids = tok:encode(text)
  t.check(ids[1] == tok.bos_id, "a special token in the text is its id")
  t.check(ids[#ids - 1] == tok.eos_id and ids[#ids] == tok.pad_id, "special tokens back to back")
  t.check(tok:decode(ids) == text, "decode keeps special tokens")
  t.check(tok:decode(ids, { skip_special = true }) == "user\nabc dea", "decode skip_special")
  local with_bos = tok:encode("abc", { add_bos = true })
  t.check(with_bos[1] == tok.bos_id and same({ select(2, unpack(with_bos)) }, tok:encode("abc")), "add_bos")
  local tt = tok:encode("abc dea abc", { tensor = true, add_bos = true })
  t.check(ffi.istype("f2_tensor *", tt) and tt.dtype == f2.C.F2_I32 and tt.ndim == 1, "a 1-D i32 tensor")
  local list = tok:encode("abc dea abc", { add_bos = true })
  t.check(tonumber(tt.shape[0]) == #list, "tensor length")
  local ok_all = true
  for i = 1, #list do ok_all = ok_all and ffi.cast("int32_t *", tt.data)[i - 1] == list[i] end
  t.check(ok_all, "tensor ids equal the list")
  t.check(tok:decode(tt) == tok:decode(list), "decode of a tensor")
  t.check(tok:encode("") and #tok:encode("") == 0, "empty text: no ids")
  t.check(tok:decode({}) == "", "no ids: empty text")
  -- a long text forces the retry with a larger buffer path? (about 1 id per byte here: fits); a text of
  -- invalid bytes gives 3 bytes (U+FFFD) each, more ids than bytes
  local bad = string.rep("\255", 100)
  local ids2 = tok:encode(bad)
  t.check(#ids2 > 100 and tok:decode(ids2) == string.rep("\239\191\189", 100), "invalid UTF-8 -> U+FFFD, more ids than bytes")
  t.check(tok:token_to_id("<|im_end|>") == tok.eos_id and tok:token_to_id(bytelevel(" ab")) == by_string[bytelevel(" ab")],
    "token_to_id")
  t.check(tok:token_to_id("no such token") == nil, "token_to_id: unknown -> nil")
  t.check(tok:id_to_token(tok.bos_id) == "<|im_start|>" and tok:id_to_token(by_string["a"]) == "a", "id_to_token")
  t.check(tok:id_to_token(1e6) == nil, "id_to_token: out of range -> nil")
  local p = tok:pretokenize("ab  cd 123 x\n\n")
  t.check(table.concat(p, "|") == "ab| | cd| |1|2|3| x|\n\n", "pretokenize: " .. table.concat(p, "|"))
end

-- ---------------------------------------------------------------- chat template
do
  local msgs = { { role = "user", content = "Hi" }, { role = "assistant", content = "Hello!" } }
  local want = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n" ..
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
  t.check(tok:apply_chat_template(msgs) == want, "chat template, default system prompt")
  t.check(tok:apply_chat_template(msgs, { add_generation_prompt = true }) == want .. "<|im_start|>assistant\n",
    "chat template, generation prompt")
  local sys_msgs = { { role = "system", content = "Be brief." }, { role = "user", content = "Hi" } }
  t.check(tok:apply_chat_template(sys_msgs) == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n",
    "chat template, given system prompt")
  local ids = tok:apply_chat_template(msgs, { tokenize = true })
  t.check(ids[1] == tok.bos_id and tok:decode(ids) == want, "chat template tokenized")
  t.raises(function() tok:apply_chat_template({ { role = "user" } }) end, "needs string role and content")
end

-- ---------------------------------------------------------------- from_gguf agrees with from_json
do
  local tokens, types = {}, {}
  for id = 0, #vocab do tokens[id + 1], types[id + 1] = vocab[id], 1 end
  for _, a in ipairs(added) do tokens[a.id + 1], types[a.id + 1] = a.content, 3 end
  local g = tokenizer.from_gguf { model = "gpt2", pre = "smollm", tokens = tokens, token_type = types,
    merges = merges_strings(), bos_id = n_vocab + 1, eos_id = n_vocab + 2, pad_id = n_vocab }
  t.check(g.vocab_size == tok.vocab_size and g.bos_id == tok.bos_id and g.eos_id == tok.eos_id, "gguf: sizes and ids")
  local diff = 0
  for _ = 1, 100 do
    local parts = {}
    for i = 1, math.random(1, 8) do
      local r = math.random()
      parts[i] = r < 0.6 and random_word(math.random(1, 6)) or r < 0.8 and SPECIAL[math.random(3)] or
        tostring(math.random(0, 99999))
    end
    local text = table.concat(parts, math.random() < 0.5 and " " or "")
    if not same(g:encode(text), tok:encode(text)) then diff = diff + 1 end
  end
  t.check(diff == 0, diff .. " of 100 texts encode differently from gguf and json")
  t.raises(function() tokenizer.from_gguf { model = "llama", tokens = tokens } end, "tokenizer.ggml.model llama is not supported")
  t.raises(function() tokenizer.from_gguf { model = "gpt2", pre = "deepseek-llm", tokens = tokens } end,
    "tokenizer.ggml.pre 'deepseek-llm' is not supported")
  t.raises(function() tokenizer.from_gguf { model = "gpt2", tokens = tokens, merges = { "a b c" } } end,
    "tokenizer.ggml.merges[0] is not two tokens")
end

-- ---------------------------------------------------------------- string-form merges equal pair-form
do
  local p2 = write_json(tokenizer_json { ["model.merges"] = merges_strings() })
  local tok2 = tokenizer.from_json(p2)
  local text = random_word(30) .. " " .. random_word(7)
  t.check(same(tok2:encode(text), tok:encode(text)), "merges as strings and as pairs")
end

-- ---------------------------------------------------------------- malformed and unsupported files
local function load_raises(j, raw, pattern, msg)
  local p = write_json(j, raw)
  t.raises(function() tokenizer.from_json(p) end, pattern, msg)
end
load_raises(nil, "{ not json", "not valid JSON", "bad JSON")
load_raises(nil, "[1, 2]", "no model", "not an object with a model")
load_raises(tokenizer_json { ["model.vocab"] = cjson.null }, nil, "no model.vocab", "missing vocab")
load_raises(tokenizer_json { ["model.merges"] = { { "a", "zz" } } }, nil, "'zz' is not in the vocabulary", "merge of an unknown token")
load_raises(tokenizer_json { ["model.merges"] = { "a" } }, nil, "model.merges[1] is not two tokens", "merge not a pair")
load_raises(tokenizer_json { ["model.type"] = "Unigram" }, nil, "model type Unigram is not supported", "Unigram")
load_raises(tokenizer_json { ["model.byte_fallback"] = true }, nil, "byte_fallback is not supported", "byte_fallback")
load_raises(tokenizer_json { ["model.vocab"] = { a = -3 } }, nil, "is not an id", "negative id")
load_raises(tokenizer_json { normalizer = { type = "NFKC" } }, nil, "normalizer NFKC is not supported", "NFKC")
load_raises(tokenizer_json { pre_tokenizer = { type = "Metaspace", replacement = "_" } }, nil,
  "unsupported pre_tokenizer (pre-tokenizer Metaspace)", "Metaspace")
load_raises(tokenizer_json { pre_tokenizer = { type = "ByteLevel", add_prefix_space = true, use_regex = true } }, nil,
  "ByteLevel with add_prefix_space", "add_prefix_space")
load_raises(tokenizer_json { decoder = { type = "WordPiece" } }, nil, "decoder WordPiece is not supported", "decoder")
load_raises(tokenizer_json { added_tokens = { { id = 5, content = "<x>", lstrip = true } } }, nil, "has lstrip", "lstrip")
t.raises(function() tokenizer.from_json(tmp .. "/nope/tokenizer.json") end, "No such file", "missing file")
t.raises(function() tokenizer.from_json(42) end, "path must be a string", "path not a string")

-- ---------------------------------------------------------------- misuse
t.raises(function() tok:encode(42) end, "text must be a string")
t.raises(function() tok:decode({ 1, "x" }) end, "ids[2] is not a number")
t.raises(function() tok:decode({ 1, tok.vocab_size + 5 }) end, "is not a token", "decode of an unknown id")
t.raises(function() tok:decode({ -1 }) end, "id -1 at position 0 is not a token")
local nobos = tokenizer.from_json(write_json(tokenizer_json()))
t.raises(function() nobos:encode("a", { add_bos = true }) end, "has no BOS token")

tok:free()
tok:free()   -- twice is fine
t.check(tok.handle == nil, "free drops the handle")
os.execute("rm -rf " .. tmp)
t.done()
