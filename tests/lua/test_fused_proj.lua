-- test_fused_proj.lua — fused projections (nn/fused.lua): q/k/v as one GEMM, gate/up as one. A tiny
-- random Llama built twice, fused and not (fused.set(model, false)), must give the same loss and every
-- gradient within fp32 rounding (the dX sums change order), plain and Fairy2-converted (T=2), with
-- flat parameters and without, with biases, and Qwen3's q/k norm (attention unfused, MLP fused); the
-- stacked R_hat is what quantize_all writes (the layers' r_hat are views of it); recompute keeps
-- working; a few optimizer steps (step.setup) agree; A8 layers fall back to one GEMM each.
-- On a GPU build with a GPU, the same comparisons also run on CUDA in f32 and bf16.
local t = dofile("tests/lua/harness.lua")
local ffi = require "ffi"
local f2 = require "fairy2"
local config = require "fairy2.config"
local fairy2 = require "fairy2.fairy2"
local fused = require "fairy2.nn.fused"
local llama = require "fairy2.models.llama"
local step = require "fairy2.step"

local seed = t.seed()
math.randomseed(seed)

-- big: the GPU tests' size (head_dim 16, as test_gpu_model's Llama).
local function desc_of(arch, bias, big)
  return config.from_json { model_type = arch, vocab_size = 61, hidden_size = big and 64 or 32, num_hidden_layers = 2,
    num_attention_heads = 4, num_key_value_heads = 2, head_dim = big and 16 or 8, intermediate_size = big and 96 or 48,
    tie_word_embeddings = true, rms_norm_eps = 1e-5, max_position_embeddings = 64, rope_theta = 10000,
    attention_bias = bias, mlp_bias = bias }
end

-- Flat Lua list of a tensor's values (any device and dtype).
local function values(x)
  local c = x:to("cpu"):float():contiguous()
  local p, out = ffi.cast("const float *", c.h.data), {}
  for i = 0, c:numel() - 1 do out[i + 1] = p[i] end
  return out
end

-- max |a - b| / max(|b|) (0 when b is all zero and a equals it).
local function rel_diff(a, b)
  local va, vb = values(a), values(b)
  if #va ~= #vb then return math.huge end
  local worst, scale = 0, 0
  for i = 1, #va do
    worst = math.max(worst, math.abs(va[i] - vb[i]))
    scale = math.max(scale, math.abs(vb[i]))
  end
  if worst ~= worst then return math.huge end
  return scale > 0 and worst / scale or worst
end

local function batch(B, T)
  local rows, tg = {}, {}
  for b = 1, B do
    rows[b], tg[b] = {}, {}
    for i = 1, T do rows[b][i], tg[b][i] = math.random(0, 60), math.random(0, 60) end
  end
  return f2.tensor(rows, { dtype = "i32" }), f2.tensor(tg, { dtype = "i32" })
end

local function build(desc, opts)
  local m = llama.build(desc, { device = opts.device, dtype = opts.dtype, recompute = opts.recompute })
  llama.init_random(m, opts.w, { std = 0.2 })
  if opts.bias then   -- nonzero biases, so a bias in the wrong columns shows
    for _, p in ipairs(m:named_parameters()) do
      if p.local_name == "bias" then f2.check(f2.C.f2_rand_normal(p.value.h, opts.w + 7, 0, 0.3)) end
    end
  end
  if opts.stages > 0 then fairy2.convert(m, { stages = opts.stages, quiet = true, a8 = opts.a8 }) end
  if not opts.fuse then fused.set(m, false) end
  if opts.flat then m:flatten() end
  return m
end

-- Whether the first block's q/k/v and gate/up took the fused path (group made and usable).
local function fused_paths(m)
  local layer = m.model.layers.children["0"]
  local a, p = layer.self_attn.fused, layer.mlp.fused
  return a and a.qkv and a.qkv.ok or false, p and p.gate_up and p.gate_up.ok or false
end

-- One loss + backward of both models on one batch; returns the loss difference and the worst gradient.
local function compare(models, ids, targets, quantize_all)
  local losses = {}
  for i, m in ipairs(models) do
    m:zero_grad()
    if quantize_all then fairy2.quantize_all(m, { dtype = m.dtype }) end
    losses[i] = m:loss(ids, targets)
    m:backward()
  end
  local a, b = models[1]:named_parameters(), models[2]:named_parameters()
  local worst, name = 0, ""
  for i = 1, #a do
    local d = rel_diff(a[i].grad, b[i].grad)
    if d > worst then worst, name = d, a[i].name end
  end
  return losses, worst, name
end

