-- fairy2.lua — Fairy2i from Lua (FAIRY2I.md; docs/fairy2.md): quantizer configs, conversion of a model
-- tree to Fairy2Linear layers with a report, diagnostics, batched quantization and packing.
--
--   local fairy2 = require "fairy2.fairy2"
--   local report = fairy2.convert(model, { stages = 2 })        -- prints what it did
--   fairy2.print_stats(fairy2.model_stats(model))                -- per layer and stage
--   local p = fairy2.pack(model.model.layers["0"].mlp.up_proj)   -- 2-bit codes + scales
local ffi = require "ffi"
local f2 = require "fairy2"
local C = f2.C

local M = {}

M.GRANULARITY = { tensor = 0, row = 1, group = 2 }
local GRANULARITY_NAMES = { [0] = "per-tensor", [1] = "per-row", [2] = "per-group" }

local function h(t) return f2.is_tensor and f2.is_tensor(t) and t.h or t end

-- An f2_quant_config from { stages = 2, granularity = "tensor" | "row" | "group" (or 0..2),
-- group_size = G, check_finite = true } (an f2_quant_config cdata passes through).
function M.config(opts)
  if ffi.istype("f2_quant_config", opts) then return opts end
  opts = opts or {}
  if type(opts) ~= "table" then error("fairy2.config: options must be a table", 2) end
  local stages = opts.stages or 2
  if type(stages) ~= "number" or stages < 1 or stages % 1 ~= 0 then
    error("fairy2.config: stages must be an integer T >= 1, got " .. tostring(stages), 2)
  end
  local g = opts.granularity or "tensor"
  g = type(g) == "string" and M.GRANULARITY[g] or g
  if not GRANULARITY_NAMES[g] then
    error("fairy2.config: granularity must be 'tensor', 'row' or 'group', got " .. tostring(opts.granularity), 2)
  end
  local group_size = opts.group_size or 0
  if g == 2 and (type(group_size) ~= "number" or group_size < 1 or group_size % 1 ~= 0) then
    error("fairy2.config: per-group scales need group_size >= 1, got " .. tostring(opts.group_size), 2)
  end
  return ffi.new("f2_quant_config", { stages, g, group_size, opts.check_finite == false and 1 or 0 })
end

-- S, the scale groups per matrix of a (rows x cols) weight.
function M.scale_groups(cfg, rows, cols)
  local s = C.f2_fairy2_scale_groups(M.config(cfg), rows, cols)
  if s < 0 then f2.check(-1, "fairy2.scale_groups", 2) end
  return tonumber(s)
end

-- R (f32, 2-D) -> R_hat (opts.dtype "f32" | "bf16"), scales, codes (u8), as new tensors on R's device.
function M.quantize(r, opts)
  local cfg = M.config(opts)
  local dtype = type(opts) == "table" and opts.dtype or "f32"
  local shape = r:shape()
  if #shape ~= 2 then error("fairy2.quantize: R must be 2-D, got " .. #shape .. " dims", 2) end
  local device = r:device()
  local r_hat = f2.empty(shape, { dtype = dtype, device = device })
  local scales = f2.empty({ cfg.stages, 4, M.scale_groups(cfg, shape[1], shape[2]) }, { device = device })
  local codes = f2.empty({ cfg.stages, 2, shape[1] / 2, shape[2] / 2 }, { dtype = "u8", device = device })
  f2.check(C.f2_fairy2_quantize(h(r_hat), h(scales), h(codes), h(r), cfg), "fairy2.quantize", 2)
  return r_hat, scales, codes
end

-- ---------------------------------------------------------------- conversion

-- Whether name matches any of the Lua patterns.
function M.matches(name, patterns)
  for _, p in ipairs(patterns) do
    if name:find(p) then return true end
  end
  return false
end
local matches = M.matches

local function count_params(model)
  local n = 0
  for _, p in ipairs(model:named_parameters()) do n = n + p.value:numel() end
  return n
