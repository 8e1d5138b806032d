-- test_fairy2_linear.lua — Fairy2Linear and the conversion (FAIRY2I.md section 4): the gradient at R equals
-- the finite-difference gradient of the loss w.r.t. R_hat of a plain Linear holding R_hat (identity STE),
-- grad-input through R_hat, A8 fake-quant, the U/W parameterization, batched quantize_all, conversion of a
-- module tree with its report, diagnostics and packing, and bad input. Fresh random data each run.
local t = dofile("tests/lua/harness.lua")
local f2 = require "fairy2"
local nn = require "fairy2.nn"
local fairy2 = require "fairy2.fairy2"
local C = f2.C

local seed = t.seed()
f2.manual_seed(seed)

local function values(x) -- flat Lua list of a tensor's values
  local out, n = {}, 0
  local function walk(v)
    if type(v) == "table" then
      for _, e in ipairs(v) do walk(e) end
    else
      n = n + 1
      out[n] = v
    end
  end
  walk(x:totable())
  return out
end

local function max_abs_diff(a, b)
  local va, vb, worst = values(a), values(b), 0
  for i = 1, #va do worst = math.max(worst, math.abs(va[i] - vb[i])) end
  return worst, #va == #vb
end

local function same_bits(a, b)
  local worst, same_len = max_abs_diff(a, b)
  return worst == 0 and same_len
end

-- The loss of the tests: L(y) = sum(g * y) + 0.5 sum(y^2), so dL/dy = g + y. In double from y's values.
local function loss_of(y, g)
  local vy, vg, s = values(y), values(g), 0
  for i = 1, #vy do s = s + vg[i] * vy[i] + 0.5 * vy[i] * vy[i] end
  return s
end

local IN, OUT, N = 8, 6, 5

-- ---------------------------------------------------------------- STE gradient check
do
  local layer = nn.Fairy2Linear(IN, OUT, { stages = 2, std = 0.5, seed = seed + 1 })
  f2.check(C.f2_rand_normal(layer.bias.h, seed + 2, 0, 0.1))
  local x = f2.randn({ N, IN })
  local g = f2.randn({ N, OUT })
  local y = layer:forward(x)
  local r_hat = layer.r_hat:clone()
  -- Forward = x R_hat^T + b, with R_hat from an independent call of the quantizer.
  local r_hat2 = fairy2.quantize(layer.weight, { stages = 2 })
  t.check(same_bits(r_hat, r_hat2), "the layer's R_hat is fairy2.quantize(R)")
  local plain = nn.Linear(IN, OUT)
  plain.weight:copy(r_hat)
  plain.bias:copy(layer.bias)
  t.check(same_bits(plain:forward(x), y), "forward = x R_hat^T + b")
  -- Backward with dL/dy = g + y.
  local dy = g + y
  local dx = layer:backward(x, dy)
  local plain_dx = plain:backward(x, dy)
  t.check(same_bits(layer.grads.weight, plain.grads.weight), "grad at R == grad at R_hat of the plain layer (bits)")
  t.check(same_bits(dx, plain_dx), "grad-input goes through R_hat")
  -- Finite differences of L w.r.t. every entry of R_hat in the plain layer (L is quadratic in R_hat:
  -- central differences are exact up to rounding).
  local eps, worst, scale = 1e-2, 0, 0
  local grad = values(layer.grads.weight)
  local wvals = values(r_hat)
  for i = 0, OUT - 1 do
    for j = 0, IN - 1 do
      local k = i * IN + j + 1
      local row = plain.weight[i]
      row[j] = wvals[k] + eps
      local lp = loss_of(plain:forward(x), g)
      row[j] = wvals[k] - eps
      local lm = loss_of(plain:forward(x), g)
      row[j] = wvals[k]
      local fd = (lp - lm) / (2 * eps)
      worst = math.max(worst, math.abs(fd - grad[k]))
      scale = math.max(scale, math.abs(fd))
    end
  end
  t.check(worst <= 2e-3 * scale + 1e-4, string.format("grad at R vs finite differences at R_hat: %g (scale %g)", worst, scale))
  -- Finite differences w.r.t. x for grad-input.
  local xv, dxv, worst_x = values(x), values(dx), 0
  for k = 1, N * IN, 7 do
    local i, j = math.floor((k - 1) / IN), (k - 1) % IN
    local row = x[i]
    row[j] = xv[k] + eps
    local lp = loss_of(plain:forward(x), g)
    row[j] = xv[k] - eps
    local lm = loss_of(plain:forward(x), g)
    row[j] = xv[k]
    worst_x = math.max(worst_x, math.abs((lp - lm) / (2 * eps) - dxv[k]))
  end
  t.check(worst_x <= 1e-3 * scale + 1e-4, "grad-input vs finite differences: " .. worst_x)
  -- A second forward + backward accumulates (backward releases what forward kept: one per forward).
  local before = values(layer.grads.weight)
  layer:forward(x)
  layer:backward(x, dy)
  local after = values(layer.grads.weight)
  local ok = true
  for k = 1, #before do ok = ok and math.abs(after[k] - 2 * before[k]) <= 1e-5 * math.abs(before[k]) + 1e-6 end
  t.check(ok, "gradients accumulate over backward calls")
