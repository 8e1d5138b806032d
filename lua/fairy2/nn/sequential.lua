-- sequential.lua — a chain of modules (Torch7 nn.Sequential): forward feeds each module's output to
-- the next; backward runs the chain in reverse with the inputs the forward saw. Children are named
-- "1", "2", ... in order.
local nn = require "fairy2.nn.module"

local Sequential = nn.class("Sequential")

function Sequential:init(...)
  for _, m in ipairs { ... } do self:add(m) end
end

function Sequential:add(module)
  if type(module) ~= "table" or type(module.forward) ~= "function" then
    error("Sequential:add: expects an nn module, got " .. type(module), 2)
  end
  self:register_module(tostring(#self.child_order + 1), module)
  return self
end

function Sequential:forward(x)
  self.inputs = {}
  for i, name in ipairs(self.child_order) do
    self.inputs[i] = x
    x = self.children[name]:forward(x)
  end
  return x
end

function Sequential:backward(x, dy)
  if not self.inputs then error("Sequential:backward before forward", 2) end
  for i = #self.child_order, 1, -1 do dy = self.children[self.child_order[i]]:backward(self.inputs[i], dy) end
  return dy
end

return Sequential
