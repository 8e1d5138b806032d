-- tools/quantstats.lua — `fairy2 quantstats`: the Fairy2i diagnostics table (per layer and stage:
-- relative error ||R - R_hat|| / ||R||, share of +-1 vs +-i codes, the four scales) for the weights of a
-- safetensors checkpoint, or for random layers of SmolLM2-135M's shapes. Post-training: what the
-- quantizer does to the weights as they are, before any training.
local f2 = require "fairy2"
local toolargs = require "fairy2.toolargs"
local fairy2 = require "fairy2.fairy2"
local C = f2.C

local M = {}

M.usage = [[
usage: fairy2 quantstats MODEL [--stages T] [--granularity tensor|row|group] [--group-size G]
                               [--include PATTERN ...] [--exclude PATTERN ...]
       fairy2 quantstats --random [--stages T] [--std S] [--seed N] [...]

MODEL      a .safetensors file, or a directory with model.safetensors or a sharded checkpoint
           (model.safetensors.index.json). Every 2-D ".weight" whose name matches an --include
           Lua pattern (default "layers%.%d+%.", the transformer blocks' linears) and no --exclude
           pattern is quantized as fairy2.convert would (odd shapes are listed as skipped).
--random   one transformer block of SmolLM2-135M's shapes (q, k, v, o, gate, up, down), N(0, S^2)
           with S = --std (default 0.02)
--stages   T residual stages (default 2)]]

local function parse(args)
  local o = { include = {}, exclude = {}, stages = 2, std = 0.02, seed = 1 }
  local i = 1
  local function value(flag)
    i = i + 1
    if args[i] == nil then error({ usage = flag .. " needs a value" }) end
    return args[i]
  end
  while i <= #args do
    local a = args[i]
    if a == "--help" or a == "-h" then
      o.help = true
    elseif a == "--random" then
      o.random = true
    elseif a == "--stages" then
      o.stages = tonumber(value(a))
    elseif a == "--granularity" then
      o.granularity = value(a)
    elseif a == "--group-size" then
      o.group_size = tonumber(value(a))
    elseif a == "--std" then
      o.std = tonumber(value(a))
    elseif a == "--seed" then
      o.seed = tonumber(value(a))
    elseif a == "--include" then
      table.insert(o.include, value(a))
    elseif a == "--exclude" then
      table.insert(o.exclude, value(a))
    elseif a:sub(1, 1) == "-" then
      error({ usage = "unknown option " .. a })
    elseif o.model then
      error({ usage = "one MODEL only (got " .. o.model .. " and " .. a .. ")" })
    else
      o.model = a
    end
    i = i + 1
  end
  if #o.include == 0 then o.include = { "layers%.%d+%." } end
  return o
end

-- { {name, tensor (f32 CPU)} ... } of the checkpoint's matching 2-D weights, and the skipped names.
local function checkpoint_weights(o)
  local st = require "fairy2.safetensors"
  local path, loaded, err = o.model, nil, nil
  local is_dir = io.open(path .. "/model.safetensors.index.json", "rb")
  if is_dir then
    is_dir:close()
    loaded, err = st.load_sharded(path)
  else
    local single = io.open(path .. "/model.safetensors", "rb")
    if single then
      single:close()
      path = path .. "/model.safetensors"
    end
    loaded, err = st.load(path)
  end
  if not loaded then return nil, nil, err end
  local out, skipped = {}, {}
  for _, name in ipairs(loaded.names) do
    local raw = loaded.tensors[name]
    raw = f2.is_tensor(raw) and raw.h or raw
    if raw.ndim == 2 and name:match("%.weight$") and fairy2.matches(name, o.include) and not fairy2.matches(name, o.exclude) then
      local rows, cols = tonumber(raw.shape[0]), tonumber(raw.shape[1])
      if rows % 2 ~= 0 or cols % 2 ~= 0 then
        skipped[#skipped + 1] = string.format("%s (%dx%d)", name, rows, cols)
      else
        local r = f2.empty({ rows, cols })
        f2.check(C.f2_copy(r.h, raw), "quantstats: reading " .. name)
        out[#out + 1] = { name = name, r = r }
      end
    end
  end
  return out, skipped
end

local function random_weights(o)
  local shapes = { { "q_proj", 576, 576 }, { "k_proj", 192, 576 }, { "v_proj", 192, 576 }, { "o_proj", 576, 576 },
    { "gate_proj", 1536, 576 }, { "up_proj", 1536, 576 }, { "down_proj", 576, 1536 } }
  local out = {}
  for i, s in ipairs(shapes) do
    out[i] = { name = "random." .. s[1], r = f2.randn({ s[2], s[3] }, { std = o.std, seed = o.seed + i }) }
  end
  return out, {}
end

-- emit(line) prints (default print).
function M.main(args, emit)
  local print = emit or print
  local o, status = toolargs.parse("quantstats", M.usage, parse, args, print, function(o)
    if not o.random and not o.model then return "give a MODEL or --random" end
  end)
  if not o then return status end
  local cfg = fairy2.config({ stages = o.stages, granularity = o.granularity, group_size = o.group_size })
  local weights, skipped, err
  if o.random then
    weights, skipped = random_weights(o)
  else
    weights, skipped, err = checkpoint_weights(o)
    if not weights then
      io.stderr:write("fairy2 quantstats: ", tostring(err), "\n")
      return 1
    end
  end
  local rows, total_err2, total_norm2 = {}, {}, 0
  for _, w in ipairs(weights) do
    local norm2 = w.r:norm() ^ 2
    total_norm2 = total_norm2 + norm2
    for t, s in ipairs(fairy2.stats(w.r, cfg)) do
      s.name, s.stage = w.name, t
      rows[#rows + 1] = s
      total_err2[t] = (total_err2[t] or 0) + s.rel_error ^ 2 * norm2
    end
    w.r:free()
  end
  print(string.format("Fairy2i, T=%d, %s scales: %d layers", cfg.stages,
    ({ [0] = "per-tensor", [1] = "per-row", [2] = "per-group" })[cfg.granularity], #weights))
  print(fairy2.format_stats(rows))
  for t = 1, cfg.stages do
    if total_norm2 > 0 then
      print(string.format("all layers, stage %d: relative error %.4f (relative MSE %.4f)", t,
        math.sqrt(total_err2[t] / total_norm2), total_err2[t] / total_norm2))
    end
  end
  for _, name in ipairs(skipped) do print("skipped (odd dimension): " .. name) end
  return 0
end

return M
