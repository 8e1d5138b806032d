-- block.lua — one decoder layer of the Llama/Qwen3 family (HF LlamaDecoderLayer), pre-norm with
-- residuals: r = x + self_attn(input_layernorm(x)); out = r + mlp(post_attention_layernorm(r)).
local nn = require "fairy2.nn.module"
local Attention = require "fairy2.nn.attention"
local MLP = require "fairy2.nn.mlp"
local RMSNorm = require "fairy2.nn.rmsnorm"

local Block = nn.class("Block")

function Block:init(desc, rotary, opts)
  self:register_module("input_layernorm", RMSNorm(desc.hidden, desc.rms_eps, opts))
  self:register_module("self_attn", Attention(desc, rotary, opts))
  self:register_module("post_attention_layernorm", RMSNorm(desc.hidden, desc.rms_eps, opts))
  self:register_module("mlp", MLP(desc.hidden, desc.intermediate, { bias = desc.mlp_bias, device = opts and opts.device }))
end

function Block:forward(x)
  local h1 = self.input_layernorm:forward(x)
  local r = x + self.self_attn:forward(h1)
  local h2 = self.post_attention_layernorm:forward(r)
  self.saved = { h1 = h1, r = r, h2 = h2 }
  return r + self.mlp:forward(h2)
end

function Block:backward(x, dy)
  local s = self.saved
  if not s then error("Block:backward before forward", 2) end
  local dr = self.post_attention_layernorm:backward(s.r, self.mlp:backward(s.h2, dy))
  dr:add_(dy)
  local dx = self.input_layernorm:backward(x, self.self_attn:backward(s.h1, dr))
  dx:add_(dr)
  return dx
end

return Block
