-- test_gpu_fairy2_linear.lua — Fairy2Linear on a GPU against the same layer on the CPU: R_hat bits (f32
-- and bf16), outputs and gradients within GEMM rounding, quantize_all over a converted tree, the A8 and
-- U/W options, non-finite R. Skips without a GPU.
local t = dofile("tests/lua/harness.lua")
t.require_gpu()
local f2 = require "fairy2"
local nn = require "fairy2.nn"
local fairy2 = require "fairy2.fairy2"

local seed = t.seed()
f2.manual_seed(seed)

local function max_rel(a, b)   -- max |a - b| / max |b|
  local d = (a:float():cpu() - b:float():cpu()):abs():max()
  return d / math.max(b:float():cpu():abs():max(), 1e-30)
end

local function same(a, b) return (a:float():cpu() - b:float():cpu()):abs():max() == 0 end

for _, opts in ipairs { { stages = 2 }, { stages = 3, granularity = "row" }, { stages = 1, granularity = "group", group_size = 32 },
  { stages = 2, a8 = true }, { stages = 2, param = "uw" } } do
  local label = string.format("T=%d %s%s%s", opts.stages, opts.granularity or "tensor", opts.a8 and " a8" or "",
    opts.param == "uw" and " uw" or "")
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.std, o.seed = 0.05, seed
  local cpu = nn.Fairy2Linear(576, 192, o)
  o.device = "cuda"
  local gpu = nn.Fairy2Linear(576, 192, o)
  for _, p in ipairs(cpu:named_parameters()) do gpu.params[p.name]:copy(p.value) end
  local x = f2.randn({ 64, 576 })
  local gx = x:cuda()
  local y, gy = cpu:forward(x), gpu:forward(gx)
  t.check(same(cpu.r_hat, gpu.r_hat), label .. ": f32 R_hat bits")
  t.check(same(cpu.scales, gpu.scales), label .. ": scales bits")
  t.check(max_rel(gy, y) < 1e-5, label .. ": output " .. max_rel(gy, y))
  local dy = f2.randn({ 64, 192 })
  local dx, gdx = cpu:backward(x, dy), gpu:backward(gx, dy:cuda())
  t.check(max_rel(gdx, dx) < 1e-5, label .. ": grad-input " .. max_rel(gdx, dx))
  for _, p in ipairs(cpu:named_parameters()) do
    local g = gpu.grads[p.local_name]
    t.check(max_rel(g, p.grad) < 1e-4, label .. ": grad of " .. p.name .. " " .. max_rel(g, p.grad))
  end
  -- bf16 activations: a bf16 R_hat, RNE of the f32 one.
  gpu:forward(gx:bf16())
  t.check(gpu.r_hat:dtype() == "bf16" and same(gpu.r_hat, cpu.r_hat:bf16()), label .. ": bf16 R_hat = RNE(f32 R_hat)")
end

-- quantize_all over a converted GPU tree: the same R_hat as one layer at a time.
do
  local Box = nn.class("Box")
  local model = Box()
  local layers = model:register_module("layers", Box())
  local shapes = { { 576, 576 }, { 576, 192 }, { 576, 1536 }, { 1536, 576 } }
  for i, s in ipairs(shapes) do
    local block = layers:register_module(tostring(i), Box())
    block:register_module("proj", nn.Linear(s[1], s[2], { device = "cuda", std = 0.02, seed = seed + i }))
  end
  local report = fairy2.convert(model, { stages = 2, quiet = true })
  t.check(#report.converted == 4, "converted 4 GPU layers")
  fairy2.quantize_all(model, { dtype = "bf16" })
  for i = 1, #shapes do
    local m = layers[tostring(i)].proj
    t.check(m.r_hat_ready and m.r_hat:device() == "cuda", "layer " .. i .. " batched")
    local batched = m.r_hat:clone()
    t.check(same(m:quantize("bf16"), batched), "layer " .. i .. ": batched R_hat = single R_hat")
  end
  local bad = layers["1"].proj
  bad.weight[3][7] = 0 / 0
  t.raises(function() bad:forward(f2.randn({ 2, 576 }, { device = "cuda" })) end, "non-finite value at [3, 7]")
end

t.done()
