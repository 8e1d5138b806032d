-- bench_step.lua — one SmolLM2-135M Fairy2 W2 QAT training step on the CPU, end to end through the Lua
-- model: forward + loss, backward, AdamW over every parameter, zero_grad; batch x seq random tokens,
-- random weights (the arithmetic is that of the real model). Prints ms per step and tokens/s (wall
-- clock; threads: F2_THREADS). docs/performance.md keeps the figures.
--   fairy2 tests/bench/bench_step.lua [batch=4] [seq=128] [steps=3]
local ffi = require "ffi"
local f2 = require "fairy2"
local llama = require "fairy2.models.llama"
local fairy2 = require "fairy2.fairy2"
local optim = require "fairy2.optim"

pcall(ffi.cdef, "typedef struct bench_timeval { long tv_sec; long tv_usec; } bench_timeval;" ..
  "int gettimeofday(bench_timeval *tv, void *tz);")
local tv = ffi.new("bench_timeval")
local function now()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) + tonumber(tv.tv_usec) * 1e-6
end

local args = { ... }
local batch, seq, steps = tonumber(args[1]) or 4, tonumber(args[2]) or 128, tonumber(args[3]) or 3

-- SmolLM2-135M (config.json of HuggingFaceTB/SmolLM2-135M-Instruct).
local desc = {
  arch = "llama", vocab_size = 49152, hidden = 576, layers = 30, heads = 9, kv_heads = 3, head_dim = 64,
  intermediate = 1536, rope_theta = 100000, rms_eps = 1e-5, tie_embeddings = true, attention_bias = false,
  mlp_bias = false, qk_norm = false,
}
local model = llama.build(desc)
llama.init_random(model, 1)
fairy2.convert(model, { stages = 2, quiet = true })
local params = model:named_parameters()
local opt = optim.AdamW(params, { lr = 1e-4, betas = { 0.9, 0.95 }, weight_decay = 0.1 })

local ids, targets = f2.empty({ batch, seq }, { dtype = "i32" }), f2.empty({ batch, seq }, { dtype = "i32" })
local pi, pt = ffi.cast("int32_t *", ids.h.data), ffi.cast("int32_t *", targets.h.data)
math.randomseed(1)
for i = 0, batch * seq - 1 do
  pi[i] = math.random(0, desc.vocab_size - 1)
  pt[i] = math.random(0, desc.vocab_size - 1)
end

print(string.format("SmolLM2-135M W2 QAT step on the CPU: %d x %d tokens, F2_THREADS=%s", batch, seq,
  os.getenv("F2_THREADS") or "(all cores)"))
local times = {}
for step = 0, steps do   -- step 0 warms up (first-touch of the activations and optimizer state)
  local t0 = now()
  local loss = model:loss(ids, targets)
  local t1 = now()
  model:backward()
  local t2 = now()
  opt:step()
  model:zero_grad()
  collectgarbage()
  local t3 = now()
  local value = type(loss) == "number" and loss or loss:item()
  print(string.format("step %d: loss %.4f  forward %.0f ms  backward %.0f ms  optimizer %.0f ms  total %.0f ms", step,
    value, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, (t3 - t0) * 1e3))
  if step > 0 then times[#times + 1] = t3 - t0 end
end
table.sort(times)
local median = times[math.floor((#times + 1) / 2)]
print(string.format("median %.0f ms per step, %.0f tokens/s", median * 1e3, batch * seq / median))
