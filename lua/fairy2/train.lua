-- train.lua — a training run from a recipe (kind = "train"; fields in docs/recipes.md, the loop in
-- docs/training.md): resolve and load the model, measure the baselines (full precision, then
-- post-training quantization), convert to Fairy2 (quant.stages = 0: a full-precision fine-tune),
-- then AdamW steps over micro-batches of the deterministic loader, with held-out evals,
-- checkpoints, exact resume, SIGTERM/SIGINT handling, logs and pictures, and an export at the end.
--
--   require("fairy2.train").run(cfg)  -> exit status        (what `fairy2 RECIPE.lua` calls)
--   require("fairy2.train").fit(cfg)  -> result table        (the same, for tests: losses, evals, ...)
local f2 = require "fairy2"
local checkpoint = require "fairy2.checkpoint"
local clock = require "fairy2.clock"
local config = require "fairy2.config"
local data = require "fairy2.data"
local evaluate = require "fairy2.evaluate"
local fairy2 = require "fairy2.fairy2"
local hub = require "fairy2.hub"
local llama = require "fairy2.models.llama"
local log = require "fairy2.log"
local optim = require "fairy2.optim"
local step_mod = require "fairy2.step"
local plot = require "fairy2.plot"
local recipe = require "fairy2.recipe"
local C = f2.C

local M = {}

M.GPU_PEAK_FLOPS = 989e12   -- dense bf16, H100/H200 SXM datasheet (PERFORMANCE.md)

-- ---------------------------------------------------------------- recipe checks

local function fail(msg) error("recipe: " .. msg, 0) end

local function need(cond, key, what, value)
  if not cond then fail(key .. " must be " .. what .. ", got " .. tostring(value)) end
end

local function int(v, min) return type(v) == "number" and v % 1 == 0 and v >= min end

local function one_of(v, list)
  for _, x in ipairs(list) do if v == x then return true end end
  return false
end

-- "name" or "name:weight" -> name, weight (nil when not given).
local function parse_source(s)
  local name, w = s:match("^([^:]+):(.+)$")
  if not name then return s, nil end
  return name, tonumber(w)
end

