-- test_resume.lua — exact resume: a tiny W2 QAT run of 6 steps straight, and the same run stopped
-- after step 3 (train.stop_at_step) then resumed to 6, give bit-identical losses, held-out losses,
-- weights and optimizer state. Also: the checkpoint layout and state.json, incomplete or damaged
-- checkpoints skipped with a warning (never loaded), and a changed recipe refused.
local t = dofile("tests/lua/harness.lua")
local fx = dofile("tests/lua/train_fixture.lua")
local train = require "fairy2.train"
local checkpoint = require "fairy2.checkpoint"
local data = require "fairy2.data"
local safetensors = require "fairy2.safetensors"

local seed = t.seed()
local dir = fx.fresh(seed)
local sink = fx.sink

local function bits(x) return string.format("%a", x) end   -- exact: hex float

-- Evals at step 3 and 6: the stopped run evaluates at 3 before it saves, the resumed one starts without,
-- so an eval that left state behind would show.
local over = { train = { steps = 6, accum = 2, eval_every = 3, checkpoint_every = 0 }, data = { seed = seed % 1000 } }
local function cfg_for(out, extra)
  local c = fx.recipe(dir, over)
  c.out = dir .. "/" .. out
  for k, v in pairs(extra or {}) do c.train[k] = v end
  return c
end

-- Straight.
local a = train.fit(cfg_for("straight"), { stream = sink() })
t.check(a.status == 0 and a.steps_done == 6, "the straight run finishes its 6 steps")

-- Stopped after 3, resumed.
local out1 = sink()
local b1 = train.fit(cfg_for("resumed", { stop_at_step = 3 }), { stream = out1 })
t.check(b1.status == 0 and b1.steps_done == 3, "stop_at_step stops after step 3")
t.check(out1:all():find("stopped after step 3", 1, true), "says it stopped")
local ck3 = dir .. "/resumed/checkpoints/step_000003"
t.check(io.open(ck3 .. "/DONE") ~= nil, "a complete checkpoint at step 3")
local out2 = sink()
local b2 = train.fit(cfg_for("resumed"), { stream = out2 })
t.check(out2:all():find("resuming from " .. ck3, 1, true), "the second run resumes from step 3")
t.check(b2.steps_done == 6, "the resumed run reaches step 6")
t.check(b2.losses[3] == nil and b2.losses[4] ~= nil, "the resumed run starts at step 4")

local same = true
for step = 1, 6 do
  local resumed = step <= 3 and b1.losses[step] or b2.losses[step]
  if bits(a.losses[step]) ~= bits(resumed) then
    same = false
    print(string.format("step %d: straight %s, resumed %s", step, bits(a.losses[step]), bits(resumed)))
  end
end
t.check(same, "every step's loss is bit-identical to the straight run")
print(string.format("losses: %s ... %s (step 6: %s)", a.losses[1], a.losses[6], bits(a.losses[6])))
t.check(a.final_eval and b2.final_eval and bits(a.final_eval.loss) == bits(b2.final_eval.loss),
  "the final held-out loss is bit-identical")
-- (the step-2 eval came back through state.json: JSON keeps 14 digits)
t.check(#b2.evals == 2 and b2.evals[1].step == 3 and math.abs(b2.evals[1].loss - a.evals[1].loss) < 1e-12 * a.evals[1].loss,
  "the resumed run carries the eval of step 3 (from the checkpoint)")

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end
for _, file in ipairs { "model.safetensors", "optimizer.safetensors" } do
  local x = read(dir .. "/straight/checkpoints/step_000006/" .. file)
  local y = read(dir .. "/resumed/checkpoints/step_000006/" .. file)
  t.check(x ~= nil and x == y, file .. " of step 6 is byte-identical")
end

-- The same with U/W planes as the trained parameters (quant.param = "uw"): they travel in
-- optimizer.safetensors, R rebuilt from them under the HF name in model.safetensors.
do
  local function uw(out, extra)
    local c = cfg_for(out, extra)
    c.quant.param, c.train.steps, c.train.eval_every = "uw", 4, 0
    return c
  end
  local s = train.fit(uw("uw_straight"), { stream = sink() })
  train.fit(uw("uw_resumed", { stop_at_step = 2 }), { stream = sink() })
  local r = train.fit(uw("uw_resumed"), { stream = sink() })
  t.check(bits(s.losses[3]) == bits(r.losses[3]) and bits(s.losses[4]) == bits(r.losses[4]),
    "param=uw: the resumed losses are bit-identical too")
  local mu = safetensors.load(dir .. "/uw_resumed/checkpoints/step_000004/model.safetensors")
  local ou = safetensors.load(dir .. "/uw_resumed/checkpoints/step_000004/optimizer.safetensors")
  t.check(mu.tensors["model.layers.0.mlp.up_proj.weight"] ~= nil and mu.tensors["model.layers.0.mlp.up_proj.u_re"] == nil
    and ou.tensors["model.layers.0.mlp.up_proj.u_re"] ~= nil and ou.tensors["model.layers.0.mlp.up_proj.w_im.exp_avg"] ~= nil,
    "param=uw: R under the HF name in model.safetensors, the planes and their moments in optimizer.safetensors")
