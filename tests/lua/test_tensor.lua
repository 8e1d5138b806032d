-- test_tensor.lua — the Lua tensor API: constructors, geometry, views, conversion, operators with
-- broadcasting, reductions, matmul, indexing, printing, free() and GC, and that misuse raises at
-- the caller's line. Values are checked against plain Lua arithmetic on fresh random inputs.
local t = dofile("tests/lua/harness.lua")
local f2 = require "fairy2"
local ffi = require "ffi"

local seed = t.seed()
math.randomseed(seed)
f2.manual_seed(seed)

-- Random nested table of the given shape, values in [lo, hi).
local function random_table(shape, lo, hi, d)
  d = d or 1
  local out = {}
  for i = 1, shape[d] do
    out[i] = d == #shape and lo + (hi - lo) * math.random() or random_table(shape, lo, hi, d + 1)
  end
  return out
end

-- Elementwise comparison of two nested tables (numbers at the leaves).
local function max_rel_err(a, b)
  if type(a) == "number" then
    if a ~= a or b ~= b then return (a ~= a and b ~= b) and 0 or math.huge end
    return math.abs(a - b) / math.max(math.abs(b), 1e-30)
  end
  if type(b) ~= "table" or #a ~= #b then return math.huge end
  local worst = 0
  for i = 1, #a do worst = math.max(worst, max_rel_err(a[i], b[i])) end
  return worst
end

-- max |a - b| / max |b| over nested tables: for results where cancellation makes single elements
-- relatively inexact (matmul).
local function normwise_err(a, b)
  local diff, mag = 0, 0
  local function walk(x, y)
    if type(x) == "number" then
      diff, mag = math.max(diff, math.abs(x - y)), math.max(mag, math.abs(y))
    else
      for i = 1, #y do walk(x[i], y[i]) end
    end
  end
  walk(a, b)
  return diff / math.max(mag, 1e-30)
end

local function map(a, fn, b)
  if type(a) == "number" then return fn(a, b) end
  local out = {}
  for i = 1, #a do out[i] = map(a[i], fn, type(b) == "table" and b[i] or b) end
  return out
end

local function same_shape(s, want)
  if #s ~= #want then return false end
  for i = 1, #s do if s[i] ~= want[i] then return false end end
  return true
end

-- fn must raise a message containing text, located at the caller's line of this file.
-- (fn must not end in a tail call: that drops its frame, in Lua, for any library.)
local function raises_here(fn, text)
  local line = debug.getinfo(2, "l").currentline
  local ok, err = pcall(fn)
  err = tostring(err)
  local where = "test_tensor.lua:" .. line .. ":"
  local good = not ok and err:find(text, 1, true) ~= nil and err:find(where, 1, true) ~= nil
  if not good then io.stderr:write("line ", line, ": expected '", text, "' at ", where, ", got: ", ok and "no error" or err, "\n") end
  t.check(good, "error at the caller's line: " .. text)
end

