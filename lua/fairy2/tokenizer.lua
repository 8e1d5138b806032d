-- tokenizer.lua — byte-level BPE tokenizers (SmolLM2, Qwen2/3, GPT-2) over runtime/tokenizer.c,
-- exact with Hugging Face tokenizers (docs/tokenizer.md):
--   local tokenizer = require "fairy2.tokenizer"
--   local tok = tokenizer.from_json("dir/tokenizer.json" [, {bos_token=, eos_token=, pad_token=}])
--   local tok = tokenizer.from_gguf(gguf.tokenizer_data(g))
--   tok:encode(text [, {add_bos=true, tensor=true}])  -> list of ids (or a 1-D i32 tensor)
--   tok:decode(ids [, {skip_special=true}])            -> string (bytes; no UTF-8 repair)
--   tok:apply_chat_template(messages [, {add_generation_prompt=true, tokenize=true}])
--   tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id (nil when none), tok:token_to_id(s), tok:id_to_token(id)
-- Both constructors raise on a malformed or unsupported tokenizer, naming the file and the field.
-- Encode/decode are one C call each; tok.handle is the f2_tokenizer* for C entry points.
local ffi = require "ffi"
local cjson = require "cjson"
local f2 = require "fairy2"
local C = f2.C

local M = {}
local Tokenizer = {}
Tokenizer.__index = Tokenizer

