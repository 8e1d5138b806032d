-- default.lua — what `fairy2` (scripts/run.sh) runs until the training recipe takes its place: a
-- quick look at the runtime. It says which device it uses, makes random tensors, multiplies them,
-- checks one row of the product against a plain Lua dot product, and times the matmul.
--   fairy2 recipes/default.lua                  fairy2 recipes/default.lua n=1024 device=cpu
--   fairy2 recipes/default.lua --print-config   (the settings below are the ones you can override)
local f2 = require "fairy2"

local function run(cfg)
  local device = cfg.device
  if device == "auto" then device = f2.cuda.available() and "cuda" or "cpu" end
  print(string.format("fairy2 %s on %s (%d GPU%s usable, CUDA %s)", f2.version, device,
    f2.cuda.device_count(), f2.cuda.device_count() == 1 and "" or "s",
    f2.cuda.compiled() and "compiled in" or "not compiled in"))

  local n, opts = cfg.n, { device = device, dtype = cfg.dtype }
  opts.seed = cfg.seed
  local a = f2.randn({ n, n }, opts)
  opts.seed = cfg.seed + 1
  local b = f2.randn({ n, n }, opts)
  print(string.format("a: %s %s, mean %.4f, std %.4f (should be near 0 and 1)", a:dtype(),
    table.concat(a:shape(), "x"), a:mean(), math.sqrt((a * a):mean() - a:mean() ^ 2)))

  -- One row of a @ b against the same sums in plain Lua (in double precision).
  local c = a:matmul(b)
  local row = math.floor(n / 2)
  local a_row = a:select(0, row):float():cpu():totable()
  local b_host = b:float():cpu():totable()
  local c_row = c:select(0, row):float():cpu():totable()
  local worst, scale = 0, 0
  for j = 1, n do
    local dot = 0
    for k = 1, n do dot = dot + a_row[k] * b_host[k][j] end
    worst = math.max(worst, math.abs(dot - c_row[j]))
    scale = math.max(scale, math.abs(dot))
  end
  print(string.format("a @ b, row %d: largest difference from plain Lua %.2e (of values up to %.1f)",
    row, worst, scale))

  -- Timing: process CPU time (os.clock), after a warm-up; the GPU is synchronized before reading it.
  local function sync() if device == "cuda" then f2.cuda.synchronize() end end
  c:free()
  c = a:matmul(b)
  sync()
  local start = os.clock()
  for _ = 1, cfg.repeats do
    a:matmul(b, { out = c })
  end
  sync()
  local seconds = (os.clock() - start) / cfg.repeats
  print(string.format("matmul %dx%d @ %dx%d %s: %.3f ms, %.2f GFLOP/s", n, n, n, n, cfg.dtype, seconds * 1e3,
    2 * n ^ 3 / seconds / 1e9))
  for _, t in ipairs { a, b, c } do t:free() end
end

return {
  n = 256,           -- the matrices are n x n
  repeats = 5,       -- timed matmuls
  device = "auto",   -- auto (cuda when a GPU is usable), cpu or cuda
  dtype = "f32",     -- f32 or bf16
  seed = 1,
  run = run,
}
