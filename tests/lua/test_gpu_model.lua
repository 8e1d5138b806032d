-- test_gpu_model.lua — the model on the GPU against the CPU reference: tiny random Llama and Qwen3
-- (fresh weights each run): logits of the training forward and of forward_step (KV cache), the loss
-- and every parameter's gradient, in f32 and bf16 activations, Fairy2-converted too; a few training
-- steps through fairy2.step (flat parameters, device-side AdamW, CUDA graph) track the CPU's. Then,
-- when the real SmolLM2-135M-Instruct GGUF is present (models/, or $F2_GGUF): its logits on the GPU
-- match the CPU's, greedy generation gives the same tokens, and a short W2 QAT run's losses track.
local t = dofile("tests/lua/harness.lua")
t.require_gpu()
local ffi = require "ffi"
local f2 = require "fairy2"
local config = require "fairy2.config"
local fairy2 = require "fairy2.fairy2"
local llama = require "fairy2.models.llama"
local step = require "fairy2.step"

local seed = t.seed()
math.randomseed(seed)

-- max|a - b| / max|b| (both read as f32 on the CPU).
local function rel_err(a, b)
  a, b = a:cpu():float():contiguous(), b:cpu():float():contiguous()
  if a:numel() ~= b:numel() then return math.huge end
  local pa, pb = ffi.cast("const float *", a.h.data), ffi.cast("const float *", b.h.data)
  local num, den = 0, 0
  for i = 0, a:numel() - 1 do
    num = math.max(num, math.abs(pa[i] - pb[i]))
    den = math.max(den, math.abs(pb[i]))
  end
  return num / math.max(den, 1e-30)
end

local function random_ids(B, T, vocab)
  local rows = {}
  for b = 1, B do
    rows[b] = {}
    for i = 1, T do rows[b][i] = math.random(0, vocab - 1) end
  end
  return f2.tensor(rows, { dtype = "i32" })
end

local function hf_cfg(arch)
  return { model_type = arch, vocab_size = 97, hidden_size = 64, num_hidden_layers = 2, num_attention_heads = 4,
    num_key_value_heads = 2, intermediate_size = 96, tie_word_embeddings = arch == "qwen3", rms_norm_eps = 1e-5,
    max_position_embeddings = 256, rope_theta = 10000, head_dim = arch == "qwen3" and 32 or nil }
end

-- A CPU model and copies of it on the GPU (f32 and bf16 activations), same weights.
local function trio(arch, stages)
  local desc = config.from_json(hf_cfg(arch))
  local cpu = llama.build(desc)
  llama.init_random(cpu, math.random(1, 1e6), { std = 0.1 })
  local state = {}
  for _, p in ipairs(cpu:named_parameters()) do state[p.name] = p.value end
  local models = { cpu = cpu }
  for _, dtype in ipairs { "f32", "bf16" } do
    local m = llama.build(desc, { device = "cuda", dtype = dtype })
    llama.load_state(m, state)
    models[dtype] = m
  end
  if stages > 0 then
    for _, m in pairs(models) do fairy2.convert(m, { stages = stages, quiet = true }) end
  end
  return models, desc
end

