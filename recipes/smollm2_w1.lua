-- smollm2_w1.lua — Fairy2i W1 (T = 1 stage, about 1 bit per weight) QAT of SmolLM2-135M-Instruct:
-- smollm2_w2.lua with one residual stage. W1 starts much further from the full-precision model
-- (FAIRY2I.md §6: relative error 0.36 vs 0.13 on Gaussian weights), so it gets the same budget and
-- is expected to end further from the baseline; see docs/recipes.md.
local recipe = require "fairy2.recipe"
local w2 = require "smollm2_w2"

return recipe.merge(w2, {
  name = "smollm2_w1",
  out = "runs/smollm2_w1",
  quant = { stages = 1 },
})
