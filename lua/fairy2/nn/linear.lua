-- linear.lua — the fully connected layer (PyTorch nn.Linear): y = x W^T + b, weight (out, in) fp32,
-- optional bias (out). Input [..., in], output [..., out] in x's dtype (the GEMM is f2_matmul: fp32
-- accumulation; a bf16 x multiplies a bf16 copy of the weight, refreshed each forward into a buffer
-- the layer keeps). backward(x, dy [, into]) returns dx (or adds it into `into`) and accumulates
-- grads.weight += dy^T x and grads.bias += sum of dy over rows.
-- Subclasses (Fairy2Linear) change what multiplies x by overriding gemm_weight and gemm_input.
--
-- Memory: what forward keeps for backward is released by backward (one handle per buffer, so GPU
-- memory returns to the allocator at once, not when Lua's GC runs).
local f2 = require "fairy2"
local nn = require "fairy2.nn.module"
local C = f2.C

local Linear = nn.class("Linear")

-- The raw f2_tensor* of a fairy2 tensor (or of a raw handle).
local function h(t) return f2.is_tensor and f2.is_tensor(t) and t.h or t end
Linear.handle = h

-- opts: bias (default true), device ("cpu"), std (> 0: weights N(0, std^2) from opts.seed; default
-- zeros, as models load or initialize their weights afterwards).
function Linear:init(in_features, out_features, opts)
  opts = opts or {}
  if type(in_features) ~= "number" or type(out_features) ~= "number" or in_features < 1 or out_features < 1 then
    error(self.__name .. ": in_features and out_features must be positive numbers", 3)
  end
  self.in_features, self.out_features = in_features, out_features
  local t = { dtype = "f32", device = opts.device or "cpu" }
  local w = f2.zeros({ out_features, in_features }, t)
  if opts.std then f2.check(C.f2_rand_normal(h(w), opts.seed or 0, 0, opts.std), self.__name .. ":init", 3) end
  self:register_parameter("weight", w)
  self.grads.weight = f2.zeros({ out_features, in_features }, t)
  if opts.bias ~= false then
    self:register_parameter("bias", f2.zeros({ out_features }, t), { decay = false })
    self.grads.bias = f2.zeros({ out_features }, t)
  end
end

-- The matrix the GEMM multiplies x by, in x's dtype (Linear: the weight, or its copy in x's dtype).
function Linear:gemm_weight(x2)
  if x2:dtype() == "f32" then return self.weight end
  local c = self.weight_cast
  if not c or c:dtype() ~= x2:dtype() or c:device() ~= self.weight:device() then
    if c then c:free() end
    c = f2.empty(self.weight:shape(), { dtype = x2:dtype(), device = self.weight:device() })
    self.weight_cast = c
  end
  f2.check(C.f2_copy(c.h, self.weight.h), self.__name .. ":forward (weight cast)", 3)
  return c
end

-- The input the GEMM sees (Linear: x itself; Fairy2Linear with A8: a fake-quantized copy, which
-- must be a new tensor: backward frees it).
function Linear:gemm_input(x2) return x2 end

-- x [..., in] as rows [N, in] (a new view, the caller frees it) and x's shape.
local function rows_of(self, x, what)
  local shape = x:shape()
  if shape[#shape] ~= self.in_features then
    error(what .. ": input's last dim is " .. tostring(shape[#shape]) .. ", expected " .. self.in_features, 3)
  end
  return x:view({ x:numel() / self.in_features, self.in_features }), shape
end

-- residual (optional, of the output's shape and x's dtype): y = x W^T + b + residual, the add done by
-- the GEMM itself (f2_matmul_add: no separate pass).
function Linear:forward(x, residual)
  local x2, shape = rows_of(self, x, self.__name .. ":forward")
  local xin, w = self:gemm_input(x2), self:gemm_weight(x2)
  local rows = x2:shape()[1]
  local y = f2.empty({ rows, self.out_features }, { dtype = x2:dtype(), device = x2:device() })
  if residual then
    local r2 = residual:view({ rows, self.out_features })
    f2.check(C.f2_matmul_add(h(y), h(xin), h(w), 0, 1, 1, h(r2), 1), self.__name .. ":forward", 2)
    r2:free()
  else
    f2.check(C.f2_matmul(h(y), h(xin), h(w), 0, 1, 1, 0), self.__name .. ":forward", 2)
  end
  if self.bias then y:add_(self.bias) end
  if xin ~= x2 then x2:free() end
  if self.saved then self.saved.x_in:free() end   -- a forward that no backward followed
  self.saved = { x_in = xin, w = w }
  shape[#shape] = self.out_features
  return y:as(shape)
end

-- dx = dy W (through what forward multiplied by); dW += dy^T x_in; db += column sums of dy.
-- into: a tensor of x's shape that dx is added to (and returned) instead of a new one.
function Linear:backward(x, dy, into)
  local s = self.saved
  if not s then error(self.__name .. ":backward before forward", 2) end
  self.saved = nil
  local shape = x:shape()
  local rows = x:numel() / self.in_features
  local dy2 = dy:view({ rows, self.out_features })
  local what = self.__name .. ":backward"
  local dx2 = into and into:view({ rows, self.in_features }) or
    f2.empty({ rows, self.in_features }, { dtype = x:dtype(), device = x:device() })
  f2.check(C.f2_matmul(h(dx2), h(dy2), h(s.w), 0, 0, 1, into and 1 or 0), what, 2)
  self:accumulate_weight_grad(dy2, s.x_in)
  if self.bias then
    local db = f2.empty({ self.out_features }, { dtype = "f32", device = dy2:device() })
    f2.check(C.f2_reduce(h(db), h(dy2), 0, C.F2_RED_SUM), what, 2)
    self.grads.bias:add_(db)
    db:free()
  end
  dy2:free()
  s.x_in:free()
  if into then
    dx2:free()
    return into
  end
  return dx2:as(shape)
end

-- grads.weight += dy^T x_in (Fairy2Linear's U/W option redirects it).
function Linear:accumulate_weight_grad(dy2, x_in)
  f2.check(C.f2_matmul(h(self.grads.weight), h(dy2), h(x_in), 1, 0, 1, 1), self.__name .. ":backward", 3)
end

function Linear:__tostring()
  return string.format("%s(%d -> %d%s)", self.__name, self.in_features, self.out_features, self.bias and ", bias" or "")
end

return Linear
