-- gguf.lua — GGUF model files from Lua, over runtime/gguf.c:
--   local g = gguf.open(path)            -- or nil, err
--   g:get(key) / g:metadata()            -- values: numbers, booleans, strings, arrays as Lua lists
--   g:tensor_names(), g:info(name), g:tensor(name [, "f32"|"bf16"])
--   gguf.to_hf(g [, {dtype = "f32"|"bf16"}])  -> { names = {...}, tensors = {hf_name = tensor} }
--   gguf.config_from_gguf(g)             -> an HF-style config table (config.from_json accepts it)
--   gguf.tokenizer_data(g)               -> tokens, merges, token types and special ids for the tokenizer
-- to_hf renames llama.cpp's tensors to Hugging Face names and undoes the q/k row permutation that
-- llama.cpp's converter applies to Llama models (docs/formats.md).
local ffi = require "ffi"
local f2 = require "fairy2"
local C = f2.C

local M = {}
local Gguf = {}
Gguf.__index = Gguf

local function last_error()
  local msg = f2.last_error()
  C.f2_clear_error()
  return msg
end

-- Out-parameters, allocated once.
local number_out = ffi.new("double[1]")
local str_out = ffi.new("const char *[1]")
local len_out = ffi.new("int64_t[1]")
local shape_out = ffi.new("int64_t[8]")

function M.open(path)
  if type(path) ~= "string" then error("gguf.open: path must be a string", 2) end
  local h = C.f2_gguf_open(path)
  if h == nil then return nil, last_error() end
  local self = setmetatable({ path = path, handle = ffi.gc(h, C.f2_gguf_close), index = {}, names = {} }, Gguf)
  for i = 0, tonumber(C.f2_gguf_tensor_count(h)) - 1 do
    local name = ffi.string(C.f2_gguf_tensor_name(h, i))
    self.names[i + 1] = name
    self.index[name] = i
  end
  return self
end

-- Tensors already handed out stay valid: they hold the file's mapping.
function Gguf:close()
  if self.handle ~= nil then
    C.f2_gguf_close(ffi.gc(self.handle, nil))
    self.handle = nil
  end
end

local function handle(self)
  if self.handle == nil then error("gguf: file " .. self.path .. " is closed", 3) end
  return self.handle
end

local function value(h, i, j, type_code)
  if type_code == C.F2_GGUF_STRING then
    f2.check(C.f2_gguf_metadata_string(str_out, len_out, h, i, j), "gguf", 3)
    return ffi.string(str_out[0], len_out[0])
  end
  f2.check(C.f2_gguf_metadata_number(number_out, h, i, j), "gguf", 3)
  if type_code == C.F2_GGUF_BOOL then return number_out[0] ~= 0 end
  return number_out[0]
end

-- The value of key (nil when absent); arrays become Lua lists. 64-bit integers above 2^53 lose
-- precision (no key a model needs comes near).
function Gguf:get(key)
  local h = handle(self)
  local i = C.f2_gguf_metadata_find(h, key)
  if i < 0 then return nil end
  local type_code = C.f2_gguf_metadata_type(h, i)
  if type_code ~= C.F2_GGUF_ARRAY then return value(h, i, 0, type_code) end
  local elem = C.f2_gguf_metadata_array_type(h, i)
  local list = {}
  for j = 0, tonumber(C.f2_gguf_metadata_array_count(h, i)) - 1 do list[j + 1] = value(h, i, j, elem) end
  return list
end

-- The GGUF value type of key ("u32", "string", "array", ...) and, for arrays, the element type.
function Gguf:type_of(key)
  local h = handle(self)
  local i = C.f2_gguf_metadata_find(h, key)
  if i < 0 then return nil end
  local t = ffi.string(C.f2_gguf_value_type_name(C.f2_gguf_metadata_type(h, i)))
  local e = C.f2_gguf_metadata_array_type(h, i)
  return t, e >= 0 and ffi.string(C.f2_gguf_value_type_name(e)) or nil
end

function Gguf:metadata()
  local h = handle(self)
  local out = {}
  for i = 0, tonumber(C.f2_gguf_metadata_count(h)) - 1 do
    local key = ffi.string(C.f2_gguf_metadata_key(h, i))
    out[key] = self:get(key)
  end
  return out
end

function Gguf:tensor_names()
  local copy = {}
  for i, n in ipairs(self.names) do copy[i] = n end
  return copy
end

function Gguf:has(name)
  return self.index[name] ~= nil
end

-- { type = "Q4_1", shape = {rows, cols} } (shape row-major, as the tensor will have it).
function Gguf:info(name)
  local h = handle(self)
  local i = self.index[name]
  if not i then error("gguf: no tensor '" .. tostring(name) .. "' in " .. self.path, 2) end
  local ndim = C.f2_gguf_tensor_shape(shape_out, h, i)
  local shape = {}
  for d = 0, ndim - 1 do shape[d + 1] = tonumber(shape_out[d]) end
  return { type = ffi.string(C.f2_gguf_type_name(C.f2_gguf_tensor_type(h, i))), shape = shape }
