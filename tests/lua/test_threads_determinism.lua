-- test_threads_determinism.lua — the CPU path gives the same bits on any thread count: a small Llama
-- (GQA, two query blocks of attention, every projection a Fairy2Linear) runs forward and backward in
-- fairy2 subprocesses with F2_THREADS=1, 2 and 3; the loss and a hash of every parameter's gradient
-- must agree exactly. Sizes are chosen so every threaded path (GEMM blocks, attention tasks, row
-- loops, the quantizer's blocks and rows) runs in parallel. Each child also reports how many threads
-- its process has, so the test knows F2_THREADS took effect.
local ffi = require "ffi"
local f2 = require "fairy2"

local child_seed = tonumber(os.getenv("F2_DETERMINISM_CHILD") or "")

if child_seed then
  local llama = require "fairy2.models.llama"
  local fairy2 = require "fairy2.fairy2"
  local C = f2.C
  local desc = {
    arch = "llama", vocab_size = 1000, hidden = 512, layers = 2, heads = 8, kv_heads = 4, head_dim = 64,
    intermediate = 1024, rope_theta = 10000, rms_eps = 1e-5, tie_embeddings = true, attention_bias = false,
    mlp_bias = false, qk_norm = false,
  }
  local B, T = 8, 128   -- 1024 rows of 512: the row loops' threshold (2^19 elements) is reached
  local model = llama.build(desc)
  llama.init_random(model, child_seed)
  fairy2.convert(model, { stages = 2, log = io.open("/dev/null", "w") })
  local ids, targets = f2.empty({ B, T }, { dtype = "i32" }), f2.empty({ B, T }, { dtype = "i32" })
  math.randomseed(child_seed)
  local pi, pt = ffi.cast("int32_t *", ids.h.data), ffi.cast("int32_t *", targets.h.data)
  for i = 0, B * T - 1 do
    pi[i] = math.random(0, desc.vocab_size - 1)
    pt[i] = i % 17 == 5 and -100 or math.random(0, desc.vocab_size - 1)
  end
  local loss = model:loss(ids, targets)
  model:backward()
  local value = type(loss) == "number" and loss or loss:item()
  -- Results on lines starting "= " (conversion reports its own lines).
  print(string.format("= loss %a", value))
  for _, p in ipairs(model:named_parameters()) do
    print("= " .. p.name .. " " .. tostring(C.f2_hash64(p.grad.h.data, C.f2_tensor_nbytes(p.grad.h), 0)))
  end
  local status = io.open("/proc/self/status"):read("*a")
  print("= threads " .. status:match("Threads:%s*(%d+)"))
  os.exit(0)
end

local t = dofile("tests/lua/harness.lua")
local seed = t.seed()
local bin = os.getenv("F2_BIN") or "build/fairy2"
local script = debug.getinfo(1, "S").source:sub(2)

local function run(threads)
  local p = io.popen(string.format("F2_THREADS=%d F2_DETERMINISM_CHILD=%d '%s' '%s' 2>&1; echo \"rc=$?\"", threads,
    seed, bin, script))
  local text = p:read("*a")
  p:close()
  local body = {}
  for l in text:gmatch("= ([^\n]+)") do
    if not l:find("^threads") then body[#body + 1] = l end
  end
  return text, body, tonumber(text:match("= threads (%d+)")), tonumber(text:match("rc=(%d+)%s*$"))
end

local out1, body1, n1, rc1 = run(1)
t.check(rc1 == 0 and (body1[1] or ""):find("^loss ") ~= nil, "the F2_THREADS=1 child runs: " .. out1:sub(1, 400))
t.check(#body1 == 21, "a loss and 20 gradient hashes (" .. #body1 .. " lines)")
t.check(n1 == 1, "F2_THREADS=1 runs one thread (" .. tostring(n1) .. ")")
for _, threads in ipairs { 2, 3 } do
  local out, body, n, rc = run(threads)
  t.check(rc == 0, "the F2_THREADS=" .. threads .. " child runs: " .. out:sub(1, 400))
  t.check(n == threads, "F2_THREADS=" .. threads .. " runs " .. threads .. " threads (" .. tostring(n) .. ")")
  local same = #body == #body1
  for i = 1, math.max(#body, #body1) do
    if body[i] ~= body1[i] then
      same = false
      io.stderr:write("  1 thread: ", tostring(body1[i]), "\n  ", threads, " threads: ", tostring(body[i]), "\n")
    end
  end
  t.check(same, "loss and gradients on " .. threads .. " threads equal those on 1, bit for bit")
end
t.done()
