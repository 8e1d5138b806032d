-- test_config.lua — config.from_json: real Llama / Llama-3 / Qwen3 config.json texts become the model
-- descriptions they should (checked field by field against values worked out by hand from the HF
-- configs), randomly sized configs normalize as transformers' defaults say, and everything fairy2
-- cannot build is refused with a message naming the field, at the caller's line.
local t = dofile("tests/lua/harness.lua")
local config = require "fairy2.config"
local cjson = require "cjson"

local function same(got, want, what)
  for k, v in pairs(want) do
    if type(v) == "table" then
      if t.check(type(got[k]) == "table", what .. ": " .. k .. " is a table") then same(got[k], v, what .. "." .. k) end
    elseif type(v) == "number" then
      t.close(got[k] or 0 / 0, v, 1e-12, 0, what .. ": " .. k)
    else
      t.check(got[k] == v, what .. ": " .. k .. " = " .. tostring(got[k]) .. ", want " .. tostring(v))
    end
  end
end

-- SmolLM2-135M's config.json as published.
local smollm2 = [[{
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 1,
  "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 576, "initializer_range": 0.041666666666666664,
  "intermediate_size": 1536, "is_llama_config": true, "max_position_embeddings": 8192, "mlp_bias": false,
  "model_type": "llama", "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
  "pad_token_id": 2, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": false, "rope_scaling": null,
  "rope_theta": 100000, "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.42.3",
  "use_cache": true, "vocab_size": 49152 }]]
local d = config.from_json(smollm2)
same(d, { arch = "llama", vocab_size = 49152, hidden = 576, layers = 30, heads = 9, kv_heads = 3, head_dim = 64,
  intermediate = 1536, rope_theta = 100000, rms_eps = 1e-5, tie_embeddings = true, attention_bias = false,
  mlp_bias = false, max_position = 8192, bos_id = 1, eos_id = 2, qk_norm = false }, "SmolLM2")
t.check(d.rope_scaling == nil, "SmolLM2: no rope scaling")
t.check(d.hf.pad_token_id == 2, "the original table is kept as .hf")

-- Llama 3.1 8B: llama3 rope scaling, several eos ids, untied.
local llama31 = [[{
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
  "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama", "num_attention_heads": 32,
  "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": false, "vocab_size": 128256 }]]
d = config.from_json(llama31)
same(d, { arch = "llama", hidden = 4096, heads = 32, kv_heads = 8, head_dim = 128, intermediate = 14336,
  rope_theta = 500000, tie_embeddings = false, bos_id = 128000, eos_id = 128001, eos_ids = { 128001, 128008, 128009 },
  max_position = 131072, rope_scaling = { type = "llama3", factor = 8, low_freq_factor = 1, high_freq_factor = 4,
  original_max_position_embeddings = 8192 } }, "Llama 3.1")

-- Llama 2 7B: no kv heads (so MHA), old-style defaults.
d = config.from_json([[{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
  "intermediate_size": 11008, "num_attention_heads": 32, "num_hidden_layers": 32, "rms_norm_eps": 1e-05,
  "vocab_size": 32000, "bos_token_id": 1, "eos_token_id": 2, "max_position_embeddings": 4096}]])
same(d, { kv_heads = 32, head_dim = 128, rope_theta = 10000, tie_embeddings = false, max_position = 4096 }, "Llama 2")

-- Qwen3-0.6B: head_dim independent of hidden / heads, q/k norm, rope_theta 1e6.
local qwen3 = [[{
  "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024, "initializer_range": 0.02,
  "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28, "model_type": "qwen3",
  "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
  "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null, "tie_word_embeddings": true,
  "torch_dtype": "bfloat16", "use_cache": true, "use_sliding_window": false, "vocab_size": 151936 }]]
d = config.from_json(qwen3)
same(d, { arch = "qwen3", hidden = 1024, heads = 16, kv_heads = 8, head_dim = 128, intermediate = 3072, layers = 28,
  rope_theta = 1000000, rms_eps = 1e-6, tie_embeddings = true, qk_norm = true, mlp_bias = false,
  bos_id = 151643, eos_id = 151645, vocab_size = 151936 }, "Qwen3")

-- The newer rope_parameters form, and a decoded table as input.
local q = cjson.decode(qwen3)
q.rope_theta = nil
q.rope_scaling = nil
q.rope_parameters = { rope_type = "default", rope_theta = 5000000 }
same(config.from_json(q), { rope_theta = 5000000 }, "Qwen3 rope_parameters")
q.rope_parameters = { rope_type = "llama3", rope_theta = 7, factor = 2, low_freq_factor = 1, high_freq_factor = 3,
  original_max_position_embeddings = 64 }
same(config.from_json(q), { rope_theta = 7, rope_scaling = { type = "llama3", factor = 2 } }, "rope_parameters llama3")

-- From a file path.
local path = os.tmpname()
local f = assert(io.open(path, "wb"))
f:write(qwen3)
f:close()
same(config.from_json(path), { arch = "qwen3", head_dim = 128 }, "from a path")
os.remove(path)

