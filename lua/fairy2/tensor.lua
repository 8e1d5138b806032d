-- tensor.lua — the Lua tensor type (Torch7/PyTorch flavoured) over the C runtime's f2_tensor.
--
--   local f2 = require "fairy2"
--   local x = f2.randn({2, 3}, {dtype = "bf16", device = "cuda", seed = 1})
--   local y = (x:float() * 2 + 1):matmul(f2.ones({3, 4}))   -- operators broadcast like numpy
--   print(y)  y:sum()  y:shape()  y:narrow(0, 1, 1)  y[0][2]  y:free()
--
-- A tensor is a small cdata object { f2_tensor *h } with methods; pass t.h to f2.C functions
-- (f2.C.f2_foo(out.h, x.h)). It cannot be the f2_tensor* itself: LuaJIT gives pointers built-in
-- arithmetic and indexing (t + 1, t[i]) and lets struct fields (dtype, shape, device) shadow methods.
-- f2.from_handle(p) adopts an f2_tensor* returned by C.
--
-- Conventions: dims, starts and indices are 0-based (as in C and PyTorch; negative ones count from
-- the end); shapes are Lua tables {2, 3}. opts = {dtype = "f32" (default) | "bf16" | "f16" | "i32" |
-- "i64" | "u8" | "i8", device = "cpu" (default) | "cuda", seed = N}. Views (narrow, select,
-- transpose, permute, expand, view, reshape when it can) share memory with their source.
-- Results keep their inputs' dtype (two different float dtypes give f32).
-- Memory: the GC frees a tensor's handle as a backstop; t:free() releases it now (GPU memory
-- included), after which t must not be used (methods then raise "used after free()").
local ffi = require "ffi"
local f2 = require "fairy2"
local C = f2.C

ffi.cdef [[ typedef struct f2_lua_tensor { f2_tensor *h; } f2_lua_tensor; ]]
local Ref = ffi.typeof("f2_lua_tensor")

local M = {}
local Tensor = {}   -- the methods
local meta = {}     -- the metatype of Ref

local F32, BF16, F16, I64 = C.F2_F32, C.F2_BF16, C.F2_F16, C.F2_I64
local CPU, CUDA = C.F2_CPU, C.F2_CUDA
local DEVICE_NAMES = { [CPU] = "cpu", [CUDA] = "cuda" }
local DEVICE_CODES = { cpu = CPU, cuda = CUDA }

-- f2.dtypes: name -> code (f2.dtypes.bf16 == 1), plus list, name(code), size(d), is_float(d).
local dtypes = { list = {} }
for code = 0, C.F2_DTYPE_COUNT - 1 do
  local name = ffi.string(C.f2_dtype_name(code))
  dtypes[name] = code
  dtypes.list[code + 1] = name
end
local function is_float_code(code) return code == F32 or code == BF16 or code == F16 end

-- Scratch arrays for shapes and dims handed to C (C copies them before returning).
local shape_buf, stride_buf = ffi.new("int64_t[8]"), ffi.new("int64_t[8]")
local dims_buf = ffi.new("int32_t[8]")

-- Errors name the user's line however deep in this file they are found: raise() blames the first
-- stack frame outside it (skipping C frames such as pcall or tostring), which also survives tail
-- calls. The stack is walked only on failure.
local THIS_FILE = debug.getinfo(1, "S").source

local function raise(msg)
  local level = 2
  while true do
    local info = debug.getinfo(level, "S")
    if not info or (info.source ~= THIS_FILE and info.what ~= "C") then break end
    level = level + 1
  end
  error(msg, level)
end

-- Raises "what: <f2_last_error()>" at the user's line (and clears the C error).
local function raise_c_error(what)
  local msg = f2.last_error()
  C.f2_clear_error()
  raise(what .. ": " .. msg)
end

-- f2.check for this file.
local function check(rc, what)
  if rc ~= 0 then raise_c_error(what) end
end

local function release(t)
  local h = t.h
  if h ~= nil then
    t.h = nil
    C.f2_tensor_free(h)
  end
end

-- Adopts a fresh f2_tensor* (NULL: raises with the C message).
local function wrap(p, what)
  if p == nil then raise_c_error(what) end
  return ffi.gc(Ref(p), release)
end

local function is_tensor(x) return ffi.istype(Ref, x) end

local function handle(t)
  if not is_tensor(t) then raise("expected a tensor, got " .. type(t)) end
  local h = t.h
  if h == nil then raise("tensor used after free()") end
  return h
end

local function dtype_code(d, what)
  local code = type(d) == "string" and dtypes[d] or (type(d) == "number" and dtypes.list[d + 1] and d)
  if type(code) ~= "number" then
    raise(what .. ": unknown dtype '" .. tostring(d) .. "' (" .. table.concat(dtypes.list, ", ") .. ")")
  end
  return code
end

local function device_code(d, what)
  local code = DEVICE_CODES[d]
  if not code then raise(what .. ": unknown device '" .. tostring(d) .. "' (cpu, cuda)") end
  return code
end