end

-- ---------------------------------------------------------------- A8
do
  local layer = nn.Fairy2Linear(IN, OUT, { stages = 1, a8 = true, bias = false, std = 0.3, seed = seed + 3 })
  local x = f2.randn({ N, IN }, { std = 2 })
  local y = layer:forward(x)
  local xq = f2.empty_like(layer.saved.x_in):copy(layer.saved.x_in)   -- backward releases saved.x_in
  local xv, qv, on_grid, close = values(x), values(xq), true, true
  for i = 0, N - 1 do
    local absmax = 0
    for j = 1, IN do absmax = math.max(absmax, math.abs(xv[i * IN + j])) end
    local step = absmax / 127
    for j = 1, IN do
      local q = qv[i * IN + j] / step
      on_grid = on_grid and math.abs(q - math.floor(q + 0.5)) < 1e-3 and math.abs(q) <= 127.001
      close = close and math.abs(qv[i * IN + j] - xv[i * IN + j]) <= step / 2 * 1.0001
    end
  end
  t.check(on_grid, "A8: inputs land on the per-row int8 grid absmax/127")
  t.check(close, "A8: within half a step of the input")
  local plain = nn.Linear(IN, OUT, { bias = false })
  plain.weight:copy(layer.r_hat)
  t.check(same_bits(plain:forward(xq), y), "A8: forward = fakequant(x) R_hat^T")
  local dy = f2.randn({ N, OUT })
  local dx = layer:backward(x, dy)
  local plain_dx = plain:backward(xq, dy)
  t.check(same_bits(dx, plain_dx), "A8: identity STE for the input (dx = dy R_hat)")
  t.check(same_bits(layer.grads.weight, plain.grads.weight), "A8: grad at R = dy^T fakequant(x)")
  local off = nn.Fairy2Linear(IN, OUT, { stages = 1, bias = false })
  t.check(off.a8 == false, "A8 is off by default")
end

