-- fused.lua — projections that share one input as one GEMM: q/k/v (Attention) and gate/up (MLP).
-- The layers' GEMM weights are stacked row-wise into one [sum(out), in] matrix W, so forward is
-- y = x W^T (one GEMM into [rows, sum(out)]; layer i's output is the column slice at its offset) and
-- backward, from the stacked gradient dy [rows, sum(out)], is dx = dy W (one GEMM, K = sum(out), no
-- accumulate pass per layer) and dW = dy^T x: one GEMM when the layers' weight gradients are adjacent
-- rows of one buffer (after Module:flatten they are: checked by address at every call, never assumed),
-- else one per layer on dy's column slice (f2_matmul takes strided operands).
--
-- W: for Fairy2Linear layers one [sum(out), in] R_hat buffer whose row slices ARE the layers' r_hat
-- (Fairy2Linear:quantize and fairy2.quantize_all write into those views; the group re-stacks when
-- R_hat's dtype or device changes); plain Linear layers are cast (or, f32 and adjacent, used in place:
-- a view spanning their weights) into the same buffer's slices. Layers that cannot be fused (an A8
-- or U/W-parameterized Fairy2Linear, another subclass, different input sizes or devices, an input
-- that is neither f32 nor bf16) make the caller run the layers one by one, as before.
--
--   local g = fused.group(parent, "qkv", { parent.q_proj, parent.k_proj, parent.v_proj })  -- or nil
--   local y = g:forward(x2)            -- x2 [rows, in] (kept for backward) -> y [rows, sum(out)]
--   local dx = g:backward(dy, into)    -- dy [rows, sum(out)] -> dx [rows, in] (or added into `into`)
--   fused.set(model, false)            -- every Attention/MLP of a model back to one GEMM per layer
local ffi = require "ffi"
local f2 = require "fairy2"
local Linear = require "fairy2.nn.linear"
local C = f2.C

local M = {}

local Group = {}
Group.__index = Group

local function addr(t) return ffi.cast("uintptr_t", t.h.data) end
-- A Fairy2Linear (it has quantize): its GEMM weight is R_hat, kept in the group's stack.
local function is_fairy2(m) return m.quantize ~= nil end

-- Whether the tensors (f32, contiguous, views of one storage: separate allocations can sit back to
-- back too) follow one another in memory, each right after the last.
local function adjacent(ts)
  for i, t in ipairs(ts) do
    if t:dtype() ~= "f32" or not t:is_contiguous() or t.h.storage ~= ts[1].h.storage then return false end
    if i > 1 and addr(t) ~= addr(ts[i - 1]) + ts[i - 1]:numel() * 4 then return false end
  end
  return true
end

-- Why the layers cannot share one GEMM (nil when they can).
local function unfusable(layers)
  local Fairy2Linear = require "fairy2.nn.fairy2_linear"
  local first = layers[1]
  for _, m in ipairs(layers) do
    local cls = getmetatable(m)
    if cls ~= Linear and cls ~= Fairy2Linear then return "not a Linear or Fairy2Linear" end
    if cls == Fairy2Linear and (m.a8 or m.param ~= "r") then return "A8 or U/W Fairy2Linear" end
    if m.in_features ~= first.in_features then return "different input sizes" end
    if m.weight:device() ~= first.weight:device() then return "different devices" end
  end
  return nil
end

-- The group of parent's layers under key, made once and remade when a layer was replaced (Fairy2
-- conversion) or fusion was switched off (parent.fuse_proj == false: nil). nil when they cannot fuse.
function M.group(parent, key, layers)
  if parent.fuse_proj == false then return nil end
  parent.fused = parent.fused or {}
  local g = parent.fused[key]
  if g then
    local same = #g.layers == #layers
    for i = 1, #layers do same = same and g.layers[i] == layers[i] end
    if same then return g.ok and g or nil end
    g:release()
  end
  g = setmetatable({ layers = layers, offsets = {}, total = 0, ok = unfusable(layers) == nil }, Group)
  if g.ok then
    g.in_features = layers[1].in_features
    for i, m in ipairs(layers) do
      g.offsets[i] = g.total
      g.total = g.total + m.out_features
      m.fused_group = g
    end
  end
  parent.fused[key] = g
  return g.ok and g or nil
end

