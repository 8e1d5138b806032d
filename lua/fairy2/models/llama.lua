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
-- and inference with a KV cache (no activations kept, no gradients):
--   local cache = model:new_cache(batch, max_len)   -- snapshot of the GEMM weights (Fairy2: R_hat)
--   local logits = model:forward_step(ids, cache)   -- ids i32 [B, T] at positions cache.n ..: [B, V]
--   local model, src = llama.load(source)    -- hub source -> model, resolved source (tokenizer_source)
local ffi = require "ffi"
local f2 = require "fairy2"
local nn = require "fairy2.nn.module"
local Block = require "fairy2.nn.block"
local Embedding = require "fairy2.nn.embedding"
local Fairy2Linear = require "fairy2.nn.fairy2_linear"
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

-- ids -> final normed hidden states [B, T, hidden] in dtype; keeps each block's input for backward.
function Decoder:forward(ids, dtype)
  local h = self.embed_tokens:forward(ids, dtype)
  self:release()
  self.inputs = {}
  for i, name in ipairs(self.layers.child_order) do
    self.inputs[i] = h
    h = self.layers.children[name]:forward(h)
  end
  self.last = h
  return self.norm:forward(h)
end

-- Drops what a forward kept (a forward that no backward followed, e.g. an evaluation).
function Decoder:release()
  for _, t in ipairs(self.inputs or {}) do t:free() end
  if self.last then self.last:free() end
  self.inputs, self.last = nil, nil
end

-- dy [B, T, hidden] (not modified) -> every parameter's gradient, releasing the forward's tensors.
function Decoder:backward(ids, dy)
  if not self.inputs then error("Decoder:backward before forward", 2) end
  local dh = self.norm:backward(self.last, dy)
  for i = #self.layers.child_order, 1, -1 do
    dh = self.layers.children[self.layers.child_order[i]]:backward(self.inputs[i], dh)   -- in place
  end
  self:release()
  self.embed_tokens:backward(ids, dh)
  dh:free()
end

local CausalLM = nn.class("CausalLM")

-- opts: device, dtype (of the activations: "f32", the default, or "bf16"; parameters, gradients and
-- optimizer state are always f32), recompute (true: MLPs recompute their SwiGLU in the backward).
function CausalLM:init(desc, opts)
  self.desc = desc
  self.dtype = (opts and opts.dtype) or "f32"
  if self.dtype ~= "f32" and self.dtype ~= "bf16" then
    error("llama.build: dtype must be 'f32' or 'bf16', got " .. tostring(self.dtype), 3)
  end
  self.ignore_index = -100
  self:register_module("model", Decoder(desc, opts))
  if not desc.tie_embeddings then
    self:register_module("lm_head", Linear(desc.hidden, desc.vocab_size, { bias = false, device = opts and opts.device }))
  end
end

local function check_ids(ids)
  if not f2.is_tensor(ids) or #ids:shape() ~= 2 or ids:dtype() ~= "i32" then
    error("CausalLM:forward: ids must be an i32 tensor [B, T]", 3)
  end
end

-- The LM head's matrix in h2's dtype and the gradient it accumulates into: lm_head's, or (tied) the
-- embedding matrix, cast into a buffer the model keeps when the activations are not f32.
function CausalLM:head_weight(h2)
  if self.lm_head then return self.lm_head:gemm_weight(h2), self.lm_head.grads.weight end
  local emb = self.model.embed_tokens
  if h2:dtype() == emb.weight:dtype() then return emb.weight, emb.grads.weight end
  local c = self.head_cast
  if not c or c:dtype() ~= h2:dtype() or c:device() ~= emb.weight:device() then
    if c then c:free() end
    c = f2.empty(emb.weight:shape(), { dtype = h2:dtype(), device = emb.weight:device() })
    self.head_cast = c
  end
  f2.check(C.f2_copy(c.h, emb.weight.h), "LM head (weight cast)", 3)
  return c, emb.grads.weight
end

-- ids i32 [B, T] -> logits [B*T, V] f32 (no backward from here: training goes through loss()).
function CausalLM:forward(ids)
  check_ids(ids)
  local shape = ids:shape()
  local N = shape[1] * shape[2]
  local h2 = self.model:forward(ids, self.dtype):as({ N, self.desc.hidden })
  local w = self:head_weight(h2)
  local logits = f2.empty({ N, self.desc.vocab_size }, { dtype = "f32", device = h2:device() })
  f2.check(C.f2_matmul(logits.h, h2.h, w.h, 0, 1, 1, 0), "lm head", 2)
  h2:free()
  self.model:release()
  return logits
