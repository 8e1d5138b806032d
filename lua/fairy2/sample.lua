-- sample.lua — picking the next token from a row of logits: greedy, or sampling with temperature,
-- top-k and top-p (nucleus), applied in that order as transformers' generate does. Seeded and
-- counter-based: draw i of seed s is f2_rng_uniform(s, i) (runtime/f2_rng.h, the numbers
-- f2_rand_uniform gives), so a generation is a pure function of (logits, seed).
--
--   local sample = require "fairy2.sample"
--   local sampler = sample.new{ temperature = 0.7, top_k = 50, top_p = 0.9, seed = 1 }
--   local id = sampler:next(logits)          -- logits: a 1-D f32 CPU tensor [V] (or [1, V])
--   sample.greedy(logits)                    -- the argmax (the lowest id among equal maxima)
--   sample.distribution(logits, opts)        -- { {id, p}, ... } the kept ids and their probabilities
--
-- temperature 0 (the default) is greedy. top_k 0 and top_p 1 switch those filters off. top-p keeps
-- the smallest set of the most probable ids whose probability sums to at least top_p.
local bit = require "bit"
local ffi = require "ffi"
local f2 = require "fairy2"

local M = {}

-- f2_rng_uniform(seed, i) of runtime/f2_rng.h, with LuaJIT's wrapping uint64 arithmetic.
function M.uniform(seed, i)
  local z = ffi.cast("uint64_t", seed) * 0x9E3779B97F4A7C15ULL + ffi.cast("uint64_t", 2 * i) * 0xD1B54A32D192ED03ULL
    + 0x632BE59BD9B4E019ULL
  z = bit.bxor(z, bit.rshift(z, 30)) * 0xBF58476D1CE4E5B9ULL
  z = bit.bxor(z, bit.rshift(z, 27)) * 0x94D049BB133111EBULL
  z = bit.bxor(z, bit.rshift(z, 31))
  return tonumber(bit.rshift(z, 11)) * 2 ^ -53
end

-- The float pointer and length of a logits row (1-D, or 2-D with one row; f32, CPU, contiguous).
local function row(logits, what)
  if not f2.is_tensor(logits) then error(what .. ": logits must be a tensor", 3) end
  local shape = logits:shape()
  if not (#shape == 1 or (#shape == 2 and shape[1] == 1)) or logits:dtype() ~= "f32" or logits:device() ~= "cpu"
    or not logits:is_contiguous() then
    error(what .. ": logits must be one contiguous f32 CPU row, [V] or [1, V]", 3)
  end
  return ffi.cast("const float *", logits.h.data), logits:numel()
end

local function argmax(p, n)
  local best, id = p[0], 0
  for i = 1, n - 1 do
    if p[i] > best then best, id = p[i], i end
  end
  return id, best
end

function M.greedy(logits)
  return (argmax(row(logits, "sample.greedy")))
end

local function check_opts(opts, what)
  opts = opts or {}
  if type(opts) ~= "table" then error(what .. ": options must be a table", 3) end
  local t, k, p = opts.temperature or 0, opts.top_k or 0, opts.top_p or 1
  if type(t) ~= "number" or t < 0 or t ~= t then error(what .. ": temperature must be a number >= 0", 3) end
  if type(k) ~= "number" or k < 0 or k % 1 ~= 0 then error(what .. ": top_k must be an integer >= 0 (0: off)", 3) end
  if type(p) ~= "number" or not (p > 0 and p <= 1) then error(what .. ": top_p must be in (0, 1] (1: off)", 3) end
  return t, k, p
end

-- The kept ids, most probable first (ties: lower id first), with their weights exp((l - max) / t)
-- and the sum of those weights: { ids = {...}, w = {...}, n, total }. Only ids that can survive
-- top-k/top-p are sorted: those within a logit margin of the best, widened until there are enough.
local function candidates(p, n, t, k, top_p)
  local _, best = argmax(p, n)
  local all = 0
  for i = 0, n - 1 do all = all + math.exp((p[i] - best) / t) end
  local margin, ids = 8 * t, nil
  while true do
    ids = {}
    local mass = 0
    for i = 0, n - 1 do
      if p[i] >= best - margin then
        ids[#ids + 1] = i
        mass = mass + math.exp((p[i] - best) / t)
      end
    end
    -- Enough when it holds the top k (top-p then works within them), or without top-k when it holds
    -- top_p of the mass; the sorted prefix of a superset is the same prefix.
    local enough = (k > 0 and #ids >= k) or (k == 0 and mass >= top_p * all)
    if enough or #ids == n then break end
    margin = margin * 2
  end
  table.sort(ids, function(a, b)
    if p[a] ~= p[b] then return p[a] > p[b] end
    return a < b
  end)
  local keep = k > 0 and math.min(k, #ids) or #ids
  local w, total = {}, 0
  for i = 1, keep do
    w[i] = math.exp((p[ids[i]] - best) / t)
    total = total + w[i]
  end
  if top_p < 1 then
    -- Without top-k the nucleus is a share of all the mass, not only of the candidates'.
    local mass = k > 0 and total or all
    local cum, cut = 0, keep
    for i = 1, keep do
      cum = cum + w[i]
      if cum >= top_p * mass then
        cut = i
        break
      end
    end
    keep, total = cut, cum
  end
  return { ids = ids, w = w, n = keep, total = total }
end

-- The distribution sampling draws from: { {id, p}, ... } most probable first (greedy: one id, p 1).
function M.distribution(logits, opts)
  local p, n = row(logits, "sample.distribution")
  local t, k, top_p = check_opts(opts, "sample.distribution")
  if t == 0 then return { { M.greedy(logits), 1 } } end
  local c = candidates(p, n, t, k, top_p)
  local out = {}
  for i = 1, c.n do out[i] = { c.ids[i], c.w[i] / c.total } end
  return out
end

local Sampler = {}
Sampler.__index = Sampler

-- opts: temperature, top_k, top_p (as above), seed (default 0). Draw i uses f2_rng_uniform(seed, i).
function M.new(opts)
  local t, k, p = check_opts(opts, "sample.new")
  local seed = (opts and opts.seed) or 0
  if type(seed) ~= "number" or seed < 0 or seed % 1 ~= 0 then error("sample.new: seed must be an integer >= 0", 2) end
  return setmetatable({ temperature = t, top_k = k, top_p = p, seed = seed, draws = 0 }, Sampler)
end

-- The next token id from a logits row.
function Sampler:next(logits)
  local p, n = row(logits, "sampler:next")
  if self.temperature == 0 or self.top_k == 1 then return (argmax(p, n)) end
  local u = M.uniform(self.seed, self.draws)
  self.draws = self.draws + 1
  local t = self.temperature
  if self.top_k == 0 and self.top_p == 1 then
    -- Plain temperature sampling: no sorting, walk the ids in order.
    local _, best = argmax(p, n)
    local total = 0
    for i = 0, n - 1 do total = total + math.exp((p[i] - best) / t) end
    local target, cum = u * total, 0
    for i = 0, n - 1 do
      cum = cum + math.exp((p[i] - best) / t)
      if cum > target then return i end
    end
    return n - 1
  end
  local c = candidates(p, n, t, self.top_k, self.top_p)
  local target, cum = u * c.total, 0
  for i = 1, c.n do
    cum = cum + c.w[i]
    if cum > target then return c.ids[i] end
  end
  return c.ids[c.n]
end

M.Sampler = Sampler
return M
