-- llama.lua — causal LMs of the Llama family (SmolLM2, Llama 2/3) and Qwen3, built from a model
-- description (lua/fairy2/config.lua), with HF's module tree so that parameter names equal HF
-- state-dict keys ("model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight",
-- "model.norm.weight", "lm_head.weight" when untied). Forward and explicit backward on fp32 tensors:
--
--   local model = llama.build(desc)          -- parameters zero; then one of:
--   llama.load_state(model, state)           -- {hf_name = tensor}, e.g. safetensors.load(p).tensors
--   llama.init_random(model, seed)           -- HF's init: N(0, initializer_range), norms 1, biases 0
--   local logits = model:forward(ids)        -- ids i32 [B, T] -> logits [B*T, V]
--   local loss = model:loss(ids, targets)    -- mean cross-entropy, targets i32 [B, T] (-100: ignored)
--   model:backward()                         -- accumulates every parameter's gradient
--   model:zero_grad()
local ffi = require "ffi"
local f2 = require "fairy2"
local nn = require "fairy2.nn.module"
local Block = require "fairy2.nn.block"
local CrossEntropy = require "fairy2.nn.cross_entropy"
local Embedding = require "fairy2.nn.embedding"
local Linear = require "fairy2.nn.linear"
local RMSNorm = require "fairy2.nn.rmsnorm"
local Rotary = require "fairy2.nn.rotary"
local C = f2.C

local M = {}

local ModuleList = nn.class("ModuleList")   -- children named "0", "1", ... as in HF

-- The decoder stack (HF LlamaModel): embed_tokens, layers, norm; rotary_emb has no parameters.
local Decoder = nn.class("Decoder")

function Decoder:init(desc, opts)
  self.rotary_emb = Rotary(desc.head_dim, desc.rope_theta, desc.rope_scaling, opts)
  self:register_module("embed_tokens", Embedding(desc.vocab_size, desc.hidden, opts))
  local layers = self:register_module("layers", ModuleList())
  for i = 0, desc.layers - 1 do layers:register_module(tostring(i), Block(desc, self.rotary_emb, opts)) end
  self:register_module("norm", RMSNorm(desc.hidden, desc.rms_eps, opts))
end

function Decoder:forward(ids)
  local h = self.embed_tokens:forward(ids)
  self.inputs = {}
  for i, name in ipairs(self.layers.child_order) do
    self.inputs[i] = h
    h = self.layers.children[name]:forward(h)
  end
  self.last = h
  return self.norm:forward(h)
end

function Decoder:backward(ids, dy)
  local dh = self.norm:backward(self.last, dy)
  for i = #self.layers.child_order, 1, -1 do
    dh = self.layers.children[self.layers.child_order[i]]:backward(self.inputs[i], dh)
  end
  self.embed_tokens:backward(ids, dh)
end

local CausalLM = nn.class("CausalLM")

function CausalLM:init(desc, opts)
  self.desc = desc
  self.criterion = CrossEntropy()
  self:register_module("model", Decoder(desc, opts))
  if not desc.tie_embeddings then
    self:register_module("lm_head", Linear(desc.hidden, desc.vocab_size, { bias = false, device = opts and opts.device }))
  end
end

-- ids i32 [B, T] -> logits [B*T, V] (tied: against the embedding matrix).
function CausalLM:forward(ids)
  if type(ids) ~= "cdata" then error("CausalLM:forward: ids must be an i32 tensor [B, T]", 2) end
  local shape = ids:shape()
  if #shape ~= 2 or ids:dtype() ~= "i32" then error("CausalLM:forward: ids must be an i32 tensor [B, T]", 2) end
  local h = self.model:forward(ids)
  local N = shape[1] * shape[2]
  local h2 = h:reshape({ N, self.desc.hidden })
  local logits
  if self.lm_head then
    logits = self.lm_head:forward(h2)
  else
    logits = f2.empty({ N, self.desc.vocab_size }, { dtype = "f32", device = h:device() })
    f2.check(C.f2_matmul(logits.h, h2.h, self.model.embed_tokens.weight.h, 0, 1, 1, 0), "tied lm head", 2)
  end
  self.saved = { ids = ids, h2 = h2, logits = logits }
  return logits
end

-- Mean cross-entropy of the next-token predictions; targets i32 [B, T] aligned with ids' positions.
function CausalLM:loss(ids, targets)
  local logits = self:forward(ids)
  self.saved.targets = targets
  return self.criterion:forward(logits, targets:reshape({ targets:numel() }))
end

