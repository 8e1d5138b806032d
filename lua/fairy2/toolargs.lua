-- toolargs.lua — the argument prelude every `fairy2 NAME` tool shares. A tool's parse(args) raises
-- error({ usage = why }) on bad arguments and sets o.help for --help/-h.
local M = {}

-- Returns the options, or nil and the exit status: 0 after printing the usage for --help, 2 after
-- "fairy2 NAME: why" and the usage on stderr. missing(o), optional, returns a why when required
-- arguments are absent. print_fn prints the --help text (default print).
function M.parse(name, usage, parse, args, print_fn, missing)
  local ok, o = pcall(parse, args or {})
  local why
  if not ok then
    why = type(o) == "table" and o.usage or tostring(o)
  elseif not o.help and missing then
    why = missing(o)
  end
  if why then
    io.stderr:write("fairy2 ", name, ": ", why, "\n", usage, "\n")
    return nil, 2
  end
  if o.help then
    (print_fn or print)(usage)
    return nil, 0
  end
  return o
end

-- nil when the tool can run on device ("cpu" or "cuda"), else the message to fail with.
function M.device_problem(device)
  if device ~= "cuda" then return nil end
  local f2 = require "fairy2"
  if f2.cuda.available() then return nil end
  return "--device cuda: " .. (f2.cuda.compiled() and "no usable GPU" or "this fairy2 was built without CUDA") ..
    "; use --device cpu"
end

return M
