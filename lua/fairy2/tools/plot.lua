-- tools/plot.lua — `fairy2 plot RUN_DIR [--out FILE.svg]`: draws the loss curves of a training run
-- (its metrics.jsonl) as an SVG picture, by default RUN_DIR/loss.svg. Works while the run goes on.
local plot = require "fairy2.plot"

local M = {}

M.usage = [[
usage: fairy2 plot RUN_DIR [--out FILE.svg]
  the training and held-out loss curves of a run (RUN_DIR/metrics.jsonl) as an SVG picture,
  written to RUN_DIR/loss.svg unless --out says where
]]

function M.main(args)
  local dir, out
  local i = 1
  while i <= #args do
    local a = args[i]
    if a == "-h" or a == "--help" then
      io.write(M.usage)
      return 0
    elseif a == "--out" then
      out = args[i + 1]
      if not out then io.stderr:write("fairy2 plot: --out needs a file name\n", M.usage) return 2 end
      i = i + 1
    elseif a:sub(1, 1) == "-" or dir then
      io.stderr:write("fairy2 plot: unexpected argument '", a, "'\n", M.usage)
      return 2
    else
      dir = a
    end
    i = i + 1
  end
  if not dir then io.stderr:write(M.usage) return 2 end
  dir = dir:gsub("/+$", "")
  out = out or dir .. "/loss.svg"
  local records, err = plot.read_metrics(dir .. "/metrics.jsonl")
  if not records then
    io.stderr:write("fairy2 plot: cannot read ", dir, "/metrics.jsonl: ", tostring(err), "\n")
    return 1
  end
  local ok, werr = plot.write(out, records, { title = (dir:match("[^/]+$") or dir) .. ": loss" })
  if not ok then
    io.stderr:write("fairy2 plot: cannot write ", out, ": ", tostring(werr), "\n")
    return 1
  end
  print(string.format("fairy2 plot: %d records -> %s", #records, out))
  return 0
end

return M