end

local function millions(n) return string.format("%.2fM", n / 1e6) end

-- Converts the model's Linear layers to Fairy2Linear in place and returns a report; prints it unless
-- opts.quiet. opts: the quantizer's (stages, granularity, group_size, check_finite) and Fairy2Linear's
-- (a8, param), plus include / exclude: lists of Lua patterns matched against module names
-- ("model.layers.0.mlp.up_proj"). Default include: every linear of the transformer blocks
-- ("layers%.%d+%."), so embeddings, norms, the LM head (tied or not) stay full precision. A layer with
-- an odd dimension is skipped with a warning (opts.log, default io.stderr).
-- Report: { converted = {{name, shape, params}...}, excluded = ..., skipped = ..., params = {converted,
-- excluded, skipped, total}, bits_per_weight = {converted, model}, stages, granularity }.
function M.convert(model, opts)
  if type(model) ~= "table" or type(model.named_modules) ~= "function" then
    error("fairy2.convert: model must be an nn module", 2)
  end
  opts = opts or {}
  local ok, cfg = pcall(M.config, opts)
  if not ok then error("fairy2.convert: " .. tostring(cfg):gsub("^fairy2%.config: ", ""), 2) end
  local include = opts.include or { "layers%.%d+%." }
  local exclude = opts.exclude or {}
  if type(include) ~= "table" or type(exclude) ~= "table" then
    error("fairy2.convert: include and exclude must be lists of Lua patterns", 2)
  end
  local Linear = require "fairy2.nn.linear"
  local Fairy2Linear = require "fairy2.nn.fairy2_linear"
  local log = opts.log or io.stderr
  local report = { converted = {}, excluded = {}, skipped = {}, stages = cfg.stages,
    granularity = GRANULARITY_NAMES[cfg.granularity] }
  local by_name = {}
  for _, entry in ipairs(model:named_modules()) do by_name[entry.name] = entry.module end
  local layer_opts = { stages = cfg.stages, granularity = cfg.granularity, group_size = cfg.group_size,
    check_finite = cfg.skip_finite_check == 0, a8 = opts.a8, param = opts.param }
  local scale_bits = 0
  for _, entry in ipairs(model:named_modules()) do
    local m, name = entry.module, entry.name
    if getmetatable(m) == Linear then
      local item = { name = name, shape = { m.out_features, m.in_features }, params = m.out_features * m.in_features }
      if not matches(name, include) or matches(name, exclude) then
        table.insert(report.excluded, item)
      elseif m.out_features % 2 ~= 0 or m.in_features % 2 ~= 0 then
        table.insert(report.skipped, item)
        log:write(string.format("fairy2 convert: skipping %s (%dx%d): an odd dimension cannot be split into U, W\n",
          name, m.out_features, m.in_features))
      else
        local parent_name, child = name:match("^(.*)%.([^.]+)$")
        local parent = by_name[parent_name or ""]
        child = child or name
        if not parent or parent.children[child] ~= m then error("fairy2.convert: cannot find the parent of " .. name, 2) end
        local q = Fairy2Linear.from_linear(m, layer_opts)
        parent:replace_child(child, q)
        scale_bits = scale_bits + 32 * q.scales:numel()
        table.insert(report.converted, item)
      end
    end
  end
  local params = { total = count_params(model) }
  for _, kind in ipairs { "converted", "excluded", "skipped" } do
    params[kind] = 0
    for _, item in ipairs(report[kind]) do params[kind] = params[kind] + item.params end
  end
  report.params = params
  -- Each stage codes a complex entry (two real weights) in 2 bits; everything else stays 16-bit.
  local converted_bits = params.converted * cfg.stages + scale_bits
  report.bits_per_weight = {
    converted = params.converted > 0 and converted_bits / params.converted or 0,
    model = params.total > 0 and (converted_bits + 16 * (params.total - params.converted)) / params.total or 0,
  }
  if not opts.quiet then print(M.format_report(report)) end
  return report
