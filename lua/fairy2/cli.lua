-- cli.lua — the fairy2 command line (M.usage says what it takes). A FILE that returns a table is a
-- recipe: overrides are applied, its validate(cfg) function (if any) may reject the result, then it
-- runs (its run function, or fairy2.<kind>.run). A FILE that returns nothing is a plain script and
-- gets the arguments as `...` and `arg`. A name that is not a file runs
-- lua/fairy2/tools/<name>.lua's main(args). Errors: one line "fairy2: <message>" on stderr, exit
-- status 1, or 2 for a bad command line; FAIRY2_TRACEBACK=1 adds the traceback.
local recipe = require "fairy2.recipe"

local M = {}

M.usage = [==[
usage: fairy2 [options] [FILE.lua [key=value ...] | TOOL [args ...]]

  fairy2 FILE.lua [key=value ...]   run a recipe (a Lua file returning a table) with overrides,
                                    or a Lua script (it gets the arguments as ... and arg)
  fairy2 TOOL [args ...]            run a tool (see below); fairy2 TOOL --help for its arguments
  fairy2                            the REPL (f2 = require "fairy2" is there already)
  fairy2 -i FILE.lua [key=value]    run FILE, then the REPL; a recipe it returns is in `recipe`
                                    (not run: require("fairy2.cli").run(recipe) runs it), any
                                    other value in `result`
  fairy2 -e CODE                    run a Lua chunk (repeatable; before FILE)

options:
  -e CODE                 run the Lua chunk CODE
  -i                      the REPL after FILE and -e chunks
  --print-config[=json]   print the resolved recipe (as Lua, or as JSON) and exit; may also come
                          after FILE among the overrides
  --version               fairy2, LuaJIT, CUDA, cuBLAS, NCCL versions and the GPUs seen
  -h, --help              this text
  --                      the end of options

overrides: a.b.c=value sets a setting of the recipe to the type of the value it replaces:
  numbers (2e8, 0x10), booleans (true/false, yes/no, 1/0), strings (quotes optional),
  lists ([1,2,3] or 1,2,3). An unknown key is an error that names the closest valid keys.

environment: FAIRY2_LUA_DIR (the Lua library), FAIRY2_HISTORY (REPL history file, default
  ~/.fairy2_history), FAIRY2_TRACEBACK=1 (tracebacks with errors)
]==]

-- Tools are lua/fairy2/tools/<name>.lua with main(args) -> exit status; --help lists those present.
M.tools = {
  { "generate", "generate text from a model" },
  { "eval", "evaluate perplexity on held-out data" },
  { "data", "prepare token shards from text" },
  { "export", "export a trained model (HF safetensors, packed fairy2)" },
  { "fetch", "fetch a model from the Hugging Face hub" },
  { "quantstats", "Fairy2i diagnostics of a model or random layers" },
  { "plot", "draw a run's loss curves (SVG)" },
}

local function tool_path(name)
  return name:match("^[%w_%-]+$") and package.searchpath("fairy2.tools." .. name, package.path) or nil
end

-- A readable regular file (a directory such as ./data opens too, but fails on read).
local function is_regular_file(path)
  local f = io.open(path, "r")
  if not f then return false end
  local _, err = f:read(1)
  f:close()
  return err == nil
end