end

-- Mean cross-entropy of the next-token predictions; targets i32 [B, T] aligned with ids' positions
-- (-100: ignored). The LM head and the loss are one fused, chunked op (f2_lm_head_cross_entropy),
-- which also makes the gradient at the hidden states for backward(). opts: dloss (the gradient of
-- the loss to propagate, default 1: a micro-batch's share when accumulating), grad (default true;
-- false: the loss alone), sync (default true: return a number; false: the loss as a one-element
-- tensor on the model's device, without waiting for the GPU).
function CausalLM:loss(ids, targets, opts)
  check_ids(ids)
  opts = opts or {}
  local grad, dloss = opts.grad ~= false, opts.dloss or 1
  local shape = ids:shape()
  local N, D = shape[1] * shape[2], self.desc.hidden
  if not f2.is_tensor(targets) or targets:dtype() ~= "i32" or targets:numel() ~= N then
    error("CausalLM:loss: targets must be an i32 tensor with one target per id", 2)
  end
  local h2 = self.model:forward(ids, self.dtype):as({ N, D })
  local w, dw = self:head_weight(h2)
  local device = h2:device()
  if not self.loss_t or self.loss_t:device() ~= device then
    self.loss_t = f2.empty({ 1 }, { dtype = "f32", device = device })
  end
  local dh = grad and f2.empty({ N, D }, { dtype = h2:dtype(), device = device }) or nil
  local tg = targets:view({ N })
  f2.check(C.f2_lm_head_cross_entropy(self.loss_t.h, nil, dh and dh.h, dh and dw.h, h2.h, w.h, tg.h,
    self.ignore_index, dloss, 0), "CausalLM:loss", 2)
  tg:free()
  h2:free()
  if self.saved and self.saved.dh then self.saved.dh:free() end
  self.saved = nil
  if grad then
    self.saved = { ids = ids, dh = dh:as({ shape[1], shape[2], D }), dloss = dloss }
  else
    self.model:release()
  end
  if opts.sync == false then return self.loss_t end
  return self.loss_t:item()
end

-- After loss(): back through the whole model; dloss scales the gradient of the mean loss (default:
-- the one loss() was given).
function CausalLM:backward(dloss)
  local s = self.saved
  if not (s and s.dh) then error("CausalLM:backward: call loss(ids, targets) first", 2) end
  self.saved = nil
  if dloss and dloss ~= s.dloss then
    if s.dloss == 0 then error("CausalLM:backward: loss() ran with dloss = 0; pass the dloss to loss()", 2) end
    s.dh:mul_(dloss / s.dloss)
  end
  self.model:backward(s.ids, s.dh)
  s.dh:free()
end

function CausalLM:zero_grad()
  if self.flat then
    for _, g in ipairs(self.flat) do g.grad:zero() end
    return
  end
  for _, p in ipairs(self:named_parameters()) do p.grad:zero() end
end

function CausalLM:load_state(state, opts) return M.load_state(self, state, opts) end
function CausalLM:init_random(seed, opts) return M.init_random(self, seed, opts) end

-- ---------------------------------------------------------------- inference with a KV cache
-- The same network as forward(), for generation and evaluation: nothing is kept for a backward, and
-- the keys and values of every position seen so far stay in a cache, so one new token costs one
-- token's work (f2_attention_decode attends to the cache). Temporaries are freed as soon as they are
-- used, so memory does not wait for Lua's GC.

local KVCache = {}
KVCache.__index = KVCache

-- Whether module m is an instance of cls or of a subclass of it.
local function is_a(m, cls)
  local c = getmetatable(m)
  while c do
    if c == cls then return true end
    c = c.parent
  end
  return false
end

-- The matrix a linear layer's GEMM multiplies by: its weight, or for a Fairy2Linear its R_hat,
-- quantized here once (a fresh tensor, so the layer's own training buffers are left alone).
local function gemm_weight(m)
  if not is_a(m, Fairy2Linear) then return m.weight end
  local r = m:master()
  local opts = { dtype = "f32", device = r:device() }
  local r_hat, scales = f2.empty({ m.out_features, m.in_features }, opts), f2.empty(m.scales:shape(), opts)
  f2.check(C.f2_fairy2_quantize(r_hat.h, scales.h, nil, r.h, m.cfg), "new_cache: quantizing a Fairy2Linear")
  scales:free()
  return r_hat, true
end

-- A cache for `batch` sequences of up to max_len positions: per layer K and V [batch, max_len,
-- kv_heads, head_dim] f32, and the GEMM weights of every linear layer as they are now (train the
-- model afterwards and this cache still holds the old R_hat: make a new one).
function CausalLM:new_cache(batch, max_len)
  if type(batch) ~= "number" or batch < 1 or batch % 1 ~= 0 then error("new_cache: batch must be a positive integer", 2) end
  if type(max_len) ~= "number" or max_len < 1 or max_len % 1 ~= 0 then
    error("new_cache: max_len must be a positive integer", 2)
  end
  local d = self.desc
  local opts = { dtype = "f32", device = self.model.embed_tokens.weight:device() }
  local cache = setmetatable({ batch = batch, max_len = max_len, n = 0, k = {}, v = {}, weights = {}, owned = {} },
    KVCache)
  for i = 1, d.layers do
    cache.k[i] = f2.zeros({ batch, max_len, d.kv_heads, d.head_dim }, opts)
    cache.v[i] = f2.zeros({ batch, max_len, d.kv_heads, d.head_dim }, opts)
  end
  for _, entry in ipairs(self:named_modules()) do
    if is_a(entry.module, Linear) then
      local w, owned = gemm_weight(entry.module)
      cache.weights[entry.module] = w
      if owned then cache.owned[#cache.owned + 1] = w end
    end
  end
  return cache
end

-- Forgets every position (the weights stay): the next forward_step starts at position 0.
function KVCache:reset() self.n = 0 end

-- Releases the cache's memory now.
function KVCache:free()
  for _, list in ipairs { self.k, self.v, self.owned } do
    for i, t in ipairs(list) do
      t:free()
      list[i] = nil
    end
  end
  self.weights, self.n = {}, 0
end

-- y [N, out] = x2 [N, in] through linear layer m with the cache's weight.
local function linear(cache, m, x2)
  local xin = m:gemm_input(x2)
  local y = f2.empty({ x2:shape()[1], m.out_features }, { dtype = "f32", device = x2:device() })
  f2.check(C.f2_matmul(y.h, xin.h, cache.weights[m].h, 0, 1, 1, 0), "forward_step: " .. m.__name)
  if xin ~= x2 then xin:free() end
  if m.bias then y:add_(m.bias) end
  return y
end

-- A view of t with another shape; t's own handle is dropped (the memory lives on in the view).
local function as(t, shape)
  local v = t:view(shape)
  t:free()
  return v
end

local function rmsnorm(norm, x, inplace)
  local out = inplace and x or f2.empty(x:shape(), { dtype = "f32", device = x:device() })
  f2.check(C.f2_rmsnorm_forward(out.h, nil, x.h, norm.weight.h, norm.eps), "forward_step: RMSNorm")
  return out
end

-- Projection into heads [B, T, heads, head_dim], per-head norm (Qwen3), RoPE at positions n ...
local function heads_of(cache, attn, proj, norm, x2, B, T, heads, cos, sin)
  local t = as(linear(cache, proj, x2), { B, T, heads, attn.head_dim })
  if norm then rmsnorm(norm, t, true) end
  if cos then f2.check(C.f2_rope_forward(t.h, t.h, cos.h, sin.h), "forward_step: RoPE") end
  return t
end

local function attention_step(cache, layer, attn, x2, B, T, cos, sin)
  local n = cache.n
  local q = heads_of(cache, attn, attn.q_proj, attn.q_norm, x2, B, T, attn.heads, cos, sin)
  local k = heads_of(cache, attn, attn.k_proj, attn.k_norm, x2, B, T, attn.kv_heads, cos, sin)
  local v = heads_of(cache, attn, attn.v_proj, nil, x2, B, T, attn.kv_heads)
  for _, kv in ipairs { { cache.k[layer], k }, { cache.v[layer], v } } do
    local dst = kv[1]:narrow(1, n, T)
    f2.check(C.f2_copy(dst.h, kv[2].h), "forward_step: cache write")
    dst:free()
    kv[2]:free()
  end
  local out = f2.empty(q:shape(), { dtype = "f32", device = q:device() })
  f2.check(C.f2_attention_decode(out.h, q.h, cache.k[layer].h, cache.v[layer].h, n, attn.scale), "forward_step: attention")
  q:free()
  out = as(out, { B * T, attn.heads * attn.head_dim })
  local y = linear(cache, attn.o_proj, out)
  out:free()
  return y
end

local function mlp_step(cache, mlp, x2)
  local gate, up = linear(cache, mlp.gate_proj, x2), linear(cache, mlp.up_proj, x2)
  local act = f2.empty(gate:shape(), { dtype = "f32", device = x2:device() })
  f2.check(C.f2_swiglu_forward(act.h, gate.h, up.h), "forward_step: SwiGLU")
  gate:free()
  up:free()
  local y = linear(cache, mlp.down_proj, act)
  act:free()
  return y
end

-- Logits [N, V] of final hidden states h2 [N, hidden] (forward_step's with opts.hidden).
-- The LM head's matrix as the cache holds it ([V, hidden]: lm_head's weight snapshot, or the tied
-- embedding matrix).
function CausalLM:head_matrix(cache)
  return self.lm_head and cache.weights[self.lm_head] or self.model.embed_tokens.weight
end

function CausalLM:logits(h2, cache)
  local w = self:head_matrix(cache)
  local logits = f2.empty({ h2:shape()[1], self.desc.vocab_size }, { dtype = "f32", device = h2:device() })
  f2.check(C.f2_matmul(logits.h, h2.h, w.h, 0, 1, 1, 0), "logits", 2)
  return logits
end

-- ids i32 [B, T] (on any device): the tokens at positions cache.n .. cache.n + T - 1 of each of the B sequences.
-- Returns the logits [B, V] of the last position; opts.all: of every position, [B*T, V] (row b*T + t);
-- opts.hidden: the final (normed) hidden states [B*T, hidden] instead of logits (see logits()).
-- Advances cache.n by T.
function CausalLM:forward_step(ids, cache, opts)
  opts = opts or {}
  if getmetatable(cache) ~= KVCache then error("forward_step: cache must come from model:new_cache", 2) end
  if not f2.is_tensor(ids) or ids:dtype() ~= "i32" or #ids:shape() ~= 2 then
    error("forward_step: ids must be an i32 tensor [B, T]", 2)
  end
  local B, T = ids:shape()[1], ids:shape()[2]
  if B ~= cache.batch then error("forward_step: ids have " .. B .. " rows, the cache " .. cache.batch, 2) end
  if cache.n + T > cache.max_len then
    error(string.format("forward_step: %d positions cached + %d new exceed the cache's max_len %d", cache.n, T,
      cache.max_len), 2)
  end
  local d, dec = self.desc, self.model
  local device = dec.embed_tokens.weight:device()
  local own_ids = ids:device() ~= device
  if own_ids then ids = ids:to(device) elseif not ids:is_contiguous() then ids = ids:contiguous() end
  local h = f2.empty({ B * T, d.hidden }, { dtype = "f32", device = dec.embed_tokens.weight:device() })
  f2.check(C.f2_embedding_forward(h.h, dec.embed_tokens.weight.h, ids.h), "forward_step: embedding", 2)
  if own_ids then ids:free() end
  local rotary = dec.rotary_emb
  rotary:ensure(cache.n + T)
  local cos, sin = rotary.cos:narrow(0, cache.n, T), rotary.sin:narrow(0, cache.n, T)
  for i, name in ipairs(dec.layers.child_order) do
    local block = dec.layers.children[name]
    local x = rmsnorm(block.input_layernorm, h)
    local a = attention_step(cache, i, block.self_attn, x, B, T, cos, sin)
    x:free()
    h:add_(a)
    a:free()
    x = rmsnorm(block.post_attention_layernorm, h)
    local m = mlp_step(cache, block.mlp, x)
    x:free()
    h:add_(m)
    m:free()
  end
  cos:free()
  sin:free()
  cache.n = cache.n + T
  if not (opts.all or opts.hidden) and T > 1 then
    local h3 = as(h, { B, T, d.hidden })
    local last = h3:select(1, T - 1)
    h = f2.empty({ B, d.hidden }, { dtype = "f32", device = last:device() })
    h:copy(last)
    last:free()
    h3:free()
  end
  rmsnorm(dec.norm, h, true)
  if opts.hidden then return h end
  local logits = self:logits(h, cache)
  h:free()
  return logits
end

-- A model from a hub source ("gguf:PATH", an HF directory; hub.resolve): returns the model (fp32
-- parameters loaded) and the resolved source (config, tokenizer_source; its state is dropped).
-- opts: device, and build's opts.
function M.load(source, opts)
  local hub = require "fairy2.hub"
  local src, err = hub.resolve(source)
  if not src then return nil, err end
  local model = M.build(src.config, opts)
  local ok, lerr = pcall(M.load_state, model, src.state)
  if not ok then return nil, tostring(lerr) end
  src.state = nil
  collectgarbage()
  return model, src
end

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