-- ---------------------------------------------------------------- constructors and geometry
do
  local z = f2.zeros({ 2, 3 })
  t.check(same_shape(z:shape(), { 2, 3 }) and z:dim() == 2 and z:numel() == 6, "zeros shape")
  t.check(z:dtype() == "f32" and z:device() == "cpu" and z:is_contiguous(), "defaults f32 on cpu")
  t.check(z:sum() == 0 and f2.ones({ 4 }, { dtype = "bf16" }):sum() == 4, "zeros / ones")
  t.check(f2.full({ 2, 2 }, 2.5, { dtype = "f16" }):totable()[2][1] == 2.5, "full")
  t.check(z:size(0) == 2 and z:size(-1) == 3 and same_shape(z:size(), { 2, 3 }), "size(d)")
  t.check(same_shape(z:stride(), { 3, 1 }), "strides")
  t.check(f2.empty({ 0, 5 }):numel() == 0, "empty with a zero dim")
  local s = f2.tensor(7)
  t.check(s:dim() == 0 and s:item() == 7, "0-dim tensor from a number")
  local i = f2.tensor({ { 1, 2 }, { 3, 2 ^ 40 } }, { dtype = "i64" })
  t.check(i:dtype() == "i64" and i:totable()[2][2] == 2 ^ 40, "i64 values exact")
  t.check(f2.arange(5):totable()[5] == 4 and #f2.arange(2, 11, 3):totable() == 3, "arange")
  t.check(f2.arange(1, 0, -0.25, { dtype = "f32" }):totable()[4] == 0.25, "arange with a negative step")
  t.check(f2.dtypes.bf16 == 1 and f2.dtypes.size("bf16") == 2 and not f2.dtypes.is_float("i32")
    and f2.dtypes.name(0) == "f32" and #f2.dtypes.list == 7, "dtypes helpers")
  t.check(f2.is_tensor(z) and not f2.is_tensor({}), "is_tensor")
  t.check(f2.empty_like(z, { dtype = "bf16" }):dtype() == "bf16" and f2.zeros_like(z):sum() == 0, "*_like")
  -- C handles: t.h goes to f2.C; from_handle adopts one made by C.
  t.check(tonumber(f2.C.f2_tensor_numel(z.h)) == 6, "t.h is the f2_tensor*")
  local dims = ffi.new("int64_t[2]", 3, 4)
  local adopted = f2.from_handle(f2.C.f2_tensor_new(f2.C.F2_F32, f2.C.F2_CPU, 2, dims))
  t.check(same_shape(adopted:shape(), { 3, 4 }), "from_handle")
end

-- rand / randn: reproducible by seed, right moments.
do
  local a, b = f2.randn({ 1000 }, { seed = 42 }), f2.randn({ 1000 }, { seed = 42 })
  t.check((a - b):abs():max() == 0, "same seed, same numbers")
  t.check((a - f2.randn({ 1000 }, { seed = 43 })):abs():max() > 0, "another seed, other numbers")
  local n = f2.randn({ 200, 100 }, { mean = 3, std = 2 })
  t.close(n:mean(), 3, 0, 6 * 2 / math.sqrt(2e4), "randn mean")
  t.close(((n - 3) ^ 2):mean(), 4, 0.08, 0, "randn variance")
  local u = f2.rand({ 20000 }, { low = -1, high = 3 })
  t.check(u:min() >= -1 and u:max() < 3, "rand range")
  t.close(u:mean(), 1, 0, 6 * 4 / math.sqrt(12 * 2e4), "rand mean")
  f2.manual_seed(seed)
  local r1 = f2.rand({ 5 }):totable()
  f2.manual_seed(seed)
  t.check(max_rel_err(f2.rand({ 5 }):totable(), r1) == 0, "manual_seed reproduces unseeded draws")
end

-- ---------------------------------------------------------------- views
do
  local shape = { math.random(2, 5), math.random(2, 5), math.random(2, 5) }
  local data = random_table(shape, -1, 1)
  local x = f2.tensor(data)
  t.check(max_rel_err(x:totable(), data) < 1e-6, "tensor -> totable round trip")

  local start = math.random(0, shape[2] - 1)
  local len = math.random(1, shape[2] - start)
  local nar = x:narrow(1, start, len):totable()
  local ok = #nar[1] == len
  for i = 1, shape[1] do for j = 1, len do ok = ok and max_rel_err(nar[i][j], data[i][start + j]) < 1e-6 end end
  t.check(ok, "narrow(1, start, len) is 0-based")

  local sel = x:select(2, -1):totable()
  ok = true
  for i = 1, shape[1] do for j = 1, shape[2] do ok = ok and sel[i][j] == x:totable()[i][j][shape[3]] end end
  t.check(ok, "select with a negative index")

  local tr = x:transpose(0, 2)
  t.check(same_shape(tr:shape(), { shape[3], shape[2], shape[1] }) and not tr:is_contiguous(), "transpose")
  local p = x:permute(2, 0, 1):totable()
  ok = true
  for i = 1, shape[1] do for j = 1, shape[2] do for k = 1, shape[3] do
    ok = ok and max_rel_err(p[k][i][j], data[i][j][k]) < 1e-6
  end end end
  t.check(ok, "permute")
  t.check(max_rel_err(x:permute({ 2, 0, 1 }):totable(), p) == 0, "permute with a table")

  local flat = x:view({ -1 })
  t.check(flat:numel() == x:numel() and flat:dim() == 1, "view(-1)")
  raises_here(function() tr:view({ -1 }) end, "contiguous first")
  local r = tr:reshape({ -1 })
  t.check(r:is_contiguous() and r:numel() == x:numel(), "reshape copies when it must")
  t.check(max_rel_err(r:totable()[2], tr:totable()[1][1][2]) == 0, "reshape keeps the logical order")

  -- as_strided: columns 1..2 of every row of a 3 x 4 tensor (a column slice with the row stride kept).
  local grid = f2.tensor({ { 1, 2, 3, 4 }, { 5, 6, 7, 8 }, { 9, 10, 11, 12 } })
  local cols = grid:as_strided({ 3, 2 }, { 4, 1 }, 1):totable()
  t.check(cols[1][1] == 2 and cols[1][2] == 3 and cols[3][1] == 10 and cols[3][2] == 11, "as_strided with an offset")
  raises_here(function() grid:as_strided({ 3, 2 }, { 4, 1 }, 11) end, "outside the storage")
  raises_here(function() grid:as_strided({ 3, 2 }, { 4 }) end, "expects 2 strides")
  raises_here(function() grid:as_strided({ 3, 2 }, { 4, -1 }) end, "not a valid stride")

  local col = f2.tensor({ { 1 }, { 2 } })
  local e = col:expand({ 3, 2, 4 })
  t.check(same_shape(e:shape(), { 3, 2, 4 }) and e:stride()[1] == 0 and e:totable()[3][2][4] == 2, "expand")
  local m = f2.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })
  t.check(m:t():totable()[3][1] == 3 and m:t():t():totable()[2][3] == 6, "t()")

  -- Views share memory; contiguous/clone/to copy.
  local base = f2.zeros({ 3, 4 })
  base:narrow(1, 1, 2):fill(5)
  t.check(base:sum() == 30, "a view writes through")
  local c = base:clone()
  c:fill(0)
  t.check(base:sum() == 30, "clone does not share")
  t.check(base:contiguous() == base and base:float() == base, "contiguous/float of what already is: itself")
  local bt = base:t():contiguous()
  t.check(bt:is_contiguous() and bt:totable()[2][1] == 5, "contiguous copy of a transpose")
  local b16 = base:bf16()
  t.check(b16:dtype() == "bf16" and b16:to({ dtype = "f32" }):sum() == 30 and base:half():dtype() == "f16", "to dtype")
