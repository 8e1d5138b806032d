-- smollm2_fp.lua — the baseline every SmolLM2 QAT result is compared against: a full-precision
-- fine-tune (quant.stages = 0, nothing converted) of the same model on the same data, sequence length,
-- batch and token budget as smollm2_w2.lua, so the gap measures quantization and nothing else. Its
-- lr is lower (3e-5): full-precision weights need no push across code boundaries, and 1e-4 on a
-- pretrained 135M model mostly measures forgetting (docs/recipes.md).
local recipe = require "fairy2.recipe"
local w2 = require "smollm2_w2"

return recipe.merge(w2, {
  name = "smollm2_fp",
  out = "runs/smollm2_fp",
  quant = { stages = 0 },
  optim = { lr = 3e-5 },
  export = { packed = false },   -- nothing to pack: no layer is converted
})
