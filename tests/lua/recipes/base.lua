-- base.lua — test fixture: a base recipe (every setting has a default) that the others extend.
return {
  name = "base",
  seed = 1,
  model = { name = "tiny", dim = 64, layers = 2, tie_embeddings = true },
  train = { steps = 100, tokens = 1e6, lr = 3e-4, warmup = 10, batch = 8, schedule = "cosine",
            lr_steps = { 10, 20, 30 }, tags = { "a", "b" } },
  quant = { enabled = true, stages = 2, exclude = { "lm_head" } },
  extra = {},
}
