-- evaluate.lua — perplexity of a causal LM on held-out token shards, with the protocol of
-- docs/data.md ("The evaluation protocol"; docs/generate.md restates it):
--   windows of seq_len tokens, stride seq_len, over each held-out shard in turn; every token of a shard
--   but its first is scored exactly once, with all the context its window holds (the last window of a
--   shard reads back to stay full, its already-scored targets are -1); no BOS is added (a window is a
--   plain slice of the token stream, whose documents end with EOS).
--   loss = sum of -log p(target) over the scored targets / their count; ppl = exp(loss).
--
--   local evaluate = require "fairy2.evaluate"
--   local r = evaluate.perplexity(model, loader, { max_windows = 64 })
--   -- r = { loss, ppl, tokens (scored), windows, seconds, tokens_per_second }
-- The model runs its inference path (model:new_cache / forward_step: Fairy2 layers quantized once
-- for the whole evaluation); nothing is kept for a backward and the training state is untouched.
local ffi = require "ffi"
local f2 = require "fairy2"
local clock = require "fairy2.clock"
local C = f2.C

local M = {}

-- Sum of -log p(target) over the rows of h2 [N, hidden] whose target (targets: i32 [N] on the CPU)
-- is not -1, and the count of those rows: the fused LM head + cross-entropy (f2_lm_head_cross_entropy,
-- forward only: the logits are made a chunk at a time) on the model's device.
local function score(model, cache, h2, targets)
  local n, device = h2:shape()[1], h2:device()
  local loss, losses = f2.empty({ 1 }, { device = device }), f2.empty({ n }, { device = device })
  local t = device == "cpu" and targets or targets:to(device)
  f2.check(C.f2_lm_head_cross_entropy(loss.h, losses.h, nil, nil, h2.h, model:head_matrix(cache).h, t.h, -1, 1, 0),
    "evaluate.perplexity", 3)
  local host = device == "cpu" and losses or losses:to("cpu")
  local lp, tp = ffi.cast("const float *", host.h.data), ffi.cast("const int32_t *", targets.h.data)
  local sum, count = 0, 0
  for i = 0, n - 1 do
    if tp[i] ~= -1 then
      sum = sum + lp[i]
      count = count + 1
    end
  end
  if t ~= targets then t:free() end
  if host ~= losses then host:free() end
  loss:free()
  losses:free()
  return sum, count
end

-- model: a llama.lua model (converted or not); loader: data.open(...) (its seq_len and batch set the
-- windows and the rows per forward). opts: max_windows (evaluate the first N windows only; default
-- all), source (one source's held-out shards), progress = function(windows_done, windows_total, r).
function M.perplexity(model, loader, opts)
  opts = opts or {}
  if type(model) ~= "table" or type(model.forward_step) ~= "function" then
    error("evaluate.perplexity: model must be a llama.lua model", 2)
  end
  if type(loader) ~= "table" or type(loader.eval_batches) ~= "function" then
    error("evaluate.perplexity: loader must come from data.open", 2)
  end
  local max_windows = opts.max_windows
  if max_windows ~= nil and (type(max_windows) ~= "number" or max_windows < 1 or max_windows % 1 ~= 0) then
    error("evaluate.perplexity: max_windows must be a positive integer", 2)
  end
  local ok, batches = pcall(loader.eval_batches, loader, opts.source)
  if not ok then error("evaluate.perplexity: " .. tostring(batches), 2) end
  local total = opts.source and tonumber(C.f2_loader_eval_windows(loader.eval_loaders[opts.source]))
    or loader.eval_windows
  if max_windows then total = math.min(total, max_windows) end
  local start = clock.now()
  local batch, seq_len = loader.batch_size, loader.seq_len
  local cache = model:new_cache(batch, seq_len)
  local sum, count = 0, 0
  for inputs, targets, _, first in batches do
    if first >= total then break end
    local ids = f2.from_handle(C.f2_tensor_view(inputs))
    local tgt = f2.from_handle(C.f2_tensor_view(targets))
    -- Rows past max_windows take part in the forward but score nothing.
    local rows = math.min(batch, total - first)
    if rows < batch then
      local rest = tgt:narrow(0, rows, batch - rows)
      rest:fill(-1)
      rest:free()
    end
    cache:reset()
    local h2 = model:forward_step(ids, cache, { hidden = true })
    local flat = tgt:view({ batch * seq_len })
    local s, c = score(model, cache, h2, flat)
    sum, count = sum + s, count + c
    for _, x in ipairs { h2, flat, ids, tgt } do x:free() end
    if opts.progress then opts.progress(first + rows, total, { loss = count > 0 and sum / count or 0, tokens = count }) end
  end
  cache:free()
  local seconds = clock.now() - start
  local loss = count > 0 and sum / count or 0 / 0
  return { loss = loss, ppl = math.exp(loss), tokens = count, windows = total, seconds = seconds,
    tokens_per_second = seconds > 0 and count / seconds or 0 }
end

return M
