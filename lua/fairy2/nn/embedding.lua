-- embedding.lua — token embedding (HF nn.Embedding): ids i32 [B, T] -> rows of weight [V, D] as [B, T, D].
-- The weight's gradient accumulates by scatter-add (f2_embedding_backward); ids get no gradient.
local f2 = require "fairy2"
local nn = require "fairy2.nn.module"
local C = f2.C

local Embedding = nn.class("Embedding")

function Embedding:init(num_embeddings, dim, opts)
  opts = opts or {}
  self.num_embeddings, self.dim = num_embeddings, dim
  local t = { dtype = "f32", device = opts.device or "cpu" }
  self:register_parameter("weight", f2.zeros({ num_embeddings, dim }, t), { decay = false })
  self.grads.weight = f2.zeros({ num_embeddings, dim }, t)
end

-- dtype: the output's (default f32; a bf16 model's activations are bf16).
function Embedding:forward(ids, dtype)
  local shape = ids:shape()
  shape[#shape + 1] = self.dim
  local out = f2.empty(shape, { dtype = dtype or "f32", device = self.weight:device() })
  f2.check(C.f2_embedding_forward(out.h, self.weight.h, ids.h), "Embedding:forward", 2)
  return out
end

-- Accumulates dweight; returns nothing (ids have no gradient).
function Embedding:backward(ids, dy)
  f2.check(C.f2_embedding_backward(self.grads.weight.h, dy.h, ids.h), "Embedding:backward", 2)
end

return Embedding
