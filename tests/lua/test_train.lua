-- test_train.lua — the training loop on a tiny random model: non-finite steps skipped (weights
-- untouched) and a run aborted after train.max_bad_steps in a row, gradient accumulation (2
-- micro-batches of B == one batch of 2B), the budget by tokens or steps, the schedule as the run applies
-- it, full-precision fine-tuning (quant.stages=0), the log (progress bar only on a terminal), the SVG
-- plot, the signal watch, and recipe errors through the CLI (unknown keys, bad values, hf: sources).
local t = dofile("tests/lua/harness.lua")
local ffi = require "ffi"
local fx = dofile("tests/lua/train_fixture.lua")
local f2 = require "fairy2"
local train = require "fairy2.train"
local log = require "fairy2.log"
local plot = require "fairy2.plot"
local safetensors = require "fairy2.safetensors"

local seed = t.seed()
local dir = fx.fresh(seed)
local sink = fx.sink

local n_runs = 0
local function run(over, expect_error)
  n_runs = n_runs + 1
  local cfg = fx.recipe(dir, over)
  cfg.out = dir .. "/run" .. n_runs
  local out = sink()
  if expect_error then
    local ok, err = pcall(train.fit, cfg, { stream = out })
    return ok, err, out:all(), cfg.out
  end
  local r = train.fit(cfg, { stream = out })
  return r, out:all(), cfg.out
end

local function weights(out, step)
  return safetensors.load(string.format("%s/checkpoints/step_%06d/model.safetensors", out, step))
end

-- Largest |a - b| over |b| across the tensors of two checkpoints (0 = identical).
local function max_rel_diff(a, b)
  local worst = 0
  for _, name in ipairs(a.names) do
    local x, y = a.tensors[name], b.tensors[name]
    local d = (x - y):abs():max()   -- a whole-tensor reduction gives a number
    local s = y:abs():max()
    worst = math.max(worst, s > 0 and d / s or d)
  end
  return worst
end

local constant = { optim = { schedule = "constant", warmup = 0, decay = 0 }, eval = { baselines = false } }
local function with(over)
  local recipe = require "fairy2.recipe"
  return recipe.merge(constant, over)
end

-- ---------------------------------------------------------------- non-finite steps
do
  local r, text, out = run(with { train = { steps = 2 }, debug = { nan_steps = { 2 } } })
  t.check(r.skipped == 1 and r.losses[2] ~= r.losses[2] and r.losses[1] == r.losses[1], "step 2 is skipped, step 1 is not")
  t.check(text:find("SKIPPED (non-finite)", 1, true), "the step line says SKIPPED")
  local one = select(3, run(with { train = { steps = 1 } }))
  t.check(max_rel_diff(weights(out, 2), weights(one, 1)) == 0, "a skipped step leaves the weights as they were")
  local st = require("fairy2.data").read_json(out .. "/checkpoints/step_000002/state.json")
  t.check(st.optimizer_step == 1 and st.bad_steps == 1, "state.json: 1 optimizer update, 1 bad step")
  t.check(st.metrics.last.loss == "nan", "state.json stores NaN as a string")

  local ok, err = run(with { train = { steps = 8, max_bad_steps = 3 }, debug = { nan_steps = { 2, 4, 5, 6, 7 } } }, true)
  t.check(not ok and tostring(err):find("training aborted at step 6: 3 steps in a row", 1, true),
    "3 bad steps in a row abort the run: " .. tostring(err))
end

-- ---------------------------------------------------------------- gradient accumulation
do
  local a, _, out_a = run(with { train = { steps = 3, batch = 2, accum = 2 } })
  local b, _, out_b = run(with { train = { steps = 3, batch = 4, accum = 1 } })
  local worst = 0
  for step = 1, 3 do worst = math.max(worst, math.abs(a.losses[step] - b.losses[step]) / b.losses[step]) end
  print(string.format("accumulation: losses differ by %.2e relative, weights after 3 steps by %.2e", worst,
    max_rel_diff(weights(out_a, 3), weights(out_b, 3))))
  t.check(worst < 1e-5, "2 micro-batches of 2 give the loss of one batch of 4")
  t.check(max_rel_diff(weights(out_a, 3), weights(out_b, 3)) < 1e-4, "... and the same weights after 3 steps")
  local c = run(with { train = { steps = 1, batch = 2, accum = 1 } })
  t.check(math.abs(c.losses[1] - a.losses[1]) > 1e-6, "(a batch of 2 alone differs: the test can tell)")
