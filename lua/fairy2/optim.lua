-- optim.lua — AdamW over a list of parameters, global-norm gradient clipping, and learning-rate
-- schedules. Everything counts optimizer steps (updates), never micro-batches.
--
--   local opt = optim.AdamW(model:named_parameters(), {lr=1e-4, betas={0.9,0.95}, eps=1e-8, weight_decay=0.1})
--   local norm = optim.clip_grad_norm(params, 1.0)   -- returns the norm before clipping; scales via AdamW
--   opt:step(lr)
local ffi = require "ffi"
local f2 = require "fairy2"
local C = f2.C

local M = {}

local AdamW = {}
AdamW.__index = AdamW

-- params: the list from Module:named_parameters() ({name, value, grad, decay}); decay=false params
-- (norms, embeddings, biases) get no weight decay.
function M.AdamW(params, cfg)
  cfg = cfg or {}
  local self = setmetatable({ params = params, step_count = 0, grad_scale = 1.0,
    lr = cfg.lr or 1e-3, beta1 = (cfg.betas or {})[1] or 0.9, beta2 = (cfg.betas or {})[2] or 0.999,
    eps = cfg.eps or 1e-8, weight_decay = cfg.weight_decay or 0, m = {}, v = {} }, AdamW)
  for i, p in ipairs(params) do
    local opts = { dtype = "f32", device = p.value:device() }
    self.m[i] = f2.zeros(p.value:shape(), opts)
    self.v[i] = f2.zeros(p.value:shape(), opts)
  end
  self.config = ffi.new("f2_adamw_config")
  return self
end

-- One update of every parameter from its accumulated gradient; lr overrides the configured rate.
function AdamW:step(lr)
  self.step_count = self.step_count + 1
  local c = self.config
  c.lr, c.beta1, c.beta2, c.eps = lr or self.lr, self.beta1, self.beta2, self.eps
  c.grad_scale, c.step = self.grad_scale, self.step_count
  for i, p in ipairs(self.params) do
    c.weight_decay = p.decay and self.weight_decay or 0
    f2.check(C.f2_adamw_step(p.value.h, self.m[i].h, self.v[i].h, p.grad.h, c), "adamw " .. p.name)
  end
  self.grad_scale = 1.0
end

-- Global L2 norm of the gradients; when it exceeds max_norm, the next step scales gradients by
-- max_norm / norm (folded into the AdamW kernel, no extra pass). Returns the unclipped norm.
function M.clip_grad_norm(opt, max_norm)
  local params = opt.params
  local list = ffi.new("const f2_tensor *[?]", #params)
  for i, p in ipairs(params) do list[i - 1] = p.grad.h end
  local device = #params > 0 and params[1].grad:device() or "cpu"
  local out = opt._norm_out
  if not out or out:device() ~= device then
    out = f2.zeros({ 1 }, { dtype = "f32", device = device })
    opt._norm_out = out
  end
  f2.check(C.f2_sum_squares(out.h, list, #params), "gradient norm")
  local norm = math.sqrt(out:item())
  opt.grad_scale = (max_norm and max_norm > 0 and norm > max_norm) and max_norm / norm or 1.0
  return norm
end

-- Schedules: functions of the optimizer step (1-based) returning the learning rate.
-- wsd: linear warmup to lr, constant, then decay over the last `decay` steps to min_lr
-- (shape "linear" or "cosine").
function M.wsd(cfg)
  local lr, total, warmup = cfg.lr, cfg.total_steps, cfg.warmup or 0
  local decay = cfg.decay_steps or math.floor((cfg.decay_fraction or 0.2) * total + 0.5)
  local min_lr, shape = cfg.min_lr or 0, cfg.shape or "linear"
  assert(decay <= total - warmup, "wsd: warmup + decay steps exceed the total")
  return function(step)
    if step <= warmup then return lr * step / warmup end
    local into = step - (total - decay)
    if into <= 0 then return lr end
    local frac = math.min(into / decay, 1)
    if shape == "cosine" then frac = (1 - math.cos(math.pi * frac)) / 2 end
    return lr + (min_lr - lr) * frac
  end
end

-- cosine: linear warmup, then cosine from lr to min_lr at total_steps.
function M.cosine(cfg)
  local lr, total, warmup, min_lr = cfg.lr, cfg.total_steps, cfg.warmup or 0, cfg.min_lr or 0
  return function(step)
    if step <= warmup then return lr * step / warmup end
    local frac = math.min((step - warmup) / math.max(total - warmup, 1), 1)
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * frac)) / 2
  end
end

-- constant, with optional linear warmup.
function M.constant(cfg)
  local lr, warmup = cfg.lr, cfg.warmup or 0
  return function(step)
    if step <= warmup then return lr * step / warmup end
    return lr
  end
end

function M.schedule(cfg)
  local make = M[cfg.kind or "wsd"]
  if type(make) ~= "function" or cfg.kind == "AdamW" or cfg.kind == "clip_grad_norm" or cfg.kind == "schedule" then
    error("unknown schedule '" .. tostring(cfg.kind) .. "' (wsd, cosine, constant)", 2)
  end
  return make(cfg)
end

return M
