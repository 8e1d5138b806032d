-- test_model_gradcheck.lua — the models' explicit backward against double-sided finite differences of
-- the loss: tiny Llama (untied, biases, llama3 rope scaling, GQA) and Qwen3 (tied, q/k norm, head_dim
-- independent of hidden) with fresh random weights; a few random entries of every parameter tensor.
-- Also: gradients accumulate across backward calls, zero_grad clears them, misuse raises.
local t = dofile("tests/lua/harness.lua")
local ffi = require "ffi"
local f2 = require "fairy2"
local llama = require "fairy2.models.llama"
local C = f2.C

local seed = t.seed()
math.randomseed(seed)

local DESCS = {
  {
    arch = "llama", vocab_size = 23, hidden = 12, layers = 2, heads = 3, kv_heads = 1, head_dim = 6, intermediate = 10,
    rope_theta = 10000, rope_scaling = { type = "llama3", factor = 4, low_freq_factor = 1, high_freq_factor = 2,
      original_max_position_embeddings = 8 },
    rms_eps = 1e-5, tie_embeddings = false, attention_bias = true, mlp_bias = true, qk_norm = false,
  },
  {
    arch = "qwen3", vocab_size = 19, hidden = 8, layers = 2, heads = 4, kv_heads = 2, head_dim = 6, intermediate = 14,
    rope_theta = 1000, rms_eps = 1e-6, tie_embeddings = true, attention_bias = false, mlp_bias = false, qk_norm = true,
  },
}
local B, T, EPS, SAMPLES = 2, 5, 1e-3, 4

-- Random tensors through the C RNG with seeds from this run's seed.
local function randomize(model)
  for i, p in ipairs(model:named_parameters()) do
    local s = seed * 1000 + i
    if p.name:match("norm%.weight$") then
      f2.check(C.f2_rand_uniform(p.value.h, s, 0.7, 1.3))
    else
      local shape = p.value:shape()
      f2.check(C.f2_rand_normal(p.value.h, s, 0, 1 / math.sqrt(shape[2] or 4)))
    end
  end
end

local function ids_tensor(vocab, ignore_some)
  local ids = f2.empty({ B, T }, { dtype = "i32" })
  local p = ffi.cast("int32_t *", ids.h.data)
  for i = 0, B * T - 1 do p[i] = math.random(0, vocab - 1) end
  if ignore_some then p[1], p[B * T - 2] = -100, -100 end
  return ids
end

-- The mean cross-entropy of the model's fp32 logits, summed in double here (the model's own loss is
-- one fp32 number: too coarse for difference quotients).
local function loss_of(model, ids, targets)
  local logits = model:forward(ids)
  local V = logits:shape()[2]
  local pl, pt = ffi.cast("const float *", logits.h.data), ffi.cast("const int32_t *", targets.h.data)
  local total, counted = 0, 0
  for r = 0, targets:numel() - 1 do
    if pt[r] ~= -100 then
      local m, s = -math.huge, 0
      for c = 0, V - 1 do m = math.max(m, pl[r * V + c]) end
      for c = 0, V - 1 do s = s + math.exp(pl[r * V + c] - m) end
      total, counted = total + m + math.log(s) - pl[r * V + pt[r]], counted + 1
    end
  end
  return total / counted
end

for _, desc in ipairs(DESCS) do
  local model = llama.build(desc)
  randomize(model)
  local ids, targets = ids_tensor(desc.vocab_size), ids_tensor(desc.vocab_size, true)

  model:zero_grad()
  local loss0 = model:loss(ids, targets)
  model:backward()
  t.check(loss0 > 0 and loss0 < 10, desc.arch .. ": loss " .. loss0)
  t.close(loss0, loss_of(model, ids, targets), 1e-6, 0, desc.arch .. ": model loss = cross-entropy of its logits")

  local checked, worst = 0, 0
  for _, p in ipairs(model:named_parameters()) do
    local v, g = ffi.cast("float *", p.value.h.data), ffi.cast("const float *", p.grad.h.data)
    local n = p.value:numel()
    local gmax = 0
    for i = 0, n - 1 do gmax = math.max(gmax, math.abs(g[i])) end
    for _ = 1, SAMPLES do
      local i = math.random(0, n - 1)
      local saved = v[i]
      v[i] = saved + EPS
      local lp, hi = loss_of(model, ids, targets), v[i]
      v[i] = saved - EPS
      local lm, lo = loss_of(model, ids, targets), v[i]
      v[i] = saved
      local fd = (lp - lm) / (hi - lo)   -- the steps actually taken, after rounding to fp32
      -- fp32 logits leave noise of up to ~5e-5 in the difference quotient (measured over seeds), so
      -- errors are measured against the tensor's largest gradient plus a floor of 1e-2: 1e-4 absolute.
      local err = math.abs(fd - g[i]) / (gmax + 1e-2)
      worst = math.max(worst, err)
      t.check(err < 1e-2, string.format("%s: %s[%d] backward %.6g, finite differences %.6g", desc.arch, p.name, i, g[i], fd))
      checked = checked + 1
    end
  end
  print(string.format("%s: %d entries checked, worst error %.3g of the tensor's largest gradient", desc.arch, checked, worst))

  -- Gradients accumulate: a second backward doubles them; zero_grad clears them.
  local params = model:named_parameters()
  local p = params[#params]
  local g = ffi.cast("const float *", p.grad.h.data)
  local before = g[0]
  model:loss(ids, targets)
  model:backward()
  t.close(g[0], 2 * before, 1e-5, 1e-9, desc.arch .. ": gradients accumulate")
  model:zero_grad()
  t.check(g[0] == 0, desc.arch .. ": zero_grad")
end

-- Misuse raises at the caller's line with a message naming the problem.
t.raises(function() llama.build({ arch = "gpt2" }) end, "desc.vocab_size")
local bad = {}
for k, v in pairs(DESCS[1]) do bad[k] = v end
bad.kv_heads = 2
t.raises(function() llama.build(bad) end, "not a multiple of kv_heads")
local model = llama.build(DESCS[2])
t.raises(function() model:backward() end, "call loss(ids, targets) first")
t.raises(function() model:forward(f2.zeros({ B, T }, { dtype = "f32" })) end, "ids must be an i32 tensor")
local out_of_vocab = f2.full({ B, T }, DESCS[2].vocab_size, { dtype = "i32" })
t.raises(function() model:forward(out_of_vocab) end, "outside the vocabulary")

t.done()