local function parse_opts(opts, what)
  if opts ~= nil and type(opts) ~= "table" then raise(what .. ": options must be a table") end
  opts = opts or {}
  return dtype_code(opts.dtype or "f32", what), device_code(opts.device or "cpu", what)
end

-- A shape table (or one number) into buf; -1 passes when allow_infer (reshape, expand).
local function dims_arg(shape, buf, what, allow_infer)
  if type(shape) == "number" then shape = { shape } end
  if type(shape) ~= "table" then raise(what .. ": shape must be a table of sizes, got " .. type(shape)) end
  local n = #shape
  if n > 8 then raise(what .. ": " .. n .. " dims, at most 8") end
  for i = 1, n do
    local s = shape[i]
    if type(s) ~= "number" or s % 1 ~= 0 or (s < 0 and not (allow_infer and s == -1)) then
      raise(what .. ": size " .. tostring(s) .. " of dim " .. (i - 1) .. " is not a valid size")
    end
    buf[i - 1] = s
  end
  return n, buf
end

local function shape_of(h)
  local s = {}
  for i = 0, h.ndim - 1 do s[i + 1] = tonumber(h.shape[i]) end
  return s
end

local function numel_of(h) return tonumber(C.f2_tensor_numel(h)) end

local function shape_text(s) return "[" .. table.concat(s, ",") .. "]" end

-- A dim argument, 0-based, negative from the end (ranges are checked by C).
local function dim_arg(h, d, what)
  if type(d) ~= "number" or d % 1 ~= 0 then raise(what .. ": dim must be an integer, got " .. tostring(d)) end
  return d < 0 and d + h.ndim or d
end

local function new_like(h, dtype, device, what)
  return wrap(C.f2_tensor_new(dtype or h.dtype, device or h.device, h.ndim, h.shape), what)
end

-- ---------------------------------------------------------------- constructors

local function new_tensor(shape, opts, what)
  local dtype, device = parse_opts(opts, what)
  local n, dims = dims_arg(shape, shape_buf, what)
  return wrap(C.f2_tensor_new(dtype, device, n, dims), what)
end

local function filled(shape, value, opts, what)
  if type(value) ~= "number" then raise(what .. ": value must be a number, got " .. type(value)) end
  local t = new_tensor(shape, opts, what)
  check(C.f2_fill(t.h, value), what)
  return t
end

function M.empty(shape, opts) return new_tensor(shape, opts, "empty") end
function M.zeros(shape, opts) return filled(shape, 0, opts, "zeros") end
function M.ones(shape, opts) return filled(shape, 1, opts, "ones") end
function M.full(shape, value, opts) return filled(shape, value, opts, "full") end

-- empty_like(t [, opts]): t's shape, with t's dtype and device unless opts says otherwise.
function M.empty_like(t, opts)
  local h = handle(t)
  if opts ~= nil and type(opts) ~= "table" then raise("empty_like: options must be a table") end
  opts = opts or {}
  local dtype = opts.dtype and dtype_code(opts.dtype, "empty_like")
  local device = opts.device and device_code(opts.device, "empty_like")
  return new_like(h, dtype, device, "empty_like")
end
function M.zeros_like(t, opts)
  local z = M.empty_like(t, opts)
  check(C.f2_fill(z.h, 0), "zeros_like")
  return z
end

-- Seeds for rand/randn without opts.seed: a counter under f2.manual_seed(seed), so a script that
-- seeds once draws the same numbers every run.
local seed_base, seed_count = 0ULL, 0ULL
function M.manual_seed(seed)
  if type(seed) ~= "number" and not ffi.istype("uint64_t", seed) then raise("manual_seed: seed must be a number") end
  seed_base, seed_count = 0ULL + seed, 0ULL
end
local function next_seed()
  seed_count = seed_count + 1
  return seed_base * 0x9E3779B97F4A7C15ULL + seed_count
end

-- rand: uniform in [opts.low, opts.high) (default [0, 1)); randn: normal (opts.mean, opts.std).
function M.rand(shape, opts)
  local t = new_tensor(shape, opts, "rand")
  opts = opts or {}
  check(C.f2_rand_uniform(t.h, opts.seed or next_seed(), opts.low or 0, opts.high or 1), "rand")
  return t
end
function M.randn(shape, opts)
  local t = new_tensor(shape, opts, "randn")
  opts = opts or {}
  check(C.f2_rand_normal(t.h, opts.seed or next_seed(), opts.mean or 0, opts.std or 1), "randn")
  return t
end

-- arange(n [, opts]) or arange(start, stop [, step] [, opts]): start, start + step, ... short of stop.
function M.arange(a, b, c, opts)
  local start, stop, step = 0, a, 1
  if type(b) == "number" then
    start, stop = a, b
    if type(c) == "number" then step = c else opts = c end
  else
    opts = b
  end
  if type(start) ~= "number" or type(stop) ~= "number" or step == 0 then
    raise("arange: expects (n) or (start, stop [, step]) with a non-zero step")
  end
  local t = new_tensor({ math.max(0, math.ceil((stop - start) / step)) }, opts, "arange")
  check(C.f2_arange(t.h, start, step), "arange")
  return t
end