end

-- ---------------------------------------------------------------- operators and broadcasting
do
  local a, b = f2.tensor(random_table({ 3, 4 }, -2, 2)), f2.tensor(random_table({ 4 }, 0.5, 2))
  local A, B = a:totable(), b:totable() -- the f32 inputs, for references computed in double
  local function rowwise(fn) -- A[i][j] op B[j]
    local out = {}
    for i = 1, 3 do
      out[i] = {}
      for j = 1, 4 do out[i][j] = fn(A[i][j], B[j]) end
    end
    return out
  end
  local f32 = function(v) return tonumber(ffi.new("float", v)) end
  local function close(x, want, msg) t.check(max_rel_err(x:totable(), map(want, f32)) < 1e-6, msg) end
  close(a + b, rowwise(function(x, y) return x + y end), "tensor + broadcast row")
  close(a - b, rowwise(function(x, y) return x - y end), "tensor - broadcast row")
  close(a * b, rowwise(function(x, y) return x * y end), "tensor * broadcast row")
  close(a / b, rowwise(function(x, y) return x / y end), "tensor / broadcast row")
  close(b ^ 2, map(B, function(x) return x * x end), "tensor ^ 2")
  close(a + 1.5, map(A, function(x) return x + 1.5 end), "tensor + number")
  close(3 - a, map(A, function(x) return 3 - x end), "number - tensor")
  close(2 * a, map(A, function(x) return 2 * x end), "number * tensor")
  close(1 / b, map(B, function(x) return 1 / x end), "number / tensor")
  close(-a, map(A, function(x) return -x end), "unary minus")
  close(a:maximum(0), map(A, function(x) return math.max(x, 0) end), "maximum with a number")
  close(b:exp(), map(B, math.exp), "exp")
  close(b:log(), map(B, function(v) return math.log(v) end), "log")
  close(b:sqrt(), map(B, math.sqrt), "sqrt")
  close(a:sigmoid(), map(A, function(x) return 1 / (1 + math.exp(-x)) end), "sigmoid")
  close(a:silu(), map(A, function(x) return x / (1 + math.exp(-x)) end), "silu")
  -- Column [3,1] against row [4] broadcasts to [3,4].
  local colv = f2.tensor({ { 1 }, { 2 }, { 3 } })
  local outer = colv * b
  t.check(same_shape(outer:shape(), { 3, 4 }) and max_rel_err(outer:totable()[3][2], f32(3 * f32(B[2]))) < 1e-6,
    "outer product by broadcasting")
  -- In place.
  local acc = a:clone()
  local same = acc:add_(b)
  t.check(same == acc and max_rel_err(acc:totable(), (a + b):totable()) == 0, "add_ in place")
  acc:mul_(0):exp_()
  t.check(acc:sum() == 12, "mul_ and exp_ in place")
  -- Mixed dtypes give f32; one dtype stays.
  t.check((a:bf16() + b):dtype() == "f32" and (a:bf16() * 2):dtype() == "bf16", "result dtypes")
  t.check((a:bf16() + a:half()):dtype() == "f32", "two half dtypes give f32")
  t.check(a:allclose(a:bf16(), 1e-2) and not a:allclose(a + 1e-3, 1e-6, 0), "allclose")
  raises_here(function() local _ = a + f2.zeros({ 3 }) end, "do not broadcast")
  raises_here(function() local _ = a:add(f2.zeros({ 2, 4 })) end, "[3,4] and [2,4] do not broadcast")
