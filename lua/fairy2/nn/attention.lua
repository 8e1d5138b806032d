-- attention.lua — self-attention of the Llama/Qwen3 family (HF LlamaAttention / Qwen3Attention):
-- q/k/v projections, Qwen3's per-head RMSNorm on q and k (over head_dim, before RoPE), rotate-half
-- RoPE, causal attention with grouped KV heads (query head h reads KV head h / (heads / kv_heads)),
-- scale head_dim^-0.5, o projection. Input and output [B, T, hidden], in x's dtype.
-- Without the q/k norm, q/k/v are one GEMM (nn/fused.lua) when the layers allow it: RoPE reads q and k
-- straight from the fused output's rows into contiguous heads, v is copied out; the backward writes
-- the three gradients into one stacked gradient for one dX and one dW GEMM. opts.fuse_proj = false
-- (or fused.set(model, false)) keeps three GEMMs.
local f2 = require "fairy2"
local nn = require "fairy2.nn.module"
local Linear = require "fairy2.nn.linear"
local fused = require "fairy2.nn.fused"
local RMSNorm = require "fairy2.nn.rmsnorm"
local C = f2.C

local Attention = nn.class("Attention")

-- desc: the model description (hidden, heads, kv_heads, head_dim, attention_bias, qk_norm, rms_eps);
-- rotary: the model's shared Rotary (not a child: it has no parameters and belongs to the model).
function Attention:init(desc, rotary, opts)
  local hidden, hd = desc.hidden, desc.head_dim
  self.heads, self.kv_heads, self.head_dim, self.rotary = desc.heads, desc.kv_heads, hd, rotary
  self.scale = hd ^ -0.5
  self.fuse_proj = not (opts and opts.fuse_proj == false)
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

-- x through proj (and norm) into rotated heads [B, T, heads, head_dim]; the pre-norm heads are
-- kept (returned second) when there is a norm, for its backward.
local function project(self, proj, norm, x, B, T, heads)
  local t = proj:forward(x):as({ B, T, heads, self.head_dim })
  local pre
  if norm then pre, t = t, norm:forward(t) end
  self.rotary:ensure(T)
  f2.check(C.f2_rope_forward(t.h, t.h, self.rotary.cos.h, self.rotary.sin.h), "Attention:forward (RoPE)", 3)
  return t, pre
end

-- The q/k/v group when the projections run as one GEMM for x (nil: one each).
local function qkv_group(self, x)
  if self.q_norm then return nil end
  local g = fused.group(self, "qkv", { self.q_proj, self.k_proj, self.v_proj })
  return g and g:accepts(x) and g or nil
end

-- One GEMM for q/k/v; one pass from its rows into contiguous q and k (rotated) and v.
local function project_fused(self, g, x, B, T)
  local x2 = x:view({ B * T, x:shape()[3] })
  local y = g:forward(x2)
  local hd, opts = self.head_dim, { dtype = x:dtype(), device = x:device() }
  local q = f2.empty({ B, T, self.heads, hd }, opts)
  local k, v = f2.empty({ B, T, self.kv_heads, hd }, opts), f2.empty({ B, T, self.kv_heads, hd }, opts)
  self.rotary:ensure(T)
  f2.check(C.f2_qkv_rope_forward(q.h, k.h, v.h, y.h, self.rotary.cos.h, self.rotary.sin.h),
    "Attention:forward (q/k/v RoPE)", 3)
  y:free()
  return q, k, v
end

function Attention:forward(x)
  local shape = x:shape()
  if #shape ~= 3 then error("Attention:forward: x must be [batch, seq, hidden], got " .. #shape .. " dims", 2) end
  local B, T, D = shape[1], shape[2], shape[3]
  local g = qkv_group(self, x)
  local q, q_pre, k, k_pre, v
  if g then
    q, k, v = project_fused(self, g, x, B, T)
  else
    q, q_pre = project(self, self.q_proj, self.q_norm, x, B, T, self.heads)
    k, k_pre = project(self, self.k_proj, self.k_norm, x, B, T, self.kv_heads)
    v = self.v_proj:forward(x):as({ B, T, self.kv_heads, self.head_dim })
  end
  local out = f2.empty({ B, T, self.heads, self.head_dim }, { dtype = x:dtype(), device = x:device() })
  local lse = f2.empty({ B, self.heads, T }, { dtype = "f32", device = x:device() })
  f2.check(C.f2_attention_forward(out.h, lse.h, q.h, k.h, v.h, self.scale), "Attention:forward", 2)
  out = out:as({ B, T, self.heads * self.head_dim })
  self.saved = { q = q, k = k, v = v, q_pre = q_pre, k_pre = k_pre, out = out, lse = lse, group = g }
  return self.o_proj:forward(out)
end

-- A head gradient dh (freed here) back through RoPE, the optional norm and the projection, into dx
-- (a new tensor when dx is nil).
local function unproject(self, proj, norm, x, pre, dh, dx)
  f2.check(C.f2_rope_backward(dh.h, dh.h, self.rotary.cos.h, self.rotary.sin.h), "Attention:backward (RoPE)", 3)
  if norm then
    local d = norm:backward(pre, dh)
    dh:free()
    pre:free()
    dh = d
  end
  local s = dh:shape()
  local d2 = dh:as({ s[1], s[2], s[3] * s[4] })
  dx = proj:backward(x, d2, dx)
  d2:free()
  return dx
end

function Attention:backward(x, dy)
  local s = self.saved
  if not s then error("Attention:backward before forward", 2) end
  self.saved = nil
  local shape = x:shape()
  local B, T = shape[1], shape[2]
  local dout = self.o_proj:backward(s.out, dy):as({ B, T, self.heads, self.head_dim })
  local out4 = s.out:as({ B, T, self.heads, self.head_dim })
  local opts = { dtype = x:dtype(), device = x:device() }
  local dq, dk, dv = f2.empty(s.q:shape(), opts), f2.empty(s.k:shape(), opts), f2.empty(s.v:shape(), opts)
  f2.check(C.f2_attention_backward(dq.h, dk.h, dv.h, dout.h, s.q.h, s.k.h, s.v.h, out4.h, s.lse.h,
    self.scale), "Attention:backward", 2)
  for _, t in ipairs { dout, out4, s.q, s.k, s.v, s.lse } do t:free() end
  if s.group then
    -- The three gradients into one stacked gradient in one pass (q and k rotated back), then the
    -- group's one dX and one dW GEMM.
    local dy3 = f2.empty({ B * T, s.group.total }, opts)
    f2.check(C.f2_qkv_rope_backward(dy3.h, dq.h, dk.h, dv.h, self.rotary.cos.h, self.rotary.sin.h),
      "Attention:backward (q/k/v RoPE)", 2)
    for _, t in ipairs { dq, dk, dv } do t:free() end
    local dx = s.group:backward(dy3)
    dy3:free()
    return dx:as(shape)
  end
  local dx = unproject(self, self.q_proj, self.q_norm, x, s.q_pre, dq)
  unproject(self, self.k_proj, self.k_norm, x, s.k_pre, dk, dx)
  local dv2 = dv:as({ B, T, self.kv_heads * self.head_dim })
  self.v_proj:backward(x, dv2, dx)
  dv2:free()
  return dx
end

return Attention
