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
