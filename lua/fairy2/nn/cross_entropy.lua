-- cross_entropy.lua — mean cross-entropy over logits [N, V] and targets i32 [N] with ignore_index
-- (torch's F.cross_entropy(..., ignore_index=-100)), a criterion in the Torch7 style:
-- forward(logits, targets) -> loss (a Lua number); backward(logits, targets, dloss) -> dlogits.
local f2 = require "fairy2"
local nn = require "fairy2.nn.module"
local C = f2.C

local CrossEntropy = nn.class("CrossEntropy")

function CrossEntropy:init(opts)
  self.ignore_index = (opts and opts.ignore_index) or -100
end

function CrossEntropy:forward(logits, targets)
  self.loss = f2.empty({ 1 }, { dtype = "f32", device = logits:device() })
  f2.check(C.f2_cross_entropy_forward(self.loss.h, nil, logits.h, targets.h, self.ignore_index), "CrossEntropy:forward", 2)
  return self.loss:item()
end

-- dloss: the gradient of the mean loss (1 by default; a micro-batch's share when accumulating).
function CrossEntropy:backward(logits, targets, dloss)
  local dlogits = f2.empty(logits:shape(), { dtype = "f32", device = logits:device() })
  f2.check(C.f2_cross_entropy_backward(dlogits.h, logits.h, targets.h, self.ignore_index, dloss or 1), "CrossEntropy:backward", 2)
  return dlogits
end

return CrossEntropy
