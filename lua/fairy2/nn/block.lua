-- block.lua — one decoder layer of the Llama/Qwen3 family (HF LlamaDecoderLayer), pre-norm with
-- residuals: r = x + self_attn(input_layernorm(x)); out = r + mlp(post_attention_layernorm(r)).
-- The first residual add is fused with the second norm (RMSNorm:forward_residual), and in the
-- backward the norms add their input gradients straight into the residual stream's gradient.
local nn = require "fairy2.nn.module"
local Attention = require "fairy2.nn.attention"
local MLP = require "fairy2.nn.mlp"
local RMSNorm = require "fairy2.nn.rmsnorm"

local Block = nn.class("Block")

function Block:init(desc, rotary, opts)
  self:register_module("input_layernorm", RMSNorm(desc.hidden, desc.rms_eps, opts))
  self:register_module("self_attn", Attention(desc, rotary, opts))
  self:register_module("post_attention_layernorm", RMSNorm(desc.hidden, desc.rms_eps, opts))
  self:register_module("mlp", MLP(desc.hidden, desc.intermediate, { bias = desc.mlp_bias, device = opts and opts.device,
    recompute = opts and opts.recompute, fuse_proj = opts and opts.fuse_proj }))
end

function Block:forward(x)
  local h1 = self.input_layernorm:forward(x)
  local a = self.self_attn:forward(h1)
  local r, h2 = self.post_attention_layernorm:forward_residual(x, a)
  a:free()
  local out = self.mlp:forward(h2, r)   -- + r inside the down projection's GEMM
  self.saved = { h1 = h1, r = r, h2 = h2 }
  return out
end

-- dy, the gradient at the block's output, is updated in place into the gradient at its input x
-- (and returned): the residual path passes it through and each branch adds its share.
function Block:backward(x, dy)
  local s = self.saved
  if not s then error("Block:backward before forward", 2) end
  self.saved = nil
  local dh2 = self.mlp:backward(s.h2, dy)
  self.post_attention_layernorm:backward_add(s.r, dh2, dy)
  dh2:free()
  s.h2:free()
  s.r:free()
  local dh1 = self.self_attn:backward(s.h1, dy)
  self.input_layernorm:backward_add(x, dh1, dy)
  dh1:free()
  s.h1:free()
  return dy
end

return Block
