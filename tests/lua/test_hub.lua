-- test_hub.lua — hub.resolve over local model sources: an HF directory (single file and sharded, with
-- fresh random weights that must come back bit for bit), the real SmolLM2 GGUF when it is there,
-- and the refusals (hf: not implemented yet, missing files, untied embeddings without lm_head).
local t = dofile("tests/lua/harness.lua")
local ffi = require "ffi"
local f2 = require "fairy2"
local hub = require "fairy2.hub"
local safetensors = require "fairy2.safetensors"

local seed = t.seed()

local function tensor(rows, cols)
  seed = seed + 1
  return f2.randn({ rows, cols }, { seed = seed })
end

-- Same shape and the same bytes.
local function equal(a, b)
  local sa, sb = a:shape(), b:shape()
  if sa[1] ~= sb[1] or sa[2] ~= sb[2] then return false end
  return ffi.string(a.h.data, 4 * a:numel()) == ffi.string(b.h.data, 4 * b:numel())
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local dir = os.tmpname()
os.remove(dir)
local rc = os.execute("mkdir -p '" .. dir .. "/single' '" .. dir .. "/sharded' '" .. dir .. "/empty'")
assert(rc == 0 or rc == true, "mkdir failed")
local cfg = [[{"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8,
  "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 12,
  "tie_word_embeddings": %s}]]
local weights = {
  { "model.embed_tokens.weight", tensor(10, 8) }, { "model.layers.0.self_attn.q_proj.weight", tensor(8, 8) },
  { "model.layers.0.mlp.up_proj.weight", tensor(12, 8) }, { "lm_head.weight", tensor(10, 8) },
}

-- One file.
write(dir .. "/single/config.json", cfg:format("false"))
write(dir .. "/single/tokenizer.json", "{}")
assert(safetensors.save(dir .. "/single/model.safetensors", weights))
local m, err = hub.resolve(dir .. "/single/")
if t.check(m ~= nil, "resolve a local HF directory: " .. tostring(err)) then
  t.check(m.config.arch == "llama" and m.config.kv_heads == 1 and m.config.head_dim == 4, "its config")
  t.check(#m.names == 4 and m.names[1] == "model.embed_tokens.weight", "names in file order")
  for _, w in ipairs(weights) do t.check(equal(m.state[w[1]], w[2]), "bit for bit: " .. w[1]) end
  t.check(m.tokenizer_source.kind == "json" and m.tokenizer_source.path == dir .. "/single/tokenizer.json", "tokenizer.json")
end

-- Sharded: two shards and an index.
write(dir .. "/sharded/config.json", cfg:format("false"))
assert(safetensors.save(dir .. "/sharded/a.safetensors", { weights[1], weights[2] }))
assert(safetensors.save(dir .. "/sharded/b.safetensors", { weights[3], weights[4] }))
write(dir .. "/sharded/model.safetensors.index.json", string.format([[{"metadata": {}, "weight_map": {
  "%s": "a.safetensors", "%s": "a.safetensors", "%s": "b.safetensors", "%s": "b.safetensors"}}]],
  weights[1][1], weights[2][1], weights[3][1], weights[4][1]))
m, err = hub.resolve(dir .. "/sharded")
if t.check(m ~= nil, "resolve a sharded directory: " .. tostring(err)) then
  for _, w in ipairs(weights) do t.check(equal(m.state[w[1]], w[2]), "sharded, bit for bit: " .. w[1]) end
  t.check(m.tokenizer_source == nil, "no tokenizer.json: no tokenizer source")
end

-- Refusals.
local function refused(source, pattern)
  local r, e = hub.resolve(source)
  t.check(r == nil and tostring(e):find(pattern, 1, true) ~= nil, "refused '" .. source .. "': " .. tostring(e))
end
refused("hf:HuggingFaceTB/SmolLM2-135M", "not implemented yet")
refused(dir .. "/empty", "no config.json")
write(dir .. "/empty/config.json", cfg:format("true"))
refused(dir .. "/empty", "neither model.safetensors nor model.safetensors.index.json")
write(dir .. "/empty/config.json", cfg:format("false"))
assert(safetensors.save(dir .. "/empty/model.safetensors", { weights[1] }))
refused(dir .. "/empty", "no lm_head.weight")
write(dir .. "/empty/config.json", [[{"model_type": "gpt2"}]])
refused(dir .. "/empty", "unsupported architecture 'gpt2'")
refused("gguf:" .. dir .. "/none.gguf", "cannot open")
refused(dir .. "/none.gguf", "cannot open")
t.raises(function() hub.resolve(42) end, "source must be a non-empty string")

-- The real SmolLM2 (scripts/get_smollm2.sh), when present.
local real = (os.getenv("F2_SOURCE_DIR") or ".") .. "/models/smollm2-135m-instruct.gguf"
local f = io.open(real, "rb")
if f then
  f:close()
  m, err = hub.resolve("gguf:" .. real, { dtype = "bf16" })
  if t.check(m ~= nil, "resolve the real SmolLM2: " .. tostring(err)) then
    t.check(#m.names == 272 and m.state["lm_head.weight"] == nil and m.config.tie_embeddings, "272 tensors, tied")
    local e = m.state["model.embed_tokens.weight"]
    t.check(e:dtype() == "bf16" and e:shape()[1] == 49152 and e:shape()[2] == 576, "embeddings [49152, 576] bf16")
    t.check(m.tokenizer_source.kind == "gguf" and #require("fairy2.gguf").tokenizer_data(m.tokenizer_source.gguf).merges == 48900,
      "tokenizer from the GGUF")
  end
else
  print("real SmolLM2 not present (scripts/get_smollm2.sh): that part skipped")
end

os.execute("rm -rf '" .. dir .. "'")
t.done()