-- Raises "recipe: <key> must be ..." for the first bad setting; cfg is a resolved recipe.
function M.validate(cfg)
  local function section(name)
    if type(cfg[name]) ~= "table" then fail("'" .. name .. "' must be a table of settings (see recipes/base.lua)") end
    return cfg[name]
  end
  need(type(cfg.model) == "string" and cfg.model ~= "", "model",
    "a model source (gguf:PATH, an HF directory, hf:org/name)", cfg.model)
  need(type(cfg.out) == "string" and cfg.out ~= "", "out", "an output directory", cfg.out)
  local q, d, t, o, e = section("quant"), section("data"), section("train"), section("optim"), section("eval")
  section("debug")
  section("export")
  need(int(q.stages, 0), "quant.stages", "an integer >= 0 (0: full-precision fine-tune)", q.stages)
  need(one_of(q.granularity, { "tensor", "row", "group" }), "quant.granularity", "'tensor', 'row' or 'group'", q.granularity)
  need(q.granularity ~= "group" or int(q.group_size, 1), "quant.group_size", "an integer >= 1 with per-group scales",
    q.group_size)
  need(one_of(q.param, { "r", "uw" }), "quant.param", "'r' (train the real master R) or 'uw'", q.param)
  need(type(q.include) == "table" and type(q.exclude) == "table", "quant.include/exclude", "lists of Lua patterns", q.include)
  need(type(d.path) == "string", "data.path", "a token directory or manifest", d.path)
  need(int(d.seq_len, 1), "data.seq_len", "an integer >= 1", d.seq_len)
  need(type(d.seed) == "number", "data.seed", "a number", d.seed)
  need(type(d.sources) == "table", "data.sources", "a list of 'name' or 'name:weight'", d.sources)
  for _, s in ipairs(d.sources) do
    local name, w = parse_source(tostring(s))
    need(s:find(":") == nil or (w and w >= 0), "data.sources", "'name' or 'name:weight' (weight >= 0)", s)
    need(name ~= "", "data.sources", "'name' or 'name:weight'", s)
  end
  need(one_of(t.device, { "auto", "cpu", "cuda" }), "train.device", "'auto', 'cpu' or 'cuda'", t.device)
  need(one_of(t.dtype, { "auto", "bf16", "f32" }), "train.dtype", "'auto', 'bf16' or 'f32'", t.dtype)
  need(type(t.graph) == "boolean", "train.graph", "true or false", t.graph)
  need(type(t.recompute) == "boolean", "train.recompute", "true or false", t.recompute)
  need(int(t.batch, 1), "train.batch", "an integer >= 1 (rows per micro-batch)", t.batch)
  need(int(t.accum, 1), "train.accum", "an integer >= 1 (micro-batches per optimizer step)", t.accum)
  need(int(t.steps, 0), "train.steps", "an integer >= 0 (0: budget by train.tokens)", t.steps)
  need(type(t.tokens) == "number" and t.tokens >= 0, "train.tokens", "a number >= 0", t.tokens)
  need(t.steps > 0 or t.tokens > 0, "train.steps or train.tokens", "> 0 (the budget)", 0)
  need(int(t.stop_at_step, 0), "train.stop_at_step", "an integer >= 0", t.stop_at_step)
  need(int(t.max_bad_steps, 1), "train.max_bad_steps", "an integer >= 1", t.max_bad_steps)
  need(int(t.log_every, 1), "train.log_every", "an integer >= 1", t.log_every)
  need(int(t.eval_every, 0), "train.eval_every", "an integer >= 0 (0: only at the end)", t.eval_every)
  need(int(t.checkpoint_every, 0), "train.checkpoint_every", "an integer >= 0 (0: only at the end)", t.checkpoint_every)
  need(int(t.keep_checkpoints, 0), "train.keep_checkpoints", "an integer >= 0 (0: keep all)", t.keep_checkpoints)
  need(type(t.peak_flops) == "number" and t.peak_flops >= 0, "train.peak_flops", "a number >= 0", t.peak_flops)
  need(type(t.resume) == "boolean", "train.resume", "true or false", t.resume)
  need(type(o.lr) == "number" and o.lr > 0, "optim.lr", "a number > 0", o.lr)
  need(type(o.min_lr) == "number" and o.min_lr >= 0, "optim.min_lr", "a number >= 0", o.min_lr)
  need(type(o.beta1) == "number" and o.beta1 >= 0 and o.beta1 < 1, "optim.beta1", "in [0, 1)", o.beta1)
  need(type(o.beta2) == "number" and o.beta2 >= 0 and o.beta2 < 1, "optim.beta2", "in [0, 1)", o.beta2)
  need(type(o.eps) == "number" and o.eps > 0, "optim.eps", "a number > 0", o.eps)
  need(type(o.weight_decay) == "number" and o.weight_decay >= 0, "optim.weight_decay", "a number >= 0", o.weight_decay)
  need(type(o.clip) == "number" and o.clip >= 0, "optim.clip", "a number >= 0 (0: no clipping)", o.clip)
  need(one_of(o.schedule, { "wsd", "cosine", "constant" }), "optim.schedule", "'wsd', 'cosine' or 'constant'", o.schedule)
  need(type(o.warmup) == "number" and o.warmup >= 0, "optim.warmup", "a number >= 0 (< 1: a fraction of the steps)", o.warmup)
  need(type(o.decay) == "number" and o.decay >= 0, "optim.decay", "a number >= 0 (< 1: a fraction of the steps)", o.decay)
  need(one_of(o.decay_shape, { "linear", "cosine" }), "optim.decay_shape", "'linear' or 'cosine'", o.decay_shape)
  need(type(e.sources) == "table", "eval.sources", "a list of source names", e.sources)
  need(int(e.max_tokens, 0), "eval.max_tokens", "an integer >= 0 (0: every held-out token)", e.max_tokens)
  need(type(e.baselines) == "boolean", "eval.baselines", "true or false", e.baselines)
  need(type(cfg.debug.nan_steps) == "table", "debug.nan_steps", "a list of steps", cfg.debug.nan_steps)
  need(type(cfg.debug.checkpoint_pause_s) == "number", "debug.checkpoint_pause_s", "a number", cfg.debug.checkpoint_pause_s)
  return cfg
