-- base.lua — the defaults every training recipe starts from (docs/recipes.md explains each field and
-- the choices for SmolLM2-135M). A recipe says `local base = require "base"` and returns
-- require("fairy2.recipe").merge(base, { ...what differs... }); any field can be overridden on the
-- command line: fairy2 recipes/smollm2_w2.lua train.tokens=2e8 optim.lr=5e-5
return {
  kind = "train",                 -- runs lua/fairy2/train.lua
  name = "run",                   -- a label for the log and the plot
  out = "runs/run",               -- output directory: checkpoints/, metrics.jsonl, loss.svg, hf/, model.f2.safetensors
  model = "gguf:models/smollm2-135m-instruct.gguf",   -- model source: gguf:PATH, an HF directory, hf:org/name

  quant = {
    stages = 2,                   -- T residual stages: 2 = W2, 1 = W1, 0 = full-precision fine-tune (no conversion)
    granularity = "tensor",       -- scales per tensor (the authors'), "row" or "group"
    group_size = 0,               -- columns per scale group (granularity "group" only)
    include = { "layers%.%d+%." },-- Lua patterns of linear layers to convert: every linear of the blocks
    exclude = {},                 -- patterns kept full precision (the tied LM head and embeddings always are)
    a8 = false,                   -- int8 per-token fake-quantized activations (an experiment; authors: bf16)
    param = "r",                  -- train the real master R (authors) or "uw" (U and W planes, an experiment)
  },

  data = {
    path = "data/tokens",         -- token shards: a manifest.json or its directory (fairy2 data tokenize)
    sources = {},                 -- training sources, "name" or "name:weight"; empty: all, weighted by tokens
    seq_len = 512,                -- tokens per sequence (the model sees seq_len, predicts the next of each)
    seed = 1,                     -- the loader's seed: batch i of step s is a pure function of (seed, s, i)
  },

  train = {
    device = "auto",              -- auto (CUDA when a GPU is usable), cpu or cuda
    dtype = "auto",               -- activations: auto (bf16 on a GPU, f32 on the CPU), bf16 or f32
    graph = true,                 -- on a GPU, capture the step as a CUDA graph once and replay it
    recompute = false,            -- recompute each MLP's SwiGLU in the backward instead of keeping it
    batch = 8,                    -- sequences per micro-batch
    accum = 4,                    -- micro-batches per optimizer step (gradient accumulation)
    steps = 0,                    -- budget in optimizer steps; 0: from train.tokens
    tokens = 2e8,                 -- budget in tokens (used when steps = 0), rounded up to whole steps
    stop_at_step = 0,             -- > 0: save and stop after this step (the schedule still spans the budget)
    max_bad_steps = 5,            -- abort after this many non-finite steps in a row (each is skipped)
    log_every = 1,                -- print every Nth step (metrics.jsonl records all)
    eval_every = 250,             -- held-out eval every N steps (0: only at the end)
    checkpoint_every = 250,       -- checkpoint every N steps (0: only at the end and on SIGTERM/SIGINT)
    keep_checkpoints = 3,         -- complete checkpoints kept (0: all)
    peak_flops = 0,               -- FLOP/s for the MFU; 0: 989e12 on a GPU, GFLOP/s shown on the CPU
    resume = true,                -- resume from the newest complete checkpoint in out/checkpoints
  },

  optim = {
    lr = 1e-4,                    -- peak learning rate
    min_lr = 0,                   -- learning rate at the end of the decay
    beta1 = 0.9,                  -- AdamW betas (the authors': 0.9, 0.95)
    beta2 = 0.95,
    eps = 1e-8,
    weight_decay = 0,             -- decoupled; never on norms, embeddings, biases (the authors use 0)
    clip = 1.0,                   -- global gradient-norm clip (0: none)
    schedule = "wsd",             -- wsd (warmup, stable, decay), cosine or constant; in optimizer steps
    warmup = 0.02,                -- warmup: a fraction of the steps (< 1) or a number of steps
    decay = 0.2,                  -- wsd decay at the end: a fraction of the steps (< 1) or a number of steps
    decay_shape = "linear",       -- wsd decay shape: linear or cosine
  },

  eval = {
    sources = {},                 -- held-out sources to evaluate; empty: every source with held-out shards
    max_tokens = 0,               -- scored tokens per source at most (0: all of them)
    baselines = true,             -- before training: full precision, then right after conversion (PTQ)
  },

  export = {
    hf = true,                    -- at the end: out/hf, a Hugging Face directory (bf16 R_hat)
    packed = true,                -- at the end: out/model.f2.safetensors, 2-bit codes + scales
  },

  debug = {                       -- for tests
    nan_steps = {},               -- steps whose loss and gradient are made NaN
    checkpoint_pause_s = 0,       -- sleep this long in the middle of writing each checkpoint
  },

  validate = function(cfg) require("fairy2.train").validate(cfg) end,
}
