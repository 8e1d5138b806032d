-- mlp.lua — the SwiGLU MLP of the Llama/Qwen3 family (HF LlamaMLP): down(silu(gate(x)) * up(x)).
-- Input and output [..., hidden].
local f2 = require "fairy2"
local nn = require "fairy2.nn.module"
local Linear = require "fairy2.nn.linear"
local C = f2.C

local MLP = nn.class("MLP")

function MLP:init(hidden, intermediate, opts)
  opts = opts or {}
  self.hidden, self.intermediate = hidden, intermediate
  local lopts = { bias = opts.bias or false, device = opts.device }
  self:register_module("gate_proj", Linear(hidden, intermediate, lopts))
  self:register_module("up_proj", Linear(hidden, intermediate, lopts))
  self:register_module("down_proj", Linear(intermediate, hidden, lopts))
end

function MLP:forward(x)
  local shape = x:shape()
  local x2 = x:reshape({ x:numel() / self.hidden, self.hidden })
  local gate, up = self.gate_proj:forward(x2), self.up_proj:forward(x2)
  local h = f2.empty(gate:shape(), { dtype = "f32", device = x:device() })
  f2.check(C.f2_swiglu_forward(h.h, gate.h, up.h), "MLP:forward", 2)
  self.saved = { x2 = x2, gate = gate, up = up, h = h }
  return self.down_proj:forward(h):reshape(shape)
end

function MLP:backward(x, dy)
  local s = self.saved
  if not s then error("MLP:backward before forward", 2) end
  local dh = self.down_proj:backward(s.h, dy:reshape({ dy:numel() / self.hidden, self.hidden }))
  local opts = { dtype = "f32", device = x:device() }
  local dgate, dup = f2.empty(s.gate:shape(), opts), f2.empty(s.up:shape(), opts)
  f2.check(C.f2_swiglu_backward(dgate.h, dup.h, dh.h, s.gate.h, s.up.h), "MLP:backward", 2)
  local dx = self.gate_proj:backward(s.x2, dgate)
  dx:add_(self.up_proj:backward(s.x2, dup))
  return dx:reshape(x:shape())
end

return MLP
