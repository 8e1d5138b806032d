-- recipe.lua — recipes: Lua files that return a table, and Hydra-style key=value overrides.
--
-- The recipe's own table is the schema: every setting has a default there (usually in a base recipe),
-- and an override takes the type of the value it replaces:
--   number   train.tokens=2e8          (any Lua number: 2e8, 0x10, -1.5)
--   boolean  quant.enabled=no          (true/false, yes/no, 1/0, on/off)
--   string   model.name=smollm2        (quotes optional: model.name="a b")
--   list     train.lr_steps=[1,2,3]    (or 1,2,3; elements take the type of the list's elements)
-- An unknown key is an error naming the closest valid keys; a table can't be set to a scalar.
--
-- Base recipes: load() puts the recipe's directory and its parent on package.path, so a recipe in
-- recipes/ can say `local base = require "base"` or `require "recipes.base"`, then return
-- recipe.merge(base, { ... }) (merge copies: the base table that require caches is never changed).
local M = {}

-- A list: a table whose keys are exactly 1..n (an empty table counts as one).
local function is_list(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n == #t
end
M.is_list = is_list

function M.copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = M.copy(x) end
  return setmetatable(t, getmetatable(v))
end

-- A new table: base with over merged in. Maps merge key by key, recursively; anything else in
-- over (scalars, lists, functions) replaces what base had.
function M.merge(base, over)
  if type(base) ~= "table" then error("recipe.merge: base is a " .. type(base) .. ", not a table", 2) end
  if type(over) ~= "table" then error("recipe.merge: over is a " .. type(over) .. ", not a table", 2) end
  local out = M.copy(base)
  for k, v in pairs(over) do
    if type(v) == "table" and type(out[k]) == "table" and not is_list(v) and not is_list(out[k]) then
      out[k] = M.merge(out[k], v)
    else
      out[k] = M.copy(v)
    end
  end
  return out
end

local function dirname(path)
  local dir = path:match("^(.*)/[^/]*$")
  return dir == nil and "." or dir == "" and "/" or dir
end

-- Adds dir's patterns after the library's own paths but before the working directory's "./?.lua",
-- so a recipe's sibling (require "base") wins over a same-named file where fairy2 was started.
local function add_to_path(dir)
  for _, pattern in ipairs { dir .. "/?.lua", dir .. "/?/init.lua" } do
    local path = ";" .. package.path .. ";"
    if not path:find(";" .. pattern .. ";", 1, true) then
      local cwd_at = path:find(";./?.lua;", 1, true)
      if cwd_at then
        path = path:sub(1, cwd_at) .. pattern .. path:sub(cwd_at)
      else
        path = path .. pattern .. ";"
      end
      package.path = path:sub(2, -2)
    end
  end
end

-- Compiles the recipe file; returns the chunk, or nil and a message. The recipe's directory and its
-- parent go on package.path (after the library's own paths, so a recipe can't shadow fairy2).
function M.compile(path)
  if type(path) ~= "string" then error("recipe.compile: path must be a string", 2) end
  local f, err = io.open(path, "r")
  if not f then return nil, "cannot open " .. (err or path) end
  f:close()
  local chunk
  chunk, err = loadfile(path)
  if not chunk then return nil, err end
  local dir = dirname(path)
  add_to_path(dir)
  add_to_path((dir == "." or dir == ".." or dir:match("/%.%.?$")) and dir .. "/.." or dirname(dir))
  return chunk
end

-- Runs the recipe file and returns its table, or nil and a message.
function M.load(path)
  local chunk, err = M.compile(path)
  if not chunk then return nil, err end
  local ok, cfg = pcall(chunk)
  if not ok then return nil, tostring(cfg) end
  if type(cfg) ~= "table" then
    return nil, path .. " returned " .. type(cfg) .. ", not a recipe table"
  end
  return cfg
end

-- ------------------------------------------------------------------ overrides

local function levenshtein(a, b)
  local prev, cur = {}, {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    cur[0] = i
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev, cur = cur, prev
  end
  return prev[#b]
end

local function sorted_keys(t)
  local keys = {}
  for k, v in pairs(t) do
    if type(k) == "string" and type(v) ~= "function" then keys[#keys + 1] = k end
  end
  table.sort(keys)
  return keys
end

-- "(did you mean 'a.b'?)" for the nearest keys of t, or the list of valid keys when none is near.
local function suggest(t, prefix, name)
  local keys, best, near = sorted_keys(t), math.huge, {}
  for _, k in ipairs(keys) do
    local d = levenshtein(name:lower(), k:lower())
    if d < best then best, near = d, { k } elseif d == best then near[#near + 1] = k end
  end
  local function full(k) return "'" .. prefix .. k .. "'" end
  if #keys == 0 then return "(no settings there)" end
  if best <= math.max(2, math.floor(#name / 3)) then
    for i, k in ipairs(near) do near[i] = full(k) end
    return "(did you mean " .. table.concat(near, " or ") .. "?)"
  end
  for i, k in ipairs(keys) do keys[i] = full(k) end
  return "(valid keys" .. (prefix ~= "" and " under '" .. prefix:sub(1, -2) .. "'" or "") .. ": " ..
    table.concat(keys, ", ") .. ")"
end

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

local function unquote(s)
  local q, inner = s:match("^(['\"])(.*)%1$")
  return q and inner or s
end

local booleans = { ["true"] = true, yes = true, on = true, ["1"] = true,
                   ["false"] = false, no = false, off = false, ["0"] = false }

-- Converts text to the type of like; returns the value, or nil and why not.
local function convert_scalar(text, like)
  local kind = type(like)
  if kind == "number" then
    local v = tonumber(text)
    if v == nil then return nil, "expected a number, got '" .. text .. "'" end
    return v
  elseif kind == "boolean" then
    local v = booleans[text:lower()]
    if v == nil then return nil, "expected a boolean (true/false, yes/no, 1/0), got '" .. text .. "'" end
    return v
  elseif kind == "string" then
    return unquote(text)
  elseif like == nil then   -- element of an empty list: the text decides
    local v = tonumber(text)
    if v ~= nil then return v end
    if text == "true" or text == "false" then return text == "true" end
    return unquote(text)
  end
  return nil, "can't set a " .. kind
end

local function convert_list(text, like)
  local body = text:match("^%[(.*)%]$") or text
  local out = {}
  if trim(body) == "" then return out end
  for item in (body .. ","):gmatch("(.-),") do
    item = trim(item)
    if item == "" then return nil, "empty element in list '" .. text .. "'" end
    local v, err = convert_scalar(item, like[#out + 1] ~= nil and like[#out + 1] or like[1])
    if v == nil then return nil, "element " .. (#out + 1) .. ": " .. err end
    out[#out + 1] = v
  end
  return out
end

-- Applies one "a.b.c=value" to cfg (in place); raises "override '...': why" on any problem.
function M.apply_override(cfg, override)
  if type(override) ~= "string" then error("recipe.apply_override: override must be a string", 2) end
  local function fail(why) error("override '" .. override .. "': " .. why, 0) end
  local key, text = override:match("^([^=]*)=(.*)$")
  if not key then fail("expected key=value") end
  key, text = trim(key), trim(text)
  if key == "" then fail("empty key") end
  local parts = {}
  for part in (key .. "."):gmatch("(.-)%.") do
    if part == "" then fail("empty part in key '" .. key .. "'") end
    if not part:match("^[%w_%-]+$") then fail("bad character in key part '" .. part .. "'") end
    parts[#parts + 1] = part
  end
  local t, prefix = cfg, ""
  for i, part in ipairs(parts) do
    local k = part
    if t[k] == nil and tonumber(part) and t[tonumber(part)] ~= nil then k = tonumber(part) end
    local old = t[k]
    if old == nil then fail("unknown key '" .. prefix .. part .. "' " .. suggest(t, prefix, part)) end
    prefix = prefix .. part .. "."
    if i < #parts then
      if type(old) ~= "table" then
        fail("'" .. prefix:sub(1, -2) .. "' is a " .. type(old) .. ", it has no key '" .. parts[i + 1] .. "'")
      end
      t = old
    else
      local v, err
      if type(old) == "table" then
        if not is_list(old) then
          fail("'" .. key .. "' is a table of settings; set its keys (" .. key .. ".<key>=value), not the table")
        end
        v, err = convert_list(text, old)
      elseif type(old) == "function" or type(old) == "userdata" or type(old) == "cdata" then
        err = "'" .. key .. "' is a " .. type(old) .. " and can't be set from the command line"
      else
        v, err = convert_scalar(text, old)
      end
      if v == nil then fail(err) end
      t[k] = v
    end
  end
  return cfg
end

-- The command-line overrides applied to each recipe table (weak keys), so that settings a run
-- merges in later (the recipe's `gpu` section on a GPU) can be overridden again by them.
M.overrides_of = setmetatable({}, { __mode = "k" })

-- Applies a list of overrides in order (a later one wins); returns cfg.
function M.apply_overrides(cfg, overrides)
  if type(cfg) ~= "table" then error("recipe.apply_overrides: cfg must be a table", 2) end
  if type(overrides) ~= "table" then error("recipe.apply_overrides: overrides must be a list", 2) end
  for _, o in ipairs(overrides) do M.apply_override(cfg, o) end
  local seen = M.overrides_of[cfg] or {}
  for _, o in ipairs(overrides) do seen[#seen + 1] = o end
  M.overrides_of[cfg] = seen
  return cfg
end

-- ------------------------------------------------------------------ printing

local function is_identifier(k)
  return type(k) == "string" and k:match("^[%a_][%w_]*$") ~= nil
end

local function sorted_pairs(t)
  local keys = {}
  for k, v in pairs(t) do if type(v) ~= "function" then keys[#keys + 1] = k end end
  table.sort(keys, function(a, b)
    if type(a) == type(b) and (type(a) == "number" or type(a) == "string") then return a < b end
    return type(a) == "number"
  end)
  return keys
end

-- The shortest text that reads back as the same number.
local function number_text(x)
  if x ~= x or x == math.huge or x == -math.huge then return x ~= x and "0/0" or x > 0 and "1/0" or "-1/0" end
  for digits = 14, 17 do
    local s = string.format("%." .. digits .. "g", x)
    if tonumber(s) == x then return s end
  end
end

local function lua_text(v, indent, out)
  if type(v) == "string" then
    out[#out + 1] = string.format("%q", v)
  elseif type(v) == "number" then
    out[#out + 1] = number_text(v)
  elseif type(v) ~= "table" then
    out[#out + 1] = tostring(v)
  elseif is_list(v) then
    local items = {}
    for i = 1, #v do
      local sub = {}
      lua_text(v[i], indent, sub)
      items[i] = table.concat(sub)
    end
    out[#out + 1] = "{" .. table.concat(items, ", ") .. "}"
  else
    out[#out + 1] = "{\n"
    for _, k in ipairs(sorted_pairs(v)) do
      out[#out + 1] = indent .. "  " .. (is_identifier(k) and k or "[" .. string.format("%q", k) .. "]") .. " = "
      lua_text(v[k], indent .. "  ", out)
      out[#out + 1] = ",\n"
    end
    out[#out + 1] = indent .. "}"
  end
end

-- The config as Lua text (functions left out), keys sorted: what --print-config shows.
function M.to_lua(cfg)
  local out = {}
  lua_text(cfg, "", out)
  return table.concat(out)
end

-- The config as JSON (functions left out).
function M.to_json(cfg)
  local function strip(v)
    if type(v) ~= "table" then return v end
    local t = {}
    for k, x in pairs(v) do if type(x) ~= "function" then t[k] = strip(x) end end
    return t
  end
  return require("cjson").encode(strip(cfg))
end

return M
