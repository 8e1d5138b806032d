-- attention.lua — self-attention of the Llama/Qwen3 family (HF LlamaAttention / Qwen3Attention):
-- q/k/v projections, Qwen3's per-head RMSNorm on q and k (over head_dim, before RoPE), rotate-half
-- RoPE, causal attention with grouped KV heads (query head h reads KV head h / (heads / kv_heads)),
-- scale head_dim^-0.5, o projection. Input and output [B, T, hidden].
local f2 = require "fairy2"
local nn = require "fairy2.nn.module"
local Linear = require "fairy2.nn.linear"
local RMSNorm = require "fairy2.nn.rmsnorm"
local C = f2.C

local Attention = nn.class("Attention")

-- desc: the model description (hidden, heads, kv_heads, head_dim, attention_bias, qk_norm, rms_eps);
-- rotary: the model's shared Rotary (not a child: it has no parameters and belongs to the model).
function Attention:init(desc, rotary, opts)
  local hidden, hd = desc.hidden, desc.head_dim
  self.heads, self.kv_heads, self.head_dim, self.rotary = desc.heads, desc.kv_heads, hd, rotary
  self.scale = hd ^ -0.5
  local lopts = { bias = desc.attention_bias or false, device = opts and opts.device }
  self:register_module("q_proj", Linear(hidden, desc.heads * hd, lopts))
  self:register_module("k_proj", Linear(hidden, desc.kv_heads * hd, lopts))
  self:register_module("v_proj", Linear(hidden, desc.kv_heads * hd, lopts))
  self:register_module("o_proj", Linear(desc.heads * hd, hidden, lopts))
  if desc.qk_norm then
    self:register_module("q_norm", RMSNorm(hd, desc.rms_eps, opts))
    self:register_module("k_norm", RMSNorm(hd, desc.rms_eps, opts))
  end
end

-- x2 [N, hidden] through proj (and norm) into rotated heads [B, T, heads, head_dim]; keeps the
-- pre-norm heads for the norm's backward.
local function project(self, proj, norm, x2, B, T, heads)
  local h = proj:forward(x2):reshape({ B, T, heads, self.head_dim })
  local pre = h
  if norm then h = norm:forward(h) end
  return self.rotary:forward(h), pre
end

function Attention:forward(x)
  local shape = x:shape()
  if #shape ~= 3 then error("Attention:forward: x must be [batch, seq, hidden], got " .. #shape .. " dims", 2) end
  local B, T, D = shape[1], shape[2], shape[3]
  local x2 = x:reshape({ B * T, D })
  local q, q_pre = project(self, self.q_proj, self.q_norm, x2, B, T, self.heads)
  local k, k_pre = project(self, self.k_proj, self.k_norm, x2, B, T, self.kv_heads)
  local v = self.v_proj:forward(x2):reshape({ B, T, self.kv_heads, self.head_dim })
  local opts = { dtype = "f32", device = x:device() }
  local out = f2.empty({ B, T, self.heads, self.head_dim }, opts)
  local lse = f2.empty({ B, self.heads, T }, opts)
  f2.check(C.f2_attention_forward(out.h, lse.h, q.h, k.h, v.h, self.scale), "Attention:forward", 2)
  local out2 = out:reshape({ B * T, self.heads * self.head_dim })
  self.saved = { x2 = x2, q = q, k = k, v = v, q_pre = q_pre, k_pre = k_pre, out = out, out2 = out2, lse = lse }
  return self.o_proj:forward(out2):reshape({ B, T, D })
end

-- Heads' gradient back through RoPE, the optional norm and the projection: d(x2), [N, hidden].
local function unproject(proj, norm, rotary, x2, pre, dh)
  dh = rotary:backward(nil, dh)
  if norm then dh = norm:backward(pre, dh) end
  local s = dh:shape()
  return proj:backward(x2, dh:reshape({ s[1] * s[2], s[3] * s[4] }))
end

function Attention:backward(x, dy)
  local s = self.saved
  if not s then error("Attention:backward before forward", 2) end
  local shape = x:shape()
  local B, T, D = shape[1], shape[2], shape[3]
  local dout = self.o_proj:backward(s.out2, dy:reshape({ B * T, D })):reshape({ B, T, self.heads, self.head_dim })
  local opts = { dtype = "f32", device = x:device() }
  local dq, dk, dv = f2.empty(s.q:shape(), opts), f2.empty(s.k:shape(), opts), f2.empty(s.v:shape(), opts)
  f2.check(C.f2_attention_backward(dq.h, dk.h, dv.h, dout.h, s.q.h, s.k.h, s.v.h, s.out.h, s.lse.h,
    self.scale), "Attention:backward", 2)
  local dx = unproject(self.q_proj, self.q_norm, self.rotary, s.x2, s.q_pre, dq)
  dx:add_(unproject(self.k_proj, self.k_norm, self.rotary, s.x2, s.k_pre, dk))
  local dv2 = dv:reshape({ B * T, self.kv_heads * self.head_dim })
  dx:add_(self.v_proj:backward(s.x2, dv2))
  return dx:reshape({ B, T, D })
end

return Attention
