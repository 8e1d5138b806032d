-- data.lua — token shards from Lua: the training loader and the evaluation walk (docs/data.md).
--   local data = require "fairy2.data"
--   local loader = data.open("data/tokens", { seq_len = 2048, batch = 8, seed = 1 })
--   local inputs, targets = loader:batch(step, micro)   -- i32 CPU [batch, seq_len]
--   for inputs, targets, scored in loader:eval_batches() do ... end
-- Sample i of a step is a pure function of (seed, step, i); batch(step, micro) takes samples
-- micro*batch .. micro*batch + batch-1, so a resumed run needs only the step. Data parallel: pass
-- micro = rank * micro_steps + micro, and every rank reads different samples of the same step.
local bit = require "bit"
local ffi = require "ffi"
local cjson = require "cjson"
local f2 = require "fairy2"
local C = f2.C

local M = {}

-- The held-out split: a document is held out when f2_hash64(path, SPLIT_SEED) mod 10^6 falls below
-- fraction * 10^6. Fixed forever: changing it would move documents between train and eval.
M.SPLIT_SEED = 0x46325350ULL   -- "F2SP"

function M.hash64(s, seed)
  if type(s) ~= "string" then error("data.hash64: expects a string", 2) end
  return C.f2_hash64(s, #s, seed or 0ULL)
end

function M.hex64(u)
  return bit.tohex(u, 16)
end

function M.held_out(path, fraction)
  if type(path) ~= "string" then error("data.held_out: path must be a string", 2) end
  return tonumber(C.f2_hash64(path, #path, M.SPLIT_SEED) % 1000000ULL) < (fraction or 0.01) * 1e6
end

-- JSON files: read, and write pretty (sorted keys) through a temp file and a rename.
function M.read_json(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local text = f:read("*a")
  f:close()
  local ok, value = pcall(cjson.decode, text)
  if not ok then return nil, path .. ": " .. tostring(value) end
  return value
end

-- A JSON string literal. cjson writes "/" as "\/"; this undoes that (an escaped slash is the only
-- place a backslash is followed by "/" in cjson's output), so paths read naturally.
function M.json_string(s)
  return (cjson.encode(s):gsub("\\/", "/"))
end

local function encode(v, indent, out)
  local t = type(v)
  if t == "table" then
    local pad = indent .. "  "
    if #v > 0 or next(v) == nil then
      if #v == 0 then return table.insert(out, "[]") end
      table.insert(out, "[\n")
      for i, x in ipairs(v) do
        table.insert(out, pad)
        encode(x, pad, out)
        table.insert(out, i < #v and ",\n" or "\n")
      end
      table.insert(out, indent .. "]")
    else
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = tostring(k) end
      table.sort(keys)
      table.insert(out, "{\n")
      for i, k in ipairs(keys) do
        table.insert(out, pad .. M.json_string(k) .. ": ")
        encode(v[k], pad, out)
        table.insert(out, i < #keys and ",\n" or "\n")
      end
      table.insert(out, indent .. "}")
    end
  elseif t == "cdata" then
    table.insert(out, tostring(tonumber(v)))
  elseif t == "string" then
    table.insert(out, M.json_string(v))
  else
    table.insert(out, cjson.encode(v))
  end
end

function M.to_json(value)
  local out = {}
  encode(value, "", out)
  return table.concat(out)
end

function M.write_json(path, value)
  local tmp = path .. ".tmp"
  local f, err = io.open(tmp, "wb")
  if not f then return nil, err end
  f:write(M.to_json(value), "\n")
  f:close()
  local ok, rerr = os.rename(tmp, path)
  if not ok then return nil, rerr end
  return true
end

-- A shard's header as a Lua table (hashes as hex strings), or nil, err.
local info_out = ffi.new("f2_shard_info[1]")
function M.shard_info(path, verify)
  local s = C.f2_shard_open(path)
  if s == nil then
    local err = f2.last_error()
    C.f2_clear_error()
    return nil, err
  end
  C.f2_shard_get_info(info_out, s)
  local i = info_out[0]
  local info = { path = path, tokens = tonumber(i.token_count), documents = tonumber(i.document_count),
    token_bytes = i.token_bytes, vocab_size = i.vocab_size, eos_id = i.eos_id, version = i.version,
    tokenizer_id = M.hex64(i.tokenizer_id), content_hash = M.hex64(i.content_hash) }
  local rc = verify and C.f2_shard_verify(s) or 0
  C.f2_shard_close(s)
  if rc ~= 0 then
    local err = f2.last_error()
    C.f2_clear_error()
    return nil, err
  end
  return info
end

-- ---------------------------------------------------------------- the loader

local Loader = {}
Loader.__index = Loader

local function i32(rows, cols)
  local shape = ffi.new("int64_t[2]", rows, cols)
  local t = C.f2_tensor_new(C.F2_I32, C.F2_CPU, 2, shape)
  if t == nil then f2.check(-1, "data: tensor", 3) end
  return ffi.gc(t, C.f2_tensor_free)
end

local function c_loader(seq_len, seed)
  local l = C.f2_loader_new(seq_len, seed)
  if l == nil then f2.check(-1, "data.open", 4) end
  return ffi.gc(l, C.f2_loader_free)
end

local function add_source(l, weight, shards, what)
  local paths = ffi.new("const char *[?]", #shards, shards)
  f2.check(C.f2_loader_add_source(l, weight, paths, #shards), "data.open: " .. what, 4)
end

-- The sources of a tokens manifest (fairy2 data tokenize): { {name, train = {paths}, eval = {paths},
-- train_tokens} }, paths made absolute against the manifest's directory.
local function manifest_sources(path)
  local file = path
  if not file:match("%.json$") then file = path .. "/manifest.json" end
  local m, err = M.read_json(file)
  if not m then return nil, "data.open: cannot read the token manifest: " .. tostring(err) end
  if m.format ~= "fairy2-tokens" then return nil, "data.open: " .. file .. " is not a fairy2 token manifest" end
  local dir = file:match("^(.*)/[^/]*$") or "."
  local sources = {}
  for _, s in ipairs(m.sources or {}) do
    local src = { name = s.name, train = {}, eval = {}, train_tokens = 0 }
    for _, split in ipairs { "train", "eval" } do
      for _, shard in ipairs(s[split] or {}) do
        table.insert(src[split], shard.path:sub(1, 1) == "/" and shard.path or dir .. "/" .. shard.path)
        if split == "train" then src.train_tokens = src.train_tokens + shard.tokens end
      end
    end
    sources[#sources + 1] = src
  end
  return sources, nil, m
end

-- data.open(manifest path or directory, opts), or data.open{ sources = {{name=, weight=, train={paths},
-- eval={paths}}, ...} } with the opts in the same table. opts: seq_len, batch (rows per micro-batch),
-- seed (default 0), weights = {name = weight} (default: each source's train tokens, the natural
-- mixture; a source left out of weights is not trained on).
function M.open(spec, opts)
  opts = opts or (type(spec) == "table" and spec) or {}
  if type(opts.seq_len) ~= "number" or opts.seq_len < 1 then error("data.open: opts.seq_len must be a positive number", 2) end
  if type(opts.batch) ~= "number" or opts.batch < 1 then error("data.open: opts.batch must be a positive number", 2) end
  local sources, manifest
  if type(spec) == "string" then
    local err
    sources, err, manifest = manifest_sources(spec)
    if not sources then error(err, 2) end
  elseif type(spec) == "table" and type(spec.sources) == "table" then
    sources = {}
    for i, s in ipairs(spec.sources) do
      if type(s.train) ~= "table" and type(s.eval) ~= "table" then
        error("data.open: source " .. i .. " needs a train or eval list of shard paths", 2)
      end
      sources[i] = { name = s.name or tostring(i), train = s.train or {}, eval = s.eval or {}, weight = s.weight }
    end
  else
    error("data.open: expects a token manifest path or { sources = {...} }", 2)
  end
  local by_name = {}
  for _, s in ipairs(sources) do by_name[s.name] = s end
  if opts.weights then
    for name in pairs(opts.weights) do
      if not by_name[name] then
        local names = {}
        for _, s in ipairs(sources) do names[#names + 1] = s.name end
        error("data.open: no source '" .. tostring(name) .. "' (sources: " .. table.concat(names, ", ") .. ")", 2)
      end
    end
  end

  local seed = opts.seed or 0
  local self = setmetatable({ seq_len = opts.seq_len, batch_size = opts.batch, seed = seed, sources = {},
    eval_sources = {}, manifest = manifest, eval_loaders = {} }, Loader)
  self.train = c_loader(opts.seq_len, seed)
  for _, s in ipairs(sources) do
    local w
    if opts.weights then w = opts.weights[s.name] or 0 else w = s.weight or s.train_tokens or 1 end
    if w > 0 and #s.train > 0 then
      add_source(self.train, w, s.train, "source '" .. s.name .. "'")
      table.insert(self.sources, { name = s.name, weight = w, shards = s.train })
    end
    if #s.eval > 0 then table.insert(self.eval_sources, { name = s.name, shards = s.eval }) end
  end
  -- The evaluation walk: every source's held-out shards in manifest order (weights play no part).
  self.eval = c_loader(opts.seq_len, 0)
  for _, s in ipairs(self.eval_sources) do add_source(self.eval, 0, s.shards, "held-out shards of '" .. s.name .. "'") end
  self.eval_windows = tonumber(C.f2_loader_eval_windows(self.eval))
  self.inputs, self.targets = i32(opts.batch, opts.seq_len), i32(opts.batch, opts.seq_len)
  self.eval_inputs, self.eval_targets = i32(opts.batch, opts.seq_len), i32(opts.batch, opts.seq_len)
  return self
end

-- inputs, targets (i32 CPU [batch, seq_len]) of micro-batch `micro` (from 0) of step `step` (from 0).
-- Without out tensors, the loader's own are filled and returned: the next call overwrites them.
function Loader:batch(step, micro, inputs, targets)
  if #self.sources == 0 then error("data: no source to train on (all weights are 0, or no train shards)", 2) end
  if type(step) ~= "number" or step < 0 then error("data: batch(step, micro): step must be a number >= 0", 2) end
  micro = micro or 0
  inputs, targets = inputs or self.inputs, targets or self.targets
  f2.check(C.f2_loader_batch(inputs, targets, self.train, step, micro * inputs.shape[0]), "data: batch", 2)
  return inputs, targets
end

-- Where sample `sample` of `step` comes from: source name, shard path, first token.
local window_out = ffi.new("f2_window[1]")
function Loader:window(step, sample)
  f2.check(C.f2_loader_window(window_out, self.train, step, sample), "data: window", 2)
  local w = window_out[0]
  local src = self.sources[w.source + 1]
  return src.name, src.shards[w.shard + 1], tonumber(w.start)
end

-- Iterates over the evaluation windows, batch rows at a time: inputs, targets, scored (the targets
-- that count; the others are -1), first window index. source (optional) walks one source only.
function Loader:eval_batches(source)
  local l, total = self.eval, self.eval_windows
  if source then
    l = self.eval_loaders[source]
    if not l then
      local found
      for _, s in ipairs(self.eval_sources) do if s.name == source then found = s end end
      if not found then error("data: no held-out shards for source '" .. tostring(source) .. "'", 2) end
      l = c_loader(self.seq_len, 0)
      add_source(l, 0, found.shards, "held-out shards of '" .. source .. "'")
      self.eval_loaders[source] = l
    end
    total = tonumber(C.f2_loader_eval_windows(l))
  end
  local first, scored = 0, ffi.new("int64_t[1]")
  local inputs, targets = self.eval_inputs, self.eval_targets
  return function()
    if first >= total then return nil end
    f2.check(C.f2_loader_eval_batch(inputs, targets, scored, l, first), "data: eval batch", 2)
    local at = first
    first = first + self.batch_size
    return inputs, targets, tonumber(scored[0]), at
  end
end

-- Releases the mapped shards now (the GC would, later).
function Loader:close()
  for _, k in ipairs { "train", "eval" } do
    if self[k] ~= nil then C.f2_loader_free(ffi.gc(self[k], nil)) end
    self[k] = nil
  end
  for name, l in pairs(self.eval_loaders) do
    C.f2_loader_free(ffi.gc(l, nil))
    self.eval_loaders[name] = nil
  end
end

return M
