-- bench_train.lua — the GPU training benchmark (issue 6; docs/performance.md keeps its tables). In one
-- invocation on one card:
--   1. correctness: a small Llama on the GPU (bf16 and f32 activations, CUDA graph) trains the same
--      steps as on the CPU (f32, the reference); the losses must track.
--   2. fairy2: SmolLM2-135M-shaped training (random init, random tokens) for each variant (bf16 = no
--      quantization, w1, w2; w2-eager = w2 without the CUDA graph; w2-recompute = MLP recomputation;
--      w2-unfused = q/k/v and gate/up as separate GEMMs) at each B x T: median step time over `steps`
--      after `warmup`, tokens/s, MFU, peak GPU memory.
--   3. the PyTorch baselines (tests/bench/torch_baselines.py) in the same run, then one table with
--      the ratios last.
--   fairy2 tests/bench/bench_train.lua [bt=8x2048,32x512] [variants=bf16,w1,w2,w2-eager] [steps=10]
--     [warmup=3] [check=1] [profile=1] [torch=hf_eager,ours_w2,ours_w1,port_w2,port_w1|none] (every B x T)
--     [torch_compile=hf_compile,ours_w2_compile|none] (the first B x T) [torch_timeout=300] [python=python3]
--     [out=FILE.jsonl]
local ffi = require "ffi"
local f2 = require "fairy2"
local llama = require "fairy2.models.llama"
local fairy2 = require "fairy2.fairy2"
local step = require "fairy2.step"
local clock = require "fairy2.clock"

local args = {}
for _, a in ipairs { ... } do
  local k, v = a:match("^([%w_]+)=(.*)$")
  if not k then error("bench_train: arguments are key=value, got '" .. a .. "'", 0) end
  args[k] = v
