-- qwen3_4b_w2.lua — Fairy2i W2 QAT of Qwen3-4B with the authors' 7B settings (FAIRY2I.md §4): lr 3e-5,
-- AdamW betas (0.9, 0.95), no weight decay, clip 2.0, WSD, 2048-token sequences, about 1M tokens per
-- optimizer step (here 4 x 32 x 2048 = 262,144 per process: 4 data-parallel GPUs make the 1M).
-- The model comes from the Hugging Face Hub (hf:), which needs the HTTP client: until that lands this
-- recipe stops with a message saying so. Tied embeddings stay full precision (FAIRY2I.md §4).
local recipe = require "fairy2.recipe"
local base = require "base"

return recipe.merge(base, {
  name = "qwen3_4b_w2",
  out = "runs/qwen3_4b_w2",
  model = "hf:Qwen/Qwen3-4B",
  quant = { stages = 2 },
  data = { path = "data/tokens", seq_len = 2048 },
  train = { batch = 4, accum = 32, tokens = 5e9, eval_every = 500, checkpoint_every = 250 },
  optim = { lr = 3e-5, clip = 2.0, schedule = "wsd", warmup = 0.01, decay = 0.2 },
  eval = { max_tokens = 65536 },
})
