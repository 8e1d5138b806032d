-- tools/eval.lua — `fairy2 eval`: loss and perplexity of a model on token shards, with the protocol
-- of lua/fairy2/evaluate.lua (windows of --seq-len, stride --seq-len, every token of a shard but its
-- first scored once, no BOS added), for the full-precision model and after Fairy2i post-training
-- quantization (--quant-stages 0,2,1 evaluates all three in one run).
local f2 = require "fairy2"
local toolargs = require "fairy2.toolargs"
local data = require "fairy2.data"
local evaluate = require "fairy2.evaluate"

local M = {}

M.usage = [[
usage: fairy2 eval --model SRC --data DATA [options]

--model SRC          gguf:PATH (or a .gguf path), or an HF directory
--data DATA          a token directory (fairy2 data tokenize; DATA/manifest.json) or one .bin shard
--split eval|train   the shards of a directory to walk (default eval: the held-out split)
--source NAME        one source of the directory only
--seq-len N          window length in tokens (default 512); the stride is the same
--batch B            windows per forward (default 1); the result does not depend on it
--max-windows N      the first N windows only (default all)
--quant-stages LIST  comma-separated stage counts; 0 is the model as loaded (full precision), T >= 1
                     Fairy2i post-training quantization with T stages (default 0)
--granularity G      the quantizer's scales: tensor (default, the authors'), row, or group
--group-size N       complex input columns per scale group, with --granularity group
--device cpu|cuda    where the model runs (default cpu)

Protocol: the shards are walked in order, each in windows of seq-len tokens; window w of a shard
scores the targets at positions w*N+1 .. w*N+N with all the context the window holds (the last
window reads back to stay full). Each token of a shard but its first is scored exactly once; no BOS is
added (documents in a shard end with EOS). loss = mean of -log p(target), ppl = exp(loss).]]

