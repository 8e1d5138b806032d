-- smollm2_w2.lua — Fairy2i W2 (T = 2 stages, about 2 bits per weight) QAT of SmolLM2-135M-Instruct on
-- the Debian corpus (data/tokens). The 135M choices (lr, clip, sequence length, batch, tokens) are
-- justified in docs/recipes.md; compare the result with smollm2_fp.lua (same data and budget).
--   fairy2 recipes/smollm2_w2.lua [train.tokens=2e8] [key=value ...]
local recipe = require "fairy2.recipe"
local base = require "base"

return recipe.merge(base, {
  name = "smollm2_w2",
  out = "runs/smollm2_w2",
  model = "gguf:models/smollm2-135m-instruct.gguf",
  quant = { stages = 2 },
  data = { path = "data/tokens", seq_len = 512 },
  train = { batch = 16, accum = 4, tokens = 2e8 },   -- 32,768 tokens per step, 6,104 steps
  optim = { lr = 1e-4, clip = 1.0, schedule = "wsd", warmup = 0.02, decay = 0.2 },
})