for _, arch in ipairs { "llama", "qwen3" } do
  for _, stages in ipairs { 0, 2 } do
    local name = arch .. (stages > 0 and " W" .. stages or "")
    local models, desc = trio(arch, stages)
    local B, T = 2, 37
    local ids, targets = random_ids(B, T, desc.vocab_size), random_ids(B, T, desc.vocab_size)
    local want = models.cpu:forward(ids)
    for dtype, tol in pairs { f32 = 1e-4, bf16 = 3e-2 } do
      local m = models[dtype]
      local e = rel_err(m:forward(ids:cuda()), want)
      t.check(e < tol, string.format("%s %s: logits rel err %.3g", name, dtype, e))
    end
    -- Loss and gradients.
    models.cpu:zero_grad()
    local loss = models.cpu:loss(ids, targets)
    models.cpu:backward()
    for dtype, tol in pairs { f32 = 1e-3, bf16 = 5e-2 } do
      local m = models[dtype]
      m:zero_grad()
      t.close(m:loss(ids:cuda(), targets:cuda()), loss, tol / 10, 0, name .. " " .. dtype .. ": loss")
      m:backward()
      local cpu_params = models.cpu:named_parameters()
      local worst, worst_name = 0, ""
      for i, p in ipairs(m:named_parameters()) do
        local e = rel_err(p.grad, cpu_params[i].grad)
        if e > worst then worst, worst_name = e, p.name end
      end
      t.check(worst < tol, string.format("%s %s: worst gradient rel err %.3g (%s)", name, dtype, worst, worst_name))
    end
    -- forward_step with a KV cache (f32 caches on any device): the prompt, then one token at a time.
    local cache_c, cache_g = models.cpu:new_cache(B, 64), models.f32:new_cache(B, 64)
    local head = ids:narrow(1, 0, T - 3):contiguous()
    local e = rel_err(models.f32:forward_step(head:cuda(), cache_g), models.cpu:forward_step(head, cache_c))
    t.check(e < 1e-4, string.format("%s: forward_step (prompt) rel err %.3g", name, e))
    for i = T - 3, T - 1 do
      local one = ids:narrow(1, i, 1):contiguous()
      e = rel_err(models.f32:forward_step(one:cuda(), cache_g), models.cpu:forward_step(one, cache_c))
      t.check(e < 1e-4, string.format("%s: forward_step (token %d) rel err %.3g", name, i, e))
    end
  end
end