end

-- ---------------------------------------------------------------- reductions
do
  local shape = { math.random(2, 6), math.random(2, 6) }
  local X = random_table(shape, -3, 3)
  local x = f2.tensor(X)
  X = x:totable() -- the f32 values
  local sum, sq, mx, mn = 0, 0, -math.huge, math.huge
  local colsum = {}
  for i = 1, shape[1] do
    for j = 1, shape[2] do
      local v = X[i][j]
      sum, sq, mx, mn = sum + v, sq + v * v, math.max(mx, v), math.min(mn, v)
      colsum[j] = (colsum[j] or 0) + v
    end
  end
  local n = shape[1] * shape[2]
  t.close(x:sum(), sum, 1e-6, 1e-6, "sum")
  t.close(x:mean(), sum / n, 1e-6, 1e-6, "mean")
  t.close(x:norm(), math.sqrt(sq), 1e-6, 0, "norm")
  t.check(x:max() == mx and x:min() == mn, "max / min")
  local s0 = x:sum(0)
  t.check(same_shape(s0:shape(), { shape[2] }) and max_rel_err(s0:totable(), map(colsum, function(v)
    return tonumber(ffi.new("float", v))
  end)) < 1e-6, "sum over dim 0")
  t.check(same_shape(x:mean(-1, true):shape(), { shape[1], 1 }), "keepdim")
  t.check(x:bf16():max(1):dtype() == "bf16", "a dim reduction keeps the dtype")
  raises_here(function() local _ = x:sum(2) end, "dim 2 out of range")
end