end

-- dtype: nil (as stored; quantized types as f32), "f32" or "bf16".
function Gguf:tensor(name, dtype)
  local h = handle(self)
  local i = self.index[name]
  if not i then error("gguf: no tensor '" .. tostring(name) .. "' in " .. self.path, 2) end
  local code = -1
  if dtype ~= nil then
    code = C.f2_dtype_from_name(dtype)
    if code ~= C.F2_F32 and code ~= C.F2_BF16 then error("gguf: dtype must be f32 or bf16, not " .. tostring(dtype), 2) end
  end
  local t = C.f2_gguf_tensor(h, i, code)
  if t == nil then error(last_error(), 2) end
  return f2.from_handle(t)
end

-- ---------------------------------------------------------------- Hugging Face view

local SUPPORTED = { llama = true, qwen3 = true }

local function arch_of(g)
  local arch = g:get("general.architecture")
  if not SUPPORTED[arch] then
    error("gguf: architecture '" .. tostring(arch) .. "' of " .. g.path .. " is not supported (llama, qwen3 are)", 3)
  end
  return arch
end

-- Per-layer names: llama.cpp suffix -> Hugging Face suffix under model.layers.N.
local LAYER_NAMES = {
  ["attn_norm.weight"] = "input_layernorm.weight",
  ["ffn_norm.weight"] = "post_attention_layernorm.weight",
  ["attn_q.weight"] = "self_attn.q_proj.weight", ["attn_q.bias"] = "self_attn.q_proj.bias",
  ["attn_k.weight"] = "self_attn.k_proj.weight", ["attn_k.bias"] = "self_attn.k_proj.bias",
  ["attn_v.weight"] = "self_attn.v_proj.weight", ["attn_v.bias"] = "self_attn.v_proj.bias",
  ["attn_output.weight"] = "self_attn.o_proj.weight", ["attn_output.bias"] = "self_attn.o_proj.bias",
  ["attn_q_norm.weight"] = "self_attn.q_norm.weight", ["attn_k_norm.weight"] = "self_attn.k_norm.weight",
  ["ffn_gate.weight"] = "mlp.gate_proj.weight", ["ffn_up.weight"] = "mlp.up_proj.weight",
  ["ffn_down.weight"] = "mlp.down_proj.weight",
  ["ffn_gate.bias"] = "mlp.gate_proj.bias", ["ffn_up.bias"] = "mlp.up_proj.bias", ["ffn_down.bias"] = "mlp.down_proj.bias",
}
local GLOBAL_NAMES = {
  ["token_embd.weight"] = "model.embed_tokens.weight",
  ["output_norm.weight"] = "model.norm.weight",
  ["output.weight"] = "lm_head.weight",
}

-- The Hugging Face name of a GGUF tensor, or nil, err.
function M.hf_name(gguf_name)
  if GLOBAL_NAMES[gguf_name] then return GLOBAL_NAMES[gguf_name] end
  local layer, rest = gguf_name:match("^blk%.(%d+)%.(.+)$")
  if layer and LAYER_NAMES[rest] then return "model.layers." .. layer .. "." .. LAYER_NAMES[rest] end
  return nil, "GGUF tensor '" .. gguf_name .. "' has no Hugging Face name in fairy2's mapping"
end

