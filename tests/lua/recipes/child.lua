-- child.lua — test fixture: a recipe that extends base.lua (found next to it) and prints what it
-- was run with, as one JSON line.
local recipe = require "fairy2.recipe"
local base = require "base"
return recipe.merge(base, {
  name = "child",
  train = { steps = 5, lr_steps = { 1, 2 } },
  run = function(cfg) print("resolved " .. recipe.to_json(cfg)) end,
})