local function run_case(c)
  local w = math.random(1, 1e6)
  local desc = desc_of(c.arch or "llama", c.bias or false, c.device == "cuda")
  local models = {}
  for i, fuse in ipairs { true, false } do
    models[i] = build(desc, { w = w, stages = c.stages, flat = c.flat, fuse = fuse, bias = c.bias, device = c.device,
      dtype = c.dtype, recompute = c.recompute, a8 = c.a8 })
  end
  local label = string.format("%s W%d%s%s%s%s%s %s/%s", c.arch or "llama", c.stages, c.flat and " flat" or "",
    c.bias and " bias" or "", c.recompute and " recompute" or "", c.a8 and " a8" or "", c.quantize_all and " quantize_all" or "",
    c.device or "cpu", c.dtype or "f32")
  -- f32: summation order only; bf16: a rounding flip of an activation propagates (GPU vs CPU takes 5e-2).
  local tol, gtol = 2e-5, 2e-5
  if c.dtype == "bf16" then tol, gtol = 2e-2, 5e-2 elseif c.device == "cuda" then tol, gtol = 1e-5, 1e-4 end
  for rep = 1, 2 do   -- twice: the second pass reuses the groups and (Fairy2) the stacked R_hat
    local ids, targets = batch(2, 7 + rep)
    if c.device then ids, targets = ids:to(c.device), targets:to(c.device) end
    local losses, worst, name = compare(models, ids, targets, c.quantize_all)
    t.close(losses[1], losses[2], tol, 0, label .. ": the same loss fused and not (pass " .. rep .. ")")
    t.check(worst <= gtol, string.format("%s: gradients agree (pass %d): worst %.3g at %s", label, rep, worst, name))
    if os.getenv("F2_TEST_VERBOSE") then print(string.format("%s pass %d: loss %.9g vs %.9g, worst gradient %.3g at %s", label, rep, losses[1], losses[2], worst, name)) end
  end
  local qkv, gate_up = fused_paths(models[1])
  local want_qkv = not c.a8 and (c.arch or "llama") ~= "qwen3"
  t.check(qkv == want_qkv, label .. ": q/k/v fused " .. tostring(qkv) .. ", expected " .. tostring(want_qkv))
  t.check(gate_up == not c.a8, label .. ": gate/up fused " .. tostring(gate_up))
  local q2, g2 = fused_paths(models[2])
  t.check(not q2 and not g2, label .. ": fusion off stays off")
  if c.stages > 0 and not c.a8 then
    -- The stacked R_hat: every converted layer's r_hat is a row slice of its group's stack.
    local attn = models[1].model.layers.children["1"].mlp
    local g = attn.fused.gate_up
    local s = g.stack
    local rs = ffi.sizeof(s:dtype() == "f32" and "float" or "uint16_t") * g.in_features
    local at = ffi.cast("uintptr_t", s.h.data)
    t.check(ffi.cast("uintptr_t", attn.gate_proj.r_hat.h.data) == at and
      ffi.cast("uintptr_t", attn.up_proj.r_hat.h.data) == at + g.offsets[2] * rs, label .. ": r_hat are views of the stack")
  end
  return models
end

for _, stages in ipairs { 0, 2 } do
  for _, flat in ipairs { false, true } do
    run_case { stages = stages, flat = flat }
  end
  run_case { stages = stages, flat = true, quantize_all = stages > 0 }
  run_case { stages = stages, flat = false, bias = true }
  run_case { stages = stages, flat = true, bias = true }
  run_case { stages = stages, flat = true, recompute = true }
  run_case { stages = stages, flat = true, arch = "qwen3" }
end
run_case { stages = 2, flat = true, a8 = true }

-- quantize_all after a fused forward writes the stack (no fresh buffers): the forward that follows
-- uses it, with the same loss as quantizing in the forward.
do
  local desc = desc_of("llama", false)
  local w = math.random(1, 1e6)
  local m = build(desc, { w = w, stages = 2, flat = true, fuse = true })
  local ids, targets = batch(2, 9)
  local l1 = m:loss(ids, targets, { grad = false })
  local attn = m.model.layers.children["0"].self_attn
  local stack, q_r_hat = attn.fused.qkv.stack, attn.q_proj.r_hat
  local before = ffi.cast("uintptr_t", stack.h.data)
  fairy2.quantize_all(m)
  t.check(attn.fused.qkv.stack == stack and attn.q_proj.r_hat == q_r_hat and
    ffi.cast("uintptr_t", attn.fused.qkv.stack.h.data) == before, "quantize_all kept the stacked R_hat")
  t.check(attn.q_proj.r_hat_ready and attn.v_proj.r_hat_ready, "quantize_all marked the stacked R_hat ready")
  local l2 = m:loss(ids, targets, { grad = false })
  t.check(l1 == l2, string.format("the same loss from quantize_all's R_hat (%.9g vs %.9g)", l1, l2))
  t.check(not attn.q_proj.r_hat_ready, "the forward used quantize_all's R_hat")
  -- A layer used alone still works (its r_hat slice is written in place).
  local x = f2.randn({ 3, 32 })
  local y = attn.k_proj:forward(x)
  t.check(y:shape()[1] == 3 and y:shape()[2] == 16, "a grouped layer runs alone")
  attn.k_proj.saved.x_in:free()
  attn.k_proj.saved = nil
  -- bf16 R_hat re-stacks the group.
  fairy2.quantize_all(m, { dtype = "bf16" })
  t.check(attn.fused.qkv.stack:dtype() == "bf16" and attn.q_proj.r_hat:dtype() == "bf16" and
    ffi.cast("uintptr_t", attn.k_proj.r_hat.h.data) == ffi.cast("uintptr_t", attn.fused.qkv.stack.h.data) +
    attn.fused.qkv.offsets[2] * 2 * 32, "bf16 R_hat: re-stacked, the layers' r_hat views of the new stack")
