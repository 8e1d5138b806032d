-- config.lua — a Hugging Face config.json (path, JSON text or decoded table) -> the model description
-- the model builders use:
--   { arch = "llama"|"qwen3", vocab_size, hidden, layers, heads, kv_heads, head_dim, intermediate,
--     rope_theta, rope_scaling = nil | { type = "llama3", factor, low_freq_factor, high_freq_factor,
--     original_max_position_embeddings }, rms_eps, tie_embeddings, attention_bias, mlp_bias,
--     max_position, bos_id, eos_id, eos_ids, qk_norm, hf = the table it came from }
-- Llama family (SmolLM2, Llama 2/3) and Qwen3. Anything fairy2's models would get wrong (another
-- architecture, another activation, another rope scaling, sliding windows, ...) is refused with an
-- error naming the field, raised at the caller's line. Defaults are transformers' own.
local cjson = require "cjson"

local M = {}

local ARCHS = {
  llama = { class = "LlamaForCausalLM", rms_eps = 1e-6, max_position = 2048, rope_theta = 10000 },
  qwen3 = { class = "Qwen3ForCausalLM", rms_eps = 1e-6, max_position = 32768, rope_theta = 10000, head_dim = 128 },
}

local function read_source(src)
  if type(src) == "table" then return src, "config" end
  if type(src) ~= "string" then error("config.from_json: expects a path, JSON text or a table, got " .. type(src), 0) end
  local text, name = src, "config"
  if not src:match("^%s*{") then
    local f, err = io.open(src, "rb")
    if not f then error("config: cannot read " .. tostring(err), 0) end
    text, name = f:read("*a"), src
    f:close()
  end
  local ok, cfg = pcall(cjson.decode, text)
  if not ok then error(name .. ": invalid JSON: " .. tostring(cfg), 0) end
  if type(cfg) ~= "table" or #cfg > 0 then error(name .. ": not a JSON object", 0) end
  return cfg, name
end

