-- fairy2_linear.lua — Fairy2Linear: a drop-in for Linear whose parameter "weight" is the real fp32
-- master R (out x in, both even). Forward quantizes R to R_hat (f2_fairy2_quantize: T residual
-- stages of {+-1, +-i} codes with fresh scales, FAIRY2I.md) in x's dtype, then runs Linear's GEMM with
-- R_hat; backward is Linear's with R_hat: dx = dy R_hat, and the gradient at R_hat goes to R unchanged
-- (identity straight-through estimator). Options (all off by default, as the authors run it):
--   a8 = true       int8 per-token absmax fake-quant of the input (f2_fake_quant_int8), identity STE
--   param = "uw"    train U and W (parameters u_re, u_im, w_re, w_im, each out/2 x in/2) instead of R
-- and the quantizer's: stages (2), granularity ("tensor" | "row" | "group"), group_size, check_finite.
local f2 = require "fairy2"
local nn = require "fairy2.nn.module"
local Linear = require "fairy2.nn.linear"
local fairy2 = require "fairy2.fairy2"
local C = f2.C
local h = Linear.handle

local Fairy2Linear = nn.class("Fairy2Linear", Linear)

local PLANES = { "u_re", "u_im", "w_re", "w_im" }

-- opts: Linear's (bias, device, std, seed) plus the options above; opts.from = a Linear whose weight,
-- bias and gradients this layer takes over (what fairy2.convert does; nothing is copied for R).
function Fairy2Linear:init(in_features, out_features, opts)
  opts = opts or {}
  if in_features % 2 ~= 0 or out_features % 2 ~= 0 then
    error(string.format("Fairy2Linear: %d -> %d has an odd dimension; Fairy2i needs both even", in_features,
      out_features), 3)
  end
  if opts.param ~= nil and opts.param ~= "r" and opts.param ~= "uw" then
    error("Fairy2Linear: param must be 'r' (train R, the default) or 'uw' (train U and W), got " .. tostring(opts.param), 3)
  end
  local ok, cfg = pcall(fairy2.config, opts)
  if not ok then error("Fairy2Linear: " .. tostring(cfg), 3) end
  self.cfg, self.a8, self.param = cfg, opts.a8 == true, opts.param or "r"
  local src = opts.from
  if src then
    self.in_features, self.out_features = in_features, out_features
    self:register_parameter("weight", src.weight)
    self.grads.weight = src.grads.weight
    if src.bias then
      self:register_parameter("bias", src.bias, { decay = false })
      self.grads.bias = src.grads.bias
    end
  else
    Linear.init(self, in_features, out_features, opts)
  end
  local device = self.weight:device()
  self.scales = f2.zeros({ cfg.stages, 4, fairy2.scale_groups(cfg, out_features, in_features) },
    { dtype = "f32", device = device })
  if self.param == "uw" then self:to_uw() end
end

-- Moves the parameterization from R to the four planes of U and W (their split of R).
function Fairy2Linear:to_uw()
  local t = { dtype = "f32", device = self.weight:device() }
  local shape = { self.out_features / 2, self.in_features / 2 }
  local r = self.weight
  self.params.weight, self.grads.weight, self.weight = nil, nil, nil
  for i = #self.param_order, 1, -1 do
    if self.param_order[i] == "weight" then table.remove(self.param_order, i) end
  end
  local planes = {}
  for i, name in ipairs(PLANES) do
    planes[i] = self:register_parameter(name, f2.empty(shape, t))
    self.grads[name] = f2.zeros(shape, t)
  end
  -- R first in the parameter order, as "weight" was.
  for _ = 1, 4 do table.insert(self.param_order, 1, table.remove(self.param_order)) end
  f2.check(C.f2_fairy2_split(h(planes[1]), h(planes[2]), h(planes[3]), h(planes[4]), h(r)), "Fairy2Linear:to_uw", 3)
  self.r = r   -- scratch for the rebuilt R from now on
end

-- The master R: the parameter, or (param = "uw") rebuilt from U and W into a scratch tensor.
function Fairy2Linear:master()
  if self.param ~= "uw" then return self.weight end
  f2.check(C.f2_fairy2_rebuild(h(self.r), h(self.u_re), h(self.u_im), h(self.w_re), h(self.w_im)),
    "Fairy2Linear:master", 3)
  return self.r
end