-- After loss(): back through the whole model; dloss scales the gradient of the mean loss (default 1).
function CausalLM:backward(dloss)
  local s = self.saved
  if not (s and s.targets) then error("CausalLM:backward: call loss(ids, targets) first", 2) end
  local targets = s.targets:reshape({ s.targets:numel() })
  local dlogits = self.criterion:backward(s.logits, targets, dloss)
  local dh2
  if self.lm_head then
    dh2 = self.lm_head:backward(s.h2, dlogits)
  else
    local emb = self.model.embed_tokens
    dh2 = f2.empty(s.h2:shape(), { dtype = "f32", device = s.h2:device() })
    f2.check(C.f2_matmul(dh2.h, dlogits.h, emb.weight.h, 0, 0, 1, 0), "tied lm head backward", 2)
    f2.check(C.f2_matmul(emb.grads.weight.h, dlogits.h, s.h2.h, 1, 0, 1, 1), "tied lm head weight gradient", 2)
  end
  local shape = s.ids:shape()
  self.model:backward(s.ids, dh2:reshape({ shape[1], shape[2], self.desc.hidden }))
end

function CausalLM:zero_grad()
  for _, p in ipairs(self:named_parameters()) do p.grad:zero() end
end

function CausalLM:load_state(state, opts) return M.load_state(self, state, opts) end
function CausalLM:init_random(seed, opts) return M.init_random(self, seed, opts) end

local REQUIRED = { "vocab_size", "hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate", "rms_eps" }

function M.build(desc, opts)
  if type(desc) ~= "table" then error("llama.build: desc must be a model description table", 2) end
  for _, k in ipairs(REQUIRED) do
    if type(desc[k]) ~= "number" then error("llama.build: desc." .. k .. " must be a number, got " .. tostring(desc[k]), 2) end
  end
  if desc.arch ~= "llama" and desc.arch ~= "qwen3" then
    error("llama.build: desc.arch must be 'llama' or 'qwen3', got " .. tostring(desc.arch), 2)
  end
  if desc.heads % desc.kv_heads ~= 0 then
    error("llama.build: heads " .. desc.heads .. " is not a multiple of kv_heads " .. desc.kv_heads, 2)
  end
  if desc.head_dim % 2 ~= 0 then error("llama.build: head_dim " .. desc.head_dim .. " is odd", 2) end
  local model = CausalLM(desc, opts)
  return model
end

-- A state tensor may be a fairy2 tensor or a raw f2_tensor* (as some loaders hand out).
local function raw(t)
  if f2.is_tensor(t) then return t.h end
  if type(t) == "cdata" and ffi.istype("f2_tensor *", t) then return t end
  return nil
end

local function shape_text(h)
  local dims = {}
  for i = 0, h.ndim - 1 do dims[#dims + 1] = tostring(tonumber(h.shape[i])) end
  return table.concat(dims, "x")
end

-- Copies state[name] into every parameter (any float dtype, any device: f2_copy casts and moves).
-- state: {hf_name = tensor} or what safetensors.load returns. Every parameter must be present with
-- its shape; lm_head.weight of a tied model and rotary inv_freq buffers are ignored; any other
-- unknown name is an error unless opts.strict == false.
function M.load_state(model, state, opts)
  if type(state) ~= "table" then error("llama.load_state: state must be a table of tensors", 2) end
  if type(state.tensors) == "table" then state = state.tensors end
  local known = {}
  for _, p in ipairs(model:named_parameters()) do
    local t = state[p.name]
    if t == nil then error("llama.load_state: " .. p.name .. " is missing from the state", 2) end
    local h = raw(t)
    if h == nil then error("llama.load_state: " .. p.name .. " is not a tensor", 2) end
    local a, b = shape_text(h), shape_text(p.value.h)
    if a ~= b then error("llama.load_state: " .. p.name .. " has shape " .. a .. " in the state, the model expects " .. b, 2) end
    f2.check(C.f2_copy(p.value.h, h), "llama.load_state " .. p.name, 2)
    known[p.name] = true
  end
  if not (opts and opts.strict == false) then
    for name in pairs(state) do
      local ignorable = name:match("rotary_emb%.inv_freq$") or (name == "lm_head.weight" and model.desc.tie_embeddings)
      if not known[name] and not ignorable then
        error("llama.load_state: the state has '" .. tostring(name) .. "', which this model does not (strict)", 2)
      end
    end
  end
  return model
end

-- HF's _init_weights: linear and embedding weights N(0, std) (std = desc.hf.initializer_range or
-- 0.02 unless opts.std), biases 0, norm weights 1. Parameter i draws from seed + i.
function M.init_random(model, seed, opts)
  local std = (opts and opts.std) or (model.desc.hf and model.desc.hf.initializer_range) or 0.02
  for i, p in ipairs(model:named_parameters()) do
    local rc
    if p.name:match("norm%.weight$") then
      rc = C.f2_fill(p.value.h, 1)
    elseif p.name:match("%.bias$") then
      rc = C.f2_fill(p.value.h, 0)
    else
      rc = C.f2_rand_normal(p.value.h, (seed or 0) + i, 0, std)
    end
    f2.check(rc, "llama.init_random " .. p.name, 2)
  end
  return model
end

return M