end

-- ---------------------------------------------------------------- budget and schedule
do
  local r, text = run(with { train = { steps = 0, tokens = 200 } })   -- 32 tokens per step: 7 steps
  t.check(r.total_steps == 7 and r.steps_done == 7, "train.tokens=200 at 32 tokens/step is 7 steps")
  t.check(text:find("budget: 7 steps x 32 tokens = 224 tokens", 1, true), "the log states the budget")
  r = run(with { train = { steps = 5, tokens = 1e9 } })
  t.check(r.total_steps == 5, "train.steps wins over train.tokens")
  local recs, out = {}, nil
  r, text, out = run { train = { steps = 10 }, optim = { schedule = "wsd", lr = 0.01, warmup = 2, decay = 0.4, min_lr = 0.001 },
    eval = { baselines = false } }
  for line in io.lines(out .. "/metrics.jsonl") do
    local rec = require("cjson").decode(line)
    if rec.kind == "train" then recs[rec.step] = rec.lr end
  end
  -- by hand: warmup 2 steps (0.005, 0.01), stable to step 6, then linear to 0.001 over steps 7..10
  local want = { 0.005, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01 - 0.009 * 0.25, 0.01 - 0.009 * 0.5, 0.01 - 0.009 * 0.75, 0.001 }
  local ok = true
  for step = 1, 10 do ok = ok and math.abs(recs[step] - want[step]) < 1e-12 end
  t.check(ok, "the run applies the WSD schedule per optimizer step, by hand")
  local err = select(2, run({ train = { steps = 4 }, optim = { warmup = 2, decay = 3 } }, true))
  t.check(tostring(err):find("exceed the 4 steps", 1, true), "warmup + decay longer than the run is an error")
end

