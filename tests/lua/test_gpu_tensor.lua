-- test_gpu_tensor.lua — the Lua tensor API on a GPU: moving tensors (:cuda(), :cpu()), the same
-- seed giving the same numbers on both devices, operators with broadcasting, reductions, matmul
-- (2-D, batched, with a 2-D operand broadcast over the batch), bf16, f2.cuda.memory_stats() and
-- free(). Every GPU result is compared with the same expression on the CPU, on fresh random inputs.
local t = dofile("tests/lua/harness.lua")
t.require_gpu()
local f2 = require "fairy2"

local seed = t.seed()
f2.manual_seed(seed)

-- Flattens nested tables (or a number) into a list.
local function flat(x, out)
  out = out or {}
  if type(x) == "number" then
    out[#out + 1] = x
  else
    for i = 1, #x do flat(x[i], out) end
  end
  return out
end

-- got (any device) vs want (CPU): |got - want| <= atol + rtol |want| everywhere, NaN == NaN.
-- On failure: the count of bad elements, the first one and the max abs error.
local function compare(got, want, rtol, atol, what)
  t.check(got:device() == "cuda" or got:device() == "cpu", what .. ": not a tensor")
  local g, w = flat(got:cpu():float():totable()), flat(want:float():totable())
  if not t.check(#g == #w, what .. ": " .. #g .. " elements vs " .. #w) then return false end
  local bad, first, max_abs = 0, nil, 0
  for i = 1, #w do
    local a, b = g[i], w[i]
    local err = math.abs(a - b)
    local ok = a == b or (a ~= a and b ~= b) or err <= atol + rtol * math.abs(b)
    if not ok then
      bad = bad + 1
      first = first or i
    end
    if err == err and a ~= b and err > max_abs then max_abs = err end
  end
  return t.check(bad == 0, string.format("%s: %d of %d elements off (rtol %g, atol %g); first at flat index %d: " ..
    "got %.9g want %.9g; max abs err %.3g", what, bad, #w, rtol, atol, first or -1, first and g[first] or 0,
    first and w[first] or 0, max_abs))
end

-- ---------------------------------------------------------------- transfers and rand
local x = f2.randn({ 64, 33 }, { seed = seed })
local g = x:cuda()
t.check(g:device() == "cuda" and x:device() == "cpu", "cuda() gives a GPU tensor")
t.check(g:dtype() == "f32" and g:size(0) == 64 and g:size(1) == 33, "shape and dtype survive the move")
compare(g, x, 0, 0, "round trip cpu -> cuda -> cpu is exact")
t.check(tostring(g):find("cuda", 1, true) ~= nil, "printing a GPU tensor names its device: " .. tostring(g))
compare(g:t():contiguous(), x:t():contiguous(), 0, 0, "contiguous() of a transposed GPU view")
compare(g:narrow(1, 3, 20):clone(), x:narrow(1, 3, 20):clone(), 0, 0, "clone() of a narrowed GPU view")

for _, dtype in ipairs { "f32", "bf16", "f16" } do
  local s = seed * 7 + #dtype
  local a = f2.rand({ 300, 17 }, { seed = s, dtype = dtype, device = "cuda", low = -2, high = 5 })
  local b = f2.rand({ 300, 17 }, { seed = s, dtype = dtype, low = -2, high = 5 })
  compare(a, b, 0, 0, "rand " .. dtype .. ": same seed, same numbers on both devices")
  local n1 = f2.randn({ 300, 17 }, { seed = s, dtype = dtype, device = "cuda" })
  local n2 = f2.randn({ 300, 17 }, { seed = s, dtype = dtype })
  -- fp64 log/cos may differ in the last bit between glibc and CUDA: one ulp of the dtype at most
  compare(n1, n2, dtype == "f32" and 2.4e-7 or 1e-2, 0, "randn " .. dtype .. ": same seed on both devices")
  local other = f2.randn({ 300, 17 }, { seed = s + 1, dtype = dtype, device = "cuda" })
  t.check(math.abs((other - n1):abs():sum()) > 100, "randn " .. dtype .. ": another seed gives other numbers")
end

-- ---------------------------------------------------------------- operators
local a = f2.randn({ 5, 1, 7 }, { seed = seed + 1 })
local b = f2.randn({ 3, 1 }, { seed = seed + 2 })
local ga, gb = a:cuda(), b:cuda()
compare(ga * gb + 1.5, a * b + 1.5, 1e-5, 1e-6, "a * b + 1.5 with broadcasting")
compare(ga - gb, a - b, 1e-5, 1e-6, "a - b with broadcasting")
compare(ga / (gb:abs() + 0.5), a / (b:abs() + 0.5), 1e-5, 1e-6, "a / (|b| + 0.5)")
compare(2 - ga, 2 - a, 1e-5, 1e-6, "number - tensor")
compare(-ga, -a, 0, 0, "unary minus")
compare((ga:abs() + 0.1) ^ 1.7, (a:abs() + 0.1) ^ 1.7, 1e-5, 1e-6, "pow with a number")
for _, name in ipairs { "exp", "tanh", "sigmoid", "silu", "square", "sign", "abs" } do
  compare(ga[name](ga), a[name](a), 1e-5, 1e-6, name)
end
compare((ga:abs() + 0.01):log(), (a:abs() + 0.01):log(), 1e-5, 1e-6, "log")
compare((ga:abs() + 0.01):rsqrt(), (a:abs() + 0.01):rsqrt(), 1e-5, 1e-6, "rsqrt")
compare(ga:maximum(0), a:maximum(0), 0, 0, "maximum with a number")
local inplace_g, inplace_c = ga:clone(), a:clone()
inplace_g:mul_(3):add_(gb:expand({ 5, 3, 7 }):narrow(1, 0, 1))
inplace_c:mul_(3):add_(b:expand({ 5, 3, 7 }):narrow(1, 0, 1))
compare(inplace_g, inplace_c, 1e-5, 1e-6, "in-place mul_ and add_ of a broadcast view")

-- bf16: the same bf16 inputs on both devices; results round to bf16
local ab, bb = a:bf16(), b:bf16()
local gab, gbb = ab:cuda(), bb:cuda()
t.check((gab * gbb):dtype() == "bf16", "bf16 * bf16 stays bf16")
compare(gab * gbb + gab, ab * bb + ab, 1e-2, 1e-2, "bf16 arithmetic")
compare(gab:float():cpu(), ab:float(), 0, 0, "bf16 -> f32 on the GPU is exact")
compare(g:bf16(), x:bf16(), 0, 0, "f32 -> bf16 rounds alike on both devices")

-- ---------------------------------------------------------------- reductions
local abs_sum = x:abs():sum()
t.close(g:sum(), x:sum(), 0, 1e-5 * abs_sum, "sum over all elements")
t.close(g:mean(), x:mean(), 0, 1e-5 * abs_sum / x:numel(), "mean over all elements")
t.close(g:max(), x:max(), 0, 0, "max over all elements")
t.close(g:min(), x:min(), 0, 0, "min over all elements")
t.close(g:norm(), x:norm(), 1e-5, 0, "norm over all elements")
for d = 0, 1 do
  compare(g:sum(d), x:sum(d), 1e-4, 1e-5, "sum over dim " .. d)
  compare(g:mean(d, true), x:mean(d, true), 1e-4, 1e-6, "mean over dim " .. d .. " (keepdim)")
  compare(g:max(d), x:max(d), 0, 0, "max over dim " .. d)
  compare(g:norm(d), x:norm(d), 1e-5, 0, "norm over dim " .. d)
end
local big = f2.randn({ 3, 200000 }, { seed = seed + 3, device = "cuda" })
local s1, s2 = big:sum(), big:sum()
t.check(s1 == s2, string.format("sum is deterministic: %.17g vs %.17g", s1, s2))
t.close(big:sum(), big:cpu():sum(), 0, 1e-5 * big:abs():sum(), "sum of 600k elements")
t.close(big:t():sum(), big:cpu():sum(), 0, 1e-5 * big:abs():sum(), "sum over a transposed view")
big:free()

-- ---------------------------------------------------------------- matmul
local A = f2.randn({ 37, 64 }, { seed = seed + 4 })
local B = f2.randn({ 64, 29 }, { seed = seed + 5 })
local gA, gB = A:cuda(), B:cuda()
-- fp32 sums of 64 products of unit normals: the error scales with sqrt(K) * |values|, ~1e-6
compare(gA:matmul(gB), A:matmul(B), 1e-4, 1e-4, "matmul f32 37x64 @ 64x29")
compare(gA:t():contiguous():matmul(gB, { trans_a = true }), A:matmul(B), 1e-4, 1e-4, "matmul trans_a")
compare(gA:matmul(gB:t():contiguous(), { trans_b = true }), A:matmul(B), 1e-4, 1e-4, "matmul trans_b")
compare(gA:matmul(gB:t():contiguous():t()), A:matmul(B), 1e-4, 1e-4, "matmul of a transposed view")
local acc_g, acc_c = f2.ones({ 37, 29 }, { device = "cuda" }), f2.ones({ 37, 29 })
gA:matmul(gB, { out = acc_g, alpha = 0.5, beta = 2 })
A:matmul(B, { out = acc_c, alpha = 0.5, beta = 2 })
compare(acc_g, acc_c, 1e-4, 1e-4, "matmul into out with alpha 0.5, beta 2")
compare(gA:bf16():matmul(gB:bf16()), A:bf16():matmul(B:bf16()), 2e-2, 2e-2, "matmul bf16 -> bf16")
t.check(gA:bf16():matmul(gB:bf16()):dtype() == "bf16", "bf16 matmul gives bf16")
local X = f2.randn({ 4, 37, 64 }, { seed = seed + 6 })
local gX = X:cuda()
compare(gX:matmul(gB), X:matmul(B), 1e-4, 1e-4, "batched 3-D @ 2-D (b broadcast over the batch)")
compare(gX:matmul(X:cuda():transpose(1, 2)), X:matmul(X:transpose(1, 2)), 1e-4, 1e-4, "batched @ transposed batch")

-- ---------------------------------------------------------------- errors and memory
t.raises(function() return x + g end, "different devices", "cpu + cuda raises")
t.raises(function() return A:matmul(gB) end, "different devices", "matmul across devices raises")

collectgarbage()
f2.cuda.synchronize()
local m0 = f2.cuda.memory_stats()
for _, k in ipairs { "allocated", "reserved", "peak_allocated", "peak_reserved", "num_cuda_mallocs", "num_allocs" } do
  t.check(type(m0[k]) == "number" and m0[k] >= 0, "memory_stats()." .. k .. " is a count")
end
t.check(m0.reserved >= m0.allocated and m0.peak_allocated >= m0.allocated, "reserved and peak bound allocated")
local block = f2.empty({ 1024, 1024 }, { device = "cuda" }) -- 4 MiB
local m1 = f2.cuda.memory_stats()
t.check(m1.allocated - m0.allocated >= 4 * 1024 * 1024, "a 4 MiB tensor raises allocated by at least 4 MiB (by " ..
  (m1.allocated - m0.allocated) .. ")")
t.check(m1.num_allocs == m0.num_allocs + 1, "one allocation counted")
block:free()
local m2 = f2.cuda.memory_stats()
t.check(m2.allocated == m0.allocated, "free() gives the bytes back at once (" .. m2.allocated .. " vs " .. m0.allocated .. ")")
t.check(m2.reserved == m1.reserved, "the freed block stays cached")
t.raises(function() return block:sum() end, "after free", "a freed tensor cannot be used")
local again = f2.empty({ 1024, 1024 }, { device = "cuda" })
t.check(f2.cuda.memory_stats().num_cuda_mallocs == m1.num_cuda_mallocs, "the cached block is reused")
again:free()
f2.cuda.empty_cache()
local m3 = f2.cuda.memory_stats()
t.check(m3.reserved == m3.allocated, "empty_cache leaves only live blocks reserved")
f2.cuda.reset_peak()
t.check(f2.cuda.memory_stats().peak_allocated == m3.allocated, "reset_peak")

t.done()
