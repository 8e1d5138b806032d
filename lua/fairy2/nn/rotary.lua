-- rotary.lua — rotary position embeddings in HF's rotate-half convention: dims i and i + head_dim/2 of
-- each head rotate together by the angle position * inv_freq[i]. Holds inv_freq (Llama-3 "llama3"
-- rope scaling included) and cos/sin tables, grown on demand; no parameters. Shared by all layers.
local f2 = require "fairy2"
local nn = require "fairy2.nn.module"
local C = f2.C

local Rotary = nn.class("Rotary")

-- inv_freq[i] = theta^(-2i/head_dim); llama3 scaling (transformers' _compute_llama3_parameters) keeps
-- short wavelengths, divides long ones by factor and blends in between.
function Rotary.inv_freq(head_dim, theta, scaling)
  local out = {}
  for i = 0, head_dim / 2 - 1 do
    local f = 1 / theta ^ (2 * i / head_dim)
    if scaling then
      if scaling.type ~= "llama3" then error("Rotary: rope_scaling type '" .. tostring(scaling.type) .. "' is not supported", 3) end
      local old, low, high = scaling.original_max_position_embeddings, scaling.low_freq_factor, scaling.high_freq_factor
      local wavelen = 2 * math.pi / f
      if wavelen > old / low then
        f = f / scaling.factor
      elseif wavelen >= old / high then
        local smooth = (old / wavelen - low) / (high - low)
        f = (1 - smooth) * f / scaling.factor + smooth * f
      end
    end
    out[i + 1] = f
  end
  return out
end

function Rotary:init(head_dim, theta, scaling, opts)
  if head_dim % 2 ~= 0 then error("Rotary: head_dim " .. head_dim .. " is odd", 3) end
  self.head_dim, self.device = head_dim, (opts and opts.device) or "cpu"
  self.inv_freq = f2.tensor(Rotary.inv_freq(head_dim, theta or 10000, scaling), { dtype = "f32", device = self.device })
  self.positions = 0
end

-- Makes the tables cover positions 0..n-1 (doubling, so a growing sequence rebuilds them rarely).
function Rotary:ensure(n)
  if n <= self.positions then return end
  local p = math.max(n, 2 * self.positions, 64)
  local opts = { dtype = "f32", device = self.device }
  -- The old tables stay alive: a captured CUDA graph may still read them.
  self.retired = self.retired or {}
  if self.cos then table.insert(self.retired, self.cos); table.insert(self.retired, self.sin) end
  self.cos, self.sin = f2.empty({ p, self.head_dim / 2 }, opts), f2.empty({ p, self.head_dim / 2 }, opts)
  f2.check(C.f2_rope_tables(self.cos.h, self.sin.h, self.inv_freq.h), "Rotary tables", 3)
  self.positions = p
end

-- x [B, T, H, head_dim] -> rotated copy; position t is row t.
function Rotary:forward(x)
  self:ensure(x:shape()[2])
  local out = f2.empty(x:shape(), { dtype = "f32", device = x:device() })
  f2.check(C.f2_rope_forward(out.h, x.h, self.cos.h, self.sin.h), "Rotary:forward", 2)
  return out
end

-- The rotation's gradient: rotate dy back, in place.
function Rotary:backward(_, dy)
  self:ensure(dy:shape()[2])
  f2.check(C.f2_rope_backward(dy.h, dy.h, self.cos.h, self.sin.h), "Rotary:backward", 2)
  return dy
end

return Rotary
