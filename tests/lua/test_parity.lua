-- test_parity.lua — fairy2's CPU Llama/Qwen3 against transformers: the fixtures written by
-- tests/python/make_parity_fixtures.py (tiny random-weight models, fp32, one batch) hold HF's weights,
-- inputs, logits, loss and every parameter gradient; fairy2 loads the weights, runs the batch and must
-- agree within 1e-4 relative (max|a-b| / max|b| per tensor). Also: parameter names equal HF's state-dict
-- keys, config.json -> description as the generator saw it, rope inv_freq (llama3 scaling) as HF's.
local t = dofile("tests/lua/harness.lua")
local ffi = require "ffi"
local cjson = require "cjson"
local f2 = require "fairy2"
local config = require "fairy2.config"
local llama = require "fairy2.models.llama"
local safetensors = require "fairy2.safetensors"

local FIXTURES = { "llama_tied", "llama3_untied", "qwen3_tied" }
local SPECIAL = { input_ids = true, targets = true, logits = true, loss = true, ["rope.inv_freq"] = true }

-- A loaded tensor as a fairy2 tensor (loaders may hand out raw f2_tensor*: wrap a view of it).
local function tensor(x)
  if f2.is_tensor(x) then return x end
  return f2.from_handle(f2.C.f2_tensor_view(x))
end

-- max|a - b| / max|b| over two float tensors of one shape (read on the CPU in double).
local function rel_err(a, b)
  local sa, sb = table.concat(a:shape(), "x"), table.concat(b:shape(), "x")
  if sa ~= sb then return math.huge, "shape " .. sa .. " vs " .. sb end
  a, b = a:cpu():float():contiguous(), b:cpu():float():contiguous()
  local pa, pb = ffi.cast("const float *", a.h.data), ffi.cast("const float *", b.h.data)
  local num, den = 0, 0
  for i = 0, a:numel() - 1 do
    num = math.max(num, math.abs(pa[i] - pb[i]))
    den = math.max(den, math.abs(pb[i]))
  end
  return num / math.max(den, 1e-30)
end

for _, name in ipairs(FIXTURES) do
  local path = "tests/fixtures/" .. name .. ".safetensors"
  local st = assert(safetensors.load(path))
  local fx = {}
  for n, x in pairs(st.tensors) do fx[n] = tensor(x) end
  local desc = config.from_json(st.metadata.config)

  -- The description fairy2 derives from config.json is the one the generator derived.
  for k, v in pairs(cjson.decode(st.metadata.desc)) do
    local mine = desc[k]
    if type(v) == "table" then
      for kk, vv in pairs(v) do t.check(mine and mine[kk] == vv, name .. ": desc." .. k .. "." .. kk) end
    elseif v ~= cjson.null then
      t.check(mine == v, name .. ": desc." .. k .. " = " .. tostring(mine) .. ", generator says " .. tostring(v))
    end
  end

  local model = llama.build(desc)
  local state, nweights = {}, 0
  for _, n in ipairs(st.names) do
    if not SPECIAL[n] and not n:match("^grad%.") then
      state[n] = fx[n]
      nweights = nweights + 1
    end
  end
  llama.load_state(model, state)

  -- Parameter names are HF's keys: the same set, in both directions.
  local params = model:named_parameters()
  t.check(#params == nweights, name .. ": " .. #params .. " parameters, HF has " .. nweights)
  for _, p in ipairs(params) do t.check(state[p.name] ~= nil, name .. ": parameter " .. p.name .. " not in HF's state dict") end

  t.check(rel_err(model.model.rotary_emb.inv_freq, fx["rope.inv_freq"]) < 1e-6, name .. ": rope inv_freq")

  local e = rel_err(model:forward(fx.input_ids), fx.logits)
  model:zero_grad()   -- before loss(): the fused LM head + loss accumulates the head's gradient there
  local loss = model:loss(fx.input_ids, fx.targets)
  t.close(loss, fx.loss:item(), 1e-5, 0, name .. ": loss")
  t.check(e < 1e-4, string.format("%s: logits rel err %.3g", name, e))
  model:backward()
  local worst, worst_name = 0, ""
  for _, p in ipairs(params) do
    local g = fx["grad." .. p.name]
    if t.check(g ~= nil, name .. ": HF gradient of " .. p.name) then
      local err = rel_err(p.grad, g)
      t.check(err < 1e-4, string.format("%s: gradient of %s rel err %.3g", name, p.name, err))
      if err > worst then worst, worst_name = err, p.name end
    end
  end
  print(string.format("%s: loss %.6f (HF %.6f), logits rel err %.2g, worst gradient rel err %.2g (%s)", name, loss,
    fx.loss:item(), e, worst, worst_name))
end

-- load_state refuses mismatches with the name in the message.
do
  local st = assert(safetensors.load("tests/fixtures/llama_tied.safetensors"))
  local desc = config.from_json(st.metadata.config)
  local model = llama.build(desc)
  local state = {}
  for _, p in ipairs(model:named_parameters()) do state[p.name] = st.tensors[p.name] end
  state["model.norm.weight"] = nil
  t.raises(function() llama.load_state(model, state) end, "model.norm.weight is missing")
  state["model.norm.weight"] = st.tensors["model.layers.0.self_attn.q_proj.weight"]
  t.raises(function() llama.load_state(model, state) end, "model.norm.weight has shape")
  state["model.norm.weight"] = st.tensors["model.norm.weight"]
  state["model.layers.9.mlp.up_proj.weight"] = st.tensors["model.norm.weight"]
  t.raises(function() llama.load_state(model, state) end, "model.layers.9.mlp.up_proj.weight")
  t.check(llama.load_state(model, state, { strict = false }) == model, "strict = false ignores unknown names")
end

t.done()