local function parse(args)
  local o = { split = "eval", seq_len = 512, batch = 1, stages = { 0 }, device = "cpu" }
  local i = 1
  local function value(flag)
    i = i + 1
    if args[i] == nil then error({ usage = flag .. " needs a value" }) end
    return args[i]
  end
  local function count(flag)
    local v = tonumber(value(flag))
    if v == nil or v < 1 or v % 1 ~= 0 then error({ usage = flag .. " needs a positive integer, got '" .. args[i] .. "'" }) end
    return v
  end
  while i <= #args do
    local a = args[i]
    if a == "--help" or a == "-h" then o.help = true
    elseif a == "--model" then o.model = value(a)
    elseif a == "--data" then o.data = value(a)
    elseif a == "--split" then o.split = value(a)
    elseif a == "--source" then o.source = value(a)
    elseif a == "--seq-len" then o.seq_len = count(a)
    elseif a == "--batch" then o.batch = count(a)
    elseif a == "--max-windows" then o.max_windows = count(a)
    elseif a == "--device" then o.device = value(a)
    elseif a == "--granularity" then o.granularity = value(a)
    elseif a == "--group-size" then o.group_size = count(a)
    elseif a == "--quant-stages" then
      o.stages = {}
      for s in value(a):gmatch("[^,]+") do
        local n = tonumber(s)
        if n == nil or n < 0 or n % 1 ~= 0 then error({ usage = "--quant-stages takes integers >= 0, got '" .. s .. "'" }) end
        o.stages[#o.stages + 1] = n
      end
      if #o.stages == 0 then error({ usage = "--quant-stages needs at least one number" }) end
    else error({ usage = "unknown argument " .. a }) end
    i = i + 1
  end
  if o.help then return o end
  if not o.model then error({ usage = "--model is required" }) end
  if not o.data then error({ usage = "--data is required" }) end
  if o.split ~= "eval" and o.split ~= "train" then error({ usage = "--split must be eval or train" }) end
  if o.device ~= "cpu" and o.device ~= "cuda" then error({ usage = "--device must be cpu or cuda" }) end
  return o
end

-- The loader over what --data and --split name, and a line saying what that is; or nil, err.
local function open_data(o)
  local spec, what
  if o.data:match("%.bin$") then
    spec = { sources = { { name = o.data:match("([^/]+)%.bin$"), eval = { o.data } } } }
    what = "the shard " .. o.data
  else
    local manifest, err = data.read_json(o.data .. "/manifest.json")
    if not manifest then return nil, "--data " .. o.data .. ": " .. tostring(err) end
    spec = { sources = {} }
    for _, s in ipairs(manifest.sources or {}) do
      local paths = {}
      for _, shard in ipairs(s[o.split] or {}) do
        paths[#paths + 1] = shard.path:sub(1, 1) == "/" and shard.path or o.data .. "/" .. shard.path
      end
      if #paths > 0 then spec.sources[#spec.sources + 1] = { name = s.name, eval = paths } end
    end
    if #spec.sources == 0 then return nil, "--data " .. o.data .. ": no " .. o.split .. " shards in the manifest" end
    what = string.format("%s, %s split%s", o.data, o.split == "eval" and "held-out (eval)" or "train",
      o.source and (", source " .. o.source) or (", " .. #spec.sources .. " sources"))
  end
  local ok, loader = pcall(data.open, spec, { seq_len = o.seq_len, batch = o.batch })
  if not ok then return nil, tostring(loader) end
  return loader, what
end

-- A warning when the shards were not made by the model's tokenizer (the perplexity would be noise).
local function check_tokenizer(loader, src)
  local gen = require "fairy2.tools.generate"
  local tok = gen.load_tokenizer(src)
  if not tok then return end
  local id = f2.ffi.new("uint64_t[1]")
  if f2.C.f2_data_tokenizer_id(id, tok.handle) ~= 0 then
    f2.C.f2_clear_error()
    return
  end
  local want = data.hex64(id[0])
  for _, s in ipairs(loader.eval_sources) do
    local info = data.shard_info(s.shards[1])
    if info and info.tokenizer_id ~= want then
      io.stderr:write(string.format("fairy2 eval: warning: %s was tokenized by tokenizer %s, the model's is %s\n",
        s.shards[1], info.tokenizer_id, want))
      return
    end
  end
end

local function fail(msg)
  io.stderr:write("fairy2 eval: ", msg, "\n")
  return 1
end

function M.main(args)
  local o, status = toolargs.parse("eval", M.usage, parse, args)
  if not o then return status end
  local problem = toolargs.device_problem(o.device)
  if problem then return fail(problem) end
  local loader, what = open_data(o)
  if not loader then return fail(what) end
  if o.source then
    local okb, err = pcall(loader.eval_batches, loader, o.source)
    if not okb then return fail(tostring(err):gsub("^.-data: ", "")) end
  end
  local llama = require "fairy2.models.llama"
  local fairy2 = require "fairy2.fairy2"
  print(string.format("data: %s; windows of %d tokens, stride %d, batch %d%s", what, o.seq_len, o.seq_len, o.batch,
    o.max_windows and (", first " .. o.max_windows .. " windows") or ""))
  local results = {}
  for i, stages in ipairs(o.stages) do
    local model, src = llama.load(o.model, { device = o.device })
    if not model then return fail(src) end
    if i == 1 then check_tokenizer(loader, src) end
    local label = "full precision"
    if stages > 0 then
      local okc, report = pcall(fairy2.convert, model, { stages = stages, granularity = o.granularity,
        group_size = o.group_size, quiet = true })
      if not okc then return fail(tostring(report):gsub("^.-fairy2%.convert: ", "")) end
      label = string.format("Fairy2i PTQ W%d %s (%.2f bits/weight in %d layers)", stages, report.granularity,
        report.bits_per_weight.converted, #report.converted)
    end
    local progress
    if io.stderr then
      progress = function(done, total, r)
        io.stderr:write(string.format("\r  %s: window %d/%d, loss %.4f ", label, done, total, r.loss))
      end
    end
    local r = evaluate.perplexity(model, loader, { max_windows = o.max_windows, source = o.source, progress = progress })
    io.stderr:write("\n")
    print(string.format("%s: %s: loss %.6f  ppl %.4f  tokens %d  windows %d  %.1f s (%.0f tokens/s)", o.model, label,
      r.loss, r.ppl, r.tokens, r.windows, r.seconds, r.tokens_per_second))
    results[#results + 1] = { label = label, r = r }
    model = nil
    collectgarbage()
  end
  if #results > 1 then
    print(string.format("%-56s %10s %10s", "model", "loss", "ppl"))
    for _, x in ipairs(results) do print(string.format("%-56s %10.4f %10.3f", x.label, x.r.loss, x.r.ppl)) end
  end
  loader:close()
  return 0
end

return M
