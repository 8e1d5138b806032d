-- rmsnorm.lua — RMSNorm over the last dim (HF LlamaRMSNorm / Qwen3RMSNorm): y = weight * x / rms(x),
-- fp32 math. Input [..., D]; keeps the per-row 1/rms for the backward.
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

function RMSNorm:forward(x)
  local opts = { dtype = "f32", device = x:device() }
  local out = f2.empty(x:shape(), opts)
  self.rstd = f2.empty({ x:numel() / self.dim }, opts)
  f2.check(C.f2_rmsnorm_forward(out.h, self.rstd.h, x.h, self.weight.h, self.eps), "RMSNorm:forward", 2)
  return out
end

function RMSNorm:backward(x, dy)
  local dx = f2.empty(x:shape(), { dtype = "f32", device = x:device() })
  f2.check(C.f2_rmsnorm_backward(dx.h, self.grads.weight.h, dy.h, x.h, self.weight.h, self.rstd.h), "RMSNorm:backward", 2)
  return dx
end

return RMSNorm
