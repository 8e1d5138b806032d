-- mlp.lua — the SwiGLU MLP of the Llama/Qwen3 family (HF LlamaMLP): down(silu(gate(x)) * up(x)).
-- Input and output [..., hidden], in x's dtype. gate and up are one GEMM (nn/fused.lua) when the layers
-- allow it: y [rows, 2I] with gate = columns 0..I-1, up = I..2I-1; SwiGLU reads those column slices
-- directly, and its backward writes dgate/dup over them, giving the stacked gradient for one dX and
-- one dW GEMM.
local f2 = require "fairy2"
local nn = require "fairy2.nn.module"
local Linear = require "fairy2.nn.linear"
local fused = require "fairy2.nn.fused"
local C = f2.C

local MLP = nn.class("MLP")

-- opts: bias, device, recompute (true: the SwiGLU output is not kept for the backward but recomputed
-- from gate and up there: one elementwise pass buys back [tokens x intermediate] of activation memory),
-- fuse_proj (default true; false: gate and up as two GEMMs).
function MLP:init(hidden, intermediate, opts)
  opts = opts or {}
  self.hidden, self.intermediate, self.recompute = hidden, intermediate, opts.recompute == true
  self.fuse_proj = opts.fuse_proj ~= false
  local lopts = { bias = opts.bias or false, device = opts.device }
  self:register_module("gate_proj", Linear(hidden, intermediate, lopts))
  self:register_module("up_proj", Linear(hidden, intermediate, lopts))
  self:register_module("down_proj", Linear(intermediate, hidden, lopts))
end

-- gate and up: [rows, I] views of the fused y (column slices, row stride 2I) or the layers' outputs.
local function halves(self, y)
  local I = self.intermediate
  return y:narrow(1, 0, I), y:narrow(1, I, I)
end

-- residual (optional): added to the output by the down projection's GEMM.
function MLP:forward(x, residual)
  local g = fused.group(self, "gate_up", { self.gate_proj, self.up_proj })
  if g and not g:accepts(x) then g = nil end
  local gate, up, y
  if g then
    y = g:forward(x:view({ x:numel() / self.hidden, self.hidden }))
    gate, up = halves(self, y)
  else
    gate, up = self.gate_proj:forward(x), self.up_proj:forward(x)
  end
  local ashape = x:shape()
  ashape[#ashape] = self.intermediate
  local act = f2.empty(ashape, { dtype = x:dtype(), device = x:device() })
  local act2 = act:view({ act:numel() / self.intermediate, self.intermediate })
  local gate2, up2 = gate:view({ act2:shape()[1], self.intermediate }), up:view({ act2:shape()[1], self.intermediate })
  f2.check(C.f2_swiglu_forward(act2.h, gate2.h, up2.h), "MLP:forward", 2)
  act2:free()
  gate2:free()
  up2:free()
  local out = self.down_proj:forward(act, residual)
  if self.recompute then
    self.down_proj.saved.x_in:free()   -- down_proj's copy of act: rebuilt in backward
    self.down_proj.saved.x_in = nil
    act:free()
    act = nil
  end
  self.saved = { gate = gate, up = up, act = act, y = y, group = g, ashape = ashape }
  return out
end

-- The gradients of gate and up overwrite gate and up (they are not needed afterwards).
function MLP:backward(x, dy)
  local s = self.saved
  if not s then error("MLP:backward before forward", 2) end
  self.saved = nil
  local I = self.intermediate
  local rows = x:numel() / self.hidden
  local gate, up = s.gate:view({ rows, I }), s.up:view({ rows, I })
  if not s.act then
    s.act = f2.empty(s.ashape, { dtype = s.gate:dtype(), device = s.gate:device() })
    local act2 = s.act:view({ rows, I })
    f2.check(C.f2_swiglu_forward(act2.h, gate.h, up.h), "MLP:backward (recompute)", 2)
    self.down_proj.saved.x_in = act2
  end
  local dact = self.down_proj:backward(s.act, dy)
  s.act:free()
  local dact2 = dact:view({ rows, I })
  f2.check(C.f2_swiglu_backward(gate.h, up.h, dact2.h, gate.h, up.h), "MLP:backward", 2)
  dact2:free()
  dact:free()
  gate:free()
  up:free()
  local dx
  if s.group then
    dx = s.group:backward(s.y):as(x:shape())   -- s.y now holds dgate | dup
    s.y:free()
  else
    dx = self.gate_proj:backward(x, s.gate)
    self.up_proj:backward(x, s.up, dx)
  end
  s.gate:free()
  s.up:free()
  return dx
end

return MLP
