-- train_fixture.lua — a tiny training setup for the training tests (not a test itself): a random
-- Llama model saved as an HF directory, and token shards of random documents with a manifest.
--   fairy2 tests/lua/train_fixture.lua DIR [SEED]      -> DIR/model/, DIR/tokens/
--   local fx = dofile("tests/lua/train_fixture.lua")   -> fx.make(dir, seed), fx.recipe(dir, overrides)
local ffi = require "ffi"
local cjson = require "cjson"
local f2 = require "fairy2"
local llama = require "fairy2.models.llama"
local config = require "fairy2.config"
local safetensors = require "fairy2.safetensors"
local recipe = require "fairy2.recipe"
local C = f2.C

local M = {}

M.VOCAB, M.EOS = 96, 95

M.HF_CONFIG = {
  architectures = { "LlamaForCausalLM" }, model_type = "llama", vocab_size = M.VOCAB, hidden_size = 16,
  intermediate_size = 24, num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2,
  rms_norm_eps = 1e-5, rope_theta = 10000, tie_word_embeddings = true, hidden_act = "silu",
  max_position_embeddings = 256, bos_token_id = 0, eos_token_id = M.EOS, initializer_range = 0.2,
}

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local function shard(path, docs)
  local w = C.f2_shard_writer_new(path, 0, M.VOCAB, M.EOS, 0)
  assert(w ~= nil, f2.last_error())
  for _, d in ipairs(docs) do
    local buf = ffi.new("int32_t[?]", #d, d)
    assert(C.f2_shard_writer_add(w, buf, #d) == 0, f2.last_error())
  end
  local info = ffi.new("f2_shard_info[1]")
  assert(C.f2_shard_writer_finish(info, w) == 0, f2.last_error())
  C.f2_shard_writer_free(w)
  return tonumber(info[0].token_count), tonumber(info[0].document_count)
end

-- Documents with some structure (a repeated motif per document), so a model can learn a little.
local function documents(n, rng)
  local docs = {}
  for i = 1, n do
    local motif, d = {}, {}
    for k = 1, rng(3, 6) do motif[k] = rng(0, M.VOCAB - 2) end
    for k = 1, rng(40, 120) do d[k] = (k % 4 == 0) and rng(0, M.VOCAB - 2) or motif[(k - 1) % #motif + 1] end
    docs[i] = d
  end
  return docs
end

-- A fresh temporary directory holding the fixture (M.make); returns its path.
function M.fresh(seed)
  local dir = os.tmpname()
  os.remove(dir)
  M.make(dir, seed)
  return dir
end

-- A stream for train.fit's { stream = ... } that keeps what a run prints (s:all()).
function M.sink()
  local s = { text = {} }
  function s:write(...) for _, x in ipairs { ... } do self.text[#self.text + 1] = tostring(x) end end
  function s:flush() end
  function s:all() return table.concat(self.text) end
  return s
end

-- Writes dir/model (config.json + model.safetensors) and dir/tokens (two sources: alpha, beta).
function M.make(dir, seed)
  seed = seed or 1
  assert(os.execute("mkdir -p '" .. dir .. "/model' '" .. dir .. "/tokens/train' '" .. dir .. "/tokens/eval'") == 0)
  write(dir .. "/model/config.json", cjson.encode(M.HF_CONFIG))
  local model = llama.build(config.from_json(M.HF_CONFIG))
  llama.init_random(model, seed)
  local list = {}
  for i, p in ipairs(model:named_parameters()) do list[i] = { p.name, p.value } end
  assert(safetensors.save(dir .. "/model/model.safetensors", list))

  math.randomseed(seed)
  local rng = math.random
  local manifest = { format = "fairy2-tokens", version = 1, sources = {} }
  for _, name in ipairs { "alpha", "beta" } do
    local src = { name = name, train = {}, eval = {} }
    for _, split in ipairs { "train", "eval" } do
      local rel = split .. "/" .. name .. ".bin"
      local tokens, docs = shard(dir .. "/tokens/" .. rel, documents(split == "train" and 40 or 6, rng))
      table.insert(src[split], { path = rel, tokens = tokens, documents = docs })
    end
    table.insert(manifest.sources, src)
  end
  write(dir .. "/tokens/manifest.json", cjson.encode(manifest))
  return dir
end

-- A training recipe over the fixture: base.lua's fields with small sizes, then overrides (a table
-- merged in, or a list of "key=value" strings).
function M.recipe(dir, over)
  local base = dofile("recipes/base.lua")
  local cfg = recipe.merge(base, {
    name = "tiny", out = dir .. "/run", model = dir .. "/model",
    data = { path = dir .. "/tokens", seq_len = 16 },
    train = { batch = 2, accum = 1, steps = 6, eval_every = 0, checkpoint_every = 0, log_every = 1 },
    optim = { lr = 1e-2, warmup = 1, decay = 2 },
    export = { hf = false, packed = false },
  })
  if over and #over > 0 then
    recipe.apply_overrides(cfg, over)
  elseif over then
    cfg = recipe.merge(cfg, over)
  end
  return cfg
end

-- As a script: make the fixture in arg[1].
-- As a script (returning nothing, so the CLI doesn't take it for a recipe): make the fixture in arg[1].
if arg and arg[0] and arg[0]:match("train_fixture%.lua$") and arg[1] then
  M.make(arg[1], tonumber(arg[2]) or 1)
  print("fixture in " .. arg[1])
  return
end

return M