-- ---------------------------------------------------------------- matmul
do
  local function ref_matmul(A, B) -- plain Lua, double precision
    local out = {}
    for i = 1, #A do
      out[i] = {}
      for j = 1, #B[1] do
        local s = 0
        for k = 1, #B do s = s + A[i][k] * B[k][j] end
        out[i][j] = s
      end
    end
    return out
  end
  local m, k, n = math.random(1, 9), math.random(1, 9), math.random(1, 9)
  local a, b = f2.randn({ m, k }), f2.randn({ k, n })
  local A, B = a:totable(), b:totable()
  local want = ref_matmul(A, B)
  t.check(normwise_err(a:matmul(b):totable(), want) < 1e-5, "matmul 2-D")
  t.check(normwise_err(f2.matmul(a:t():contiguous(), b, { trans_a = true }):totable(), want) < 1e-5, "trans_a")
  t.check(normwise_err(f2.matmul(a, b:t():contiguous(), { trans_b = true }):totable(), want) < 1e-5, "trans_b")
  local out = f2.ones({ m, n })
  f2.matmul(a, b, { out = out, alpha = 2, beta = -1 })
  t.check(normwise_err(out:totable(), map(want, function(v) return 2 * v - 1 end)) < 1e-5, "alpha, beta, out")
  -- Batched, with a 2-D right operand broadcast over the batch.
  local x3 = f2.randn({ 3, m, k })
  local y3 = x3:matmul(b)
  t.check(same_shape(y3:shape(), { 3, m, n }), "batched shape")
  t.check(normwise_err(y3:select(0, 2):totable(), ref_matmul(x3:select(0, 2):totable(), B)) < 1e-5, "batched values")
  t.check(a:bf16():matmul(b:bf16()):dtype() == "bf16" and a:half():matmul(b:half()):dtype() == "f32", "matmul dtypes")
  t.check(normwise_err(a:bf16():matmul(b):totable(), ref_matmul(a:bf16():totable(), B)) < 1e-5,
    "mixed dtypes go through f32")
  raises_here(function() local _ = a:matmul(f2.zeros({ k + 1, n })) end, "shapes do not match")
  raises_here(function() local _ = f2.arange(3):matmul(b) end, "2-D or 3-D")
end

