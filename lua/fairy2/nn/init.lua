-- nn — require "fairy2.nn": the module base (nn.class, nn.Module, from nn/module.lua) and every module
-- class, nn.<ClassName>. A new class is a file nn/<file>.lua returning its class, plus one line below.
local nn = require "fairy2.nn.module"

local CLASS_FILES = {
  "linear",
  "fairy2_linear",
  "sequential",
  "embedding",
  "rmsnorm",
  "rotary",
  "attention",
  "mlp",
  "block",
  "cross_entropy",
}

for _, file in ipairs(CLASS_FILES) do
  local cls = require("fairy2.nn." .. file)
  nn[cls.__name] = cls
end

return nn