end
local function list(s) local t = {} for x in (s or ""):gmatch("[^,]+") do t[#t + 1] = x end return t end
local BT = list(args.bt or "8x2048,32x512")
local VARIANTS = list(args.variants or "bf16,w1,w2,w2-eager")
local STEPS, WARMUP = tonumber(args.steps or 10), tonumber(args.warmup or 3)
local TORCH = args.torch or "hf_eager,ours_w2,ours_w1,port_w2,port_w1"
local PEAK = 989e12

if f2.cuda.device_count() == 0 then
  print("bench_train: no usable GPU; skipped")
  os.exit(77)
end
local out_lines = {}
local function record(r)
  out_lines[#out_lines + 1] = r
  if args.out then
    local f = assert(io.open(args.out, "a"))
    f:write(require("cjson").encode(r), "\n")
    f:close()
  end
end

local SMOL = {
  arch = "llama", vocab_size = 49152, hidden = 576, layers = 30, heads = 9, kv_heads = 3, head_dim = 64,
  intermediate = 1536, rope_theta = 100000, rms_eps = 1e-5, tie_embeddings = true, attention_bias = false,
  mlp_bias = false, qk_norm = false,
}
-- FLOPs per token (PERFORMANCE.md): 6 N_matmul + 6 L d T (causal counted fully), N_matmul with the LM head.
local function flops_per_token(d, T)
  local per_layer = d.hidden * (d.heads + 2 * d.kv_heads) * d.head_dim + d.heads * d.head_dim * d.hidden +
    3 * d.hidden * d.intermediate
  local n = d.layers * per_layer + d.vocab_size * d.hidden
  return 6 * n + 6 * d.layers * d.hidden * T
end

-- A model of desc on device with activations in dtype, quantized to `stages` (0: none), flat, with
-- AdamW and a stepper.
local function setup(desc, device, dtype, stages, B, T, graph, seed, recompute, unfused)
  local model = llama.build(desc, { device = device, dtype = dtype, recompute = recompute, fuse_proj = not unfused })
  llama.init_random(model, seed or 1)
  if stages > 0 then fairy2.convert(model, { stages = stages, quiet = true }) end
  local s, opt = step.setup(model, { lr = 1e-4, betas = { 0.9, 0.95 }, weight_decay = 0.1 },
    { batch = B, seq_len = T, accum = 1, clip = 1.0, graph = graph })
  return model, opt, s
end

-- Random tokens for step i (the same on every device).
local function filler(vocab, seed)
  return function(micro, ids, targets)
    local n = ids:numel()
    local pi, pt = ffi.cast("int32_t *", ids.h.data), ffi.cast("int32_t *", targets.h.data)
    local x = seed * 7919 + micro
    for i = 0, n - 1 do
      x = (x * 1103515245 + 12345) % 2147483648
      pi[i] = x % vocab
      x = (x * 1103515245 + 12345) % 2147483648
      pt[i] = x % vocab
    end
  end
end

local function free_all()
  collectgarbage()
  collectgarbage()
  f2.cuda.synchronize()
  f2.cuda.empty_cache()
end

-- ---------------------------------------------------------------- 1. correctness
local failures = 0
if args.check ~= "0" then
  local small = { arch = "llama", vocab_size = 512, hidden = 128, layers = 2, heads = 4, kv_heads = 2, head_dim = 32,
    intermediate = 256, rope_theta = 10000, rms_eps = 1e-5, tie_embeddings = true, attention_bias = false,
    mlp_bias = false, qk_norm = false }
  local B, T, N = 2, 64, 6
  print(string.format("correctness: %d-layer Llama (hidden %d, vocab %d), %d x %d tokens, %d AdamW steps, lr 1e-4",
    small.layers, small.hidden, small.vocab_size, B, T, N))
  for _, case in ipairs { { "w2", 2 }, { "bf16", 0 } } do
    local runs = {}
    for _, dev in ipairs { { "cpu", "f32", false }, { "cuda", "f32", true }, { "cuda", "bf16", true } } do
      local _, _, s = setup(small, dev[1], dev[2], case[2], B, T, dev[3], 3)
      local losses = {}
      for i = 1, N do losses[i] = s:run(filler(small.vocab_size, i), 1e-3) end
      runs[#runs + 1] = { name = dev[1] .. " " .. dev[2], losses = losses }
      s:free()
      free_all()
    end
    local ref = runs[1].losses
    for r = 2, #runs do
      local worst = 0
      for i = 1, N do worst = math.max(worst, math.abs(runs[r].losses[i] - ref[i]) / math.abs(ref[i])) end
      local tol = runs[r].name:find("bf16") and 2e-2 or 1e-3
      local ok = worst <= tol
      if not ok then failures = failures + 1 end
      local shown = {}
      for i = 1, N do shown[i] = string.format("%.4f/%.4f", runs[r].losses[i], ref[i]) end
      print(string.format("  %-5s %-10s vs cpu f32: max rel diff %.2e (tol %.0e) %s  [%s]", case[1], runs[r].name, worst,
        tol, ok and "ok" or "FAIL", table.concat(shown, " ")))
      record { name = "check", variant = case[1], run = runs[r].name, max_rel_diff = worst, ok = ok }
    end
  end
end

-- ---------------------------------------------------------------- 2. fairy2 timing
local function median(t)
  table.sort(t)
  return t[math.floor((#t + 1) / 2)]
end
local results = {}
print(string.format("\nfairy2: SmolLM2-135M-shaped training on %s, median of %d steps after %d warm-up",
  f2.cuda.device_name and f2.cuda.device_name() or "GPU 0", STEPS, WARMUP))
for _, bt in ipairs(BT) do
  local B, T = bt:match("^(%d+)x(%d+)$")
  B, T = tonumber(B), tonumber(T)
  for _, v in ipairs(VARIANTS) do
    local stages = v:match("^w(%d)") and tonumber(v:match("^w(%d)")) or 0
    local graph, recompute, unfused = not v:find("eager"), v:find("recompute") ~= nil, v:find("unfused") ~= nil
    free_all()
    f2.cuda.reset_peak()
    local ok, err = pcall(function()
      local _, _, s = setup(SMOL, "cuda", "bf16", stages, B, T, graph, 1, recompute, unfused)
      local times, loss = {}, 0
      for i = 1, WARMUP + STEPS do
        local fill = filler(SMOL.vocab_size, i)
        f2.cuda.synchronize()
        local t0 = clock.now()
        loss = s:run(fill, 1e-4)   -- reads the loss back: the step has finished
        local dt = clock.now() - t0
        if i > WARMUP then times[#times + 1] = dt end
      end
      local ms = median(times) * 1e3
      local tps = B * T / (ms / 1e3)
      local peak = f2.cuda.memory_stats().peak_allocated / 2 ^ 30
      local r = { name = "fairy2_" .. v, bt = bt, step_ms = ms, tokens_per_s = tps,
        mfu = tps * flops_per_token(SMOL, T) / PEAK, peak_gib = peak, loss = loss }
      results[#results + 1] = r
      record(r)
      print(string.format("  %-14s %-8s %8.1f ms  %9.0f tokens/s  MFU %5.1f%%  peak %5.2f GiB  loss %.3f", r.name, bt, ms,
        tps, 100 * r.mfu, peak, loss))
      if args.profile ~= "0" and (v == "w2" or v == "bf16") then
        -- Where the time goes: two eager steps with every GPU op between CUDA events (per step).
        s.graph_wanted = false
        f2.cuda.profile(true)
        for i = 1, 2 do s:run(filler(SMOL.vocab_size, 100 + i), 1e-4) end
        local rows, total = f2.cuda.profile_report(), 0
        f2.cuda.profile(false)
        for _, row in ipairs(rows) do total = total + row.ms / 2 end
        local parts = {}
        for _, row in ipairs(rows) do
          parts[#parts + 1] = string.format("%s %.2f ms (%d)", row.name, row.ms / 2, row.calls / 2)
        end
        print(string.format("      profile, eager, per step (kernel time %.1f ms): %s", total, table.concat(parts, ", ")))
        record { name = "profile_" .. v, bt = bt, kernels_ms = total, rows = rows }
      end
      s:free()
    end)
    if not ok then
      print(string.format("  fairy2_%-7s %-8s failed: %s", v, bt, tostring(err)))
      record { name = "fairy2_" .. v, bt = bt, error = tostring(err) }
      failures = failures + 1
    end
  end
end
free_all()

-- ---------------------------------------------------------------- 3. PyTorch baselines
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "tests/bench"
-- Eager baselines at every B x T; compiled ones (minutes of compiling each) at the first only.
local function torch_run(only, bts)
  if only == "none" or only == "" then return end
  local tmp = os.tmpname()
  local cmd = string.format("%s %s/torch_baselines.py --only %s --bt %s --steps %d --timeout %d --out %s",
    args.python or "python3", here, only, bts, STEPS, tonumber(args.torch_timeout or 300), tmp)
  print("\nPyTorch baselines: " .. cmd)
  io.stdout:flush()
  os.execute(cmd)
  local cjson = require "cjson"
  for line in io.lines(tmp) do
    local ok, r = pcall(cjson.decode, line)
    if ok and type(r) == "table" and r.name then
      results[#results + 1] = r
      record(r)
    end
  end
  os.remove(tmp)
end
torch_run(TORCH, table.concat(BT, ","))
torch_run(args.torch_compile or "hf_compile,ours_w2_compile", BT[1])

-- ---------------------------------------------------------------- table
print("\n| run | B x T | step ms | tokens/s | MFU | peak GiB |")
print("|---|---|---|---|---|---|")
local by = {}
for _, r in ipairs(results) do
  by[r.name .. "@" .. r.bt] = r
  if r.error then
    print(string.format("| %s | %s | failed: %s | | | |", r.name, r.bt, tostring(r.error):sub(1, 80)))
  else
    print(string.format("| %s | %s | %.1f | %.0f | %.1f%% | %.2f |", r.name, r.bt, r.step_ms or 0, r.tokens_per_s or 0,
      100 * (r.mfu or 0), r.peak_gib or 0))
  end
end
print("\nratios (same run, same card):")
for _, bt in ipairs(BT) do
  local w2, bf = by["fairy2_w2@" .. bt], by["fairy2_bf16@" .. bt]
  local function ratio(a, b, what)
    if a and b and not a.error and not b.error and a.tokens_per_s and b.tokens_per_s then
      print(string.format("  %-8s %-44s %.2fx", bt, what, a.tokens_per_s / b.tokens_per_s))
    end
  end
  ratio(w2, by["hf_compile@" .. bt], "fairy2 W2 / HF bf16 torch.compile")
  ratio(w2, by["hf_eager@" .. bt], "fairy2 W2 / HF bf16 eager")
  local best
  for _, n in ipairs { "ours_w2", "ours_w2_compile", "ours_w2_compile_full" } do
    local r = by[n .. "@" .. bt]
    if r and not r.error and r.tokens_per_s and (not best or r.tokens_per_s > best.tokens_per_s) then best = r end
  end
  ratio(w2, best, "fairy2 W2 / strongest PyTorch Fairy2i W2 (" .. (best and best.name or "none") .. ")")
  ratio(w2, by["port_w2@" .. bt], "fairy2 W2 / third-party port W2")
  ratio(by["fairy2_w1@" .. bt], by["port_w1@" .. bt], "fairy2 W1 / third-party port W1")
  if w2 and bf and not w2.error and not bf.error then
    print(string.format("  %-8s %-44s %.3f", bt, "W2 step time / bf16 step time", w2.step_ms / bf.step_ms))
  end
  local hc = by["hf_compile@" .. bt]
  if w2 and hc and not w2.error and not hc.error and hc.peak_gib then
    print(string.format("  %-8s %-44s %.2f / %.2f GiB", bt, "peak memory fairy2 W2 / HF compile", w2.peak_gib, hc.peak_gib))
  end
end
if failures > 0 then
  print(string.format("\nbench_train: %d check(s) failed", failures))
  os.exit(1)
end