-- tensor(nested tables of numbers | a number, opts): the shape follows the nesting.
function M.tensor(data, opts)
  local shape, node = {}, data
  while type(node) == "table" do
    shape[#shape + 1] = #node
    node = node[1]
  end
  if #shape > 8 then raise("tensor: nested " .. #shape .. " deep, at most 8 dims") end
  local flat, bad = {}, nil
  local function walk(x, d, path)
    if d > #shape then
      if type(x) ~= "number" then bad = bad or ("element " .. path .. " is a " .. type(x) .. ", not a number") end
      flat[#flat + 1] = x
    elseif type(x) ~= "table" or #x ~= shape[d] then
      bad = bad or ("ragged at " .. (path == "" and "the top" or path) .. ": expected " .. shape[d] .. " entries")
    else
      for i = 1, #x do walk(x[i], d + 1, path .. "[" .. (i - 1) .. "]") end
    end
  end
  walk(data, 1, "")
  if bad then raise("tensor: " .. bad) end
  local dtype, device = parse_opts(opts, "tensor")
  -- Written on the host as f32 (floats) or i64 (integers, exact), then cast and moved.
  local stage_dtype = is_float_code(dtype) and F32 or I64
  local n, dims = dims_arg(shape, shape_buf, "tensor")
  local stage = wrap(C.f2_tensor_new(stage_dtype, CPU, n, dims), "tensor")
  local p = ffi.cast(stage_dtype == F32 and "float *" or "int64_t *", stage.h.data)
  for i = 1, #flat do p[i - 1] = flat[i] end
  if stage_dtype == dtype and device == CPU then return stage end
  local t = new_like(stage.h, dtype, device, "tensor")
  check(C.f2_copy(t.h, stage.h), "tensor")
  stage:free()
  return t
end

-- Adopts an f2_tensor* made by C (the returned tensor owns it); NULL raises with f2_last_error().
function M.from_handle(p, what) return wrap(p, what or "from_handle") end

-- ---------------------------------------------------------------- geometry

function Tensor:shape() return shape_of(handle(self)) end
function Tensor:dim() return handle(self).ndim end
function Tensor:numel() return numel_of(handle(self)) end
function Tensor:dtype() return dtypes.list[handle(self).dtype + 1] end
function Tensor:device() return DEVICE_NAMES[handle(self).device] end
function Tensor:is_contiguous() return C.f2_tensor_is_contiguous(handle(self)) ~= 0 end
function Tensor:stride()
  local h, s = handle(self), {}
  for i = 0, h.ndim - 1 do s[i + 1] = tonumber(h.stride[i]) end
  return s
end
-- size(d): the size of dim d; size(): the shape.
function Tensor:size(d)
  local h = handle(self)
  if d == nil then return shape_of(h) end
  local i = dim_arg(h, d, "size")
  if i < 0 or i >= h.ndim then raise("size: dim " .. d .. " out of range for a " .. h.ndim .. "-dim tensor") end
  return tonumber(h.shape[i])
end

-- ---------------------------------------------------------------- conversion, copies

-- to("cuda"), to("bf16"), to{dtype=, device=}: a converted copy, or t itself when nothing changes.
function Tensor:to(target)
  local h = handle(self)
  local dtype, device = h.dtype, h.device
  if type(target) == "table" then
    if target.dtype then dtype = dtype_code(target.dtype, "to") end
    if target.device then device = device_code(target.device, "to") end
  elseif DEVICE_CODES[target] then
    device = DEVICE_CODES[target]
  elseif type(target) == "string" and type(dtypes[target]) == "number" then
    dtype = dtypes[target]
  else
    raise("to: unknown dtype or device '" .. tostring(target) .. "'")
  end
  if dtype == h.dtype and device == h.device then return self end
  local out = new_like(h, dtype, device, "to")
  check(C.f2_copy(out.h, h), "to")
  return out
end
function Tensor:float() return Tensor.to(self, "f32") end
function Tensor:bf16() return Tensor.to(self, "bf16") end
function Tensor:half() return Tensor.to(self, "f16") end
function Tensor:cuda() return Tensor.to(self, "cuda") end
function Tensor:cpu() return Tensor.to(self, "cpu") end

-- t itself when contiguous, else a contiguous copy.
function Tensor:contiguous()
  local h = handle(self)
  if C.f2_tensor_is_contiguous(h) ~= 0 then return self end
  return wrap(C.f2_tensor_contiguous(h), "contiguous")
end

function Tensor:clone()
  local h = handle(self)
  local out = new_like(h, nil, nil, "clone")
  check(C.f2_copy(out.h, h), "clone")
  return out
end

-- A raw handle of h broadcast to shape (h itself when it already has it); release it with
-- free_temp.
local function expanded(h, shape, what)
  local same = #shape == h.ndim
  for i = 1, #shape do same = same and h.shape[i - 1] == shape[i] end
  if same then return h end
  local n, dims = dims_arg(shape, stride_buf, what)
  local p = C.f2_tensor_expand(h, n, dims)
  if p == nil then raise_c_error(what) end
  return p
end

local function free_temp(p, h) if p ~= h then C.f2_tensor_free(p) end end

-- copy(src): src (a tensor broadcast to t's shape, of any dtype and device, or a number) into t.
function Tensor:copy(src)
  local h = handle(self)
  if type(src) == "number" then
    check(C.f2_fill(h, src), "copy")
    return self
  end
  local hs = handle(src)
  local p = expanded(hs, shape_of(h), "copy")
  local rc = C.f2_copy(h, p)
  free_temp(p, hs)
  check(rc, "copy")
  return self
end

function Tensor:fill(value)
  if type(value) ~= "number" then raise("fill: value must be a number, got " .. type(value)) end
  check(C.f2_fill(handle(self), value), "fill")
  return self
end
function Tensor:zero() return Tensor.fill(self, 0) end

-- Releases the handle now (and the memory, with the last view); t must not be used afterwards.
function Tensor:free()
  ffi.gc(self, nil)
  release(self)
end

-- ---------------------------------------------------------------- views

function Tensor:narrow(d, start, length)
  local h = handle(self)
  return wrap(C.f2_tensor_narrow(h, dim_arg(h, d, "narrow"), start, length), "narrow")
end

-- select(d, i): the slice at index i of dim d (negative i counts from the end); drops the dim.
function Tensor:select(d, i)
  local h = handle(self)
  d = dim_arg(h, d, "select")
  if type(i) ~= "number" or i % 1 ~= 0 then raise("select: index must be an integer, got " .. tostring(i)) end
  if i < 0 and d >= 0 and d < h.ndim then i = i + tonumber(h.shape[d]) end
  return wrap(C.f2_tensor_select(h, d, i), "select")
end

function Tensor:transpose(a, b)
  local h = handle(self)
  return wrap(C.f2_tensor_transpose(h, dim_arg(h, a, "transpose"), dim_arg(h, b, "transpose")), "transpose")
end

-- t(): a 2-D tensor transposed (1-D and 0-D: unchanged).
function Tensor:t()
  local h = handle(self)
  if h.ndim < 2 then return self end
  if h.ndim > 2 then raise("t: expects at most 2 dims, got " .. h.ndim .. " (use transpose)") end
  return wrap(C.f2_tensor_transpose(h, 0, 1), "t")
end

-- permute({2, 0, 1}) or permute(2, 0, 1).
function Tensor:permute(dims, ...)
  local h = handle(self)
  if type(dims) == "number" then dims = { dims, ... } end
  if type(dims) ~= "table" or #dims ~= h.ndim then
    raise("permute: expects " .. h.ndim .. " dims, got " .. (type(dims) == "table" and #dims or type(dims)))
  end
  for i = 1, #dims do dims_buf[i - 1] = dim_arg(h, dims[i], "permute") end
  return wrap(C.f2_tensor_permute(h, dims_buf), "permute")
end

function Tensor:expand(shape)
  local h = handle(self)
  local n, dims = dims_arg(shape, shape_buf, "expand", true)
  return wrap(C.f2_tensor_expand(h, n, dims), "expand")
end

-- as_strided(shape, stride[, offset]): a view of this tensor's storage with those sizes and strides (in
-- elements), from element `offset` (default 0) of this tensor on; it must stay inside the storage.
function Tensor:as_strided(shape, stride, offset)
  local h = handle(self)
  local n = dims_arg(shape, shape_buf, "as_strided")
  if type(stride) ~= "table" or #stride ~= n then
    raise("as_strided: expects " .. n .. " strides, got " .. (type(stride) == "table" and #stride or type(stride)))
  end
  for i = 1, n do
    local s = stride[i]
    if type(s) ~= "number" or s % 1 ~= 0 or s < 0 then
      raise("as_strided: stride " .. tostring(s) .. " of dim " .. (i - 1) .. " is not a valid stride")
    end
    stride_buf[i - 1] = s
  end
  return wrap(C.f2_tensor_as_strided(h, n, shape_buf, stride_buf, offset or 0), "as_strided")
end

-- view(shape): a view or an error; reshape(shape): a view when the layout allows, else a copy.
function Tensor:view(shape)
  local h = handle(self)
  local n, dims = dims_arg(shape, shape_buf, "view", true)
  return wrap(C.f2_tensor_reshape(h, n, dims), "view")
end
-- as(shape): this tensor's memory under another shape, moving ownership: the view is returned and
-- this handle is freed (modules use it to hand out one handle per buffer, so t:free() frees memory).
function Tensor:as(shape)
  local v = Tensor.view(self, shape)
  Tensor.free(self)
  return v
end
function Tensor:reshape(shape)
  local h = handle(self)
  local n, dims = dims_arg(shape, shape_buf, "reshape", true)
  local p = C.f2_tensor_reshape(h, n, dims)
  if p == nil and C.f2_tensor_is_contiguous(h) == 0 then
    C.f2_clear_error()
    local c = wrap(C.f2_tensor_contiguous(h), "reshape")
    p = C.f2_tensor_reshape(c.h, n, dims)
    c:free()
  end
  return wrap(p, "reshape")
end

-- ---------------------------------------------------------------- reading values

-- The values of h on the host: a contiguous f32 (float dtypes) or i64 (integers) tensor, or nil
-- when h already is one, and a pointer to the elements.
local function host_values(h)
  local want = is_float_code(h.dtype) and F32 or I64
  local ctype = want == F32 and "float *" or "int64_t *"
  if h.dtype == want and h.device == CPU and C.f2_tensor_is_contiguous(h) ~= 0 then
    return nil, ffi.cast(ctype, h.data)
  end
  local tmp = new_like(h, want, CPU, "read")
  check(C.f2_copy(tmp.h, h), "read")
  return tmp, ffi.cast(ctype, tmp.h.data)
end

-- The first element of h as a Lua number.
local function first_value(h)
  local tmp, p = host_values(h)
  local v = tonumber(p[0])
  if tmp then tmp:free() end
  return v
end

function Tensor:item()
  local h = handle(self)
  local n = numel_of(h)
  if n ~= 1 then raise("item: the tensor has " .. n .. " elements, not 1") end
  return first_value(h)
end

-- Nested Lua tables (a number for a 0-dim tensor).
function Tensor:totable()
  local h = handle(self)
  local shape = shape_of(h)
  local tmp, p = host_values(h)
  local i = 0
  local function build(d)
    if d > #shape then
      i = i + 1
      return tonumber(p[i - 1])
    end
    local t = {}
    for k = 1, shape[d] do t[k] = build(d + 1) end
    return t
  end
  local out = build(1)
  if tmp then tmp:free() end
  return out
end

-- ---------------------------------------------------------------- elementwise math

local BINARY = { add = C.F2_OP_ADD, sub = C.F2_OP_SUB, mul = C.F2_OP_MUL, div = C.F2_OP_DIV,
  maximum = C.F2_OP_MAX, minimum = C.F2_OP_MIN, pow = C.F2_OP_POW }
local COMMUTES = { [C.F2_OP_ADD] = true, [C.F2_OP_MUL] = true, [C.F2_OP_MAX] = true, [C.F2_OP_MIN] = true }
local UNARY = { neg = C.F2_OP_NEG, abs = C.F2_OP_ABS, exp = C.F2_OP_EXP, log = C.F2_OP_LOG, sqrt = C.F2_OP_SQRT,
  rsqrt = C.F2_OP_RSQRT, tanh = C.F2_OP_TANH, sigmoid = C.F2_OP_SIGMOID, silu = C.F2_OP_SILU,
  square = C.F2_OP_SQUARE, sign = C.F2_OP_SIGN }

local function result_dtype(a, b)
  if a == b then return a end
  local fa, fb = is_float_code(a), is_float_code(b)
  if fa and fb then return F32 end
  if fa then return a end
  if fb then return b end
  return I64
end

local function broadcast_shape(sa, sb, what)
  local n, out = math.max(#sa, #sb), {}
  for i = 1, n do
    local da, db = sa[#sa - n + i] or 1, sb[#sb - n + i] or 1
    if da ~= db and da ~= 1 and db ~= 1 then
      raise(what .. ": shapes " .. shape_text(sa) .. " and " .. shape_text(sb) .. " do not broadcast")
    end
    out[i] = da == 1 and db or da
  end
  return out
end

-- a op b for tensors and numbers (at least one a tensor), broadcast as numpy does; into out when
-- given (in place: out is a).
local function binary(a, b, op, what, out)
  if type(b) == "number" then
    local ha = handle(a)
    out = out or new_like(ha, nil, nil, what)
    check(C.f2_binary_scalar(out.h, ha, b, op), what)
    return out
  end
  local scalar -- a number on the left of a non-commuting op: a one-element tensor, broadcast
  if type(a) == "number" then
    if COMMUTES[op] then return binary(b, a, op, what, out) end
    local hb = handle(b)
    scalar = wrap(C.f2_tensor_new(hb.dtype, hb.device, 0, nil), what)
    check(C.f2_fill(scalar.h, a), what)
    a = scalar
  end
  local ha, hb = handle(a), handle(b)
  local shape = broadcast_shape(shape_of(ha), shape_of(hb), what)
  if not out then
    local n, dims = dims_arg(shape, shape_buf, what)
    out = wrap(C.f2_tensor_new(result_dtype(ha.dtype, hb.dtype), ha.device, n, dims), what)
  end
  local pa, pb = expanded(ha, shape, what), expanded(hb, shape, what)
  local rc = C.f2_binary(out.h, pa, pb, op)
  free_temp(pa, ha)
  free_temp(pb, hb)
  if scalar then scalar:free() end
  check(rc, what)
  return out
end

local function unary(t, op, what, out)
  local h = handle(t)
  out = out or new_like(h, nil, nil, what)
  check(C.f2_unary(out.h, h, op), what)
  return out
end

-- t:add(x) ... t:pow(x), t:maximum(x), t:minimum(x): new tensors; t:add_(x) ...: in place, return t.
-- t:exp(), ..., t:exp_(), ...: likewise.
for name, op in pairs(BINARY) do
  Tensor[name] = function(self, other) return binary(self, other, op, name) end
  Tensor[name .. "_"] = function(self, other) return binary(self, other, op, name .. "_", self) end
end
for name, op in pairs(UNARY) do
  Tensor[name] = function(self) return unary(self, op, name) end
  Tensor[name .. "_"] = function(self) return unary(self, op, name .. "_", self) end
end

meta.__add = function(a, b) return binary(a, b, C.F2_OP_ADD, "+") end
meta.__sub = function(a, b) return binary(a, b, C.F2_OP_SUB, "-") end
meta.__mul = function(a, b) return binary(a, b, C.F2_OP_MUL, "*") end
meta.__div = function(a, b) return binary(a, b, C.F2_OP_DIV, "/") end
meta.__pow = function(a, b) return binary(a, b, C.F2_OP_POW, "^") end
meta.__unm = function(a) return unary(a, C.F2_OP_NEG, "unary -") end

-- ---------------------------------------------------------------- reductions

-- sum(), mean(), max(), min(), norm(): over everything, a Lua number. With a dim: a tensor without
-- that dim (or with size 1 there when keepdim), in t's dtype.
local REDUCE = { sum = C.F2_RED_SUM, mean = C.F2_RED_MEAN, max = C.F2_RED_MAX, min = C.F2_RED_MIN,
  norm = C.F2_RED_NORM }
for name, op in pairs(REDUCE) do
  Tensor[name] = function(self, dim, keepdim)
    local h = handle(self)
    if dim == nil then
      local out = wrap(C.f2_tensor_new(F32, h.device, 0, nil), name)
      check(C.f2_reduce(out.h, h, -1, op), name)
      local v = first_value(out.h)
      out:free()
      return v
    end
    local d = dim_arg(h, dim, name)
    if d < 0 or d >= h.ndim then raise(name .. ": dim " .. dim .. " out of range for a " .. h.ndim .. "-dim tensor") end
    local shape = shape_of(h)
    if keepdim then shape[d + 1] = 1 else table.remove(shape, d + 1) end
    local n, dims = dims_arg(shape, shape_buf, name)
    local out = wrap(C.f2_tensor_new(h.dtype, h.device, n, dims), name)
    check(C.f2_reduce(out.h, h, d, op), name)
    return out
  end
end

-- allclose(other, rtol, atol): |t - other| <= atol + rtol |other| everywhere (a NaN: false).
function Tensor:allclose(other, rtol, atol)
  rtol, atol = rtol or 1e-5, atol or 1e-8
  local diff = binary(self, other, C.F2_OP_SUB, "allclose")
  local excess = new_like(diff.h, F32, nil, "allclose")
  check(C.f2_unary(excess.h, diff.h, C.F2_OP_ABS), "allclose")
  diff:free()
  if type(other) == "number" then
    excess:sub_(atol + rtol * math.abs(other))
  else
    local bound = unary(other, C.F2_OP_ABS, "allclose")
    bound:mul_(rtol):add_(atol)
    binary(excess, bound, C.F2_OP_SUB, "allclose", excess)
    bound:free()
  end
  local worst = Tensor.max(excess)
  excess:free()
  return worst <= 0
end

-- ---------------------------------------------------------------- matmul

-- a @ b: 2-D, or 3-D batched (a 2-D operand is broadcast over the other's batch). opts: trans_a,
-- trans_b (use the operand transposed), alpha, beta (out = alpha a@b + beta out), out (a tensor
-- to write; default: a new one of a's dtype, f32 for f16 or mixed inputs).
local function matmul(a, b, opts)
  local ha, hb = handle(a), handle(b)
  if opts ~= nil and type(opts) ~= "table" then raise("matmul: options must be a table") end
  opts = opts or {}
  local ta, tb = opts.trans_a and 1 or 0, opts.trans_b and 1 or 0
  local ra, rb = ha.ndim, hb.ndim
  if ra < 2 or ra > 3 or rb < 2 or rb > 3 then
    raise("matmul: operands must be 2-D or 3-D, got " .. ra .. "-D and " .. rb .. "-D")
  end
  local temps = {}
  if ha.dtype ~= hb.dtype then -- one input dtype: both as f32
    for i, h in ipairs { ha, hb } do
      temps[i] = new_like(h, F32, nil, "matmul")
      check(C.f2_copy(temps[i].h, h), "matmul")
    end
    ha, hb = temps[1].h, temps[2].h
  end
  local nd = math.max(ra, rb)
  local batch = ra == 3 and tonumber(ha.shape[0]) or rb == 3 and tonumber(hb.shape[0]) or nil
  if nd == 3 and ra == 2 then
    local s = shape_of(ha)
    table.insert(s, 1, batch)
    temps[#temps + 1] = wrap(expanded(ha, s, "matmul"), "matmul")
    ha = temps[#temps].h
  elseif nd == 3 and rb == 2 then
    local s = shape_of(hb)
    table.insert(s, 1, batch)
    temps[#temps + 1] = wrap(expanded(hb, s, "matmul"), "matmul")
    hb = temps[#temps].h
  end
  local out = opts.out
  if out == nil then
    local m = tonumber(ta == 1 and ha.shape[nd - 1] or ha.shape[nd - 2])
    local n = tonumber(tb == 1 and hb.shape[nd - 2] or hb.shape[nd - 1])
    local dtype = (ha.dtype == F32 or ha.dtype == BF16) and ha.dtype or F32
    local ndims, dims = dims_arg(nd == 3 and { batch, m, n } or { m, n }, shape_buf, "matmul")
    out = wrap(C.f2_tensor_new(dtype, ha.device, ndims, dims), "matmul")
  end
  local rc = C.f2_matmul(handle(out), ha, hb, ta, tb, opts.alpha or 1, opts.beta or 0)
  for _, t in ipairs(temps) do t:free() end
  check(rc, "matmul")
  return out
end

function Tensor:matmul(b, opts) return matmul(self, b, opts) end
function M.matmul(a, b, opts) return matmul(a, b, opts) end

-- ---------------------------------------------------------------- indexing

-- t[i]: select(0, i) (negative i from the end); a number for a 1-D tensor.
-- t[i] = v: fills that slice (a number) or copies into it (a tensor, broadcast).
local function index(t, i)
  local h = handle(t)
  if h.ndim == 0 then raise("cannot index a 0-dim tensor (use item())") end
  if i % 1 ~= 0 then raise("index " .. i .. " is not an integer") end
  if i < 0 then i = i + tonumber(h.shape[0]) end
  return wrap(C.f2_tensor_select(h, 0, i), "index")
end

meta.__index = function(t, k)
  if type(k) ~= "number" then return Tensor[k] end
  local s = index(t, k)
  if s.h.ndim > 0 then return s end
  local v = first_value(s.h)
  s:free()
  return v
end

meta.__newindex = function(t, k, v)
  if type(k) ~= "number" then raise("tensors have no field '" .. tostring(k) .. "'") end
  local s = index(t, k)
  if type(v) == "number" then
    check(C.f2_fill(s.h, v), "index assignment")
  else
    local hv = handle(v)
    local p = expanded(hv, shape_of(s.h), "index assignment")
    local rc = C.f2_copy(s.h, p)
    free_temp(p, hv)
    check(rc, "index assignment")
  end
  s:free()
end

meta.__len = function(t)
  local h = handle(t)
  if h.ndim == 0 then raise("a 0-dim tensor has no length") end
  return tonumber(h.shape[0])
end

-- ---------------------------------------------------------------- printing

local EDGE, LIMIT = 3, 6   -- dims longer than LIMIT show their first and last EDGE entries

-- The shown entries of h (every dim cut to its first and last EDGE entries when longer than LIMIT),
-- gathered into a small host tensor by one copy per block.
local function gather_shown(h, shape)
  local small, cut = {}, {}
  for d = 1, #shape do
    cut[d] = shape[d] > LIMIT
    small[d] = cut[d] and 2 * EDGE or shape[d]
  end
  local n, dims = dims_arg(small, shape_buf, "print")
  local host = wrap(C.f2_tensor_new(is_float_code(h.dtype) and F32 or I64, CPU, n, dims), "print")
  local ncut = 0
  for d = 1, #shape do if cut[d] then ncut = ncut + 1 end end
  for combo = 0, 2 ^ ncut - 1 do
    local src, dst, bit = C.f2_tensor_view(h), C.f2_tensor_view(host.h), combo
    for d = 1, #shape do
      if cut[d] then
        local tail = bit % 2 == 1
        bit = math.floor(bit / 2)
        local s2 = C.f2_tensor_narrow(src, d - 1, tail and shape[d] - EDGE or 0, EDGE)
        local d2 = C.f2_tensor_narrow(dst, d - 1, tail and EDGE or 0, EDGE)
        C.f2_tensor_free(src)
        C.f2_tensor_free(dst)
        src, dst = s2, d2
      end
    end
    local rc = C.f2_copy(dst, src)
    C.f2_tensor_free(src)
    C.f2_tensor_free(dst)
    check(rc, "print")
  end
  return host, small, cut
end

-- One format for all shown values: integers as such, else fixed or scientific by magnitude.
local function value_formatter(values, is_int)
  local maxabs, minabs, integral = 0, math.huge, true
  for _, v in ipairs(values) do
    local a = math.abs(v)
    if a < math.huge then
      maxabs = math.max(maxabs, a)
      if a > 0 then minabs = math.min(minabs, a) end
      integral = integral and v % 1 == 0
    end
  end
  local fmt = (is_int or (integral and maxabs < 1e9)) and "%.0f"
    or (maxabs < 1e5 and minabs >= 1e-4) and "%.4f" or "%.4e"
  return function(v)
    if v ~= v then return "nan" end
    if math.abs(v) == math.huge then return v > 0 and "inf" or "-inf" end
    return fmt:format(v)
  end
end

meta.__tostring = function(t)
  local h = t.h
  if h == nil then return "[freed tensor]" end
  local shape = shape_of(h)
  local footer = ("[%s tensor %s on %s]"):format(dtypes.list[h.dtype + 1],
    #shape == 0 and "scalar" or table.concat(shape, "x"), DEVICE_NAMES[h.device])
  if numel_of(h) == 0 then return footer end
  local host, small, cut = gather_shown(h, shape)
  local n = numel_of(host.h)
  local p = ffi.cast(host.h.dtype == F32 and "float *" or "int64_t *", host.h.data)
  local values = {}
  for i = 1, n do values[i] = tonumber(p[i - 1]) end
  host:free()
  local format = value_formatter(values, not is_float_code(h.dtype))
  local texts, width = {}, 0
  for i = 1, n do
    texts[i] = format(values[i])
    width = math.max(width, #texts[i])
  end
  local cell = "%" .. width .. "s"
  local nd = #small
  -- Element strides of the small host tensor, and the real index of small index k along dim d.
  local strides, s = {}, 1
  for d = nd, 1, -1 do strides[d], s = s, s * small[d] end
  local function real(d, k) return (cut[d] and k >= EDGE) and shape[d] - 2 * EDGE + k or k end
  local lines = {}
  local function row(base, d) -- the last dim as one line
    local cells = {}
    for k = 0, small[d] - 1 do
      if cut[d] and k == EDGE then cells[#cells + 1] = "..." end
      cells[#cells + 1] = cell:format(texts[base + k * strides[d] + 1])
    end
    lines[#lines + 1] = table.concat(cells, " ")
  end
  local function matrix(base)
    for k = 0, small[nd - 1] - 1 do
      if cut[nd - 1] and k == EDGE then lines[#lines + 1] = "..." end
      row(base + k * strides[nd - 1], nd)
    end
  end
  if nd == 0 then
    lines[1] = texts[1]
  elseif nd == 1 then
    row(0, 1)
  elseif nd == 2 then
    matrix(0)
  else
    local idx = {}
    local function slices(d, base) -- leading dims: a "(i,j,.,.) =" header per matrix
      if d == nd - 1 then
        local head = {}
        for i = 1, nd - 2 do head[i] = real(i, idx[i]) end
        lines[#lines + 1] = "(" .. table.concat(head, ",") .. ",.,.) ="
        matrix(base)
        lines[#lines + 1] = ""
        return
      end
      for k = 0, small[d] - 1 do
        if cut[d] and k == EDGE then
          lines[#lines + 1] = "..."
          lines[#lines + 1] = ""
        end
        idx[d] = k
        slices(d + 1, base + k * strides[d])
      end
    end
    slices(1, 0)
    lines[#lines] = nil
  end
  lines[#lines + 1] = footer
  return table.concat(lines, "\n")
end

-- ---------------------------------------------------------------- CUDA helpers

local cuda = {}
function cuda.available() return C.f2_cuda_device_count() > 0 end
function cuda.compiled() return C.f2_cuda_compiled() ~= 0 end
function cuda.device_count() return C.f2_cuda_device_count() end
function cuda.synchronize() check(C.f2_cuda_synchronize(), "cuda.synchronize") end
function cuda.reset_peak() check(C.f2_cuda_reset_peak(), "cuda.reset_peak") end
function cuda.empty_cache() check(C.f2_cuda_empty_cache(), "cuda.empty_cache") end
-- {allocated, reserved, peak_allocated, peak_reserved, num_cuda_mallocs, num_allocs}: bytes and counts.
function cuda.memory_stats()
  local s = ffi.new("f2_memory_stats")
  check(C.f2_cuda_memory_stats(s), "cuda.memory_stats")
  return { allocated = tonumber(s.allocated), reserved = tonumber(s.reserved),
    peak_allocated = tonumber(s.peak_allocated), peak_reserved = tonumber(s.peak_reserved),
    num_cuda_mallocs = tonumber(s.num_cuda_mallocs), num_allocs = tonumber(s.num_allocs) }
end
-- Kernel-family timing (f2_cuda_profile): profile(true) starts recording; profile_report() returns
-- { {name =, calls =, ms =}, ... } slowest first, and starts over.
function cuda.profile(on) check(C.f2_cuda_profile(on and 1 or 0), "cuda.profile") end
function cuda.profile_report()
  local buf = ffi.new("char[?]", 65536)
  check(C.f2_cuda_profile_report(buf, 65536), "cuda.profile_report")
  local rows = {}
  for name, calls, ms in ffi.string(buf):gmatch("(%S+) (%d+) (%S+)\n") do
    rows[#rows + 1] = { name = name, calls = tonumber(calls), ms = tonumber(ms) }
  end
  return rows
end

function dtypes.name(code) return dtypes.list[code + 1] end
function dtypes.size(d) return tonumber(C.f2_dtype_size(dtype_code(d, "dtypes.size"))) end
function dtypes.is_float(d) return is_float_code(dtype_code(d, "dtypes.is_float")) end

ffi.metatype(Ref, meta)

M.Tensor = Tensor
M.is_tensor = is_tensor
M.cuda = cuda
M.dtypes = dtypes

-- Merges the public names into the fairy2 table (init.lua calls this).
function M.export(target)
  for _, name in ipairs { "empty", "zeros", "ones", "full", "rand", "randn", "tensor", "arange", "empty_like",
    "zeros_like", "matmul", "manual_seed", "from_handle", "is_tensor", "Tensor", "cuda", "dtypes" } do
    target[name] = M[name]
  end
end

return M
