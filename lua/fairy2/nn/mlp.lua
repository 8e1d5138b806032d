-- mlp.lua — the SwiGLU MLP of the Llama/Qwen3 family (HF LlamaMLP): down(silu(gate(x)) * up(x)).
-- Input and output [..., hidden], in x's dtype.
local f2 = require "fairy2"
local nn = require "fairy2.nn.module"
local Linear = require "fairy2.nn.linear"
local C = f2.C

local MLP = nn.class("MLP")

-- opts: bias, device, recompute (true: the SwiGLU output is not kept for the backward but recomputed
-- from gate and up there: one elementwise pass buys back [tokens x intermediate] of activation memory).
function MLP:init(hidden, intermediate, opts)
  opts = opts or {}
  self.hidden, self.intermediate, self.recompute = hidden, intermediate, opts.recompute == true
  local lopts = { bias = opts.bias or false, device = opts.device }
  self:register_module("gate_proj", Linear(hidden, intermediate, lopts))
  self:register_module("up_proj", Linear(hidden, intermediate, lopts))
  self:register_module("down_proj", Linear(intermediate, hidden, lopts))
end

-- residual (optional): added to the output by the down projection's GEMM.
function MLP:forward(x, residual)
  local gate, up = self.gate_proj:forward(x), self.up_proj:forward(x)
  local act = f2.empty(gate:shape(), { dtype = gate:dtype(), device = x:device() })
  f2.check(C.f2_swiglu_forward(act.h, gate.h, up.h), "MLP:forward", 2)
  local y = self.down_proj:forward(act, residual)
  if self.recompute then
    self.down_proj.saved.x_in:free()   -- down_proj's copy of act: rebuilt in backward
    self.down_proj.saved.x_in = nil
    act:free()
    act = nil
  end
  self.saved = { gate = gate, up = up, act = act }
  return y
end

-- The gradients of gate and up overwrite gate and up (they are not needed afterwards).
function MLP:backward(x, dy)
  local s = self.saved
  if not s then error("MLP:backward before forward", 2) end
  self.saved = nil
  if not s.act then
    s.act = f2.empty(s.gate:shape(), { dtype = s.gate:dtype(), device = s.gate:device() })
    f2.check(C.f2_swiglu_forward(s.act.h, s.gate.h, s.up.h), "MLP:backward (recompute)", 2)
    self.down_proj.saved.x_in = s.act:view({ s.act:numel() / self.intermediate, self.intermediate })
  end
  local dact = self.down_proj:backward(s.act, dy)
  s.act:free()
  f2.check(C.f2_swiglu_backward(s.gate.h, s.up.h, dact.h, s.gate.h, s.up.h), "MLP:backward", 2)
  dact:free()
  local dx = self.gate_proj:backward(x, s.gate)
  self.up_proj:backward(x, s.up, dx)
  s.gate:free()
  s.up:free()
  return dx
end

return MLP