-- ---------------------------------------------------------------- indexing
do
  local x = f2.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })
  t.check(#x == 2 and x[1][2] == 6 and x[-1][0] == 4 and x[0][-1] == 3, "t[i] is 0-based, negative from the end")
  t.check(same_shape(x[1]:shape(), { 3 }), "t[i] of a 2-D tensor is a row view")
  x[0] = 7
  t.check(x:sum() == 36, "t[i] = number fills the row")
  x[1] = f2.tensor({ 1, 0, 1 })
  t.check(x:sum() == 23 and x[1][1] == 0, "t[i] = tensor copies into the row")
  x[1][2] = -1
  t.check(x[1][2] == -1, "element assignment through a row view")
  x[0] = f2.tensor(2)
  t.check(x[0]:sum() == 6, "t[i] = 0-dim tensor broadcasts")
  raises_here(function() local _ = x[2] end, "index 2 out of range")
  raises_here(function() x.foo = 1 end, "no field 'foo'")
  raises_here(function() local _ = f2.tensor(1)[0] end, "0-dim")
  raises_here(function() local _ = #f2.tensor(1) end, "no length")
  raises_here(function() local _ = x:item() end, "6 elements, not 1")
end

-- ---------------------------------------------------------------- printing
do
  local s = tostring(f2.tensor({ { 1, 2, 3 }, { 4, 5, 6 } }))
  t.check(s == "1 2 3\n4 5 6\n[f32 tensor 2x3 on cpu]", "2-D integers: " .. s)
  s = tostring(f2.tensor({ 0.5, -1.25 }, { dtype = "bf16" }))
  t.check(s == " 0.5000 -1.2500\n[bf16 tensor 2 on cpu]", "1-D floats share a format: " .. s)
  s = tostring(f2.tensor({ 1e-7, 1 }))
  t.check(s:find("1.0000e-07 1.0000e+00", 1, true), "small values go scientific: " .. s)
  s = tostring(f2.arange(100):reshape({ 10, 10 }))
  local lines = {}
  for line in s:gmatch("[^\n]+") do lines[#lines + 1] = line end
  t.check(#lines == 8 and lines[4] == "..." and lines[1] == " 0  1  2 ...  7  8  9" and
    lines[7] == "90 91 92 ... 97 98 99" and lines[8] == "[f32 tensor 10x10 on cpu]", "10x10 truncated:\n" .. s)
  s = tostring(f2.zeros({ 2, 2, 2 }, { dtype = "i32" }))
  t.check(s:find("(0,.,.) =\n0 0\n0 0\n\n(1,.,.) =", 1, true) and s:find("[i32 tensor 2x2x2 on cpu]", 1, true), s)
  s = tostring(f2.arange(8 * 3 * 3):reshape({ 8, 3, 3 }))
  t.check(s:find("(2,.,.) =", 1, true) and s:find("(5,.,.) =", 1, true) and not s:find("(3,.,.)", 1, true), s)
  t.check(tostring(f2.tensor(2.5)) == "2.5000\n[f32 tensor scalar on cpu]", "0-dim")
  t.check(tostring(f2.zeros({ 0, 3 })) == "[f32 tensor 0x3 on cpu]", "empty")
  s = tostring(f2.tensor({ 0 / 0, 1 / 0, -1 / 0, 1.5 }))
  t.check(s:find("nan", 1, true) and s:find(" inf", 1, true) and s:find("-inf", 1, true), "non-finite: " .. s)
end

-- ---------------------------------------------------------------- free() and the GC
do
  local x = f2.arange(12):reshape({ 3, 4 })
  local v = x:narrow(0, 1, 1)
  t.check(f2.C.f2_tensor_refcount(v.h) == 3, "two handles and a view share the storage")
  x:free()
  t.check(tostring(x) == "[freed tensor]", "a freed tensor prints as such")
  t.check(v:sum() == 4 + 5 + 6 + 7, "a view outlives the freed base")
  x:free() -- twice is harmless
  raises_here(function() local _ = x:sum() end, "tensor used after free()")
  raises_here(function() local _ = x + 1 end, "tensor used after free()")
  raises_here(function() local _ = f2.zeros({ 2 }):add(x) end, "tensor used after free()")
  -- Handles dropped without free() are reclaimed by the GC.
  local base = f2.zeros({ 4 })
  local view = base:view({ 2, 2 })
  t.check(f2.C.f2_tensor_refcount(view.h) == 2, "before GC")
  base = nil
  collectgarbage()
  collectgarbage()
  t.check(f2.C.f2_tensor_refcount(view.h) == 1, "the GC released the dropped handle")
end

-- ---------------------------------------------------------------- misuse raises at the caller
do
  local x = f2.zeros({ 2, 3 })
  raises_here(function() f2.zeros({ 2, -1 }) end, "size -1 of dim 1 is not a valid size")
  raises_here(function() f2.zeros("2x3") end, "shape must be a table")
  raises_here(function() f2.empty({ 2 ^ 40, 2 ^ 40 }) end, "too large")
  raises_here(function() f2.zeros({ 2 }, { dtype = "f64" }) end, "unknown dtype 'f64'")
  raises_here(function() f2.zeros({ 2 }, { device = "tpu" }) end, "unknown device 'tpu'")
  raises_here(function() f2.zeros({ 2 }, "f32") end, "options must be a table")
  raises_here(function() f2.tensor({ { 1, 2 }, { 3 } }) end, "ragged at [1]")
  raises_here(function() f2.tensor({ 1, "a" }) end, "element [1] is a string")
  raises_here(function() x:narrow(1, 2, 2) end, "out of range")
  raises_here(function() x:narrow(5, 0, 1) end, "dim 5 out of range")
  raises_here(function() x:select(0, 2) end, "index 2 out of range")
  raises_here(function() x:permute(0) end, "expects 2 dims")
  raises_here(function() x:expand({ 4, 3 }) end, "cannot broadcast")
  raises_here(function() x:view({ 4, 2 }) end, "has 6 elements")
  raises_here(function() x:to("f64") end, "unknown dtype or device")
  raises_here(function() x:fill("a") end, "value must be a number")
  raises_here(function() x:copy(f2.zeros({ 2 })) end, "cannot broadcast")
  raises_here(function() x:size(2) end, "out of range")
  raises_here(function() f2.from_handle(nil) end, "from_handle")
  raises_here(function() x.sum(nil) end, "expected a tensor")
  if not f2.cuda.available() then
    raises_here(function() x:cuda() end, "to: ")
    raises_here(function() f2.zeros({ 2 }, { device = "cuda" }) end, "zeros: ")
    raises_here(function() f2.cuda.memory_stats() end, "GPU")
    t.check(f2.cuda.device_count() == 0, "no GPU here")
  end
end

t.done()
