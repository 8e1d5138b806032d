-- test_eval.lua — perplexity (fairy2.evaluate, `fairy2 eval`) on tiny random models and small token
-- shards written here (fresh each run): the loss equals the mean cross-entropy computed independently
-- with the training forward (model:loss) over the same evaluation windows, for several batch sizes,
-- with max_windows, per source, for a Fairy2-converted model; every token but a shard's first is
-- scored once; the CLI prints the same numbers; bad arguments give clear errors.
local t = dofile("tests/lua/harness.lua")
local ffi = require "ffi"
local cjson = require "cjson"
local f2 = require "fairy2"
local config = require "fairy2.config"
local data = require "fairy2.data"
local evaluate = require "fairy2.evaluate"
local fairy2 = require "fairy2.fairy2"
local llama = require "fairy2.models.llama"
local safetensors = require "fairy2.safetensors"
local C = f2.C

local seed = t.seed()
math.randomseed(seed)

local tmp = os.tmpname()
os.remove(tmp)
os.execute("mkdir -p '" .. tmp .. "'")

local V, EOS = 61, 0

-- A shard of random documents (tokens 1..V-1, each document followed by EOS); returns its token count.
local function write_shard(path, docs, max_len)
  local w = C.f2_shard_writer_new(path, 0, V, EOS, 7)
  assert(w ~= nil, f2.last_error())
  for _ = 1, docs do
    local n = math.random(1, max_len)
    local buf = ffi.new("int32_t[?]", n)
    for i = 0, n - 1 do buf[i] = math.random(1, V - 1) end
    assert(C.f2_shard_writer_add(w, buf, n) == 0, f2.last_error())
  end
  local info = ffi.new("f2_shard_info[1]")
  assert(C.f2_shard_writer_finish(info, w) == 0, f2.last_error())
  C.f2_shard_writer_free(w)
  return tonumber(info[0].token_count)
end

local shards = {
  { name = "long", path = tmp .. "/long.bin" },
  { name = "short", path = tmp .. "/short.bin" },   -- shorter than a window: one padded window
  { name = "mid", path = tmp .. "/mid.bin" },
}
shards[1].tokens = write_shard(shards[1].path, 9, 40)
shards[2].tokens = write_shard(shards[2].path, 1, 5)
shards[3].tokens = write_shard(shards[3].path, 4, 30)
local SEQ = 16

