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

-- The offset in elements of tensor t's first element from buffer's (t a view into buffer).
local function offset_in(t, buffer)
  return tonumber(ffi.cast("intptr_t", t.h.data) - ffi.cast("intptr_t", buffer.h.data)) / 4
end

-- params: the list from Module:named_parameters() ({name, value, grad, decay}); decay=false params
-- (norms, embeddings, biases) get no weight decay. flat: the model's flat groups (Module:flatten),
-- when its parameters live there: the moments are then flat too (one kernel per group per step),
-- with per-parameter views in m[i] and v[i] for checkpoints.
function M.AdamW(params, cfg, flat)
  cfg = cfg or {}
  local self = setmetatable({ params = params, flat = flat, step_count = 0, grad_scale = 1.0,
    lr = cfg.lr or 1e-3, beta1 = (cfg.betas or {})[1] or 0.9, beta2 = (cfg.betas or {})[2] or 0.999,
    eps = cfg.eps or 1e-8, weight_decay = cfg.weight_decay or 0, m = {}, v = {} }, AdamW)
  if flat then
    for _, g in ipairs(flat) do
      local opts = { dtype = "f32", device = g.param:device() }
      g.m, g.v = f2.zeros(g.param:shape(), opts), f2.zeros(g.param:shape(), opts)
      g.hparams = f2.zeros({ C.F2_ADAMW_HPARAMS }, opts)
      g.hparams_host = f2.zeros({ C.F2_ADAMW_HPARAMS }, { dtype = "f32" })
    end
    for i, p in ipairs(params) do
      local home
      for _, g in ipairs(flat) do
        if g.decay == p.decay then home = g end
      end
      local off = home and offset_in(p.value, home.param)
      if not off or off < 0 or off + p.value:numel() > home.param:numel() then
        error("optim.AdamW: " .. p.name .. " is not in the model's flat buffers (flatten after the last change)", 2)
      end
      local shape, n = p.value:shape(), p.value:numel()
      self.m[i] = home.m:narrow(0, off, n):as(shape)
      self.v[i] = home.v:narrow(0, off, n):as(shape)
    end
  else
    for i, p in ipairs(params) do
      local opts = { dtype = "f32", device = p.value:device() }
      self.m[i] = f2.zeros(p.value:shape(), opts)
      self.v[i] = f2.zeros(p.value:shape(), opts)
    end
  end
  self.config = ffi.new("f2_adamw_config")
  return self
end

-- One update of every parameter from its accumulated gradient; lr overrides the configured rate.
-- The gradient scale comes from clip_grad_norm (host scalars: the eager path).
function AdamW:step(lr)
  self.step_count = self.step_count + 1
  local c = self.config
  c.lr, c.beta1, c.beta2, c.eps = lr or self.lr, self.beta1, self.beta2, self.eps
  c.grad_scale, c.step = self.grad_scale, self.step_count
  if self.flat then
    for _, g in ipairs(self.flat) do
      c.weight_decay = g.decay and self.weight_decay or 0
      f2.check(C.f2_adamw_step(g.param.h, g.m.h, g.v.h, g.grad.h, c), "adamw")
    end
  else
    for i, p in ipairs(self.params) do
      c.weight_decay = p.decay and self.weight_decay or 0
      f2.check(C.f2_adamw_step(p.value.h, self.m[i].h, self.v[i].h, p.grad.h, c), "adamw " .. p.name)
    end
  end
  self.grad_scale = 1.0
end

-- The device-side step (a CUDA graph can replay it): prepare() writes the next step's scalars (lr,
-- bias corrections, clip threshold) into device memory, outside the graph; apply(sumsq) queues the
-- update of every flat group, clipped and skipped on the device from the gradients' sum of squares;
-- commit(applied) counts the step when it was not skipped.
function AdamW:prepare(lr, max_norm)
  if not self.flat then error("AdamW:prepare: needs flat parameters (Module:flatten)", 2) end
  local step = self.step_count + 1
  for _, g in ipairs(self.flat) do
    local hp = ffi.cast("float *", g.hparams_host.h.data)
    hp[C.F2_ADAMW_LR], hp[C.F2_ADAMW_BETA1], hp[C.F2_ADAMW_BETA2] = lr or self.lr, self.beta1, self.beta2
    hp[C.F2_ADAMW_EPS], hp[C.F2_ADAMW_WEIGHT_DECAY] = self.eps, g.decay and self.weight_decay or 0
    hp[C.F2_ADAMW_BC1], hp[C.F2_ADAMW_BC2] = 1 - self.beta1 ^ step, 1 - self.beta2 ^ step
    hp[C.F2_ADAMW_MAX_NORM] = max_norm or 0
    g.hparams:copy(g.hparams_host)
  end
end

function AdamW:apply(sumsq)
  for _, g in ipairs(self.flat) do
    f2.check(C.f2_adamw_step_dev(g.param.h, g.m.h, g.v.h, g.grad.h, g.hparams.h, sumsq.h), "adamw")
  end
end

function AdamW:commit(applied)
  if applied then self.step_count = self.step_count + 1 end
end

-- Sum of squares of every gradient into out (f32 [1] on the gradients' device), in a fixed order:
-- the flat groups when there are, else parameter by parameter.
function M.sum_squares(opt, out)
  local list, n
  if opt.flat then
    n = #opt.flat
    list = ffi.new("const f2_tensor *[?]", n)
    for i, g in ipairs(opt.flat) do list[i - 1] = g.grad.h end
  else
    n = #opt.params
    list = ffi.new("const f2_tensor *[?]", n)
    for i, p in ipairs(opt.params) do list[i - 1] = p.grad.h end
  end
  f2.check(C.f2_sum_squares(out.h, list, n), "gradient norm")
  return out
end

-- Global L2 norm of the gradients; when it exceeds max_norm, the next step scales gradients by
-- max_norm / norm (folded into the AdamW kernel, no extra pass). Returns the unclipped norm.
function M.clip_grad_norm(opt, max_norm)
  local device = #opt.params > 0 and opt.params[1].grad:device() or "cpu"
  local out = opt._norm_out
  if not out or out:device() ~= device then
    out = f2.zeros({ 1 }, { dtype = "f32", device = device })
    opt._norm_out = out
  end
  local norm = math.sqrt(M.sum_squares(opt, out):item())
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
