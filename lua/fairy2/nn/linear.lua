-- linear.lua — the fully connected layer (PyTorch nn.Linear): y = x W^T + b, weight (out, in) fp32,
-- optional bias (out). Input [..., in], output [..., out] in x's dtype (the GEMM is f2_matmul: fp32
-- accumulation; a bf16 x multiplies a bf16 copy of the weight). backward(x, dy) returns dx and
-- accumulates grads.weight += dy^T x and grads.bias += sum of dy over rows.
-- Subclasses (Fairy2Linear) change what multiplies x by overriding gemm_weight and gemm_input.
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

-- The matrix the GEMM multiplies x by, in x's dtype (Linear: the weight, cast when x is not f32).
function Linear:gemm_weight(x2)
  if x2:dtype() == "f32" then return self.weight end
  return self.weight:to(x2:dtype())
end

-- The input the GEMM sees (Linear: x itself; Fairy2Linear with A8: its fake-quantized copy).
function Linear:gemm_input(x2) return x2 end

local function rows_of(self, x, what)
  local shape = x:shape()
  if shape[#shape] ~= self.in_features then
    error(what .. ": input's last dim is " .. tostring(shape[#shape]) .. ", expected " .. self.in_features, 3)
  end
  return x:reshape({ x:numel() / self.in_features, self.in_features }), shape
end

function Linear:forward(x)
  local x2, shape = rows_of(self, x, self.__name .. ":forward")
  local xin, w = self:gemm_input(x2), self:gemm_weight(x2)
  local y = f2.empty({ x2:shape()[1], self.out_features }, { dtype = x2:dtype(), device = x2:device() })
  f2.check(C.f2_matmul(h(y), h(xin), h(w), 0, 1, 1, 0), self.__name .. ":forward", 2)
  if self.bias then y:add_(self.bias) end
  self.saved = { x_in = xin, w = w }
  shape[#shape] = self.out_features
  return y:reshape(shape)
end

-- dx = dy W (through what forward multiplied by); dW += dy^T x_in; db += column sums of dy.
function Linear:backward(x, dy)
  local s = self.saved
  if not s then error(self.__name .. ":backward before forward", 2) end
  local x2, shape = rows_of(self, x, self.__name .. ":backward")
  local dy2 = dy:reshape({ x2:shape()[1], self.out_features })
  local dx = f2.empty(x2:shape(), { dtype = x2:dtype(), device = x2:device() })
  local what = self.__name .. ":backward"
  f2.check(C.f2_matmul(h(dx), h(dy2), h(s.w), 0, 0, 1, 0), what, 2)
  self:accumulate_weight_grad(dy2, s.x_in)
  if self.bias then
    local db = f2.empty({ self.out_features }, { dtype = "f32", device = dy2:device() })
    f2.check(C.f2_reduce(h(db), h(dy2), 0, C.F2_RED_SUM), what, 2)
    self.grads.bias:add_(db)
    db:free()
  end
  return dx:reshape(shape)
end

-- grads.weight += dy^T x_in (Fairy2Linear's U/W option redirects it).
function Linear:accumulate_weight_grad(dy2, x_in)
  f2.check(C.f2_matmul(h(self.grads.weight), h(dy2), h(x_in), 1, 0, 1, 1), self.__name .. ":backward", 3)
end

function Linear:__tostring()
  return string.format("%s(%d -> %d%s)", self.__name, self.in_features, self.out_features, self.bias and ", bias" or "")
end

return Linear
