-- repl.lua — the fairy2 REPL: `fairy2` or `fairy2 -i FILE`. Prompt "f2> ", continuation ">> ".
-- An expression (or "=expr") prints its values, tab-separated; an incomplete chunk asks for more
-- lines; an error prints a traceback and the REPL goes on; Ctrl-C interrupts the running statement
-- (or drops the line being typed); Ctrl-D exits. Tab completes globals, keywords and a.b.c / a:b
-- fields (through metatable __index chains). History: ~/.fairy2_history, or $FAIRY2_HISTORY ("" =
-- none). Chunks run with the JIT off for themselves and the functions they define, because LuaJIT
-- checks the Ctrl-C hook only in the interpreter; library code they call is still compiled.
local ffi = require "ffi"
local f2 = require "fairy2"
local C = f2.C

local M = {}

local MAX_SHOWN = 40   -- table entries shown before "..."

-- ------------------------------------------------------------------ showing values

local function short(v)
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) == "table" then
    local mt = getmetatable(v)
    if type(mt) == "table" and mt.__tostring then return tostring(v) end
    return next(v) == nil and "{}" or "{...}"
  end
  return tostring(v)
end

-- One value, readably: tables shallowly ({1, 2, name = "x", sub = {...}}), the rest by tostring.
function M.show(v)
  if type(v) ~= "table" then return tostring(v) end
  local mt = getmetatable(v)
  if type(mt) == "table" and mt.__tostring then return tostring(v) end
  local parts, n = {}, #v
  for i = 1, math.min(n, MAX_SHOWN) do parts[#parts + 1] = short(v[i]) end
  local keys = {}
  for k in pairs(v) do
    if not (type(k) == "number" and k >= 1 and k <= n and k % 1 == 0) then keys[#keys + 1] = k end
  end
  table.sort(keys, function(a, b)
    if type(a) == type(b) and (type(a) == "string" or type(a) == "number") then return a < b end
    return type(a) < type(b)
  end)
  for _, k in ipairs(keys) do
    if #parts >= MAX_SHOWN then break end
    local name = type(k) == "string" and k:match("^[%a_][%w_]*$") and k or "[" .. short(k) .. "]"
    parts[#parts + 1] = name .. " = " .. short(v[k])
  end
  local total = n + #keys
  if total > #parts then parts[#parts + 1] = "... (" .. (total - #parts) .. " more)" end
  local name = type(mt) == "table" and type(mt.__name) == "string" and mt.__name .. " " or ""
  return name .. "{" .. table.concat(parts, ", ") .. "}"
end

-- ------------------------------------------------------------------ completion

local keywords = { "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto",
  "if", "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while" }

-- cdata hides its metatype, so completion asks these for a cdata value's methods table (or nil).
-- Tensors (lua/fairy2/tensor.lua) are cdata whose methods are f2.Tensor.
M.cdata_fields = {
  function(v) return f2.is_tensor and f2.is_tensor(v) and f2.Tensor or nil end,
}

-- The names v answers to: its own keys and those of its metatable __index tables, in a chain.
function M.fields(v, methods_only)
  local names, seen = {}, {}
  local function add(k, x)
    if type(k) == "string" and k:match("^[%a_][%w_]*$") and not seen[k] and
       (not methods_only or type(x) == "function") then
      seen[k] = true
      names[#names + 1] = k
    end
  end
  if type(v) == "cdata" then
    for _, provider in ipairs(M.cdata_fields) do
      local ok, methods = pcall(provider, v)
      if ok and type(methods) == "table" then
        for k, x in pairs(methods) do add(k, x) end
      end
    end
  end
  for _ = 1, 16 do   -- bounded: a chain may loop
    if type(v) == "table" then
      for k, x in pairs(v) do add(k, x) end
    end
    local mt = debug.getmetatable(v)
    local index = type(mt) == "table" and rawget(mt, "__index")
    if type(index) ~= "table" then break end
    v = index
  end
  table.sort(names)
  return names
end

-- For the text left of the cursor: where the word being completed starts (byte offset) and the
-- candidates that could replace it.
function M.completions(before, env)
  env = env or _G
  local expr = before:match("[%a_][%w_%.:]*$") or ""
  local lead = before:sub(1, #before - #expr)
  if lead:match("[%.:%]%)\"']$") then return #before, {} end   -- a field of something we can't evaluate
  local head, sep, partial = expr:match("^(.-)([%.:]?)([%w_]*)$")
  if not head then return #before, {} end
  local names
  if sep == "" then
    names = M.fields(env)
    for _, k in ipairs(keywords) do names[#names + 1] = k end
  else
    local v = env
    for part in (head .. "."):gmatch("([^%.:]*)[%.:]") do
      local ok, x = pcall(function() return v[part] end)
      if not ok or x == nil then return #before, {} end
      v = x
    end
    names = M.fields(v, sep == ":")
  end
  local out = {}
  for _, k in ipairs(names) do
    if k:sub(1, #partial) == partial then out[#out + 1] = k end
  end
  table.sort(out)
  return #before - #partial, out
end

local function complete(editor)
  local text = ffi.string(C.f2_lineedit_text(editor))
  local start, names = M.completions(text:sub(1, C.f2_lineedit_cursor(editor)))
  local array = ffi.new("const char *[?]", #names + 1, names)   -- names anchors the strings
  f2.check(C.f2_lineedit_complete(editor, start, #names, array), "completion")
end

-- ------------------------------------------------------------------ evaluation

local function pack(...) return { n = select("#", ...), ... } end

-- The chunk for src, returning its values packed: as an expression first (so it prints), else as
-- statements. The expression goes into pack(...), not after a bare return, because a tail call
-- there would drop the chunk's frame and error("x") would blame the REPL. Returns the chunk, or nil
-- and "incomplete" (more lines may finish it) or the syntax error; then whether it is an expression.
function M.compile(src)
  if src:sub(1, 1) == "=" then src = src:sub(2) end
  local chunk = loadstring("return (...)(" .. src .. "\n)", "=stdin")
  if chunk then return chunk, true end
  local err
  chunk, err = loadstring(src, "=stdin")
  if chunk then return chunk, false end
  if err:sub(-7) == "'<eof>'" then return nil, "incomplete" end
  return nil, err
end

-- The traceback, cut where the REPL's own frames begin.
local function traceback(err)
  local text = debug.traceback(type(err) == "string" and err or M.show(err), 2)
  local lines = {}
  for line in text:gmatch("[^\n]+") do
    if #lines > 0 and (line:find("fairy2/repl.lua", 1, true) or line:find("in function 'xpcall'", 1, true)) then
      break
    end
    lines[#lines + 1] = line
  end
  if lines[#lines] == "stack traceback:" then lines[#lines] = nil end
  return table.concat(lines, "\n")
end

-- Runs a compiled chunk with Ctrl-C armed (and leaves it armed: M.run decides when to disarm);
-- prints its values or the error.
function M.execute(chunk, is_expression)
  jit.off(chunk, true)
  local ok, err = xpcall(function()
    f2.check(C.f2_repl_interrupt_arm(), "Ctrl-C handler")
    local results = pack(chunk(pack))
    if is_expression then results = results[1] end
    if results.n > 0 then   -- shown in here too: a __tostring may fail or loop
      local shown = {}
      for i = 1, results.n do shown[i] = M.show(results[i]) end
      io.stdout:write(table.concat(shown, "\t"), "\n")
    end
  end, traceback)
  io.stdout:flush()
  if not ok then io.stderr:write(err, "\n") end
  return ok
end

-- ------------------------------------------------------------------ the loop

local function history_path()
  local path = os.getenv("FAIRY2_HISTORY")
  if path then return path ~= "" and path or nil end
  local home = os.getenv("HOME")
  return home and home ~= "" and home .. "/.fairy2_history" or nil
end

-- Runs the REPL until Ctrl-D or end of input; returns the exit status (0). note: a line for the
-- banner (shown on a terminal only).
function M.run(note)
  _G.f2 = f2
  local editor = C.f2_lineedit_new(history_path(), 1000)
  if editor == nil then error("line editor: " .. f2.last_error(), 0) end
  editor = ffi.gc(editor, C.f2_lineedit_free)
  local terminal = C.f2_lineedit_is_terminal(editor) == 1
  if terminal then
    print(string.format("fairy2 %s (%s). f2 = require \"fairy2\". Tab completes, Ctrl-C interrupts, Ctrl-D exits.",
      f2.version, jit.version))
    if note then print(note) end
  end

  local pending   -- lines of an incomplete chunk
  local function step()
    local rc
    repeat
      rc = C.f2_lineedit_read(editor, pending and ">> " or "f2> ")
      if rc == C.F2_LINE_COMPLETE then complete(editor) end
    until rc ~= C.F2_LINE_COMPLETE
    if rc < 0 then error("line editor: " .. f2.last_error(), 0) end
    if rc == C.F2_LINE_EOF then return false end
    if rc == C.F2_LINE_INTERRUPT then
      pending = nil
      return true
    end
    local line = ffi.string(C.f2_lineedit_text(editor))
    if terminal then C.f2_lineedit_history_add(editor, line) end
    local src = pending and pending .. "\n" .. line or line
    if not pending and src:match("^%s*$") then return true end
    local chunk, err = M.compile(src)
    pending = nil
    if chunk then
      M.execute(chunk, err)
    elseif err == "incomplete" then
      pending = src
    else
      io.stderr:write(err, "\n")
    end
    return true
  end

  -- On a terminal Ctrl-C stays armed: the editor reads it as a key, and one landing between
  -- statements raises in step, where pcall catches it. From a pipe the default action (exit) holds
  -- while reading, since a read blocked in C would not see the hook until the next statement.
  while true do
    if terminal then f2.check(C.f2_repl_interrupt_arm(), "Ctrl-C handler") else C.f2_repl_interrupt_disarm() end
    local ok, more = pcall(step)
    if not ok then
      io.stderr:write(tostring(more), "\n")
      if tostring(more):find("^line editor: ") then
        C.f2_repl_interrupt_disarm()
        return 1
      end
    elseif not more then
      break
    end
  end
  C.f2_repl_interrupt_disarm()
  ffi.gc(editor, nil)
  C.f2_lineedit_free(editor)
  return 0
end

return M