local function open(batch, only)
  local sources = {}
  for _, s in ipairs(shards) do
    if not only or only == s.name then sources[#sources + 1] = { name = s.name, eval = { s.path } } end
  end
  return data.open({ sources = sources }, { seq_len = SEQ, batch = batch })
end

local function tiny(arch)
  local cfg = { model_type = arch, vocab_size = V, hidden_size = 32, num_hidden_layers = 2, num_attention_heads = 4,
    num_key_value_heads = 2, intermediate_size = 48, tie_word_embeddings = arch == "llama", rms_norm_eps = 1e-5,
    max_position_embeddings = 64, head_dim = arch == "qwen3" and 8 or nil }
  local model = llama.build(config.from_json(cfg))
  llama.init_random(model, math.random(1, 1e6), { std = 0.3 })
  return model, cfg
end

-- The reference: the training forward's mean cross-entropy (ignore_index -100) per batch of the same
-- evaluation walk, times the batch's scored count, summed; targets -1 become -100.
local function reference(model, loader, max_windows, source)
  local sum, count = 0, 0
  for inputs, targets, scored, first in loader:eval_batches(source) do
    if max_windows and first >= max_windows then break end
    local ids = f2.from_handle(C.f2_tensor_view(inputs)):clone()
    local tgt = f2.from_handle(C.f2_tensor_view(targets)):clone()
    local B = tgt:shape()[1]
    local p = ffi.cast("int32_t *", tgt.h.data)
    local n = 0
    for i = 0, tgt:numel() - 1 do
      local row = math.floor(i / SEQ)
      if p[i] == -1 or (max_windows and first + row >= max_windows) then p[i] = -100 else n = n + 1 end
    end
    if not max_windows then t.check(n == scored, "the loader's scored count") end
    if n > 0 then
      sum = sum + model:loss(ids, tgt) * n
      count = count + n
    end
    assert(B == loader.batch_size)
  end
  return sum / count, count
end

local all_tokens = 0
for _, s in ipairs(shards) do all_tokens = all_tokens + s.tokens - 1 end

local function check_model(name, model)
  local want, want_count = reference(model, open(2))
  t.check(want_count == all_tokens, string.format("%s: every token but each shard's first is scored once (%d vs %d)",
    name, want_count, all_tokens))
  for _, batch in ipairs { 1, 2, 3, 8 } do
    local r = evaluate.perplexity(model, open(batch))
    t.close(r.loss, want, 1e-5, 0, string.format("%s: loss, batch %d, vs model:loss", name, batch))
    t.close(r.ppl, math.exp(want), 1e-5, 0, name .. ": ppl = exp(loss)")
    t.check(r.tokens == all_tokens, name .. ": tokens scored, batch " .. batch)
  end
  local loader = open(3)
  local total = loader.eval_windows
  for _, mw in ipairs { 1, 2, 4, total + 5 } do
    local r = evaluate.perplexity(model, loader, { max_windows = mw })
    local w, c = reference(model, loader, mw)
    t.close(r.loss, w, 1e-5, 0, name .. ": max_windows " .. mw)
    t.check(r.tokens == c and r.windows == math.min(mw, total), name .. ": tokens and windows with max_windows " .. mw)
  end
  -- Per source: the sources' scored losses add up to the whole.
  local sum, count = 0, 0
  for _, s in ipairs(shards) do
    local r = evaluate.perplexity(model, loader, { source = s.name })
    local w = reference(model, open(3, s.name))
    t.close(r.loss, w, 1e-5, 0, name .. ": source " .. s.name)
    t.check(r.tokens == s.tokens - 1, name .. ": tokens of source " .. s.name)
    sum, count = sum + r.loss * r.tokens, count + r.tokens
  end
  t.close(sum / count, want, 1e-5, 0, name .. ": per-source losses add up")
end

local model = tiny("llama")
check_model("llama tied", model)
do
  local q = tiny("qwen3")
  fairy2.convert(q, { stages = 2, quiet = true })
  check_model("qwen3 Fairy2 W2", q)
  local progress = 0
  evaluate.perplexity(q, open(1), { progress = function(done, total) progress = done == total and progress + 1 or progress end })
  t.check(progress == 1, "progress reaches windows_total once")
end

-- A model that predicts every target with certainty has loss 0 — not a random-model coincidence:
-- the evaluation really scores the targets the loader gives. (Uniform logits give log V.)
do
  local m = tiny("llama")
  for _, p in ipairs(m:named_parameters()) do p.value:zero() end
  local r = evaluate.perplexity(m, open(2))
  t.close(r.loss, math.log(V), 1e-6, 0, "uniform logits: loss = log V")
end

t.raises(function() evaluate.perplexity(model, open(1), { max_windows = 0 }) end, "max_windows must be a positive integer")
t.raises(function() evaluate.perplexity(model, open(1), { source = "nope" }) end, "no held-out shards for source 'nope'")
t.raises(function() evaluate.perplexity({}, open(1)) end, "model must be a llama.lua model")

-- ---------------------------------------------------------------- the CLI
local bin = os.getenv("F2_BIN") or "build/fairy2"
local function read(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end
local function run(args)
  local out, err = tmp .. "/stdout", tmp .. "/stderr"
  local a, b, c = os.execute(string.format("'%s' %s >'%s' 2>'%s'", bin, args, out, err))
  local code = type(a) == "number" and (a > 255 and a / 256 or a) or (b == "exit" and c) or -1
  return code, read(out), read(err)
end

do
  local m, cfg = tiny("llama")
  local dir = tmp .. "/model"
  os.execute("mkdir -p '" .. dir .. "'")
  local f = assert(io.open(dir .. "/config.json", "wb"))
  f:write(cjson.encode(cfg))
  f:close()
  local entries = {}
  for _, p in ipairs(m:named_parameters()) do entries[#entries + 1] = { p.name, p.value } end
  assert(safetensors.save(dir .. "/model.safetensors", entries))
  local fp = evaluate.perplexity(m, open(2, "long"))
  fairy2.convert(m, { stages = 1, granularity = "row", quiet = true })
  local w1 = evaluate.perplexity(m, open(2, "long"))

  local code, out, err = run("eval --model '" .. dir .. "' --data '" .. shards[1].path .. "' --seq-len " .. SEQ ..
    " --batch 2 --quant-stages 0,1 --granularity row")
  t.check(code == 0, "eval exits 0: " .. err)
  local losses = {}
  for l in out:gmatch("loss (%S+)") do losses[#losses + 1] = tonumber(l) end
  t.check(#losses == 2, "two results printed: " .. out)
  t.close(losses[1] or 0, fp.loss, 0, 2e-6, "CLI full-precision loss")
  t.close(losses[2] or 0, w1.loss, 0, 2e-6, "CLI W1 per-row loss")
  t.check(out:find("tokens " .. fp.tokens, 1, true) ~= nil, "CLI tokens scored")
  t.check(out:find("Fairy2i PTQ W1 per-row", 1, true) ~= nil, "CLI names the quantization")

  local cb, _, eb = run("eval --model '" .. dir .. "' --data '" .. tmp .. "/none'")
  t.check(cb == 1 and eb:find("manifest.json", 1, true), "missing data: " .. eb)
  cb, _, eb = run("eval --model '" .. dir .. "'")
  t.check(cb == 2 and eb:find("--data is required", 1, true), "no --data: " .. eb)
  cb, _, eb = run("eval --model '" .. dir .. "' --data '" .. shards[1].path .. "' --seq-len 0")
  t.check(cb == 2 and eb:find("--seq-len needs a positive integer", 1, true), "bad --seq-len: " .. eb)
  cb, _, eb = run("eval --model '" .. dir .. "' --data '" .. shards[1].path .. "' --quant-stages 2 --granularity odd")
  t.check(cb == 1 and eb:find("granularity must be", 1, true), "bad --granularity: " .. eb)
end

os.execute("rm -rf '" .. tmp .. "'")
t.done()