-- Training steps: CPU f32 vs GPU f32 and bf16 (graph), same batches.
do
  local models, desc = trio("llama", 2)
  local B, T, N = 2, 32, 5
  local batches = {}
  for i = 1, N do batches[i] = { random_ids(B, T, desc.vocab_size), random_ids(B, T, desc.vocab_size) } end
  local losses = {}
  for _, key in ipairs { "cpu", "f32", "bf16" } do
    local m = models[key]
    local s = step.setup(m, { lr = 1e-3, betas = { 0.9, 0.95 }, weight_decay = 0.1 },
      { batch = B, seq_len = T, accum = 2, clip = 1.0, graph = true })
    losses[key] = {}
    local allocs = {}
    for i = 1, N do
      losses[key][i] = s:run(function(micro, dst_ids, dst_targets)
        local b = batches[(i + micro - 1) % N + 1]
        dst_ids:copy(b[1])
        dst_targets:copy(b[2])
      end, 1e-3)
      if key ~= "cpu" then allocs[i] = f2.cuda.memory_stats().num_allocs end
    end
    if key ~= "cpu" then
      t.check(s.graph ~= nil, key .. ": the step ran as a CUDA graph")
      -- Steps 3.. are replays: no GPU allocation at all (not even from the allocator's cache).
      t.check(allocs[N] == allocs[3], string.format("%s: replayed steps allocate nothing (%d allocations in steps 4..%d)",
        key, allocs[N] - allocs[3], N))
    end
    s:free()
  end
  for key, tol in pairs { f32 = 1e-3, bf16 = 3e-2 } do
    for i = 1, N do
      t.close(losses[key][i], losses.cpu[i], tol, 0, string.format("training step %d: %s loss vs CPU", i, key))
    end
  end
end

-- The real SmolLM2-135M-Instruct.
local gguf = os.getenv("F2_GGUF") or "models/smollm2-135m-instruct.gguf"
local f = io.open(gguf, "rb")
if not f then
  print("the real model (" .. gguf .. ") is not here: its checks are skipped")
else
  f:close()
  local cpu = assert(llama.load("gguf:" .. gguf))
  local gpu = assert(llama.load("gguf:" .. gguf, { device = "cuda", dtype = "bf16" }))
  local gpu32 = assert(llama.load("gguf:" .. gguf, { device = "cuda" }))
  local prompt = { 504, 3458, 282, 4649, 314, 1345, 30, 216 }   -- arbitrary in-vocabulary ids
  local ids = f2.tensor({ prompt }, { dtype = "i32" })
  local want = cpu:forward(ids)
  local e16, e32 = rel_err(gpu:forward(ids:cuda()), want), rel_err(gpu32:forward(ids:cuda()), want)
  -- bf16 activations through 30 layers: a few percent of the largest logit (measured 0.050 on an H200);
  -- the f32 path below matches to 1e-3 and decodes the same tokens.
  t.check(e16 < 8e-2, string.format("SmolLM2: bf16 GPU logits rel err %.3g", e16))
  t.check(e32 < 1e-3, string.format("SmolLM2: f32 GPU logits rel err %.3g", e32))
  -- Greedy decoding, 24 tokens, with the KV cache on both.
  local function greedy(model, device)
    local cache = model:new_cache(1, 64)
    local out, cur = {}, ids
    for _ = 1, 24 do
      local logits = model:forward_step(device == "cuda" and cur:cuda() or cur, cache):cpu():float():contiguous()
      local p = ffi.cast("const float *", logits.h.data)
      local best = 0
      for v = 1, logits:numel() - 1 do if p[v] > p[best] then best = v end end
      out[#out + 1] = best
      cur = f2.tensor({ { best } }, { dtype = "i32" })
    end
    return table.concat(out, " ")
  end
  local a, b = greedy(cpu, "cpu"), greedy(gpu32, "cuda")
  t.check(a == b, "SmolLM2: greedy tokens on the GPU equal the CPU's:\n  cpu " .. a .. "\n  gpu " .. b)
  -- A short W2 QAT: 4 steps on one 48-token window (the prompt repeated), CPU vs GPU bf16 (the CPU
  -- side is the slow one: a GPU build's CPU matmul is the plain reference).
  local rows, tg = { {} }, { {} }
  for i = 1, 48 do rows[1][i] = prompt[i % #prompt + 1]; tg[1][i] = prompt[(i + 1) % #prompt + 1] end
  local bi, bt = f2.tensor(rows, { dtype = "i32" }), f2.tensor(tg, { dtype = "i32" })
  local losses = {}
  for key, m in pairs { cpu = cpu, gpu = gpu } do
    fairy2.convert(m, { stages = 2, quiet = true })
    local s = step.setup(m, { lr = 1e-4, betas = { 0.9, 0.95 }, weight_decay = 0.1 },
      { batch = 1, seq_len = 48, accum = 1, clip = 1.0, graph = true })
    losses[key] = {}
    for i = 1, 4 do
      losses[key][i] = s:run(function(_, dst_ids, dst_targets) dst_ids:copy(bi); dst_targets:copy(bt) end, 1e-4)
    end
    s:free()
  end
  -- Step 1 is the same weights through bf16 activations; afterwards the codes are discrete, so a bf16
  -- rounding can flip some and the runs drift apart (measured up to 13% at steps 2-4 on an H200 while
  -- both fall from 11.8 to under 4): the GPU curve must track the CPU's, not equal it.
  t.close(losses.gpu[1], losses.cpu[1], 1e-2, 0, "SmolLM2 W2 QAT step 1: GPU bf16 loss vs CPU")
  for i = 2, 4 do
    t.close(losses.gpu[i], losses.cpu[i], 0.2, 0, string.format("SmolLM2 W2 QAT step %d: GPU bf16 loss tracks the CPU's", i))
  end
  t.check(losses.gpu[4] < 0.5 * losses.gpu[1] and losses.cpu[4] < 0.5 * losses.cpu[1],
    "SmolLM2 W2 QAT: both runs more than halve their loss in 4 steps")
  print(string.format("SmolLM2 W2 QAT losses, CPU: %.4f %.4f %.4f %.4f; GPU bf16: %.4f %.4f %.4f %.4f", losses.cpu[1],
    losses.cpu[2], losses.cpu[3], losses.cpu[4], losses.gpu[1], losses.gpu[2], losses.gpu[3], losses.gpu[4]))
end
t.done()