end

-- The layout and state.json.
local st = data.read_json(dir .. "/straight/checkpoints/step_000006/state.json")
t.check(st.step == 6 and st.optimizer_step == 6 and st.tokens == 6 * 2 * 2 * 16, "state.json: step, optimizer step, tokens")
t.check(st.data.seed == seed % 1000 and st.data.next_step == 6 and st.data.seq_len == 16, "state.json: data position")
t.check(st.recipe.model == dir .. "/model" and st.recipe.quant.stages == 2 and st.recipe.validate == nil,
  "state.json: the resolved recipe, without functions")
t.check(st.model_desc.hidden == 16 and st.model_desc.hf.hidden_size == 16, "state.json: the model description")
t.check(st.quant.stages == 2 and #st.quant.converted == 14, "state.json: quant config and the 14 converted layers")
t.check(#st.metrics.baselines == 2 and st.metrics.baselines[1].label == "full precision", "state.json: baselines")
local m = safetensors.load(dir .. "/straight/checkpoints/step_000006/model.safetensors")
local o = safetensors.load(dir .. "/straight/checkpoints/step_000006/optimizer.safetensors")
t.check(m.tensors["model.layers.0.self_attn.q_proj.weight"] ~= nil and m.tensors["model.embed_tokens.weight"] ~= nil,
  "model.safetensors holds the master weights under HF names")
t.check(m.tensors["model.layers.0.self_attn.q_proj.weight"]:dtype() == "f32", "master weights are fp32")
t.check(o.tensors["model.layers.1.mlp.down_proj.weight.exp_avg"] ~= nil and
  o.tensors["model.norm.weight.exp_avg_sq"] ~= nil, "optimizer.safetensors holds exp_avg and exp_avg_sq")
t.check(#m.names == 1 + 2 * 9 + 1, "model.safetensors: every parameter, no more")

-- Damaged and unfinished checkpoints are skipped with a warning; the newest good one is loaded.
local root = dir .. "/resumed/checkpoints"
os.execute("cp -r '" .. root .. "/step_000006' '" .. root .. "/step_000009'")
local f = io.open(root .. "/step_000009/model.safetensors", "r+b")
f:seek("set", 20)
f:write("garbage!")   -- same size, a damaged header
f:close()
os.execute("cp -r '" .. root .. "/step_000006' '" .. root .. "/step_000008'")
local whole = read(root .. "/step_000008/optimizer.safetensors")
f = io.open(root .. "/step_000008/optimizer.safetensors", "wb")
f:write(whole:sub(1, #whole - 100))   -- truncated
f:close()
os.execute("cp -r '" .. root .. "/step_000006' '" .. root .. "/step_000007'")
os.remove(root .. "/step_000007/DONE")   -- the marker never written
os.execute("mkdir -p '" .. root .. "/step_000010.tmp'")   -- a write killed midway
local warnings = {}
local ck = checkpoint.latest(root, function(msg) warnings[#warnings + 1] = msg end)
local text = table.concat(warnings, "\n")
print(text)
t.check(ck and ck.step == 6, "the newest good checkpoint (6) is the one loaded")
t.check(text:find("step_000010.tmp: an unfinished write", 1, true), "warns about the .tmp directory")
t.check(text:find("step_000007: no DONE marker", 1, true), "warns about the missing marker")
t.check(text:find("step_000008: optimizer.safetensors has", 1, true) and text:find("truncated", 1, true),
  "warns about the truncated file")
t.check(text:find("step_000009: ", 1, true), "warns about the damaged header")
t.check(#warnings == 4, "one warning each for 10, 9, 8 and 7")

-- Retention: keep the newest 2 complete ones; unfinished ones older than the newest complete go.
local removed = checkpoint.prune(root, 2)
local names = {}
for _, c in ipairs(checkpoint.list(root)) do names[#names + 1] = c.name end
t.check(table.concat(names, ",") == "step_000010.tmp,step_000009,step_000008",
  "prune keeps the 2 newest complete ones and a newer unfinished write: " .. table.concat(names, ","))
t.check(#removed == 3, "prune removed 7 (no DONE), 6 and 3")

-- A changed recipe is refused, naming what changed.
local changed = cfg_for("straight")
changed.train.batch = 3
t.raises(function() train.fit(changed, { stream = sink() }) end, "train.batch (2 -> 3)", "resume refuses another batch size")
-- train.resume=false starts over.
local fresh = cfg_for("straight")
fresh.train.resume, fresh.train.steps = false, 3
local r = train.fit(fresh, { stream = sink() })
t.check(r.steps_done == 3 and r.losses[1] ~= nil and bits(r.losses[1]) == bits(a.losses[1]),
  "train.resume=false starts from step 1")

os.execute("rm -rf '" .. dir .. "'")
t.done()