end

-- Weights and gradients that sit back to back in memory but in separate storages (as two allocations
-- can) are not one span: the group casts/GEMMs per layer instead, with the same results.
do
  local MLP = require "fairy2.nn.mlp"
  local H, I, N = 8, 6, 5
  local mlps = { MLP(H, I), MLP(H, I) }
  fused.set(mlps[2], false)
  local backing = {}
  for k, m in ipairs(mlps) do
    backing[k] = f2.zeros({ 4 * I * H })   -- weights then gradients of gate and up, back to back
    for j, name in ipairs { "gate_proj", "up_proj" } do
      local l = m[name]
      local function piece(at)
        local p = ffi.cast("float *", backing[k].h.data) + at * I * H
        return f2.from_handle(f2.C.f2_tensor_wrap(p, f2.C.F2_F32, f2.C.F2_CPU, 2, ffi.new("int64_t[2]", { I, H }), nil, nil))
      end
      local w, g = piece(j - 1), piece(1 + j)
      f2.check(f2.C.f2_rand_normal(w.h, seed + j, 0, 0.5))
      l.params.weight, l.weight, l.grads.weight = w, w, g
    end
    m.down_proj.weight:copy(f2.randn({ H, I }))
  end
  mlps[2].down_proj.weight:copy(mlps[1].down_proj.weight)
  local x, dy = f2.randn({ N, H }), f2.randn({ N, H })
  local dxs = {}
  for k, m in ipairs(mlps) do
    m:forward(x)
    dxs[k] = m:backward(x, dy)
  end
  t.check(mlps[1].fused.gate_up.ok, "separate storages: the MLP still fuses")
  t.check(rel_diff(dxs[1], dxs[2]) < 1e-5, "separate storages: dx as unfused")
  t.check(rel_diff(mlps[1].gate_proj.grads.weight, mlps[2].gate_proj.grads.weight) < 1e-5 and
    rel_diff(mlps[1].up_proj.grads.weight, mlps[2].up_proj.grads.weight) < 1e-5, "separate storages: dW as unfused")
end

-- A few optimizer steps (step.setup: flat parameters, AdamW) agree fused and not.
for _, stages in ipairs { 0, 2 } do
  local desc = desc_of("llama", false)
  local w = math.random(1, 1e6)
  local steppers = {}
  for i, fuse in ipairs { true, false } do
    local m = build(desc, { w = w, stages = stages, flat = false, fuse = fuse })
    steppers[i] = step.setup(m, { lr = 1e-2, weight_decay = 0.1 }, { batch = 2, seq_len = 8, accum = 2, clip = 1 })
  end
  local data = {}
  for i = 1, 6 do data[i] = { batch(2, 8) } end
  local function fill_for(s)
    return function(micro, ids, targets)
      local d = data[2 * s + micro + 1]
      ids:copy(d[1])
      targets:copy(d[2])
    end
  end
  for s = 0, 2 do
    local la = steppers[1]:run(fill_for(s), 1e-2)
    local lb = steppers[2]:run(fill_for(s), 1e-2)
    t.close(la, lb, 1e-4, 0, "W" .. stages .. ": step " .. s .. " loss fused and not")
  end
  local a, b = steppers[1].model:named_parameters(), steppers[2].model:named_parameters()
  local worst = 0
  for i = 1, #a do worst = math.max(worst, rel_diff(a[i].value, b[i].value)) end
  -- Adam divides by the gradient's size, so elements whose gradient is nearly 0 amplify rounding
  -- differences; with W2 an R that lands within rounding of a code boundary can also flip one code.
  t.check(worst < (stages > 0 and 1e-2 or 1e-3), string.format("W%d: the same parameters after 3 steps (worst %.3g)", stages, worst))
  if os.getenv("F2_TEST_VERBOSE") then print(string.format("W%d: parameters after 3 steps, worst %.3g", stages, worst)) end
end

-- On a GPU: fused vs unfused on CUDA, f32 and bf16, plain and converted.
if f2.C.f2_cuda_device_count() > 0 then
  for _, stages in ipairs { 0, 2 } do
    run_case { stages = stages, flat = true, device = "cuda", quantize_all = stages > 0 }
    run_case { stages = stages, flat = true, device = "cuda", dtype = "bf16", quantize_all = stages > 0 }
    run_case { stages = stages, flat = false, device = "cuda", dtype = "bf16", bias = true }
  end
else
  print("(no GPU: the CUDA cases are skipped)")
end

t.done()
