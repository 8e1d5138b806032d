-- test_recipe.lua — recipes (lua/fairy2/recipe.lua): loading with a base recipe, merge, overrides
-- converted to the type they replace, every override error, closest-key suggestions, printing.
-- Fixtures: tests/lua/recipes/. Override values are fresh random numbers and keys each run.
local t = dofile("tests/lua/harness.lua")
local recipe = require "fairy2.recipe"
local cjson = require "cjson"

math.randomseed(t.seed())
local function rand_int(lo, hi) return math.random(lo, hi) end

local function deep_equal(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= "table" then return a == b end
  for k, v in pairs(a) do if not deep_equal(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

-- ---------------------------------------------------------------- loading and merging
local base = assert(recipe.load("tests/lua/recipes/base.lua"))
local child, err = recipe.load("tests/lua/recipes/child.lua")
t.check(child, "child.lua loads: " .. tostring(err))
t.check(child.name == "child" and child.train.steps == 5, "child overrides its base")
t.check(child.train.lr == 3e-4 and child.model.dim == 64 and child.quant.exclude[1] == "lm_head",
  "child keeps the base's other settings")
t.check(deep_equal(child.train.lr_steps, { 1, 2 }), "a list in the child replaces the base's list")
t.check(type(child.run) == "function", "child's run function survives the merge")
t.check(package.loaded.base.train.steps == 100 and package.loaded.base.name == "base",
  "merge leaves the required base table untouched")
child.train.tags[1] = "changed"
t.check(package.loaded.base.train.tags[1] == "a", "merge deep-copies: the child does not share the base's tables")

local dotted = recipe.load("tests/lua/recipes/child_dotted.lua")
t.check(dotted and dotted.name == "dotted" and dotted.train.steps == 100,
  "require 'recipes.base' works from the recipe's parent directory")

local missing, why = recipe.load("tests/lua/recipes/no_such_recipe.lua")
t.check(missing == nil and why:find("cannot open", 1, true), "a missing recipe: nil, 'cannot open ...'")
local tmp = os.tmpname()
local f = assert(io.open(tmp, "w"))
f:write("return 42\n")
f:close()
missing, why = recipe.load(tmp)
t.check(missing == nil and why:find("not a recipe table", 1, true), "a file returning a number is not a recipe")
f = assert(io.open(tmp, "w"))
f:write("return {\n a = 1,\n b = = 2 }\n")
f:close()
missing, why = recipe.load(tmp)
t.check(missing == nil and why:find(":3:", 1, true), "a syntax error is reported with its line: " .. tostring(why))
os.remove(tmp)

local merged = recipe.merge({ a = { x = 1, y = 2 }, l = { 1, 2, 3 } }, { a = { y = 5 }, l = { 9 } })
t.check(deep_equal(merged, { a = { x = 1, y = 5 }, l = { 9 } }), "merge: maps merge, lists replace")
t.raises(function() recipe.merge(nil, {}) end, "base is a nil")

-- ---------------------------------------------------------------- overrides: conversion
local function fresh() return recipe.copy(base) end

local steps, layers = rand_int(1, 1e6), rand_int(1, 64)
local lr = math.random() * 1e-2
local cfg = recipe.apply_overrides(fresh(), {
  "train.steps=" .. steps, string.format("train.lr=%.17g", lr), "model.layers=" .. layers,
})
t.check(cfg.train.steps == steps and cfg.model.layers == layers, "integer overrides")
t.check(cfg.train.lr == lr, "a float override round-trips exactly")
local e = rand_int(2, 12)
t.check(recipe.apply_override(fresh(), "train.tokens=2e" .. e).train.tokens == 2 * 10 ^ e, "2eN notation")
t.check(recipe.apply_override(fresh(), "train.warmup=0x" .. string.format("%x", steps)).train.warmup == steps,
  "hex numbers")
t.check(recipe.apply_override(fresh(), "train.lr=-" .. steps).train.lr == -steps, "negative numbers")

for text, value in pairs { ["true"] = true, ["false"] = false, yes = true, no = false, ["1"] = true,
                           ["0"] = false, on = true, off = false, YES = true, False = false } do
  local c = fresh()
  c.quant.enabled = not value
  t.check(recipe.apply_override(c, "quant.enabled=" .. text).quant.enabled == value, "boolean '" .. text .. "'")
end

local word = ""
for _ = 1, rand_int(1, 12) do word = word .. string.char(rand_int(97, 122)) end
t.check(recipe.apply_override(fresh(), "model.name=" .. word).model.name == word, "string as is")
t.check(recipe.apply_override(fresh(), "model.name=\"" .. word .. " x\"").model.name == word .. " x",
  "double-quoted string")
t.check(recipe.apply_override(fresh(), "model.name='" .. word .. "'").model.name == word, "single-quoted string")
t.check(recipe.apply_override(fresh(), "model.name=" .. steps).model.name == tostring(steps),
  "a string setting keeps digits as a string")
t.check(recipe.apply_override(fresh(), "model.name=a=b").model.name == "a=b", "the value may contain '='")
t.check(recipe.apply_override(fresh(), " train.steps = " .. steps .. " ").train.steps == steps, "spaces trimmed")

local list = {}
for i = 1, rand_int(1, 6) do list[i] = rand_int(-1000, 1000) end
local text = table.concat(list, ",")
t.check(deep_equal(recipe.apply_override(fresh(), "train.lr_steps=[" .. text .. "]").train.lr_steps, list),
  "list [a,b,c] of numbers")
t.check(deep_equal(recipe.apply_override(fresh(), "train.lr_steps=" .. text).train.lr_steps, list),
  "list a,b,c of numbers")
t.check(deep_equal(recipe.apply_override(fresh(), "train.lr_steps=[ " .. table.concat(list, " , ") .. " ]")
  .train.lr_steps, list), "list with spaces")
t.check(deep_equal(recipe.apply_override(fresh(), "train.lr_steps=[]").train.lr_steps, {}), "empty list")
t.check(deep_equal(recipe.apply_override(fresh(), "quant.exclude=[lm_head,'embed', " .. word .. "]")
  .quant.exclude, { "lm_head", "embed", word }), "list of strings")
t.check(deep_equal(recipe.apply_override(fresh(), "train.tags=" .. steps).train.tags, { tostring(steps) }),
  "a one-element list of strings from a number")
t.check(deep_equal(recipe.apply_override(fresh(), "extra=[" .. steps .. ",x,true]").extra, { steps, "x", true }),
  "an empty default list takes each element's own type")
local idx = rand_int(1, 3)
t.check(recipe.apply_override(fresh(), "train.lr_steps." .. idx .. "=" .. steps).train.lr_steps[idx] == steps,
  "a list element by index")
cfg = recipe.apply_overrides(fresh(), { "train.steps=1", "train.steps=" .. steps })
t.check(cfg.train.steps == steps, "a later override wins")
t.check(deep_equal(recipe.apply_overrides(fresh(), {}), base), "no overrides: unchanged")

-- ---------------------------------------------------------------- overrides: errors
local function fails(override, ...)
  local ok, msg = pcall(recipe.apply_override, fresh(), override)
  local good = not ok and msg:find("override '" .. override .. "'", 1, true) ~= nil
  for _, want in ipairs { ... } do good = good and msg:find(want, 1, true) ~= nil end
  t.check(good, "override '" .. override .. "' should fail mentioning " .. table.concat({ ... }, ", ") ..
    "; got: " .. tostring(ok or msg))
end
fails("train.steps", "expected key=value")
fails("=" .. steps, "empty key")
fails("train..steps=1", "empty part")
fails(".train=1", "empty part")
fails("train.=1", "empty part")
fails("train.st eps=1", "bad character")
fails("train.steps=abc", "expected a number", "'abc'")
fails("train.steps=", "expected a number")
fails("train.steps=1_000", "expected a number")
fails("quant.enabled=maybe", "expected a boolean")
fails("model=tiny", "'model' is a table", "model.<key>=value")
fails("train.lr_steps=[1,x]", "element 2", "expected a number")
fails("train.lr_steps=[1,,2]", "empty element")
fails("train.steps.x=1", "'train.steps' is a number")
fails("train.tokns=5", "unknown key 'train.tokns'", "did you mean 'train.tokens'?")
fails("traim.steps=5", "unknown key 'traim'", "did you mean 'train'?")
fails("train.zzzzzzzzzzzz=1", "unknown key 'train.zzzzzzzzzzzz'", "valid keys under 'train':", "'train.tokens'")
fails("nothing_like_it_at_all=1", "valid keys:", "'seed'")

-- A random typo of a random key: one deletion, substitution, insertion or swap.
local keys = {}
for k in pairs(base.train) do keys[#keys + 1] = k end
table.sort(keys)
for _ = 1, 20 do
  local key = keys[rand_int(1, #keys)]
  local i = rand_int(1, #key)
  local typo
  local edit = rand_int(1, 4)
  if edit == 1 and #key > 2 then typo = key:sub(1, i - 1) .. key:sub(i + 1)
  elseif edit == 2 then typo = key:sub(1, i - 1) .. string.char(rand_int(97, 122)) .. key:sub(i + 1)
  elseif edit == 3 then typo = key:sub(1, i) .. string.char(rand_int(97, 122)) .. key:sub(i + 1)
  else typo = key:sub(1, i - 1) .. key:sub(i + 1, i + 1) .. key:sub(i, i) .. key:sub(i + 2) end
  if base.train[typo] == nil then
    fails("train." .. typo .. "=1", "unknown key 'train." .. typo .. "'", "did you mean", "'train." .. key .. "'")
  end
end

t.raises(function() recipe.apply_overrides(fresh(), "train.steps=1") end, "overrides must be a list")
t.raises(function() recipe.apply_overrides(nil, {}) end, "cfg must be a table")
local c = fresh()
c.hook = function() end
t.raises(function() recipe.apply_override(c, "hook=1") end, "'hook' is a function")

-- ---------------------------------------------------------------- printing
cfg = recipe.apply_overrides(recipe.copy(child), { "train.steps=" .. steps, "model.name=" .. word .. "\"q",
  string.format("train.lr=%.17g", lr), "extra=[" .. string.format("%.17g", math.random()) .. "]" })
local printed = recipe.to_lua(cfg)
local chunk = loadstring("return " .. printed)
t.check(chunk ~= nil, "to_lua output is Lua")
local back = chunk and chunk()
cfg.run = nil
t.check(deep_equal(back, cfg), "to_lua round-trips (functions left out)")
t.check(printed:find("steps = " .. steps, 1, true) ~= nil, "to_lua shows key = value")
t.check(deep_equal(cjson.decode(recipe.to_json(child)).train, child.train), "to_json round-trips")
t.check(not recipe.to_json(child):find("run", 1, true), "to_json leaves functions out")

-- ---------------------------------------------------------------- the gpu section
-- On a GPU, train.fit merges the recipe's gpu section; the command line's overrides still win.
do
  local train = require "fairy2.train"
  local base = dofile("recipes/base.lua")
  local cfg = recipe.merge(base, { data = { path = "data/tokens" },
    gpu = { train = { batch = 16, accum = 4, tokens = 2e7 }, data = { seq_len = 512 } } })
  recipe.apply_overrides(cfg, { "train.tokens=6e6", "train.accum=2" })
  train.apply_gpu_section(cfg)
  t.check(cfg.train.batch == 16 and cfg.data.seq_len == 512, "the gpu section's settings apply")
  t.check(cfg.train.tokens == 6e6 and cfg.train.accum == 2, "the command line beats the gpu section")
end

t.done()
