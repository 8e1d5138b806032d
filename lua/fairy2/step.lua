-- step.lua — one optimizer step of a causal LM, queued without waiting for the device: accum
-- micro-batches of forward, fused LM head + loss and backward (Fairy2 layers quantized first, all
-- in one batch), the gradients' global sum of squares, and AdamW with clipping and the skip of a
-- non-finite step decided on the device (optim.AdamW:prepare/apply). So on a GPU the whole step is
-- captured once as a CUDA graph and replayed: no kernel launches, no allocation, no Lua in the
-- step. The only values read back are the loss and the sum of squares, once per step.
--
--   local stepper, opt = step.setup(model, { lr =, betas =, ... }, { batch =, seq_len =, accum =, clip =, graph = })
--   (or step.new(model, opt, opts) with a model already flat and its optim.AdamW)
--   local loss, norm, applied = stepper:run(fill, lr)   -- fill(micro, ids, targets) writes a micro-batch
local ffi = require "ffi"
local f2 = require "fairy2"
local fairy2 = require "fairy2.fairy2"
local optim = require "fairy2.optim"
local C = f2.C

local M = {}
local Step = {}
Step.__index = Step

local function finite(x) return x == x and x ~= math.huge and x ~= -math.huge end

-- model: a llama CausalLM with flat parameters (Module:flatten); opt: optim.AdamW over them.
-- opts: batch, seq_len, accum, clip (0: none), graph (default true; used only on a GPU).
function M.new(model, opt, opts)
  if not model.flat then error("step.new: the model's parameters must be flat (model:flatten())", 2) end
  local device = model.flat[1].param:device()
  local B, T, accum = opts.batch, opts.seq_len, opts.accum or 1
  local self = setmetatable({ model = model, opt = opt, accum = accum, clip = opts.clip or 0, device = device,
    graph_wanted = device == "cuda" and opts.graph ~= false, steps_run = 0 }, Step)
  local di = { dtype = "i32", device = device }
  self.ids_all, self.targets_all = f2.zeros({ accum, B, T }, di), f2.zeros({ accum, B, T }, di)
  self.ids, self.targets = {}, {}
  for i = 1, accum do
    self.ids[i], self.targets[i] = self.ids_all:select(0, i - 1), self.targets_all:select(0, i - 1)
  end
  self.host_ids, self.host_targets = f2.zeros({ B, T }, { dtype = "i32" }), f2.zeros({ B, T }, { dtype = "i32" })
  self.stats = f2.zeros({ 2 }, { dtype = "f32", device = device })   -- loss sum, gradients' sum of squares
  self.loss_sum, self.sumsq = self.stats:narrow(0, 0, 1), self.stats:narrow(0, 1, 1)
  self.stats_host = f2.zeros({ 2 }, { dtype = "f32" })
  self.scratch = f2.zeros({ 1 }, { dtype = "f32", device = device })
  self.quantized = #fairy2.layers(model) > 0
  return self
end

-- The usual assembly: the model's parameters made flat (Module:flatten), AdamW over them (adamw: its
-- config, optim.AdamW's), and a stepper. Returns the stepper and the optimizer.
function M.setup(model, adamw, opts)
  model:flatten()
  local opt = optim.AdamW(model:named_parameters(), adamw, model.flat)
  return M.new(model, opt, opts), opt
end

-- The step itself: only queued work (capturable). poison (tests): NaN gradients, as a diverging run.
function Step:body(poison)
  local model = self.model
  model:zero_grad()
  if self.quantized then fairy2.quantize_all(model, { dtype = model.dtype }) end
  self.loss_sum:zero()
  for i = 1, self.accum do
    local loss = model:loss(self.ids[i], self.targets[i], { dloss = 1 / self.accum, sync = false })
    self.loss_sum:add_(loss)
    model:backward()
  end
  if poison then model.flat[1].grad:fill(0 / 0) end
  optim.sum_squares(self.opt, self.sumsq)
  -- A non-finite loss poisons the sum of squares too (0 * NaN), so the device skips the update.
  f2.check(C.f2_binary_scalar(self.scratch.h, self.loss_sum.h, 0, C.F2_OP_MUL), "step")
  self.sumsq:add_(self.scratch)
  self.opt:apply(self.sumsq)
end

-- A captured graph, freed with its holder (Lua's GC) or by Step:free().
local function own_graph(g)
  local holder = { g = g, proxy = newproxy(true) }
  getmetatable(holder.proxy).__gc = function()
    if holder.g ~= nil then C.f2_cuda_graph_free(holder.g) end
  end
  return holder
end

-- Captures the body as a CUDA graph (the first step ran eagerly, so caches, GEMM plans and
-- persistent buffers exist).
function Step:capture()
  collectgarbage()
  f2.check(C.f2_cuda_graph_begin(), "capturing the training step")
  local ok, err = pcall(self.body, self)
  local g = C.f2_cuda_graph_end()
  if not ok then
    if g ~= nil then C.f2_cuda_graph_free(g) end
    C.f2_clear_error()
    error(err, 0)
  end
  if g == nil then f2.check(-1, "capturing the training step as a CUDA graph (train.graph=false runs without one)") end
  self.graph = own_graph(g)
end

-- Runs one step: fill(micro, ids, targets) puts micro-batch micro (0-based) into the i32 CPU tensors
-- ids and targets [B, T]; lr: this step's learning rate; opts.poison (tests): NaN gradients. Returns
-- the mean loss, the gradients' norm before clipping and whether the update was applied (false: a
-- non-finite loss or gradient norm; parameters and moments are then unchanged).
function Step:run(fill, lr, opts)
  opts = opts or {}
  for i = 1, self.accum do
    fill(i - 1, self.host_ids, self.host_targets)
    self.ids[i]:copy(self.host_ids)
    self.targets[i]:copy(self.host_targets)
  end
  self.opt:prepare(lr, self.clip)
  if self.graph_wanted and not opts.poison and self.steps_run >= 1 then
    if not self.graph then self:capture() end
    f2.check(C.f2_cuda_graph_launch(self.graph.g), "replaying the training step")
  else
    self:body(opts.poison)
  end
  self.steps_run = self.steps_run + 1
  self.stats_host:copy(self.stats)
  local p = ffi.cast("float *", self.stats_host.h.data)
  local loss, sumsq = p[0] / self.accum, p[1]
  local applied = finite(sumsq)
  self.opt:commit(applied)
  if opts.poison then loss = 0 / 0 end
  return loss, math.sqrt(sumsq), applied
end

function Step:free()
  if self.graph then
    C.f2_cuda_graph_free(self.graph.g)
    self.graph.g = nil
    self.graph = nil
  end
end

return M
