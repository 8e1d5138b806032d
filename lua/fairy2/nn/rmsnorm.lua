-- rmsnorm.lua — RMSNorm over the last dim (HF LlamaRMSNorm / Qwen3RMSNorm): y = weight * x / rms(x),
-- fp32 math, output in x's dtype. Input [..., D]; keeps the per-row 1/rms for the backward (released
-- there). forward_residual fuses the residual add before the norm; backward_add adds the input's
-- gradient into a tensor instead of making one (the residual stream's).
local f2 = require "fairy2"
local nn = require "fairy2.nn.module"
local C = f2.C

local RMSNorm = nn.class("RMSNorm")

function RMSNorm:init(dim, eps, opts)
  opts = opts or {}
  self.dim, self.eps = dim, eps or 1e-6
  local t = { dtype = "f32", device = opts.device or "cpu" }
  self:register_parameter("weight", f2.ones({ dim }, t), { decay = false })
  self.grads.weight = f2.zeros({ dim }, t)
end

local function new_rstd(self, x)
  if self.rstd then self.rstd:free() end
  self.rstd = f2.empty({ x:numel() / self.dim }, { dtype = "f32", device = x:device() })
  return self.rstd
end

function RMSNorm:forward(x)
  local out = f2.empty(x:shape(), { dtype = x:dtype(), device = x:device() })
  f2.check(C.f2_rmsnorm_forward(out.h, new_rstd(self, x).h, x.h, self.weight.h, self.eps), "RMSNorm:forward", 2)
  return out
end

-- sum = a + b and norm(sum), both new tensors of a's shape and dtype.
function RMSNorm:forward_residual(a, b)
  local opts = { dtype = a:dtype(), device = a:device() }
  local sum, out = f2.empty(a:shape(), opts), f2.empty(a:shape(), opts)
  f2.check(C.f2_rmsnorm_residual_forward(sum.h, out.h, new_rstd(self, a).h, a.h, b.h, self.weight.h, self.eps),
    "RMSNorm:forward", 2)
  return sum, out
end

local function take_rstd(self, what)
  local rstd = self.rstd
  if not rstd then error(what .. " before forward", 3) end
  self.rstd = nil
  return rstd
end

function RMSNorm:backward(x, dy)
  local rstd = take_rstd(self, "RMSNorm:backward")
  local dx = f2.empty(x:shape(), { dtype = x:dtype(), device = x:device() })
  f2.check(C.f2_rmsnorm_backward(dx.h, self.grads.weight.h, dy.h, x.h, self.weight.h, rstd.h), "RMSNorm:backward", 2)
  rstd:free()
  return dx
end

-- into += d(norm)/dx applied to dy; returns into.
function RMSNorm:backward_add(x, dy, into)
  local rstd = take_rstd(self, "RMSNorm:backward")
  f2.check(C.f2_rmsnorm_backward_add(into.h, self.grads.weight.h, dy.h, x.h, self.weight.h, rstd.h), "RMSNorm:backward", 2)
  rstd:free()
  return into
end

return RMSNorm