end

-- The settings that define what is trained: a checkpoint resumes only under the same ones.
local IDENTITY = { "model", "quant.stages", "quant.granularity", "quant.group_size", "quant.include", "quant.exclude",
  "quant.a8", "quant.param", "data.path", "data.sources", "data.seq_len", "data.seed", "train.batch", "train.accum" }

local function get(t, key)
  for part in key:gmatch("[^.]+") do
    if type(t) ~= "table" then return nil end
    t = t[part]
  end
  return t
end

local function json_text(v) return data.to_json(v):gsub("%s+", " ") end

-- Functions left out, NaN/inf as strings: what state.json can hold.
local function plain(v)
  if type(v) == "function" then return nil end
  if type(v) ~= "table" then return log.json_safe(v) end
  local t = {}
  for k, x in pairs(v) do t[k] = plain(x) end
  return t
end

-- ---------------------------------------------------------------- pieces

local function finite(x) return x == x and x ~= math.huge and x ~= -math.huge end

-- "cpu" or "cuda", and a sentence saying why.
local function pick_device(want)
  local gpus = f2.cuda.device_count()
  if want == "cpu" then return "cpu", "cpu (train.device=cpu)" end
  if gpus == 0 then
    if want == "cuda" then
      error("train.device=cuda, but no usable GPU (" .. (f2.cuda.compiled() and "none found" or "built without CUDA") .. ")", 0)
    end
    return "cpu", "cpu (no usable GPU" .. (f2.cuda.compiled() and "" or ": built without CUDA") .. ")"
  end
  return "cuda", "cuda (" .. gpus .. " GPU" .. (gpus > 1 and "s" or "") .. " usable; training on GPU 0)"
end

-- The training sources as data.open weights ({name = weight}), or nil for the natural mixture.
local function source_weights(spec, path)
  if #spec == 0 then return nil end
  local manifest = data.read_json(path:match("%.json$") and path or path .. "/manifest.json") or {}
  local tokens = {}
  for _, s in ipairs(manifest.sources or {}) do
    local n = 0
    for _, shard in ipairs(s.train or {}) do n = n + (shard.tokens or 0) end
    tokens[s.name] = n
  end
  local weights = {}
  for _, s in ipairs(spec) do
    local name, w = parse_source(s)
    weights[name] = w or tokens[name] or 1
  end
  return weights
end

-- A tensor handle the loader owns, as a fairy2 tensor that shares it.
local function borrow(h) return f2.from_handle(C.f2_tensor_view(h)) end

-- Sum of in*out over the model's matmul weights (+ the tied LM head): N_matmul of PERFORMANCE.md.
local function matmul_params(model, desc)
  local n = 0
  for _, e in ipairs(model:named_modules()) do
    local m = e.module
    if m.in_features and m.out_features then n = n + m.in_features * m.out_features end
  end
  if desc.tie_embeddings then n = n + desc.vocab_size * desc.hidden end
  return n
end

local function count_params(model)
  local n = 0
  for _, p in ipairs(model:named_parameters()) do n = n + p.value:numel() end
  return n
end

local function millions(n) return string.format("%.1fM", n / 1e6) end

-- Steps of a warmup/decay setting: a fraction of total when < 1, else a count.
local function steps_of(v, total) return v < 1 and math.floor(v * total + 0.5) or math.floor(v) end