-- Every tensor under its Hugging Face name, in file order; q/k rows un-permuted for llama.
function M.to_hf(g, opts)
  opts = opts or {}
  if getmetatable(g) ~= Gguf then error("gguf.to_hf: expects an open gguf file", 2) end
  local arch = arch_of(g)
  local dtype = opts.dtype or "f32"
  if dtype ~= "f32" and dtype ~= "bf16" then error("gguf.to_hf: dtype must be f32 or bf16", 2) end
  local heads = g:get(arch .. ".attention.head_count")
  local kv_heads = g:get(arch .. ".attention.head_count_kv") or heads
  local out = { names = {}, tensors = {} }
  for _, name in ipairs(g.names) do
    local hf, err = M.hf_name(name)
    if not hf then error("gguf.to_hf: " .. err .. " (" .. g.path .. ")", 2) end
    local t = g:tensor(name, dtype)
    local n_head = arch == "llama" and (name:match("%.attn_q%.") and heads or name:match("%.attn_k%.") and kv_heads)
    if n_head then
      local fixed = f2.empty_like(t)
      f2.check(C.f2_gguf_unpermute_rows(fixed.h, t.h, n_head), "gguf.to_hf: " .. name, 2)
      t:free()   -- the permuted copy: gone now rather than at the next GC
      t = fixed
    end
    out.names[#out.names + 1] = hf
    out.tensors[hf] = t
  end
  return out
end

-- float32 metadata (rope base, epsilon) as the shortest decimal that rounds to the same float32,
-- so 9.99999974e-06 reads back as the 1e-05 of the original config.
local float_box = ffi.new("float[1]")
local function clean_f32(x)
  if x == nil then return nil end
  float_box[0] = x
  local want = float_box[0]
  for digits = 1, 9 do
    local y = tonumber(string.format("%." .. digits .. "g", x))
    float_box[0] = y
    if float_box[0] == want then return y end
  end
  return x
end

-- An HF-style config (as config.json would say it) from the llama.* / qwen3.* metadata.
function M.config_from_gguf(g)
  if getmetatable(g) ~= Gguf then error("gguf.config_from_gguf: expects an open gguf file", 2) end
  local arch = arch_of(g)
  local function key(k) return g:get(arch .. "." .. k) end
  local function need(k)
    local v = key(k)
    if v == nil then error("gguf: " .. g.path .. " lacks metadata '" .. arch .. "." .. k .. "'", 3) end
    return v
  end
  local scaling = key("rope.scaling.type")
  if scaling ~= nil and scaling ~= "none" then
    error("gguf: rope scaling '" .. tostring(scaling) .. "' in " .. g.path .. " is not supported", 2)
  end
  if g:has("rope_freqs.weight") then
    error("gguf: " .. g.path .. " carries rope_freqs (llama3-style rope scaling), which fairy2 reads only from config.json", 2)
  end
  local tokens = g:get("tokenizer.ggml.tokens")
  local heads = need("attention.head_count")
  local cfg = {
    architectures = { arch == "llama" and "LlamaForCausalLM" or "Qwen3ForCausalLM" },
    model_type = arch,
    vocab_size = key("vocab_size") or (type(tokens) == "table" and #tokens) or nil,
    hidden_size = need("embedding_length"),
    intermediate_size = need("feed_forward_length"),
    num_hidden_layers = need("block_count"),
    num_attention_heads = heads,
    num_key_value_heads = key("attention.head_count_kv") or heads,
    head_dim = key("attention.key_length"),
    max_position_embeddings = key("context_length"),
    rope_theta = clean_f32(key("rope.freq_base")) or 10000,
    rms_norm_eps = clean_f32(need("attention.layer_norm_rms_epsilon")),
    tie_word_embeddings = not g:has("output.weight"),
    attention_bias = g:has("blk.0.attn_q.bias"),
    mlp_bias = g:has("blk.0.ffn_up.bias"),
    hidden_act = "silu",
    bos_token_id = g:get("tokenizer.ggml.bos_token_id"),
    eos_token_id = g:get("tokenizer.ggml.eos_token_id"),
  }
  if cfg.vocab_size == nil then error("gguf: " .. g.path .. " gives no vocab size (no tokens, no vocab_size)", 2) end
  return cfg
end

-- What a byte-level BPE tokenizer needs, from tokenizer.ggml.*; errors name the missing or
-- mistyped key.
function M.tokenizer_data(g)
  if getmetatable(g) ~= Gguf then error("gguf.tokenizer_data: expects an open gguf file", 2) end
  local function typed(k, want, elem, required)
    local t, e = g:type_of(k)
    if t == nil then
      if required then error("gguf: " .. g.path .. " lacks tokenizer metadata '" .. k .. "'", 3) end
      return nil
    end
    local ok
    if want == "int" then ok = t:match("^[ui]%d+$") ~= nil
    elseif want == "array" then ok = t == "array" and (elem == "int" and (e or ""):match("^[ui]%d+$") or e == elem)
    else ok = t == want end
    if not ok then
      error("gguf: tokenizer metadata '" .. k .. "' in " .. g.path .. " is " .. t .. (e and (" of " .. e) or "") ..
        ", expected " .. want .. (elem and (" of " .. elem) or ""), 3)
    end
    return g:get(k)
  end
  local data = {
    model = typed("tokenizer.ggml.model", "string", nil, true),
    pre = typed("tokenizer.ggml.pre", "string"),
    tokens = typed("tokenizer.ggml.tokens", "array", "string", true),
    merges = typed("tokenizer.ggml.merges", "array", "string"),
    token_type = typed("tokenizer.ggml.token_type", "array", "int"),
    bos_id = typed("tokenizer.ggml.bos_token_id", "int"),
    eos_id = typed("tokenizer.ggml.eos_token_id", "int"),
    unk_id = typed("tokenizer.ggml.unknown_token_id", "int"),
    pad_id = typed("tokenizer.ggml.padding_token_id", "int"),
    add_bos = typed("tokenizer.ggml.add_bos_token", "bool"),
    add_eos = typed("tokenizer.ggml.add_eos_token", "bool"),
    chat_template = typed("tokenizer.chat_template", "string"),
  }
  local n = #data.tokens
  if data.token_type and #data.token_type ~= n then
    error("gguf: tokenizer.ggml.token_type has " .. #data.token_type .. " entries for " .. n .. " tokens in " .. g.path, 2)
  end
  for _, k in ipairs { "bos_id", "eos_id", "unk_id", "pad_id" } do
    local id = data[k]
    if id and (id < 0 or id >= n) then
      error("gguf: tokenizer " .. k .. " " .. id .. " is outside the " .. n .. " tokens of " .. g.path, 2)
    end
  end
  return data
end

M.Gguf = Gguf
return M