local function describe(src)
  local cfg, where = read_source(src)
  local function refuse(msg) error(where .. ": " .. msg, 0) end
  -- cjson decodes JSON null as a sentinel; it means "absent" here, as it does for transformers.
  local function get(k)
    local v = cfg[k]
    if v == cjson.null then return nil end
    return v
  end
  local function int(k, default, min)
    local v = get(k)
    if v == nil then
      if default == nil then refuse("missing '" .. k .. "'") end
      return default
    end
    if type(v) ~= "number" or v ~= math.floor(v) or v < (min or 1) then
      refuse("'" .. k .. "' must be an integer >= " .. (min or 1) .. ", got " .. tostring(v))
    end
    return v
  end
  local function num(v, k, default)
    if v == nil or v == cjson.null then return default end
    if type(v) ~= "number" or v <= 0 then refuse("'" .. k .. "' must be a positive number, got " .. tostring(v)) end
    return v
  end
  local function bool(k, default)
    local v = get(k)
    if v == nil then return default end
    if type(v) ~= "boolean" then refuse("'" .. k .. "' must be true or false, got " .. tostring(v)) end
    return v
  end

  -- Architecture: model_type and architectures[1] must agree on one we build.
  local model_type = get("model_type")
  local class = type(get("architectures")) == "table" and get("architectures")[1] or nil
  local arch = model_type
  if arch == nil then
    for name, a in pairs(ARCHS) do
      if a.class == class then arch = name end
    end
  end
  if arch == nil then refuse("neither model_type nor architectures names a model") end
  local spec = ARCHS[arch]
  if not spec then
    refuse("unsupported architecture '" .. tostring(arch) .. "'" .. (class and (" (" .. tostring(class) .. ")") or "") ..
      "; fairy2 supports llama, qwen3")
  end
  if class ~= nil and class ~= spec.class then
    refuse("architectures[1] '" .. tostring(class) .. "' does not match model_type '" .. arch .. "' (expected " .. spec.class .. ")")
  end

  local act = get("hidden_act") or "silu"
  if act ~= "silu" then refuse("hidden_act '" .. tostring(act) .. "' is not supported (silu is)") end
  if get("quantization_config") ~= nil then refuse("quantized checkpoints (quantization_config) are not supported") end
  local prf = get("partial_rotary_factor")
  if prf ~= nil and prf ~= 1 then refuse("partial_rotary_factor " .. tostring(prf) .. " is not supported (1 is)") end
  if get("use_sliding_window") == true then refuse("use_sliding_window is not supported") end
  if get("rope_interleaved") == true then refuse("rope_interleaved is not supported (rotate-half RoPE is)") end
  if type(get("layer_types")) == "table" then
    for i, lt in ipairs(get("layer_types")) do
      if lt ~= "full_attention" then refuse("layer_types[" .. i .. "] '" .. tostring(lt) .. "' is not supported (full_attention is)") end
    end
  end

  local d = { arch = arch, hf = cfg, qk_norm = arch == "qwen3" }
  d.vocab_size = int("vocab_size")
  d.hidden = int("hidden_size")
  d.layers = int("num_hidden_layers")
  d.heads = int("num_attention_heads")
  d.kv_heads = int("num_key_value_heads", d.heads)
  d.intermediate = int("intermediate_size")
  if get("head_dim") ~= nil or spec.head_dim then
    d.head_dim = int("head_dim", spec.head_dim)
  else
    if d.hidden % d.heads ~= 0 then
      refuse("hidden_size " .. d.hidden .. " is not a multiple of num_attention_heads " .. d.heads .. " (and no head_dim)")
    end
    d.head_dim = d.hidden / d.heads
  end
  if d.head_dim % 2 ~= 0 then refuse("head_dim " .. d.head_dim .. " is odd; rotary embeddings need it even") end
  if d.heads % d.kv_heads ~= 0 then
    refuse("num_attention_heads " .. d.heads .. " is not a multiple of num_key_value_heads " .. d.kv_heads)
  end
  d.max_position = int("max_position_embeddings", spec.max_position)
  d.rms_eps = num(get("rms_norm_eps"), "rms_norm_eps", spec.rms_eps)
  d.tie_embeddings = bool("tie_word_embeddings", false)
  d.attention_bias = bool("attention_bias", false)
  d.mlp_bias = arch == "llama" and bool("mlp_bias", false) or false
  if get("bos_token_id") ~= nil then d.bos_id = int("bos_token_id", nil, 0) end
  local eos = get("eos_token_id")
  if eos ~= nil then
    d.eos_ids = type(eos) == "table" and eos or { eos }
    for i, id in ipairs(d.eos_ids) do
      if type(id) ~= "number" or id ~= math.floor(id) or id < 0 then
        refuse("eos_token_id[" .. i .. "] must be an integer >= 0, got " .. tostring(id))
      end
    end
    d.eos_id = d.eos_ids[1]
  end

  -- Rope: the newer rope_parameters (one table with the theta inside), else rope_theta + rope_scaling.
  local rope = get("rope_parameters")
  local theta
  if rope ~= nil then
    if type(rope) ~= "table" then refuse("'rope_parameters' must be an object") end
    theta = num(rope.rope_theta, "rope_parameters.rope_theta", nil) or num(get("rope_theta"), "rope_theta", spec.rope_theta)
  else
    theta = num(get("rope_theta"), "rope_theta", spec.rope_theta)
    rope = get("rope_scaling")
    if rope ~= nil and type(rope) ~= "table" then refuse("'rope_scaling' must be an object or null") end
  end
  d.rope_theta = theta
  if rope ~= nil then
    local kind = rope.rope_type or rope.type or "default"
    if kind == cjson.null then kind = "default" end
    if kind == "llama3" then
      local function p(k) return num(rope[k], "rope_scaling." .. k, nil) or refuse("rope_scaling of type llama3 lacks '" .. k .. "'") end
      d.rope_scaling = {
        type = "llama3", factor = p("factor"), low_freq_factor = p("low_freq_factor"),
        high_freq_factor = p("high_freq_factor"),
        original_max_position_embeddings = p("original_max_position_embeddings"),
      }
      if d.rope_scaling.high_freq_factor <= d.rope_scaling.low_freq_factor then
        refuse("rope_scaling: high_freq_factor must be above low_freq_factor")
      end
    elseif kind ~= "default" then
      refuse("rope_scaling type '" .. tostring(kind) .. "' is not supported (default and llama3 are)")
    end
  end
  return d
end

function M.from_json(src)
  local ok, d = pcall(describe, src)
  if not ok then error(d, 2) end
  return d
end

return M