local function help_text()
  local lines = { M.usage, "tools:" }
  for _, tool in ipairs(M.tools) do
    if tool_path(tool[1]) then lines[#lines + 1] = string.format("  %-10s %s", tool[1], tool[2]) end
  end
  if #lines == 2 then lines[#lines + 1] = "  (none installed yet)" end
  return table.concat(lines, "\n") .. "\n"
end

-- Usage errors carry this metatable, so main() exits 2 for them.
local Usage = { __tostring = function(e) return e.message end }
local function usage_error(message) error(setmetatable({ message = message }, Usage), 0) end

local function pack(...) return { n = select("#", ...), ... } end

local function version_text()
  local f2 = require "fairy2"
  local size = 8192
  local buf = f2.ffi.new("char[?]", size)
  f2.check(f2.C.f2_build_info(buf, size), "build info")
  local text = f2.ffi.string(buf)
  return text .. (text:sub(-1) == "\n" and "" or "\n") .. jit.version .. "\n"
end

-- Runs a resolved recipe: its run function, else require("fairy2." .. kind).run. Returns the
-- exit status (a number that run returns, else 0).
function M.run(cfg)
  if type(cfg) ~= "table" then error("cli.run: the recipe must be a table", 2) end
  local status
  if type(cfg.run) == "function" then
    status = cfg.run(cfg)
  elseif cfg.kind ~= nil then
    if type(cfg.kind) ~= "string" or not package.searchpath("fairy2." .. tostring(cfg.kind), package.path) then
      error("recipe kind '" .. tostring(cfg.kind) .. "': there is no module fairy2." .. tostring(cfg.kind), 0)
    end
    local mod = require("fairy2." .. cfg.kind)
    if type(mod) ~= "table" or type(mod.run) ~= "function" then
      error("recipe kind '" .. cfg.kind .. "': fairy2." .. cfg.kind .. " has no run function", 0)
    end
    status = mod.run(cfg)
  else
    error("the recipe has no run function and no kind: nothing to run", 0)
  end
  return type(status) == "number" and status or 0
end

-- Splits what follows a recipe into overrides and --print-config.
local function parse_recipe_args(args, print_config)
  local overrides = {}
  for _, a in ipairs(args) do
    if a == "--print-config" or a == "--print-config=lua" then
      print_config = "lua"
    elseif a == "--print-config=json" then
      print_config = "json"
    elseif a:sub(1, 1) == "-" then
      usage_error("unexpected option '" .. a .. "' after the recipe (only key=value overrides and --print-config go there)")
    else
      overrides[#overrides + 1] = a
    end
  end
  return overrides, print_config
end

-- Runs FILE; a returned table is a recipe. Returns the exit status.
local function run_file(path, args, opts)
  local chunk, err = recipe.compile(path)
  if not chunk then error(err, 0) end
  _G.arg = { [0] = path, unpack(args) }
  local results = pack(chunk(unpack(args)))
  local cfg = results[1]
  if type(cfg) ~= "table" then
    if opts.print_config then error(path .. " returned no recipe table, so there is no config to print", 0) end
    if opts.interactive and cfg ~= nil then _G.result = cfg end
    return 0
  end
  local overrides, print_config = parse_recipe_args(args, opts.print_config)
  local ok, why = pcall(recipe.apply_overrides, cfg, overrides)
  if not ok then usage_error(tostring(why)) end
  if type(cfg.validate) == "function" then cfg.validate(cfg) end
  if print_config then
    io.write(print_config == "json" and recipe.to_json(cfg) or recipe.to_lua(cfg), "\n")
    return 0
  end
  if opts.interactive then
    _G.recipe = cfg
    return 0
  end
  return M.run(cfg)
end

local function run_tool(name, args)
  local mod = require("fairy2.tools." .. name)
  if type(mod) ~= "table" or type(mod.main) ~= "function" then
    error("tool '" .. name .. "' (" .. tool_path(name) .. ") has no main function", 0)
  end
  local status = mod.main(args)
  return type(status) == "number" and status or 0
end

local function main(argv)
  local opts, chunks, i = {}, {}, 1
  while i <= #argv do
    local a = argv[i]
    if a == "-h" or a == "--help" then
      io.write(help_text())
      return 0
    elseif a == "--version" then
      io.write(version_text())
      return 0
    elseif a == "-e" then
      if argv[i + 1] == nil then usage_error("-e needs a Lua chunk: fairy2 -e 'print(1+1)'") end
      chunks[#chunks + 1] = argv[i + 1]
      i = i + 1
    elseif a == "-i" then
      opts.interactive = true
    elseif a == "--print-config" or a == "--print-config=lua" then
      opts.print_config = "lua"
    elseif a == "--print-config=json" then
      opts.print_config = "json"
    elseif a == "--" then
      i = i + 1
      break
    elseif a:sub(1, 1) == "-" then
      usage_error("unknown option '" .. a .. "' (fairy2 --help lists the options)")
    else
      break
    end
    i = i + 1
  end
  local file, args = argv[i], { select(i + 1, unpack(argv)) }
  if opts.print_config and not file then usage_error("--print-config needs a recipe: fairy2 --print-config FILE.lua") end

  for _, code in ipairs(chunks) do
    local chunk, err = loadstring(code, "=(command line)")
    if not chunk then error(err, 0) end
    chunk()
  end
  local status = 0
  if file then
    if is_regular_file(file) then
      status = run_file(file, args, opts)
    elseif tool_path(file) then
      status = run_tool(file, args)
    elseif file:find("[/.]") then
      error("cannot open " .. file .. ": no such file", 0)
    else
      usage_error("'" .. file .. "' is neither a file nor a tool (fairy2 --help lists the tools)")
    end
  end
  if opts.interactive or (not file and #chunks == 0) then
    if status ~= 0 then return status end
    local note = _G.recipe and "The recipe is in `recipe`; require(\"fairy2.cli\").run(recipe) runs it."
    return require("fairy2.repl").run(note)
  end
  return status
end

-- The entry point (runtime/main.c): returns the exit status; prints errors as one line.
function M.main()
  local argv = {}
  for i = 1, #arg do argv[i] = arg[i] end
  local trace = os.getenv("FAIRY2_TRACEBACK")
  trace = trace ~= nil and trace ~= "" and trace ~= "0"
  local ok, result = xpcall(function() return main(argv) end, function(e)
    if getmetatable(e) == Usage then return e end
    local message = type(e) == "string" and e or tostring(e)
    return trace and debug.traceback(message, 2) or message
  end)
  if ok then return result end
  io.stdout:flush()
  io.stderr:write("fairy2: ", tostring(result), "\n")
  return getmetatable(result) == Usage and 2 or 1
end

return M