-- Whether this input can take the fused path (f32 or bf16 rows on the layers' device).
function Group:accepts(x)
  local dt = x:dtype()
  return (dt == "f32" or dt == "bf16") and x:device() == self.layers[1].weight:device()
end

-- Gives the stack back; the layers keep standalone copies of their R_hat views.
function Group:release()
  for _, m in ipairs(self.layers) do
    if m.fused_group == self then
      m.fused_group = nil
      if m.r_hat and self.stack then
        local own = m.r_hat:clone()
        m.r_hat:free()
        m.r_hat = own
      end
    end
  end
  if self.stack then self.stack:free() end
  self.stack = nil
end

-- The stacked buffer [total, in] in dtype on device, with every Fairy2Linear's r_hat a view of its
-- rows (made, or remade when dtype or device changed; a layer's R_hat moved in is no longer ready).
function Group:ensure_stack(dtype, device)
  local s = self.stack
  if s and s:dtype() == dtype and s:device() == device then
    local ok, size = true, dtype == "f32" and 4 or 2
    for i, m in ipairs(self.layers) do
      if is_fairy2(m) then
        ok = ok and m.r_hat ~= nil and m.r_hat:dtype() == dtype and
          addr(m.r_hat) == addr(s) + self.offsets[i] * self.in_features * size
      end
    end
    if ok then return s end
  end
  if s then s:free() end
  s = f2.empty({ self.total, self.in_features }, { dtype = dtype, device = device })
  self.stack = s
  for i, m in ipairs(self.layers) do
    if is_fairy2(m) then   -- a Fairy2Linear: its R_hat lives in the stack
      if m.r_hat then m.r_hat:free() end
      m.r_hat = s:narrow(0, self.offsets[i], m.out_features)
      m.r_hat_ready = false
    end
  end
  return s
end

-- W [total, in] in x2's dtype: R_hat (quantize_all's when ready, else quantized now) and casts of the
-- plain weights; f32 plain weights that lie adjacent are used in place. Returns a new view of W (the
-- backward frees it; a re-stack in between cannot pull W from under it).
function Group:weight(x2)
  local dtype, device = x2:dtype(), self.layers[1].weight:device()
  local plain = true
  for _, m in ipairs(self.layers) do plain = plain and not is_fairy2(m) end
  if plain and dtype == "f32" then
    local ws = {}
    for i, m in ipairs(self.layers) do ws[i] = m.weight end
    if adjacent(ws) then
      return ws[1]:as_strided({ self.total, self.in_features }, { self.in_features, 1 })
    end
  end
  local s = self:ensure_stack(dtype, device)
  for i, m in ipairs(self.layers) do
    if is_fairy2(m) then
      if m.r_hat_ready and m.r_hat:dtype() == dtype then m.r_hat_ready = false else m:quantize(dtype) end
    else
      local slice = s:narrow(0, self.offsets[i], m.out_features)
      f2.check(C.f2_copy(slice.h, m.weight.h), "fused forward (weight cast)", 3)
      slice:free()
    end
  end
  return s:narrow(0, 0, self.total)
end

-- x2 [rows, in] (kept until backward, which frees it) -> y [rows, total] in x2's dtype, each layer's
-- bias added to its columns.
function Group:forward(x2)
  local w = self:weight(x2)
  local rows = x2:shape()[1]
  local y = f2.empty({ rows, self.total }, { dtype = x2:dtype(), device = x2:device() })
  f2.check(C.f2_matmul(y.h, x2.h, w.h, 0, 1, 1, 0), "fused forward", 2)
  for i, m in ipairs(self.layers) do
    if m.bias then
      local cols = y:narrow(1, self.offsets[i], m.out_features)
      cols:add_(m.bias)
      cols:free()
    end
  end
  if self.saved then   -- a forward that no backward followed
    self.saved.x_in:free()
    self.saved.w:free()
  end
  self.saved = { x_in = x2, w = w }
  return y
end

-- dy [rows, total] (not modified) -> dx [rows, in] in dy's dtype (or added into `into`, a tensor of
-- rows x in elements, returned); the layers' weight and bias gradients accumulate.
function Group:backward(dy, into)
  local s = self.saved
  if not s then error("fused backward before forward", 2) end
  self.saved = nil
  local rows, what = dy:shape()[1], "fused backward"
  local dx = into and into:view({ rows, self.in_features }) or
    f2.empty({ rows, self.in_features }, { dtype = dy:dtype(), device = dy:device() })
  f2.check(C.f2_matmul(dx.h, dy.h, s.w.h, 0, 0, 1, into and 1 or 0), what, 2)
  s.w:free()
  -- dW = dy^T x for every layer (Linear's rule; Fairy2Linear's with param "r" is the same).
  local grads, plain = {}, true
  for i, m in ipairs(self.layers) do
    grads[i] = m.grads.weight
    plain = plain and (m.param == nil or m.param == "r")
  end
  if plain and adjacent(grads) then
    local span = grads[1]:as_strided({ self.total, self.in_features }, { self.in_features, 1 })
    f2.check(C.f2_matmul(span.h, dy.h, s.x_in.h, 1, 0, 1, 1), what, 2)
    span:free()
  else
    for i, m in ipairs(self.layers) do
      local cols = dy:narrow(1, self.offsets[i], m.out_features)
      m:accumulate_weight_grad(cols, s.x_in)
      cols:free()
    end
  end
  for i, m in ipairs(self.layers) do
    if m.bias then
      local cols = dy:narrow(1, self.offsets[i], m.out_features)
      local db = f2.empty({ m.out_features }, { dtype = "f32", device = dy:device() })
      f2.check(C.f2_reduce(db.h, cols.h, 0, C.F2_RED_SUM), what, 2)
      m.grads.bias:add_(db)
      db:free()
      cols:free()
    end
  end
  s.x_in:free()
  if into then
    dx:free()
    return into
  end
  return dx
end

-- Fusion on or off for every Attention and MLP of a model (on: the default wherever it applies).
function M.set(model, on)
  for _, entry in ipairs(model:named_modules()) do
    local m = entry.module
    if m.__name == "Attention" or m.__name == "MLP" then
      m.fuse_proj = on ~= false
      for _, g in pairs(m.fused or {}) do g:release() end
      m.fused = nil
    end
  end
  return model
end

return M