-- Randomly sized Llama configs: derived fields follow the sizes (fresh sizes every run).
math.randomseed(t.seed())
for _ = 1, 50 do
  local kv = math.random(1, 8)
  local heads = kv * math.random(1, 4)
  local head_dim = 2 * math.random(4, 64)
  local with_head_dim = math.random() < 0.5
  local cfg = { model_type = "llama", vocab_size = math.random(10, 200000), hidden_size = heads * head_dim,
    num_hidden_layers = math.random(1, 80), num_attention_heads = heads, num_key_value_heads = kv,
    intermediate_size = math.random(1, 50000), tie_word_embeddings = math.random() < 0.5,
    rms_norm_eps = math.random() * 1e-4 + 1e-7, rope_theta = math.random(1000, 2000000) }
  if with_head_dim then
    cfg.head_dim = 2 * math.random(4, 64)   -- may differ from hidden / heads, as Qwen3 does
  end
  local got = config.from_json(cfg)
  same(got, { vocab_size = cfg.vocab_size, hidden = cfg.hidden_size, layers = cfg.num_hidden_layers, heads = heads,
    kv_heads = kv, head_dim = with_head_dim and cfg.head_dim or head_dim, intermediate = cfg.intermediate_size,
    rms_eps = cfg.rms_norm_eps, rope_theta = cfg.rope_theta, tie_embeddings = cfg.tie_word_embeddings }, "random llama")
end

-- Refusals: one clear error naming the field, at the caller's line.
local function with(base, changes)
  local c = cjson.decode(base)
  for k, v in pairs(changes) do c[k] = v end
  return c
end
local refusals = {
  { with(qwen3, { rope_scaling = { rope_type = "yarn", factor = 4, original_max_position_embeddings = 32768 } }),
    "rope_scaling type 'yarn' is not supported" },
  { with(smollm2, { rope_scaling = { type = "linear", factor = 2 } }), "rope_scaling type 'linear'" },
  { with(smollm2, { hidden_act = "gelu" }), "hidden_act 'gelu' is not supported" },
  { with(smollm2, { model_type = "mistral", architectures = { "MistralForCausalLM" } }), "unsupported architecture 'mistral'" },
  { with(qwen3, { model_type = "qwen3_moe", architectures = { "Qwen3MoeForCausalLM" } }), "unsupported architecture 'qwen3_moe'" },
  { with(smollm2, { architectures = { "Qwen3ForCausalLM" } }), "does not match model_type 'llama'" },
  { with(smollm2, { model_type = cjson.null, architectures = cjson.null }), "neither model_type nor architectures" },
  { with(smollm2, { hidden_size = cjson.null }), "missing 'hidden_size'" },
  { with(smollm2, { hidden_size = "576" }), "'hidden_size' must be an integer" },
  { with(smollm2, { num_hidden_layers = 2.5 }), "'num_hidden_layers' must be an integer" },
  { with(smollm2, { num_key_value_heads = 2 }), "num_attention_heads 9 is not a multiple of num_key_value_heads 2" },
  { with(smollm2, { hidden_size = 577 }), "hidden_size 577 is not a multiple of num_attention_heads 9" },
  { with(smollm2, { head_dim = 63 }), "head_dim 63 is odd" },
  { with(smollm2, { tie_word_embeddings = "yes" }), "'tie_word_embeddings' must be true or false" },
  { with(smollm2, { rms_norm_eps = -1 }), "'rms_norm_eps' must be a positive number" },
  { with(smollm2, { rope_interleaved = true }), "rope_interleaved is not supported" },
  { with(qwen3, { use_sliding_window = true }), "use_sliding_window is not supported" },
  { with(qwen3, { layer_types = { "full_attention", "sliding_attention" } }), "layer_types[2] 'sliding_attention'" },
  { with(smollm2, { quantization_config = { quant_method = "gptq" } }), "quantization_config" },
  { with(smollm2, { partial_rotary_factor = 0.5 }), "partial_rotary_factor 0.5" },
  { with(llama31, { rope_scaling = { rope_type = "llama3", factor = 8 } }), "rope_scaling of type llama3 lacks 'low_freq_factor'" },
  { with(smollm2, { eos_token_id = { 2, "x" } }), "eos_token_id[2] must be an integer" },
  { '{"model_type": "llama", ', "invalid JSON" },
  { "ARRAY_FILE", "not a JSON object" },
  { "/no/such/config.json", "cannot read" },
  { 42, "expects a path, JSON text or a table" },
}
local array_file = os.tmpname()
f = assert(io.open(array_file, "wb"))
f:write("[1, 2]")
f:close()
for _, case in ipairs(refusals) do
  local ok, err = pcall(function()
    local r = config.from_json(case[1] == "ARRAY_FILE" and array_file or case[1])
    return r   -- not a tail call, so the caller's line is in the message
  end)
  t.check(not ok and tostring(err):find(case[2], 1, true) ~= nil, "refusal '" .. case[2] .. "': got " .. tostring(err))
  t.check(not ok and tostring(err):find("test_config.lua:", 1, true) ~= nil, "raised at the caller's line: " .. tostring(err))
  t.check(not ok and not tostring(err):find("\n", 1, true), "one line: " .. tostring(err))
end

os.remove(array_file)

t.done()
