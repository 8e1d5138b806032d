-- log.lua — what a training run prints and records: one line per step (step, loss, grad norm, lr,
-- ms, tokens/s, MFU or GFLOP/s, ETA), a progress bar under it when the output is a terminal, eval
-- lines, and every record as one JSON object per line in metrics.jsonl.
--
--   local log = require "fairy2.log"
--   local L = log.new { metrics = "runs/x/metrics.jsonl", total_steps = 100, resume_step = 0 }
--   L:info("text")                      -- a plain line
--   L:step { step =, loss =, grad_norm =, lr =, ms =, tokens =, flops = }   -- flops: per step
--   L:eval { step =, loss =, ppl =, tokens = }
--   L:close()
-- opts.stream (default io.stdout) and opts.tty (default: whether stdout is a terminal) are for tests.
local ffi = require "ffi"
local cjson = require "cjson"
local clock = require "fairy2.clock"

local M = {}

-- libc's isatty under a private name (an asm label), so no other declaration of it can clash.
ffi.cdef "int f2_log_isatty(int fd) __asm__(\"isatty\");"

function M.isatty(fd) return ffi.C.f2_log_isatty(fd or 1) == 1 end

-- 1234567 -> "1,234,567"
function M.thousands(n)
  local s = string.format("%d", math.floor(n + 0.5))
  local neg, digits = s:match("^(-?)(%d+)$")
  return neg .. digits:reverse():gsub("(%d%d%d)", "%1,"):reverse():gsub("^,", "")
end

-- 95 -> "1m35s", 3725 -> "1h02m"
function M.duration(s)
  if s ~= s or s == math.huge then return "?" end
  s = math.max(0, math.floor(s + 0.5))
  if s < 60 then return s .. "s" end
  if s < 3600 then return string.format("%dm%02ds", math.floor(s / 60), s % 60) end
  return string.format("%dh%02dm", math.floor(s / 3600), math.floor(s % 3600 / 60))
end

local Log = {}
Log.__index = Log

-- Keeps the records of metrics.jsonl up to resume_step (a resumed run repeats the steps after its
-- checkpoint; their old records would be duplicates) and returns them decoded.
local function rewind(path, resume_step)
  local kept, lines = {}, {}
  local f = io.open(path, "rb")
  if not f then return kept end
  for line in f:lines() do
    local ok, rec = pcall(cjson.decode, line)
    if ok and type(rec) == "table" and type(rec.step) == "number" and rec.step <= resume_step then
      kept[#kept + 1] = rec
      lines[#lines + 1] = line
    end
  end
  f:close()
  f = assert(io.open(path, "wb"))
  for _, line in ipairs(lines) do f:write(line, "\n") end
  f:close()
  return kept
end

-- opts: metrics (path of metrics.jsonl, or nil for none), total_steps, start_step (where this
-- session begins), resume_step (nil: start metrics.jsonl afresh), peak_flops (> 0: MFU against it,
-- else GFLOP/s), stream, tty, log_every (print every Nth step; every step is recorded).
function M.new(opts)
  local self = setmetatable({ stream = opts.stream or io.stdout, total_steps = opts.total_steps or 0,
    start_step = opts.start_step or 0, peak_flops = opts.peak_flops or 0, log_every = opts.log_every or 1,
    records = {}, started = clock.now(), step_seconds = 0, steps_timed = 0, bar_shown = false }, Log)
  if opts.tty == nil then self.tty = (self.stream == io.stdout) and M.isatty(1) else self.tty = opts.tty end
  if opts.metrics then
    if opts.resume_step then self.records = rewind(opts.metrics, opts.resume_step) else os.remove(opts.metrics) end
    self.metrics = assert(io.open(opts.metrics, "ab"))
  end
  return self
end

function Log:clear_bar()
  if self.bar_shown then
    self.stream:write("\r\27[K")
    self.bar_shown = false
  end
end

function Log:line(text)
  self:clear_bar()
  self.stream:write(text, "\n")
  if self.last_step then self:draw_bar() end
  self.stream:flush()
end

function Log:info(fmt, ...)
  self:line(select("#", ...) > 0 and string.format(fmt, ...) or fmt)
end

-- JSON has no NaN or infinity: those numbers become the strings "nan", "inf", "-inf".
function M.json_safe(v)
  if type(v) == "number" and (v ~= v or v == math.huge or v == -math.huge) then
    return v ~= v and "nan" or v > 0 and "inf" or "-inf"
  end
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = M.json_safe(x) end
  return t
end

function Log:record(rec)
  self.records[#self.records + 1] = rec
  if self.metrics then
    self.metrics:write(cjson.encode(M.json_safe(rec)), "\n")
    self.metrics:flush()
  end
end

-- Seconds left: the mean step time of this session times the steps to go.
function Log:eta(step)
  if self.steps_timed == 0 then return math.huge end
  return self.step_seconds / self.steps_timed * (self.total_steps - step)
end

function Log:draw_bar()
  if not self.tty or self.total_steps <= 0 then return end
  local step, width = self.last_step, 30
  local done = math.floor(width * step / self.total_steps + 0.5)
  self.stream:write(string.format("[%s%s] %3d%% step %d/%d ETA %s", string.rep("#", done), string.rep("-", width - done),
    math.floor(100 * step / self.total_steps), step, self.total_steps, M.duration(self:eta(step))))
  self.bar_shown = true
end

-- rec: step, loss, grad_norm, lr, ms, tokens (this step's), flops (this step's), skipped (bool).
function Log:step(rec)
  rec.kind = "train"
  self.step_seconds = self.step_seconds + rec.ms / 1e3
  self.steps_timed = self.steps_timed + 1
  local seconds = rec.ms / 1e3
  rec.tokens_per_s = rec.tokens / seconds
  local rate
  if self.peak_flops > 0 then
    rec.mfu = rec.flops / seconds / self.peak_flops
    rate = string.format("MFU %5.2f%%", 100 * rec.mfu)
  else
    rec.gflops = rec.flops / seconds / 1e9
    rate = string.format("%6.1f GFLOP/s", rec.gflops)
  end
  self:record(rec)
  self.last_step = rec.step
  if rec.step % self.log_every == 0 or rec.step == self.total_steps or rec.skipped then
    local w = #tostring(self.total_steps)
    self:line(string.format("step %" .. w .. "d/%d | loss %.4f | grad norm %8.3f | lr %.3e | %7.0f ms | %s tok/s | %s | ETA %s%s",
      rec.step, self.total_steps, rec.loss, rec.grad_norm, rec.lr, rec.ms, M.thousands(rec.tokens_per_s), rate,
      M.duration(self:eta(rec.step)), rec.skipped and "  SKIPPED (non-finite)" or ""))
  else
    self:clear_bar()
    self:draw_bar()
    self.stream:flush()
  end
end

-- The line of an eval record: step, loss, ppl, tokens, seconds; label (optional, e.g. "full precision").
function M.eval_text(rec)
  return string.format("eval %s| loss %.4f | ppl %.3f | %s tokens | %.1f s",
    rec.label and (rec.label .. " ") or string.format("step %d ", rec.step), rec.loss, rec.ppl,
    M.thousands(rec.tokens), rec.seconds or 0)
end

function Log:eval(rec)
  rec.kind = "eval"
  self:record(rec)
  self:line(M.eval_text(rec))
end

function Log:close()
  self:clear_bar()
  self.last_step = nil
  self.stream:flush()
  if self.metrics then self.metrics:close() end
  self.metrics = nil
end

return M
