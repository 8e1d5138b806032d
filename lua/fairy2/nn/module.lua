-- module.lua — the base of every nn module, in the Torch7 tradition with explicit backward:
--
--   local Linear = nn.class("Linear")            -- or nn.class("Fairy2Linear", Linear)
--   function Linear:init(in_features, out_features, opts) ... end
--   function Linear:forward(x) ... return y end    -- keeps what backward needs on self
--   function Linear:backward(x, dy) ... return dx end  -- accumulates into self.grads[name]
--
-- Parameters are registered by name (self:register_parameter), children likewise
-- (self:register_module), both in a fixed order, so qualified names ("layers.3.attn.q_proj.weight")
-- and the flat parameter order are deterministic. Tensors are fairy2 tensors.
local Module = {}
Module.__index = Module
Module.__name = "Module"

local nn = {}

-- A new class deriving from parent (default Module). Calling the class constructs an instance.
function nn.class(name, parent)
  parent = parent or Module
  local cls = setmetatable({}, {
    __index = parent,
    __call = function(cls, ...)
      local self = setmetatable({ params = {}, param_order = {}, grads = {}, children = {}, child_order = {},
        training = true }, cls)
      self:init(...)
      return self
    end,
  })
  cls.__index = cls
  cls.__name = name
  cls.__tostring = parent.__tostring
  cls.parent = parent
  return cls
end

function Module:init() end

function Module:forward()
  error(self.__name .. ":forward is not implemented", 2)
end

function Module:backward()
  error(self.__name .. ":backward is not implemented", 2)
end

-- opts.decay: whether AdamW's weight decay applies (false for norms, embeddings, biases).
function Module:register_parameter(name, tensor, opts)
  if self.params[name] == nil then table.insert(self.param_order, name) end
  self.params[name] = tensor
  self[name] = tensor
  self.param_opts = self.param_opts or {}
  self.param_opts[name] = opts or {}
  return tensor
end

function Module:register_module(name, module)
  if self.children[name] == nil then table.insert(self.child_order, name) end
  self.children[name] = module
  self[name] = module
  return module
end

-- Every module of the tree, depth first, parents before children: { {name=, module=}, ... }.
function Module:named_modules(prefix, out)
  out = out or {}
  prefix = prefix or ""
  table.insert(out, { name = prefix, module = self })
  for _, child_name in ipairs(self.child_order) do
    local child = self.children[child_name]
    child:named_modules(prefix == "" and child_name or (prefix .. "." .. child_name), out)
  end
  return out
end

-- Every parameter: { {name=, value=, grad=, module=, decay=}, ... } in a fixed order.
function Module:named_parameters()
  local out = {}
  for _, entry in ipairs(self:named_modules()) do
    local m = entry.module
    for _, pname in ipairs(m.param_order) do
      local opts = m.param_opts[pname]
      table.insert(out, {
        name = entry.name == "" and pname or (entry.name .. "." .. pname),
        value = m.params[pname], grad = m.grads[pname], module = m, local_name = pname,
        decay = opts.decay ~= false,
      })
    end
  end
  return out
end

-- Moves every parameter and its gradient into flat f32 buffers, one pair per weight-decay group,
-- so the optimizer, the gradient norm and zero_grad each see one contiguous range per group (one
-- kernel, not one per tensor) and the training step allocates nothing for them. Parameters become
-- views into the buffers, values and gradients kept; each starts at a multiple of 64 elements (256
-- bytes, for vector loads). Call it after the model's last structural change (Fairy2 conversion).
-- Sets self.flat = { {decay = true|false, param = t, grad = t}, ... } (empty groups left out).
function Module:flatten()
  local params = self:named_parameters()
  if #params == 0 then error("flatten: the module has no parameters", 2) end
  local f2 = require "fairy2"
  local device = params[1].value:device()
  local groups = { { decay = true, n = 0, items = {} }, { decay = false, n = 0, items = {} } }
  for _, p in ipairs(params) do
    if p.value:dtype() ~= "f32" or p.value:device() ~= device then
      error("flatten: " .. p.name .. " is " .. p.value:dtype() .. " on " .. p.value:device() ..
        "; every parameter must be f32 on " .. device, 2)
    end
    local g = p.decay and groups[1] or groups[2]
    g.items[#g.items + 1] = { p = p, offset = g.n }
    g.n = g.n + math.ceil(p.value:numel() / 64) * 64
  end
  self.flat = {}
  for _, g in ipairs(groups) do
    if g.n > 0 then
      local opts = { dtype = "f32", device = device }
      local flat = { decay = g.decay, param = f2.zeros({ g.n }, opts), grad = f2.zeros({ g.n }, opts) }
      for _, item in ipairs(g.items) do
        local p = item.p
        local shape, n = p.value:shape(), p.value:numel()
        local function place(buffer, old)
          local span = buffer:narrow(0, item.offset, n)
          local view = span:as(shape)
          if old then view:copy(old) end
          return view
        end
        local value, grad = place(flat.param, p.value), place(flat.grad, p.grad)
        local m = p.module
        p.value:free()
        if p.grad then p.grad:free() end
        m.params[p.local_name], m[p.local_name], m.grads[p.local_name] = value, value, grad
      end
      self.flat[#self.flat + 1] = flat
    end
  end
  return self.flat
end

-- Replaces the child at `name` in place (used by the Fairy2 conversion).
function Module:replace_child(name, module)
  assert(self.children[name], "no child named " .. tostring(name))
  self.children[name] = module
  self[name] = module
end

function Module:train(on)
  for _, entry in ipairs(self:named_modules()) do entry.module.training = on ~= false end
  return self
end

function Module:__tostring()
  return self.__name
end

nn.Module = Module
return nn