-- ---------------------------------------------------------------- evaluation

-- Held-out loss over eval.sources, each through evaluate.perplexity (the protocol of docs/data.md)
-- and capped at eval.max_tokens (rounded up to whole windows): { loss, ppl, tokens, seconds }.
local function run_evaluation(ctx)
  local cfg, start, sum, count = ctx.cfg, clock.now(), 0, 0
  local max_windows = cfg.eval.max_tokens > 0 and math.ceil(cfg.eval.max_tokens / cfg.data.seq_len) or nil
  for _, source in ipairs(ctx.eval_sources) do
    local r = evaluate.perplexity(ctx.model, ctx.loader, { source = source, max_windows = max_windows })
    sum, count = sum + r.loss * r.tokens, count + r.tokens
    collectgarbage()
  end
  if count == 0 then error("eval: no held-out tokens in " .. table.concat(ctx.eval_sources, ", "), 0) end
  local loss = sum / count
  return { loss = loss, ppl = math.exp(loss), tokens = count, seconds = clock.now() - start }
end

-- ---------------------------------------------------------------- the run

local function check_resumable(ck, cfg)
  local old = ck.state.recipe or {}
  local changed = {}
  for _, key in ipairs(IDENTITY) do
    local a, b = json_text(get(old, key)), json_text(get(cfg, key))
    if a ~= b then changed[#changed + 1] = key .. " (" .. a .. " -> " .. b .. ")" end
  end
  if #changed > 0 then
    error("cannot resume from " .. ck.path .. ": the recipe changed " .. table.concat(changed, ", ") ..
      "; use another out directory, or train.resume=false to start over in this one", 0)
  end
end

local function quant_opts(cfg, quiet)
  local q = cfg.quant
  return { stages = q.stages, granularity = q.granularity, group_size = q.group_size, include = q.include,
    exclude = q.exclude, a8 = q.a8, param = q.param, quiet = quiet }
end

local function bits_name(q) return "W" .. q.stages end

-- Merges the recipe's `gpu` section (its GPU-sized settings) into cfg in place; what the command line
-- said (recipe.overrides_of) still wins. Validates the result.
function M.apply_gpu_section(cfg)
  for k, v in pairs(recipe.merge(cfg, cfg.gpu)) do cfg[k] = v end
  for _, o in ipairs(recipe.overrides_of[cfg] or {}) do recipe.apply_override(cfg, o) end
  return M.validate(cfg)
end

-- Runs the recipe; returns { status, losses = {step = loss}, evals, baselines, final_eval,
-- checkpoint, steps_done, total_steps, skipped }. Raises on errors (bad recipe, non-finite abort).
function M.fit(cfg, opts)
  opts = opts or {}
  M.validate(cfg)
  local t = cfg.train
  local out = cfg.out
  local ckpt_root = out .. "/checkpoints"
  local stream = opts.stream or io.stdout
  local function say(fmt, ...) stream:write(string.format(fmt, ...), "\n"); stream:flush() end

  local device, device_note = pick_device(t.device)
  if device == "cuda" and type(cfg.gpu) == "table" then
    M.apply_gpu_section(cfg)
    t = cfg.train
  end
  local dtype = t.dtype ~= "auto" and t.dtype or (device == "cuda" and "bf16" or "f32")
  say("fairy2 %s train: %s -> %s", f2.version, cfg.name or "run", out)
  say("device: %s; activations %s%s", device_note, dtype,
    device == "cuda" and (t.graph and ", the step as a CUDA graph" or ", no CUDA graph") or "")

  -- Resume: the newest complete checkpoint of this out directory.
  local ck
  if t.resume then
    ck = checkpoint.latest(ckpt_root, function(msg) say("warning: %s", msg) end)
    if ck then check_resumable(ck, cfg) end
  end

  -- The model source first: the cheapest check of a recipe that names one that can't be had.
  local src
  if not ck then
    local err
    src, err = hub.resolve(cfg.model)
    if not src then error(err, 0) end
  end

  local result = { losses = {}, evals = {}, baselines = {}, skipped = 0 }
  local tokens_per_step = t.batch * t.accum * cfg.data.seq_len
  local total = t.steps > 0 and t.steps or math.ceil(t.tokens / tokens_per_step)
  result.total_steps = total
  local o = cfg.optim
  local warmup, decay = steps_of(o.warmup, total), steps_of(o.decay, total)
  if o.schedule ~= "wsd" then decay = 0 end
  if warmup + decay > total then
    error(string.format("recipe: optim.warmup (%d steps) + optim.decay (%d steps) exceed the %d steps of the budget",
      warmup, decay, total), 0)
  end

  -- Data.
  local loader = data.open(cfg.data.path, { seq_len = cfg.data.seq_len, batch = t.batch, seed = cfg.data.seed,
    weights = source_weights(cfg.data.sources, cfg.data.path) })
  local eval_sources = {}
  if #cfg.eval.sources > 0 then
    for i, s in ipairs(cfg.eval.sources) do eval_sources[i] = s end
  else
    for _, s in ipairs(loader.eval_sources) do eval_sources[#eval_sources + 1] = s.name end
  end
  local names = {}
  for _, s in ipairs(loader.sources) do names[#names + 1] = string.format("%s (%.3g)", s.name, s.weight) end
  say("data: %s; train sources %s; seq %d, batch %d x accum %d = %s tokens/step", cfg.data.path,
    table.concat(names, ", "), cfg.data.seq_len, t.batch, t.accum, log.thousands(tokens_per_step))
  say("eval: %s held-out%s", #eval_sources > 0 and table.concat(eval_sources, ", ") or "no",
    cfg.eval.max_tokens > 0 and (", at most " .. log.thousands(cfg.eval.max_tokens) .. " tokens per source") or "")

  -- Model: from the source (fresh), or rebuilt from the checkpoint's description (resume).
  local desc, model, report
  local ctx = { cfg = cfg, loader = loader, device = device, eval_sources = eval_sources }
  local label = cfg.quant.stages > 0 and ("Fairy2 " .. bits_name(cfg.quant)) or "full precision"
  if ck then
    desc = config.from_json(ck.state.model_desc.hf)
    model = llama.build(desc, { device = device, dtype = dtype, recompute = t.recompute })
    if cfg.quant.stages > 0 then report = fairy2.convert(model, quant_opts(cfg, true)) end
    say("model: %s, resuming from %s (step %d)", cfg.model, ck.path, ck.step)
    result.baselines = (ck.state.metrics or {}).baselines or {}
    result.evals = (ck.state.metrics or {}).evals or {}
  else
    desc = src.config
    model = llama.build(desc, { device = device, dtype = dtype, recompute = t.recompute })
    llama.load_state(model, src.state)
    src = nil
    collectgarbage()
    local n = count_params(model)
    say("model: %s (%s, %d layers, hidden %d, vocab %d, %s parameters)", cfg.model, desc.arch, desc.layers,
      desc.hidden, desc.vocab_size, n >= 1e6 and millions(n) or log.thousands(n))
  end
  ctx.model = model

  local function eval_line(rec) say("%s", log.eval_text(rec)) end
  if not ck then
    if cfg.eval.baselines and #eval_sources > 0 then
      local r = run_evaluation(ctx)
      r.label, r.step, r.kind = "full precision", 0, "eval"
      result.baselines[#result.baselines + 1] = r
      eval_line(r)
    end
    if cfg.quant.stages > 0 then
      report = fairy2.convert(model, quant_opts(cfg, true))
      say("%s", fairy2.format_report(report))
      if cfg.eval.baselines and #eval_sources > 0 then
        local r = run_evaluation(ctx)
        r.label, r.step, r.kind = "PTQ " .. bits_name(cfg.quant), 0, "eval"
        result.baselines[#result.baselines + 1] = r
        eval_line(r)
      end
    end
  end

  -- Flat parameters, optimizer, the step, the schedule.
  local stepper, opt = step_mod.setup(model,
    { lr = o.lr, betas = { o.beta1, o.beta2 }, eps = o.eps, weight_decay = o.weight_decay },
    { batch = t.batch, seq_len = cfg.data.seq_len, accum = t.accum, clip = o.clip, graph = t.graph })
  local params = opt.params
  local schedule = optim.schedule { kind = o.schedule, lr = o.lr, min_lr = o.min_lr, total_steps = total, warmup = warmup,
    decay_steps = decay, shape = o.decay_shape }
  local start_step, elapsed0 = 0, 0
  if ck then
    checkpoint.restore(ck, params, opt)
    start_step, elapsed0 = ck.step, ck.state.elapsed_s or 0
    result.skipped, result.checkpoint = ck.state.bad_steps or 0, ck.path
  end
  ck = nil

  local n_matmul = matmul_params(model, desc)
  local flops_per_token = 6 * n_matmul + 6 * desc.layers * desc.heads * desc.head_dim * cfg.data.seq_len
  local peak = t.peak_flops > 0 and t.peak_flops or (device == "cuda" and M.GPU_PEAK_FLOPS or 0)
  say("budget: %s steps x %s tokens = %s tokens; %s, lr %.3g (%s, warmup %d, decay %d%s, min %.3g), clip %g, wd %g",
    log.thousands(total), log.thousands(tokens_per_step), log.thousands(total * tokens_per_step), label, o.lr,
    o.schedule, warmup, decay, o.schedule == "wsd" and (" " .. o.decay_shape) or "", o.min_lr, o.clip, o.weight_decay)
  say("flops: %.3f GFLOP/token (6 x %s matmul params + attention); %s", flops_per_token / 1e9, millions(n_matmul),
    peak > 0 and string.format("MFU against %.0f TFLOP/s", peak / 1e12) or
      "on the CPU the rate is shown as GFLOP/s (train.peak_flops=... gives an MFU)")

  local ok, err = checkpoint.mkdir_p(out)
  if not ok then error(err, 0) end
  local L = log.new { metrics = out .. "/metrics.jsonl", total_steps = total, start_step = start_step,
    resume_step = start_step > 0 and start_step or nil, peak_flops = peak, log_every = t.log_every,
    stream = opts.stream, tty = opts.tty }
  if start_step == 0 then
    for _, r in ipairs(result.baselines) do L:record(r) end
  end

  local nan_steps = {}
  for _, s in ipairs(cfg.debug.nan_steps) do nan_steps[s] = true end
  local ids, targets = borrow(loader.inputs), borrow(loader.targets)
  local saved_step, bad_in_row = result.checkpoint and start_step or -1, 0
  local last_eval_step = (#result.evals > 0) and result.evals[#result.evals].step or -1

  local function state(step)
    return plain {
      format = "fairy2-checkpoint", version = 1, fairy2_version = f2.version,
      step = step, optimizer_step = opt.step_count, tokens = step * tokens_per_step, bad_steps = result.skipped,
      data = { path = cfg.data.path, seed = cfg.data.seed, next_step = step, seq_len = cfg.data.seq_len,
        batch = t.batch, accum = t.accum, sources = cfg.data.sources },
      rng = { data_seed = cfg.data.seed,
        note = "the only randomness is the loader's, a pure function of (seed, step, sample)" },
      recipe = cfg, model_desc = desc,
      quant = cfg.quant.stages > 0 and { stages = cfg.quant.stages, granularity = cfg.quant.granularity,
        group_size = cfg.quant.group_size, a8 = cfg.quant.a8, param = cfg.quant.param,
        converted = (function()
          local n = {}
          for i, item in ipairs(report and report.converted or {}) do n[i] = item.name end
          return n
        end)() } or nil,
      metrics = { baselines = result.baselines, evals = result.evals, last = result.last },
      elapsed_s = elapsed0 + (clock.now() - L.started), saved_at = os.date("!%Y-%m-%dT%H:%M:%SZ"),
    }
  end

  local function save(step)
    if saved_step == step then return result.checkpoint end
    local path = checkpoint.save(ckpt_root, step, { params = params, optimizer = opt, state = state(step),
      pause_s = cfg.debug.checkpoint_pause_s })
    for _, p in ipairs(checkpoint.prune(ckpt_root, t.keep_checkpoints)) do L:info("removed old checkpoint %s", p) end
    saved_step, result.checkpoint = step, path
    L:info("checkpoint %s", path)
    return path
  end

  local function picture()
    local ok, err = plot.write(out .. "/loss.svg", L.records, { title = (cfg.name or "run") .. ": " .. label .. " loss" })
    if not ok then L:info("warning: cannot write %s/loss.svg: %s", out, tostring(err)) end
  end

  local function run_eval(step)
    if #eval_sources == 0 then return end
    local r = run_evaluation(ctx)
    r.step = step
    result.evals[#result.evals + 1] = r
    last_eval_step = step
    L:eval(r)
    picture()
  end

  -- One optimizer step: accum micro-batches, clip, AdamW (skipped on the device when non-finite).
  local function train_step(step)
    local lr = schedule(step)
    local loss, norm, good = stepper:run(function(micro, dst_ids, dst_targets)
      loader:batch(step - 1, micro)
      dst_ids:copy(ids)
      dst_targets:copy(targets)
    end, lr, { poison = nan_steps[step] })
    return loss, norm, lr, good
  end

  local status, step = 0, start_step
  if start_step >= total then L:info("the checkpoint is at step %d of %d: nothing left to train", start_step, total) end
  f2.check(C.f2_signal_watch(), "signals")
  ok, err = pcall(function()
    while step < total do
      step = step + 1
      local t0 = clock.now()
      local loss, norm, lr, good = train_step(step)
      local ms = (clock.now() - t0) * 1e3
      collectgarbage()
      result.losses[step] = loss
      result.last = { step = step, loss = loss, grad_norm = norm, lr = lr }
      if good then bad_in_row = 0 else
        bad_in_row = bad_in_row + 1
        result.skipped = result.skipped + 1
      end
      L:step { step = step, loss = loss, grad_norm = norm, lr = lr, ms = ms, tokens = tokens_per_step,
        flops = flops_per_token * tokens_per_step, skipped = not good or nil }
      if bad_in_row >= t.max_bad_steps then
        error(string.format("training aborted at step %d: %d steps in a row had a non-finite loss or gradient norm " ..
          "(train.max_bad_steps=%d); the last checkpoint is %s", step, bad_in_row, t.max_bad_steps,
          result.checkpoint or "(none in this session)"), 0)
      end
      if step < total and t.eval_every > 0 and step % t.eval_every == 0 then run_eval(step) end
      if step < total and t.checkpoint_every > 0 and step % t.checkpoint_every == 0 then save(step) end
      local sig = C.f2_signal_pending()
      if sig ~= 0 then
        local name = sig == 15 and "SIGTERM" or sig == 2 and "SIGINT" or ("signal " .. sig)
        L:info("caught %s: finished step %d, saving", name, step)
        save(step)
        L:info("saved %s; run the same command again to resume", result.checkpoint)
        status = sig == 2 and 130 or 0
        return
      end
      if step < total and step == t.stop_at_step then
        save(step)
        L:info("stopped after step %d (train.stop_at_step); run again with train.stop_at_step=0 to go on", step)
        return
      end
    end
  end)
  C.f2_signal_unwatch()
  if not ok then
    L:close()
    error(err, 0)
  end
  result.steps_done = step
  result.status = status
  if device == "cuda" then result.peak_gpu_bytes = f2.cuda.memory_stats().peak_allocated end
  if step >= total and status == 0 then
    if last_eval_step ~= step then run_eval(step) end
    result.final_eval = result.evals[#result.evals]
    save(step)
  end
  picture()
  L:close()
  return result, ctx
end

-- ---------------------------------------------------------------- the report and export

local function summary(cfg, r, say)
  local label = cfg.quant.stages > 0 and ("QAT W" .. cfg.quant.stages) or "fine-tuned"
  say("")
  say("held-out perplexity (%s%s):", cfg.eval.sources and #cfg.eval.sources > 0 and table.concat(cfg.eval.sources, ", ")
    or "every held-out source",
    cfg.eval.max_tokens > 0 and (", up to " .. log.thousands(cfg.eval.max_tokens) .. " tokens each") or "")
  local rows = {}
  for _, b in ipairs(r.baselines) do rows[#rows + 1] = { b.label .. (b.label:match("^PTQ") and " (no training)" or ""), b } end
  if r.final_eval then
    rows[#rows + 1] = { string.format("%s after %s steps (%s tokens)", label, log.thousands(r.steps_done),
      log.thousands(r.steps_done * cfg.train.batch * cfg.train.accum * cfg.data.seq_len)), r.final_eval }
  end
  local width = 0
  for _, row in ipairs(rows) do width = math.max(width, #row[1]) end
  for _, row in ipairs(rows) do
    say("  %-" .. width .. "s  ppl %10.3f   loss %.4f   (%s tokens)", row[1], row[2].ppl, row[2].loss,
      log.thousands(row[2].tokens))
  end
  if r.skipped > 0 then say("  %d step(s) were skipped for a non-finite loss or gradient", r.skipped) end
  if r.peak_gpu_bytes then say("peak GPU memory: %.2f GiB (the allocator's, evaluations included)", r.peak_gpu_bytes / 2 ^ 30) end
end

-- Exports the final checkpoint (lua/fairy2/export.lua): an HF directory and the packed file.
local function export(cfg, r, say)
  if not (cfg.export.hf or cfg.export.packed) or not r.checkpoint then return 0 end
  local found, ex = pcall(require, "fairy2.export")
  if not found then
    if tostring(ex):find("module 'fairy2.export' not found", 1, true) then
      say("export: not available yet (lua/fairy2/export.lua is missing); the checkpoint is %s", r.checkpoint)
      return 0
    end
    error(ex, 0)
  end
  local status = 0
  local jobs = {}
  if cfg.export.hf then jobs[#jobs + 1] = { "hf", cfg.out .. "/hf", "Hugging Face directory (bf16)" } end
  if cfg.export.packed and cfg.quant.stages > 0 then
    jobs[#jobs + 1] = { "packed", cfg.out .. "/model.f2.safetensors", "packed Fairy2 file" }
  end
  for _, j in ipairs(jobs) do
    -- An export function raises, or returns nil, err (I/O style); anything else is success.
    local ok, res, why = pcall(ex[j[1]], r.checkpoint, j[2])
    if ok and (res ~= nil or why == nil) then
      say("exported     %s: %s", j[3], j[2])
    else
      say("export %s failed: %s", j[1], tostring(ok and why or res))
      status = 1
    end
  end
  return status
end

-- What `fairy2 RECIPE.lua` runs: fit, then the summary, where things are, and the export.
function M.run(cfg)
  local say = function(fmt, ...) io.stdout:write(string.format(fmt, ...), "\n"); io.stdout:flush() end
  local r = M.fit(cfg)
  if r.status ~= 0 or r.steps_done < r.total_steps then return r.status end
  summary(cfg, r, say)
  say("")
  say("checkpoint   %s", r.checkpoint)
  say("metrics      %s/metrics.jsonl", cfg.out)
  say("loss curves  %s/loss.svg", cfg.out)
  return export(cfg, r, say)
end

return M