-- ---------------------------------------------------------------- full precision, evals, plot
do
  local r, text, out = run { quant = { stages = 0 }, train = { steps = 4, eval_every = 2 } }
  t.check(#r.baselines == 1 and r.baselines[1].label == "full precision", "stages=0: one baseline, no PTQ")
  t.check(not text:find("fairy2 convert", 1, true), "stages=0 converts nothing")
  t.check(#r.evals == 2 and r.evals[1].step == 2 and r.evals[2].step == 4, "evals at steps 2 and 4")
  t.check(r.final_eval.ppl > 1 and math.abs(math.log(r.final_eval.ppl) - r.final_eval.loss) < 1e-9, "ppl = exp(loss)")
  local svg = io.open(out .. "/loss.svg"):read("*a")
  t.check(svg:match("^<svg") and svg:match("</svg>\n$"), "loss.svg is an SVG document")
  local _, circles = svg:gsub("<circle", "")
  t.check(circles == 2, "one marker per eval")
  t.check(svg:find("full precision", 1, true), "the baseline is in the legend")
  t.check(r.losses[4] < r.losses[1] + 5, "training runs")

  -- a capped eval scores at most max_tokens per source
  r = run(with { train = { steps = 1 }, eval = { max_tokens = 40, sources = { "beta" } } })
  t.check(r.final_eval.tokens >= 40 and r.final_eval.tokens <= 40 + 2 * 16, "eval.max_tokens caps the tokens scored")
  local ok, err = run(with { train = { steps = 1 }, eval = { sources = { "gamma" } } }, true)
  t.check(not ok and tostring(err):find("gamma", 1, true), "an unknown eval source is an error naming it")
  -- data.sources: training on one source only
  r, text = run(with { train = { steps = 1 }, data = { sources = { "beta:2" } } })
  t.check(text:find("train sources beta (2)", 1, true), "data.sources picks and weights the sources")
end

-- ---------------------------------------------------------------- log, plot, signals
do
  local s = sink()
  local L = log.new { stream = s, tty = true, total_steps = 4 }
  for step = 1, 2 do L:step { step = step, loss = 1, grad_norm = 1, lr = 1e-3, ms = 10, tokens = 100, flops = 1e9 } end
  L:close()
  local text = s:all()
  t.check(text:find("\r\27[K", 1, true) and text:find("[###############---------------]  50% step 2/4", 1, true),
    "a terminal gets a progress bar, cleared before each line")
  s = sink()
  L = log.new { stream = s, tty = false, total_steps = 4, peak_flops = 1e12 }
  L:step { step = 1, loss = 2.5, grad_norm = 0.5, lr = 1e-4, ms = 100, tokens = 1000, flops = 1e10 }
  L:close()
  text = s:all()
  t.check(not text:find("\27", 1, true), "no escape codes when the output is not a terminal")
  t.check(text:find("step 1/4 | loss 2.5000 | grad norm    0.500 | lr 1.000e-04 |     100 ms | 10,000 tok/s | MFU 10.00% | ETA 0s", 1, true),
    "the step line: " .. text)
  t.check(log.thousands(1234567) == "1,234,567" and log.duration(3725) == "1h02m" and log.duration(95) == "1m35s",
    "number and duration formats")

  ffi.cdef "int f2_test_raise(int sig) __asm__(\"raise\");"
  f2.check(f2.C.f2_signal_watch())
  t.check(f2.C.f2_signal_pending() == 0, "nothing pending after watch")
  ffi.C.f2_test_raise(15)
  t.check(f2.C.f2_signal_pending() == 15, "SIGTERM is recorded, not fatal, while watching")
  f2.check(f2.C.f2_signal_unwatch())
  t.check(f2.C.f2_signal_pending() == 0, "unwatch clears it")
end

-- ---------------------------------------------------------------- the CLI: recipe errors
do
  local bin = os.getenv("F2_BIN") or "build/fairy2"
  local function cli(args)
    local p = io.popen(bin .. " " .. args .. " 2>&1; echo \"rc=$?\"")
    local text = p:read("*a")
    p:close()
    return text, tonumber(text:match("rc=(%d+)%s*$"))
  end
  local text, rc = cli("recipes/smollm2_w2.lua train.stepz=3")
  t.check(rc == 2 and text:find("unknown key 'train.stepz' (did you mean 'train.steps'?)", 1, true), "unknown key: " .. text)
  text, rc = cli("recipes/smollm2_w2.lua train.steps=many")
  t.check(rc == 2 and text:find("expected a number, got 'many'", 1, true), "a bad number: " .. text)
  text, rc = cli("recipes/smollm2_w2.lua quant.stages=-1")
  t.check(rc == 1 and text:find("recipe: quant.stages must be an integer >= 0", 1, true), "a bad value: " .. text)
  text, rc = cli("recipes/smollm2_w1.lua optim.schedule=linear")
  t.check(rc == 1 and text:find("optim.schedule must be 'wsd', 'cosine' or 'constant', got linear", 1, true), "a bad choice: " .. text)
  text, rc = cli("recipes/smollm2_fp.lua quant=2")
  t.check(rc == 2 and text:find("'quant' is a table of settings", 1, true), "a table set to a scalar: " .. text)
  text, rc = cli("recipes/qwen3_4b_w2.lua out=" .. dir .. "/qwen")
  t.check(rc == 1 and text:find("hf:Qwen/Qwen3-4B", 1, true) and text:find("not implemented yet", 1, true),
    "the Qwen3 recipe fails clearly until hf: sources exist: " .. text)
  text, rc = cli("--print-config recipes/smollm2_w1.lua train.steps=7")
  t.check(rc == 0 and text:find("steps = 7,", 1, true) and text:find("stages = 1,", 1, true), "--print-config resolves W1")
  for _, name in ipairs { "smollm2_w2", "smollm2_w1", "smollm2_fp", "qwen3_4b_w2", "qwen3_4b_w1", "default" } do
    text, rc = cli("--print-config recipes/" .. name .. ".lua")
    t.check(rc == 0 and text:find('kind = "train"', 1, true), name .. ".lua resolves and validates: " .. text:sub(1, 200))
  end
end

os.execute("rm -rf '" .. dir .. "'")
t.done()