-- ---------------------------------------------------------------- U/W parameterization
do
  local r_layer = nn.Fairy2Linear(IN, OUT, { stages = 2, std = 0.4, seed = seed + 4 })
  local uw = nn.Fairy2Linear(IN, OUT, { stages = 2, param = "uw" })
  t.check(uw.weight == nil and uw.u_re ~= nil and #uw:named_parameters() == 5, "param = 'uw': U, W planes and bias")
  for _, p in ipairs { "u_re", "u_im", "w_re", "w_im" } do t.check(uw.u_re:shape()[1] == OUT / 2, p) end
  f2.check(C.f2_fairy2_split(uw.u_re.h, uw.u_im.h, uw.w_re.h, uw.w_im.h, r_layer.weight.h))
  uw.bias:copy(r_layer.bias)
  local x, dy = f2.randn({ N, IN }), f2.randn({ N, OUT })
  local y1, y2 = r_layer:forward(x), uw:forward(x)
  t.check(max_abs_diff(y1, y2) < 1e-5, "U/W forward = R forward (same weights)")
  r_layer:backward(x, dy)
  uw:backward(x, dy)
  local planes = {}
  for i = 1, 4 do planes[i] = f2.empty({ OUT / 2, IN / 2 }) end
  f2.check(C.f2_fairy2_split(planes[1].h, planes[2].h, planes[3].h, planes[4].h, r_layer.grads.weight.h))
  for i, p in ipairs { "u_re", "u_im", "w_re", "w_im" } do
    t.check(max_abs_diff(planes[i] * 2, uw.grads[p]) < 1e-5, "U/W gradient of " .. p .. " = 2 split(grad R)")
  end
end

-- ---------------------------------------------------------------- conversion of a module tree
do
  local Box = nn.class("Box")
  local function block(i)
    local b = Box()
    b:register_module("q_proj", nn.Linear(8, 8, { std = 0.3, seed = seed + 10 * i }))
    b:register_module("up_proj", nn.Linear(8, 12, { bias = false, std = 0.3, seed = seed + 10 * i + 1 }))
    b:register_module("odd_proj", nn.Linear(8, 5, { std = 0.3, seed = seed + 10 * i + 2 }))
    return b
  end
  local model = Box()
  model:register_module("embed", nn.Linear(4, 8, { bias = false }))   -- a linear outside the blocks
  local layers = model:register_module("layers", Box())
  layers:register_module("0", block(0))
  layers:register_module("1", block(1))
  model:register_module("lm_head", nn.Linear(8, 10, { bias = false }))
  local q0 = layers["0"].q_proj
  local x = f2.randn({ 3, 8 })
  local y_before = q0:forward(x)
  local warnings = {}
  local log = { write = function(_, s) warnings[#warnings + 1] = s end }
  local report = fairy2.convert(model, { stages = 2, quiet = true, log = log, exclude = { "layers%.1%.up_proj" } })
  t.check(#report.converted == 3 and #report.excluded == 3 and #report.skipped == 2,
    string.format("report: %d converted, %d excluded, %d skipped", #report.converted, #report.excluded, #report.skipped))
  t.check(#warnings == 2 and warnings[1]:find("odd_proj", 1, true), "odd layers warned about: " .. table.concat(warnings))
  t.check(getmetatable(layers["0"].q_proj) == nn.Fairy2Linear and getmetatable(layers["1"].up_proj) == nn.Linear
    and getmetatable(layers["0"].odd_proj) == nn.Linear and getmetatable(model.lm_head) == nn.Linear,
    "the right layers converted")
  t.check(layers["0"].q_proj.weight == q0.weight and layers["0"].children.q_proj == layers["0"].q_proj,
    "the converted layer keeps the weight tensor (R) and sits in the tree")
  t.check(report.params.converted == 64 + 96 + 64 and report.params.total == 32 + 2 * (72 + 96 + 45) + 80,
    "parameter counts " .. report.params.converted .. " / " .. report.params.total)
  local expected_bits = (224 * 2 + 3 * 2 * 4 * 32) / 224
  t.close(report.bits_per_weight.converted, expected_bits, 1e-12, 0, "bits per converted weight")
  t.close(report.bits_per_weight.model, (224 * 2 + 3 * 2 * 4 * 32 + 16 * (report.params.total - 224)) / report.params.total,
    1e-12, 0, "bits per weight over the model")
  local text = fairy2.format_report(report)
  t.check(text:find("converted    3", 1, true) and text:find("lm_head", 1, true), "printed report:\n" .. text)
  local y_after = layers["0"].q_proj:forward(x)
  local plain = nn.Linear(8, 8)
  plain.weight:copy(fairy2.quantize(q0.weight, { stages = 2 }))
  plain.bias:copy(q0.bias)
  t.check(same_bits(plain:forward(x), y_after), "converted layer computes x R_hat^T + b")
  t.check(max_abs_diff(y_before, y_after) > 0, "and that differs from the full-precision layer")
  -- Names of the parameters stay those of the full-precision model.
  local names = {}
  for _, p in ipairs(model:named_parameters()) do names[p.name] = true end
  t.check(names["layers.0.q_proj.weight"] and names["layers.0.q_proj.bias"], "parameter names unchanged")

  -- quantize_all: the next forward of each layer uses the batched R_hat, the same bits.
  local converted = fairy2.layers(model)
  t.check(#converted == 3, "fairy2.layers finds the converted layers")
  fairy2.quantize_all(model)
  for _, e in ipairs(converted) do t.check(e.module.r_hat_ready, e.name .. " has a batched R_hat") end
  t.check(same_bits(layers["0"].q_proj:forward(x), y_after), "forward after quantize_all: same output")
  t.check(not layers["0"].q_proj.r_hat_ready, "the batched R_hat is used once")

  -- Diagnostics: per layer and stage, errors shrink with the stages.
  local rows = fairy2.model_stats(model)
  t.check(#rows == 6, "2 stages x 3 layers of stats")
  for i = 1, #rows, 2 do
    t.check(rows[i + 1].rel_error < rows[i].rel_error and rows[i].rel_error < 1, rows[i].name .. ": stage 2 error < stage 1")
    t.check(rows[i].real_share_u >= 0 and rows[i].real_share_u <= 1 and rows[i].scales[1] > 0, rows[i].name .. " stats")
  end
  local table_text = fairy2.format_stats(rows)
  t.check(table_text:find("layers.0.q_proj", 1, true) and select(2, table_text:gsub("\n", "")) == 7, table_text)
  -- Rel. error of stage 2 agrees with R_hat.
  local layer = layers["0"].q_proj
  local rh = layer:quantize("f32")
  local num, den = 0, 0
  local rv, hv = values(layer.weight), values(rh)
  for i = 1, #rv do num, den = num + (rv[i] - hv[i]) ^ 2, den + rv[i] ^ 2 end
  t.close(rows[2].rel_error, math.sqrt(num / den), 1e-6, 0, "stats rel_error = ||R - R_hat|| / ||R||")

  -- Packing: codes 2 bits each; dequantizing the packed layer gives R_hat's bits.
  local p = fairy2.pack(layer)
  t.check(p.packed:numel() == 2 * 2 * 4 * 1 and p.packed:dtype() == "u8", "packed size: T*2*n*ceil(m/4) bytes")
  t.check(same_bits(fairy2.dequantize(p), rh), "dequantize(pack(layer)) = R_hat")
  local _, _, codes = fairy2.quantize(layer.weight, layer.cfg)
  t.check(same_bits(fairy2.unpack(p), codes), "unpack(pack) = codes")
end

-- ---------------------------------------------------------------- converting a Llama-family model
do
  local llama = require "fairy2.models.llama"
  local desc = { arch = "llama", vocab_size = 23, hidden = 12, layers = 2, heads = 3, kv_heads = 1, head_dim = 4,
    intermediate = 10, rope_theta = 10000, rms_eps = 1e-5, tie_embeddings = false, attention_bias = false,
    mlp_bias = false, qk_norm = false }
  local model = llama.build(desc)
  llama.init_random(model, seed)
  local ids = f2.empty({ 2, 5 }, { dtype = "i32" })
  local targets = f2.empty({ 2, 5 }, { dtype = "i32" })
  for i = 0, 1 do
    for j = 0, 4 do ids[i][j], targets[i][j] = (i * 7 + j * 3) % 23, (i * 5 + j * 11) % 23 end
  end
  local loss_fp = model:loss(ids, targets)
  local report = fairy2.convert(model, { stages = 2, quiet = true })
  t.check(#report.converted == 14 and #report.excluded == 1 and report.excluded[1].name == "lm_head" and #report.skipped == 0,
    string.format("llama: %d converted, %d excluded (%s)", #report.converted, #report.excluded,
      report.excluded[1] and report.excluded[1].name or "-"))
  t.check(getmetatable(model.model.layers["1"].mlp.down_proj) == nn.Fairy2Linear, "llama: down_proj converted")
  model:zero_grad()
  local loss_q = model:loss(ids, targets)
  model:backward()
  t.check(loss_q == loss_q and loss_q > 0 and loss_q ~= loss_fp, "llama: quantized loss " .. loss_q .. " vs " .. loss_fp)
  local g = model.model.layers["0"].self_attn.q_proj.grads.weight
  t.check(g:abs():max() > 0, "llama: the gradient reaches R")
end

-- ---------------------------------------------------------------- the quantstats tool on a checkpoint
do
  local st = require "fairy2.safetensors"
  local tool = require "fairy2.tools.quantstats"
  local path = os.tmpname()
  local a, odd, other = f2.randn({ 6, 8 }, { std = 0.1 }), f2.randn({ 5, 8 }), f2.randn({ 4, 4 })
  local saved, err = st.save(path, { { "model.layers.0.mlp.up_proj.weight", a }, { "model.layers.0.x_proj.weight", odd },
    { "model.embed_tokens.weight", other } })
  t.check(saved, "saved a test checkpoint: " .. tostring(err))
  local printed = {}
  local rc = tool.main({ path, "--stages", "3" }, function(s) printed[#printed + 1] = tostring(s) end)
  local text = table.concat(printed, "\n")
  t.check(rc == 0, "quantstats ran: " .. text)
  t.check(text:find("model.layers.0.mlp.up_proj.weight", 1, true) and not text:find("embed_tokens", 1, true)
    and text:find("skipped (odd dimension): model.layers.0.x_proj.weight", 1, true), "quantstats table:\n" .. text)
  local rel = fairy2.stats(a, { stages = 3 })
  t.check(text:find(string.format("%9.4f", rel[3].rel_error), 1, true), "quantstats shows the stage-3 error")
  os.remove(path)
  t.check(tool.main({ "--bogus" }) == 2, "quantstats: bad option -> status 2")
end

-- ---------------------------------------------------------------- bad input
do
  t.raises(function() nn.Fairy2Linear(5, 4) end, "odd dimension")
  t.raises(function() nn.Fairy2Linear(4, 4, { stages = 0 }) end, "T >= 1")
  t.raises(function() nn.Fairy2Linear(4, 4, { param = "x" }) end, "param must be")
  t.raises(function() fairy2.config({ granularity = "diagonal" }) end, "granularity")
  t.raises(function() fairy2.config({ granularity = "group" }) end, "group_size")
  local layer = nn.Fairy2Linear(4, 4, { std = 1, seed = 1 })
  layer.weight[1][2] = 0 / 0
  t.raises(function() layer:forward(f2.randn({ 2, 4 })) end, "non-finite value at [1, 2]")
  t.raises(function() layer:forward(f2.randn({ 2, 3 })) end, "last dim")
  local unchecked = nn.Fairy2Linear(4, 4, { std = 1, seed = 1, check_finite = false })
  unchecked.weight[0][0] = 1 / 0
  local y = unchecked:forward(f2.randn({ 2, 4 }))
  local v = values(y)
  t.check(v[1] ~= v[1], "check_finite = false: non-finite R poisons the output (NaN)")
  t.raises(function() fairy2.convert({}) end, "nn module")
end

t.done()