-- The split regexes as tokenizer.json spells them.
local GPT2_REGEX = [['s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+]]
local QWEN2_REGEX = [[(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+]]

local function null(v) return v == nil or v == cjson.null end

-- ---------------------------------------------------------------- construction

-- t: { vocab = {[id] = string} (0-based ids), n_vocab, merges = {{left, right}, ...},
--      added = {{content=, id=, special=, normalized=}, ...}, pretokenizer = C.F2_PRETOK_*, nfc,
--      ignore_merges, fuse_unk, bos_id, eos_id, pad_id, unk_id }
local function new(t, where)
  local n_vocab, n_merges, n_added = t.n_vocab, #t.merges, #t.added
  local vocab = ffi.new("const char *[?]", math.max(n_vocab, 1))
  for id, s in pairs(t.vocab) do vocab[id] = s end
  local left = ffi.new("const char *[?]", math.max(n_merges, 1))
  local right = ffi.new("const char *[?]", math.max(n_merges, 1))
  for i, m in ipairs(t.merges) do left[i - 1], right[i - 1] = m[1], m[2] end
  local added = ffi.new("const char *[?]", math.max(n_added, 1))
  local ids = ffi.new("int32_t[?]", math.max(n_added, 1))
  local flags = ffi.new("int32_t[?]", math.max(n_added, 1))
  for i, a in ipairs(t.added) do
    added[i - 1], ids[i - 1] = a.content, a.id
    flags[i - 1] = (a.special and C.F2_ADDED_SPECIAL or 0) + (a.normalized and C.F2_ADDED_NORMALIZED or 0)
  end
  local spec = ffi.new("f2_tokenizer_spec")
  spec.vocab, spec.n_vocab = vocab, n_vocab
  spec.merge_left, spec.merge_right, spec.n_merges = left, right, n_merges
  spec.added, spec.added_ids, spec.added_flags, spec.n_added = added, ids, flags, n_added
  spec.pretokenizer, spec.nfc = t.pretokenizer, t.nfc and 1 or 0
  spec.ignore_merges, spec.fuse_unk = t.ignore_merges and 1 or 0, t.fuse_unk and 1 or 0
  spec.bos_id, spec.eos_id, spec.pad_id, spec.unk_id = t.bos_id or -1, t.eos_id or -1, t.pad_id or -1, t.unk_id or -1
  local h = C.f2_tokenizer_new(spec)
  t.built = true   -- the arrays above point into t's strings: t (so they) must live through the call
  if h == nil then
    local msg = f2.last_error()
    C.f2_clear_error()
    error(where .. ": " .. msg, 3)
  end
  local self = setmetatable({ handle = ffi.gc(h, C.f2_tokenizer_free), source = where }, Tokenizer)
  self.vocab_size = C.f2_tokenizer_vocab_size(h)
  for key, which in pairs { bos_id = C.F2_TOKEN_BOS, eos_id = C.F2_TOKEN_EOS, pad_id = C.F2_TOKEN_PAD,
                           unk_id = C.F2_TOKEN_UNK } do
    local id = C.f2_tokenizer_special_id(h, which)
    if id >= 0 then self[key] = id end
  end
  return self
end

-- The pre-tokenizer of a tokenizer.json as a list of steps, or nil and what is unsupported.
local function pre_steps(p, out)
  local kind = type(p) == "table" and p.type or tostring(p)
  if kind == "Sequence" then
    for _, q in ipairs(p.pretokenizers or {}) do
      local ok, err = pre_steps(q, out)
      if not ok then return nil, err end
    end
    return out
  elseif kind == "ByteLevel" then
    -- HF's defaults: add_prefix_space and use_regex true
    if null(p.add_prefix_space) or p.add_prefix_space then return nil, "ByteLevel with add_prefix_space" end
    if null(p.use_regex) or p.use_regex then out[#out + 1] = "gpt2" end
    out[#out + 1] = "bytes"
    return out
  elseif kind == "Digits" then
    if not p.individual_digits then return nil, "Digits without individual_digits" end
    out[#out + 1] = "digits"
    return out
  elseif kind == "Split" then
    local pattern = type(p.pattern) == "table" and p.pattern.Regex
    if p.invert or p.behavior ~= "Isolated" then return nil, "Split other than Isolated" end
    if pattern == GPT2_REGEX then out[#out + 1] = "gpt2"
    elseif pattern == QWEN2_REGEX then out[#out + 1] = "qwen2"
    else return nil, "Split with the pattern " .. cjson.encode(p.pattern) end
    return out
  end
  return nil, "pre-tokenizer " .. kind
end

local PRETOKENIZERS = {
  ["gpt2 bytes"] = C.F2_PRETOK_GPT2,
  ["digits gpt2 bytes"] = C.F2_PRETOK_SMOLLM,
  ["qwen2 bytes"] = C.F2_PRETOK_QWEN2,
}

local function normalizer_nfc(n)
  if null(n) then return false end
  if n.type == "NFC" then return true end
  if n.type == "Sequence" then
    local nfc = false
    for _, q in ipairs(n.normalizers or {}) do nfc = normalizer_nfc(q) or nfc end
    return nfc
  end
  error("normalizer " .. tostring(n.type) .. " is not supported (only NFC)", 0)
end

-- A special token's content from tokenizer_config.json: a string or {content = ...}.
local function content_of(v)
  if type(v) == "table" then return v.content end
  if type(v) == "string" then return v end
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  return s
end

-- tokenizer.json (and the tokenizer_config.json beside it, for bos/eos/pad) -> Tokenizer.
-- opts: bos_token, eos_token, pad_token (contents) override tokenizer_config.json.
function M.from_json(path, opts)
  if type(path) ~= "string" then error("tokenizer.from_json: path must be a string", 2) end
  opts = opts or {}
  local function fail(msg) error("tokenizer " .. path .. ": " .. msg, 3) end
  local text, err = read_file(path)
  if not text then fail(err) end
  local ok, j = pcall(cjson.decode, text)
  if not ok then fail("not valid JSON (" .. tostring(j) .. ")") end
  if type(j) ~= "table" then fail("not a JSON object") end
  local model = j.model
  if type(model) ~= "table" then fail("no model") end
  if model.type ~= "BPE" then fail("model type " .. tostring(model.type) .. " is not supported (only BPE)") end
  if not null(model.dropout) and model.dropout ~= 0 then fail("BPE dropout is not supported") end
  for _, k in ipairs { "continuing_subword_prefix", "end_of_word_suffix" } do
    if not null(model[k]) and model[k] ~= "" then fail("BPE " .. k .. " is not supported") end
  end
  if model.byte_fallback == true then fail("BPE byte_fallback is not supported") end
  if type(model.vocab) ~= "table" then fail("no model.vocab") end

  local vocab, n_vocab, by_string = {}, 0, {}
  for s, id in pairs(model.vocab) do
    if type(id) ~= "number" or id < 0 or id ~= math.floor(id) or id >= 2 ^ 31 then
      fail("model.vocab['" .. tostring(s) .. "'] = " .. tostring(id) .. " is not an id")
    end
    if vocab[id] then fail("model.vocab gives id " .. id .. " to both '" .. vocab[id] .. "' and '" .. s .. "'") end
    vocab[id], by_string[s] = s, id
    if id >= n_vocab then n_vocab = id + 1 end
  end

  if type(model.merges) ~= "table" then fail("no model.merges") end
  local merges = {}
  for i, m in ipairs(model.merges) do
    local a, b
    if type(m) == "string" then
      a, b = m:match("^([^ ]+) ([^ ]+)$")
    elseif type(m) == "table" and #m == 2 and type(m[1]) == "string" and type(m[2]) == "string" then
      a, b = m[1], m[2]
    end
    if not a then fail("model.merges[" .. i .. "] is not two tokens: " .. cjson.encode(m)) end
    merges[i] = { a, b }
  end

  local added = {}
  for i, a in ipairs(null(j.added_tokens) and {} or j.added_tokens) do
    if type(a) ~= "table" or type(a.content) ~= "string" or type(a.id) ~= "number" then
      fail("added_tokens[" .. i .. "] lacks content or id")
    end
    if a.id < 0 or a.id ~= math.floor(a.id) or a.id >= 2 ^ 31 then
      fail("added_tokens[" .. i .. "] ('" .. a.content .. "') has id " .. a.id)
    end
    for _, k in ipairs { "single_word", "lstrip", "rstrip" } do
      if a[k] == true then fail("added token '" .. a.content .. "' has " .. k .. ", which is not supported") end
    end
    local special = a.special == true
    local normalized = a.normalized
    if null(normalized) then normalized = not special end   -- HF's default
    added[i] = { content = a.content, id = a.id, special = special, normalized = normalized }
  end

  local ok2, nfc = pcall(normalizer_nfc, j.normalizer)
  if not ok2 then fail(nfc) end
  if null(j.pre_tokenizer) then fail("no pre_tokenizer (a byte-level BPE needs ByteLevel)") end
  local steps, why = pre_steps(j.pre_tokenizer, {})
  local kind = steps and PRETOKENIZERS[table.concat(steps, " ")]
  if not kind then
    fail("unsupported pre_tokenizer (" .. (why or table.concat(steps, ", ")) .. "); supported: GPT-2's ByteLevel, " ..
      "SmolLM2's Digits + ByteLevel, Qwen2's Split + ByteLevel")
  end
  local dec = j.decoder
  if null(dec) or dec.type ~= "ByteLevel" then
    fail("decoder " .. (null(dec) and "null" or tostring(dec.type)) .. " is not supported (only ByteLevel)")
  end

  -- special ids: tokenizer_config.json beside tokenizer.json, then opts
  local cfg = {}
  local cfg_text = read_file((path:match("^(.*)/[^/]*$") or ".") .. "/tokenizer_config.json")
  if cfg_text then
    local okc, c = pcall(cjson.decode, cfg_text)
    if okc and type(c) == "table" then cfg = c end
  end
  local function id_of(key)
    local content = opts[key] or content_of(cfg[key])
    if content == nil then return nil end
    for _, a in ipairs(added) do if a.content == content then return a.id end end
    local id = by_string[content]
    if id == nil then fail(key .. " '" .. content .. "' is not a token") end
    return id
  end
  local unk_id
  if not null(model.unk_token) then
    unk_id = by_string[model.unk_token]
    if unk_id == nil then fail("model.unk_token '" .. tostring(model.unk_token) .. "' is not in model.vocab") end
  end
  return new({ vocab = vocab, n_vocab = n_vocab, merges = merges, added = added, pretokenizer = kind, nfc = nfc,
    ignore_merges = model.ignore_merges == true, fuse_unk = model.fuse_unk == true, bos_id = id_of("bos_token"),
    eos_id = id_of("eos_token"), pad_id = id_of("pad_token"), unk_id = unk_id }, "tokenizer " .. path)
end

-- llama.cpp's tokenizer.ggml.pre values that name one of ours; Qwen2's tokenizer normalizes to NFC.
local GGUF_PRE = {
  smollm = { C.F2_PRETOK_SMOLLM, false },
  gpt2 = { C.F2_PRETOK_GPT2, false },
  ["gpt-2"] = { C.F2_PRETOK_GPT2, false },
  qwen2 = { C.F2_PRETOK_QWEN2, true },
}

-- GGUF tokenizer metadata (gguf.tokenizer_data(g): model, pre, tokens, merges, token_type, bos_id,
-- eos_id, unk_id, pad_id) -> Tokenizer. Token types 3 (control) become special added tokens and
-- 4 (user defined) plain added tokens, both matched in the raw text, as llama.cpp does.
-- tokenizer.ggml.unknown_token_id is not used: it records transformers' unk_token, while what a
-- byte-level BPE does with a byte missing from its vocab is set by tokenizer.json's model.unk_token,
-- which GGUF does not keep and byte-level models leave null (such bytes are dropped).
function M.from_gguf(meta)
  if type(meta) ~= "table" then error("tokenizer.from_gguf: expects gguf.tokenizer_data(g)", 2) end
  local function fail(msg) error("tokenizer (gguf): " .. msg, 3) end
  if meta.model ~= "gpt2" then fail("tokenizer.ggml.model " .. tostring(meta.model) .. " is not supported (only gpt2, byte-level BPE)") end
  local pre = GGUF_PRE[meta.pre or "gpt2"]
  if not pre then fail("tokenizer.ggml.pre '" .. tostring(meta.pre) .. "' is not supported (smollm, gpt2, qwen2)") end
  if type(meta.tokens) ~= "table" then fail("no tokenizer.ggml.tokens") end
  local vocab, added = {}, {}
  for i, s in ipairs(meta.tokens) do
    if type(s) ~= "string" then fail("tokenizer.ggml.tokens[" .. (i - 1) .. "] is not a string") end
    vocab[i - 1] = s
    local ty = meta.token_type and meta.token_type[i]
    if ty == 3 or ty == 4 then added[#added + 1] = { content = s, id = i - 1, special = ty == 3, normalized = false } end
  end
  local merges = {}
  for i, m in ipairs(meta.merges or {}) do
    local a, b
    if type(m) == "string" then a, b = m:match("^([^ ]+) ([^ ]+)$") end
    if not a then fail("tokenizer.ggml.merges[" .. (i - 1) .. "] is not two tokens: '" .. tostring(m) .. "'") end
    merges[i] = { a, b }
  end
  return new({ vocab = vocab, n_vocab = #meta.tokens, merges = merges, added = added, pretokenizer = pre[1],
    nfc = pre[2], bos_id = meta.bos_id, eos_id = meta.eos_id, pad_id = meta.pad_id },
    "tokenizer (gguf)")
end

-- ---------------------------------------------------------------- encode / decode

local n_out = ffi.new("int64_t[1]")
local ids_buf, ids_cap = nil, 0

local function ids_room(n)
  if n > ids_cap then
    ids_cap = math.max(n, 2 * ids_cap, 1024)
    ids_buf = ffi.new("int32_t[?]", ids_cap)
  end
  return ids_buf
end

-- ids of text in ids_buf[off ..]; returns the count.
local function encode_into(self, text, off)
  local cap = #text + 16   -- byte-level BPE: about 4 bytes a token, so this is nearly always enough
  for _ = 1, 2 do
    local buf = ids_room(off + cap)
    f2.check(C.f2_tokenizer_encode(self.handle, buf + off, n_out, text, #text, cap), "tokenizer.encode", 3)
    local n = tonumber(n_out[0])
    if n <= cap then return n end
    cap = n
  end
end

-- text -> ids (a Lua list; a 1-D i32 CPU tensor with opts.tensor). opts.add_bos: the BOS id first.
function Tokenizer:encode(text, opts)
  if type(text) ~= "string" then error("tokenizer:encode: text must be a string", 2) end
  opts = opts or {}
  local off = 0
  if opts.add_bos then
    if not self.bos_id then error("tokenizer:encode: add_bos, but " .. self.source .. " has no BOS token", 2) end
    off = 1
  end
  local n = encode_into(self, text, off)
  local buf = ids_buf
  if off == 1 then buf[0] = self.bos_id end
  if opts.tensor then
    local shape = ffi.new("int64_t[1]", n + off)
    local t = C.f2_tensor_new(C.F2_I32, C.F2_CPU, 1, shape)
    if t == nil then f2.check(C.F2_ERR_MEM, "tokenizer:encode", 2) end
    t = ffi.gc(t, C.f2_tensor_free)
    ffi.copy(t.data, buf, 4 * (n + off))
    return t
  end
  local out = {}
  for i = 0, n + off - 1 do out[i + 1] = buf[i] end
  return out
end

local dec_buf, dec_cap = nil, 0

-- ids (a Lua list or a 1-D i32 CPU tensor) -> string. opts.skip_special: leave special tokens out.
function Tokenizer:decode(ids, opts)
  local ptr, n
  if type(ids) == "table" then
    n = #ids
    local buf = ids_room(n)
    for i = 1, n do
      local id = ids[i]
      if type(id) ~= "number" then error("tokenizer:decode: ids[" .. i .. "] is not a number", 2) end
      buf[i - 1] = id
    end
    ptr = buf
  elseif type(ids) == "cdata" and ffi.istype("f2_tensor *", ids) then
    if ids.dtype ~= C.F2_I32 or ids.device ~= C.F2_CPU or ids.ndim ~= 1 or C.f2_tensor_is_contiguous(ids) == 0 then
      error("tokenizer:decode: a tensor of ids must be 1-D, i32, contiguous, on the CPU", 2)
    end
    ptr, n = ffi.cast("const int32_t *", ids.data), tonumber(ids.shape[0])
  else
    error("tokenizer:decode: ids must be a list or an i32 tensor", 2)
  end
  local skip = opts and opts.skip_special and 1 or 0
  local cap = math.max(8 * n, 64)
  for _ = 1, 2 do
    if cap > dec_cap then dec_cap, dec_buf = cap, ffi.new("char[?]", cap) end
    f2.check(C.f2_tokenizer_decode(self.handle, dec_buf, n_out, ptr, n, dec_cap, skip), "tokenizer:decode", 2)
    local len = tonumber(n_out[0])
    if len <= dec_cap then return ffi.string(dec_buf, len) end
    cap = len
  end
end

-- SmolLM2's chat template (ChatML with a default system prompt), hard-coded rather than run from
-- Jinja: <|im_start|>role\ncontent<|im_end|>\n per message, the default system message first
-- when the first message is not a system one (opts.system = false: none), then
-- <|im_start|>assistant\n with opts.add_generation_prompt. opts.tokenize: ids instead of text.
local SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

function Tokenizer:apply_chat_template(messages, opts)
  if type(messages) ~= "table" then error("tokenizer:apply_chat_template: messages must be a list", 2) end
  opts = opts or {}
  local parts = {}
  for i, m in ipairs(messages) do
    if type(m) ~= "table" or type(m.role) ~= "string" or type(m.content) ~= "string" then
      error("tokenizer:apply_chat_template: messages[" .. i .. "] needs string role and content", 2)
    end
    if i == 1 and m.role ~= "system" and opts.system ~= false then
      parts[#parts + 1] = "<|im_start|>system\n" .. (opts.system or SMOLLM2_SYSTEM) .. "<|im_end|>\n"
    end
    parts[#parts + 1] = "<|im_start|>" .. m.role .. "\n" .. m.content .. "<|im_end|>\n"
  end
  if opts.add_generation_prompt then parts[#parts + 1] = "<|im_start|>assistant\n" end
  local text = table.concat(parts)
  if opts.tokenize then return self:encode(text) end
  return text
end

function Tokenizer:token_to_id(s)
  if type(s) ~= "string" then error("tokenizer:token_to_id: expects a string", 2) end
  local id = C.f2_tokenizer_token_to_id(self.handle, s)
  if id >= 0 then return id end
end

function Tokenizer:id_to_token(id)
  if type(id) ~= "number" then error("tokenizer:id_to_token: expects a number", 2) end
  local s = C.f2_tokenizer_id_to_token(self.handle, id)
  if s ~= nil then return ffi.string(s) end
end

-- The pre-tokenizer alone (valid UTF-8 in): a list of pieces. For tests and inspection.
function Tokenizer:pretokenize(text)
  if type(text) ~= "string" then error("tokenizer:pretokenize: text must be a string", 2) end
  local ends = ffi.new("int64_t[?]", #text + 1)
  f2.check(C.f2_tokenizer_pretokenize(self.handle, ends, n_out, text, #text, #text + 1), "tokenizer:pretokenize", 2)
  local pieces, start = {}, 0
  for i = 0, tonumber(n_out[0]) - 1 do
    local e = tonumber(ends[i])
    pieces[#pieces + 1] = text:sub(start + 1, e)
    start = e
  end
  return pieces
end

function Tokenizer:free()
  if self.handle ~= nil then
    C.f2_tokenizer_free(ffi.gc(self.handle, nil))
    self.handle = nil
  end
end

M.Tokenizer = Tokenizer
return M