-- Quantizes the master R into self.r_hat (dtype "f32" or "bf16", default the current one or f32) and
-- self.scales; returns R_hat. codes: a u8 (T, 2, out/2, in/2) tensor to fill too, or nil.
-- In a fused projection (nn/fused.lua) r_hat is a row slice of the group's stacked R_hat: written in
-- place, and a new dtype or device re-stacks the whole group.
function Fairy2Linear:quantize(dtype, codes)
  dtype = dtype or (self.r_hat and self.r_hat:dtype()) or "f32"
  if dtype ~= "f32" and dtype ~= "bf16" then error("Fairy2Linear:quantize: R_hat is f32 or bf16, not " .. dtype, 2) end
  local r = self:master()
  self:ensure_r_hat(dtype, r:device())
  f2.check(C.f2_fairy2_quantize(h(self.r_hat), h(self.scales), codes and h(codes) or nil, h(r), self.cfg),
    self.__name .. ":quantize", 2)
  self.r_hat_ready = false
  return self.r_hat
end

-- Makes self.r_hat an (uninitialized) R_hat of dtype on device unless it is one: the fused group's
-- slice when the layer is in one, else a tensor of its own.
function Fairy2Linear:ensure_r_hat(dtype, device)
  if self.fused_group then
    self.fused_group:ensure_stack(dtype, device)
  elseif not self.r_hat or self.r_hat:dtype() ~= dtype or self.r_hat:device() ~= device then
    self.r_hat = f2.empty({ self.out_features, self.in_features }, { dtype = dtype, device = device })
  end
  return self.r_hat
end

-- Linear's GEMM multiplies by R_hat: the one fairy2.quantize_all just made, else a fresh one.
function Fairy2Linear:gemm_weight(x2)
  local dtype = x2:dtype() == "bf16" and "bf16" or "f32"
  if self.r_hat_ready and self.r_hat:dtype() == dtype then
    self.r_hat_ready = false
    return self.r_hat
  end
  return self:quantize(dtype)
end

function Fairy2Linear:gemm_input(x2)
  if not self.a8 then return x2 end
  local xq = f2.empty(x2:shape(), { dtype = x2:dtype(), device = x2:device() })
  f2.check(C.f2_fake_quant_int8(h(xq), h(x2)), self.__name .. ":forward (a8)", 3)
  return xq
end

-- The gradient at R_hat, dy^T x_in, is the gradient at R (identity STE); with param = "uw" it goes on
-- through R = rebuild(U, W): d/dU_re = g11 + g22 = 2 Re U(g), ... i.e. twice the split of g.
function Fairy2Linear:accumulate_weight_grad(dy2, x_in)
  if self.param ~= "uw" then return Linear.accumulate_weight_grad(self, dy2, x_in) end
  local what = self.__name .. ":backward"
  local g = f2.empty({ self.out_features, self.in_features }, { dtype = "f32", device = dy2:device() })
  f2.check(C.f2_matmul(h(g), h(dy2), h(x_in), 1, 0, 1, 0), what, 3)
  local parts = {}
  for i = 1, 4 do parts[i] = f2.empty(self.u_re:shape(), { dtype = "f32", device = dy2:device() }) end
  f2.check(C.f2_fairy2_split(h(parts[1]), h(parts[2]), h(parts[3]), h(parts[4]), h(g)), what, 3)
  for i, name in ipairs(PLANES) do
    parts[i]:mul_(2)
    self.grads[name]:add_(parts[i])
    parts[i]:free()
  end
  g:free()
end

-- Per stage: { rel_error, real_share_u, real_share_w, scales = {U re, U im, W re, W im} } (fairy2.stats).
function Fairy2Linear:stats()
  return fairy2.stats(self:master(), self.cfg)
end

function Fairy2Linear:__tostring()
  local g = ({ [0] = "", [1] = ", per-row scales", [2] = ", per-group scales" })[self.cfg.granularity]
  return string.format("Fairy2Linear(%d -> %d%s, T=%d%s%s%s)", self.in_features, self.out_features,
    self.bias and ", bias" or "", self.cfg.stages, g, self.a8 and ", A8" or "", self.param == "uw" and ", U/W" or "")
end

-- A Fairy2Linear taking over linear's weight, bias and gradients.
function Fairy2Linear.from_linear(linear, opts)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.from = linear
  return Fairy2Linear(linear.in_features, linear.out_features, o)
end

return Fairy2Linear