end

local function names_of(items)
  local names = {}
  for i = 1, math.min(#items, 6) do names[i] = items[i].name end
  if #items > 6 then names[#names + 1] = "... " .. (#items - 6) .. " more" end
  return #names > 0 and " (" .. table.concat(names, ", ") .. ")" or ""
end

function M.format_report(r)
  local lines = {
    string.format("fairy2 convert: T=%d (W%d), %s scales", r.stages, r.stages, r.granularity),
    string.format("  converted %4d linear layers %10s params", #r.converted, millions(r.params.converted)),
    string.format("  excluded  %4d linear layers %10s params%s", #r.excluded, millions(r.params.excluded), names_of(r.excluded)),
    string.format("  skipped   %4d linear layers %10s params%s", #r.skipped, millions(r.params.skipped), names_of(r.skipped)),
    string.format("  other parameters (embeddings, norms, ...) %s, full precision",
      millions(r.params.total - r.params.converted - r.params.excluded - r.params.skipped)),
    string.format("  bits per weight: %.3f in converted layers (codes + scales), %.3f over the model (the rest at 16)",
      r.bits_per_weight.converted, r.bits_per_weight.model),
  }
  return table.concat(lines, "\n")
end

-- The model's Fairy2Linear layers: { {name =, module =}, ... } in module order.
function M.layers(model)
  local Fairy2Linear = require "fairy2.nn.fairy2_linear"
  local out = {}
  for _, entry in ipairs(model:named_modules()) do
    if getmetatable(entry.module) == Fairy2Linear then out[#out + 1] = entry end
  end
  return out
end

-- ---------------------------------------------------------------- batched quantization

-- Quantizes every Fairy2Linear of the model in a few launches (f2_fairy2_quantize_batch, layers
-- grouped by config, R_hat dtype and device); each layer's next forward uses its R_hat instead of
-- quantizing again. opts.dtype: R_hat's dtype (default: each layer's current one, else f32).
function M.quantize_all(model, opts)
  opts = opts or {}
  local groups, order = {}, {}
  for _, entry in ipairs(M.layers(model)) do
    local m = entry.module
    local r = m:master()
    local dtype = opts.dtype or (m.r_hat and m.r_hat:dtype()) or "f32"
    m:ensure_r_hat(dtype, r:device())   -- in a fused projection: its slice of the group's stack
    local c = m.cfg
    local key = table.concat({ c.stages, c.granularity, c.group_size, c.skip_finite_check, dtype, r:device() }, ":")
    if not groups[key] then
      groups[key] = { cfg = c, layers = {} }
      order[#order + 1] = key
    end
    table.insert(groups[key].layers, { m = m, r = r })
  end
  for _, key in ipairs(order) do
    local g = groups[key]
    local n = #g.layers
    local r_hat, scales, codes, r = ffi.new("f2_tensor*[?]", n), ffi.new("f2_tensor*[?]", n),
      ffi.new("f2_tensor*[?]", n), ffi.new("const f2_tensor*[?]", n)
    for i, l in ipairs(g.layers) do
      r_hat[i - 1], scales[i - 1], codes[i - 1], r[i - 1] = h(l.m.r_hat), h(l.m.scales), nil, h(l.r)
    end
    f2.check(C.f2_fairy2_quantize_batch(r_hat, scales, codes, r, n, g.cfg), "fairy2.quantize_all", 2)
    for _, l in ipairs(g.layers) do l.m.r_hat_ready = true end
  end
end

-- ---------------------------------------------------------------- diagnostics

-- Per stage t (1-based): { rel_error = ||R - R_hat_t|| / ||R||, real_share_u, real_share_w (share of
-- +-1 codes; the rest are +-i), scales = {U re, U im, W re, W im} (means over scale groups) }.
-- R: a tensor on any device; cfg: a config or its options.
function M.stats(r, cfg)
  cfg = M.config(cfg)
  local out = ffi.new("f2_fairy2_stage_stats[?]", cfg.stages)
  f2.check(C.f2_fairy2_stats(out, h(r), cfg), "fairy2.stats", 2)
  local stages = {}
  for t = 0, cfg.stages - 1 do
    local s = out[t]
    stages[t + 1] = { rel_error = s.rel_error, real_share_u = s.real_share_u, real_share_w = s.real_share_w,
      scales = { s.scale_mean[0], s.scale_mean[1], s.scale_mean[2], s.scale_mean[3] } }
  end
  return stages
end

-- Rows { name, stage, rel_error, real_share_u, real_share_w, scales } for every Fairy2Linear.
function M.model_stats(model)
  local rows = {}
  for _, entry in ipairs(M.layers(model)) do
    for t, s in ipairs(entry.module:stats()) do
      s.name, s.stage = entry.name, t
      rows[#rows + 1] = s
    end
  end
  return rows
end

-- The rows of model_stats (or any rows with those fields) as a text table.
function M.format_stats(rows)
  local width = 5
  for _, r in ipairs(rows) do width = math.max(width, #r.name) end
  local head = string.format("%-" .. width .. "s %5s %9s %7s %7s %10s %10s %10s %10s", "layer", "stage", "rel.err",
    "U +-1", "W +-1", "U s_re", "U s_im", "W s_re", "W s_im")
  local lines = { head, string.rep("-", #head) }
  for _, r in ipairs(rows) do
    lines[#lines + 1] = string.format("%-" .. width .. "s %5d %9.4f %6.1f%% %6.1f%% %10.3e %10.3e %10.3e %10.3e", r.name,
      r.stage, r.rel_error, 100 * r.real_share_u, 100 * r.real_share_w, r.scales[1], r.scales[2], r.scales[3], r.scales[4])
  end
  return table.concat(lines, "\n")
end

function M.print_stats(rows) print(M.format_stats(rows)) end

-- ---------------------------------------------------------------- packing

-- A layer's (Fairy2Linear or {weight = R, cfg = ...}) codes packed 2 bits each (4 per byte) and its
-- scales, on the CPU: { stages, granularity, group_size, shape = {out, in}, packed = u8 (T, 2, out/2,
-- ceil(in/8)), scales = f32 (T, 4, S) }.
function M.pack(layer)
  local cfg = layer.cfg
  local r = (layer.master and layer:master() or layer.weight):to({ dtype = "f32", device = "cpu" })
  local shape = r:shape()
  local _, scales, codes = M.quantize(r, cfg)
  local cs = codes:shape()
  local packed = f2.empty({ cs[1], cs[2], cs[3], math.ceil(cs[4] / 4) }, { dtype = "u8" })
  f2.check(C.f2_fairy2_pack(h(packed), h(codes)), "fairy2.pack", 2)
  codes:free()
  return { stages = cfg.stages, granularity = cfg.granularity, group_size = cfg.group_size, shape = shape,
    packed = packed, scales = scales }
end

-- The codes (u8, T x 2 x out/2 x in/2) of a packed layer.
function M.unpack(p)
  local codes = f2.empty({ p.stages, 2, p.shape[1] / 2, p.shape[2] / 2 }, { dtype = "u8" })
  f2.check(C.f2_fairy2_unpack(h(codes), h(p.packed)), "fairy2.unpack", 2)
  return codes
end

-- R_hat (dtype "f32" | "bf16", CPU) of a packed layer: the bits its quantization wrote.
function M.dequantize(p, dtype)
  local cfg = M.config({ stages = p.stages, granularity = p.granularity, group_size = p.group_size })
  local codes = M.unpack(p)
  local r_hat = f2.empty(p.shape, { dtype = dtype or "f32" })
  f2.check(C.f2_fairy2_dequantize(h(r_hat), h(p.scales), h(codes), cfg), "fairy2.dequantize", 2)
  codes:free()
  return r_hat
end

return M
