-- plot.lua — the loss curves of a run as an SVG picture, in plain Lua: training loss per step (raw,
-- and smoothed), held-out loss at each evaluation, and the baselines measured before training (full
-- precision, post-training quantization) as dashed lines.
--
--   plot.write("runs/x/loss.svg", records, { title = "..." })   -- records as in metrics.jsonl
--   plot.from_metrics("runs/x/metrics.jsonl", "runs/x/loss.svg")
local cjson = require "cjson"

local M = {}

local function finite(x) return type(x) == "number" and x == x and x ~= math.huge and x ~= -math.huge end

-- Round steps of about (hi - lo) / n: 1, 2 or 5 times a power of ten.
local function ticks(lo, hi, n)
  local span = hi - lo
  if span <= 0 then span = math.abs(hi) > 0 and math.abs(hi) or 1 end
  local raw = span / n
  local mag = 10 ^ math.floor(math.log10(raw))
  local step = mag
  for _, m in ipairs { 1, 2, 5, 10 } do
    if m * mag >= raw then step = m * mag break end
  end
  local out = {}
  for v = math.ceil(lo / step) * step, hi + step * 1e-9, step do out[#out + 1] = v end
  return out, step
end

local function label(v, step)
  if step >= 1 then return string.format("%d", math.floor(v + 0.5)) end
  local digits = math.max(0, -math.floor(math.log10(step)))
  return string.format("%." .. digits .. "f", v)
end

local function escape(s) return (tostring(s):gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;")) end

-- The SVG text. records: { {kind = "train", step, loss}, {kind = "eval", step, loss, label?} }; an
-- eval with a label (a baseline) is drawn as a dashed horizontal line.
function M.svg(records, opts)
  opts = opts or {}
  local W, H = opts.width or 860, opts.height or 480
  local left, right, top, bottom = 70, 190, 40, 50
  local train, evals, baselines = {}, {}, {}
  for _, r in ipairs(records) do
    if finite(r.loss) and type(r.step) == "number" then
      if r.kind == "train" then
        train[#train + 1] = r
      elseif r.kind == "eval" and r.label then
        baselines[#baselines + 1] = r
      elseif r.kind == "eval" then
        evals[#evals + 1] = r
      end
    end
  end
  local xmin, xmax, ymin, ymax = math.huge, -math.huge, math.huge, -math.huge
  local function see(r, y_only)
    if not y_only then xmin, xmax = math.min(xmin, r.step), math.max(xmax, r.step) end
    ymin, ymax = math.min(ymin, r.loss), math.max(ymax, r.loss)
  end
  for _, r in ipairs(train) do see(r) end
  for _, r in ipairs(evals) do see(r) end
  for _, r in ipairs(baselines) do see(r, true) end
  if xmin == math.huge then xmin, xmax = 0, 1 end
  if ymin == math.huge then ymin, ymax = 0, 1 end
  if xmax == xmin then xmax = xmin + 1 end
  local pad = (ymax - ymin) * 0.05
  if pad == 0 then pad = math.max(math.abs(ymax) * 0.05, 0.05) end
  ymin, ymax = ymin - pad, ymax + pad
  local pw, ph = W - left - right, H - top - bottom
  local function X(v) return left + (v - xmin) / (xmax - xmin) * pw end
  local function Y(v) return top + (1 - (v - ymin) / (ymax - ymin)) * ph end

  local out = {}
  local function add(fmt, ...) out[#out + 1] = string.format(fmt, ...) end
  add('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">', W, H, W, H)
  add('<rect width="%d" height="%d" fill="white"/>', W, H)
  add('<text x="%d" y="22" font-size="15">%s</text>', left, escape(opts.title or "loss"))
  local xt, xs = ticks(xmin, xmax, 8)
  local yt, ys = ticks(ymin, ymax, 6)
  for _, v in ipairs(xt) do
    add('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#eee"/>', X(v), top, X(v), top + ph)
    add('<text x="%.1f" y="%d" text-anchor="middle">%s</text>', X(v), top + ph + 16, label(v, xs))
  end
  for _, v in ipairs(yt) do
    add('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eee"/>', left, Y(v), left + pw, Y(v))
    add('<text x="%d" y="%.1f" text-anchor="end">%s</text>', left - 6, Y(v) + 4, label(v, ys))
  end
  add('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>', left, top, pw, ph)
  add('<text x="%.1f" y="%d" text-anchor="middle">optimizer step</text>', left + pw / 2, H - 10)
  add('<text x="16" y="%.1f" text-anchor="middle" transform="rotate(-90 16 %.1f)">cross-entropy loss (nats/token)</text>',
    top + ph / 2, top + ph / 2)

  local function polyline(points, style)
    if #points == 0 then return end
    local p = {}
    for i, r in ipairs(points) do p[i] = string.format("%.1f,%.1f", X(r.step), Y(r.loss)) end
    add('<polyline fill="none" %s points="%s"/>', style, table.concat(p, " "))
  end
  -- Smoothing: an exponential moving average whose window grows with the run (about 1/20 of it).
  local smooth, alpha, ema = {}, 1 - 1 / math.max(1, #train / 20), nil
  for i, r in ipairs(train) do
    ema = ema and alpha * ema + (1 - alpha) * r.loss or r.loss
    smooth[i] = { step = r.step, loss = ema }
  end
  local legend = {}
  if #train >= 20 then   -- enough steps for a smoothed line over the raw one
    polyline(train, 'stroke="#9ecae1" stroke-width="1"')
    polyline(smooth, 'stroke="#08519c" stroke-width="2"')
    legend[#legend + 1] = { "#9ecae1", "train (per step)" }
    legend[#legend + 1] = { "#08519c", "train (smoothed)" }
  elseif #train > 0 then
    polyline(train, 'stroke="#08519c" stroke-width="2"')
    legend[#legend + 1] = { "#08519c", "train" }
  end
  polyline(evals, 'stroke="#e6550d" stroke-width="2"')
  for _, r in ipairs(evals) do add('<circle cx="%.1f" cy="%.1f" r="3.5" fill="#e6550d"/>', X(r.step), Y(r.loss)) end
  if #evals > 0 then legend[#legend + 1] = { "#e6550d", "held-out" } end
  local colors = { "#555555", "#b2182b", "#1b7837", "#762a83" }
  for i, r in ipairs(baselines) do
    local c = colors[(i - 1) % #colors + 1]
    add('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="%s" stroke-dasharray="6 4"/>', left, Y(r.loss), left + pw,
      Y(r.loss), c)
    legend[#legend + 1] = { c, string.format("%s %.3f", r.label, r.loss), true }
  end
  for i, l in ipairs(legend) do
    local y = top + 10 + (i - 1) * 20
    add('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>', left + pw + 12, y, left + pw + 36, y,
      l[1], l[3] and ' stroke-dasharray="6 4"' or "")
    add('<text x="%d" y="%d">%s</text>', left + pw + 42, y + 4, escape(l[2]))
  end
  add("</svg>")
  return table.concat(out, "\n") .. "\n"
end

-- Writes the picture to path (through path.tmp and a rename); returns true, or nil and why.
function M.write(path, records, opts)
  local tmp = path .. ".tmp"
  local f, err = io.open(tmp, "wb")
  if not f then return nil, err end
  f:write(M.svg(records, opts))
  f:close()
  local ok, rerr = os.rename(tmp, path)
  if not ok then return nil, rerr end
  return true
end

-- The records of a metrics.jsonl file (lines that don't parse are skipped), or nil, err.
function M.read_metrics(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local records = {}
  for line in f:lines() do
    local ok, rec = pcall(cjson.decode, line)
    if ok and type(rec) == "table" then records[#records + 1] = rec end
  end
  f:close()
  return records
end

function M.from_metrics(metrics_path, svg_path, opts)
  local records, err = M.read_metrics(metrics_path)
  if not records then return nil, err end
  return M.write(svg_path, records, opts)
end

return M
