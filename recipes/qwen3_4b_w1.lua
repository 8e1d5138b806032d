-- qwen3_4b_w1.lua — Fairy2i W1 (one stage) QAT of Qwen3-4B: qwen3_4b_w2.lua with T = 1.
local recipe = require "fairy2.recipe"
local w2 = require "qwen3_4b_w2"

return recipe.merge(w2, {
  name = "qwen3_4b_w1",
  out = "runs/qwen3_4b_w1",
  quant = { stages = 1 },
})
