-- checkpoint.lua — training checkpoints (docs/training.md): a directory per saved step,
--   <root>/step_000123/model.safetensors      master weights, fp32, names of model:named_parameters()
--                      optimizer.safetensors  AdamW moments "<param>.exp_avg", "<param>.exp_avg_sq"
--                      state.json             step, tokens, data position, resolved recipe, metrics, ...
--                      DONE                   written last: {"step": N, "files": {name: bytes}}
-- written into step_000123.tmp/, every file fsync'd, the directory renamed, then DONE written and
-- fsync'd. A directory without DONE, or whose files do not match it, is never loaded.
--
--   checkpoint.save(root, step, { params =, optimizer =, state =, pause_s = }) -> path
--   checkpoint.latest(root, warn) -> { path, step, state, model, optimizer } | nil   (skips bad ones)
--   checkpoint.restore(ck, params, optimizer)      -- copies into the live tensors
--   checkpoint.prune(root, keep)                   -- keeps the newest `keep` complete ones
local ffi = require "ffi"
local f2 = require "fairy2"
local data = require "fairy2.data"
local safetensors = require "fairy2.safetensors"
local C = f2.C

local M = {}

-- libc under private names (asm labels), so other modules' declarations of the same calls never clash.
ffi.cdef [[
int f2_ckpt_open(const char *path, int flags, ...) __asm__("open");
int f2_ckpt_fsync(int fd) __asm__("fsync");
int f2_ckpt_close(int fd) __asm__("close");
int f2_ckpt_mkdir(const char *path, uint32_t mode) __asm__("mkdir");
int f2_ckpt_poll(void *fds, unsigned long n, int timeout_ms) __asm__("poll");
]]
local O_RDONLY = 0

-- fsyncs a file or a directory (a directory's fsync makes the renames inside it durable).
local function fsync_path(path)
  local fd = C.f2_ckpt_open(path, O_RDONLY)
  if fd < 0 then return nil, "cannot open " .. path .. " to fsync it" end
  local rc = C.f2_ckpt_fsync(fd)
  C.f2_ckpt_close(fd)
  if rc ~= 0 then return nil, "fsync " .. path .. " failed" end
  return true
end
M.fsync_path = fsync_path

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end
M.shell_quote = shell_quote

local function exists(path) return os.rename(path, path) ~= nil end

-- mkdir -p (parents from the left).
function M.mkdir_p(path)
  local prefix = path:sub(1, 1) == "/" and "/" or ""
  for part in path:gmatch("[^/]+") do
    prefix = prefix .. part
    if not exists(prefix) and C.f2_ckpt_mkdir(prefix, tonumber("755", 8)) ~= 0 and not exists(prefix) then
      return nil, "cannot create directory " .. prefix
    end
    prefix = prefix .. "/"
  end
  return true
end

-- The entries of a directory (names), or {} when it is absent.
local function list_dir(dir)
  local out = {}
  if not exists(dir) then return out end
  local p = io.popen("ls -A " .. shell_quote(dir) .. " 2>/dev/null")
  for name in p:lines() do out[#out + 1] = name end
  p:close()
  return out
end

-- Removes a checkpoint directory (its entries are plain files).
local function remove_dir(dir)
  for _, name in ipairs(list_dir(dir)) do os.remove(dir .. "/" .. name) end
  return os.remove(dir)
end

local function file_size(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local size = f:seek("end")
  f:close()
  return size
end
M.file_size = file_size

-- Writes text to path durably: path.tmp, fsync, rename.
local function write_durable(path, text)
  local tmp = path .. ".tmp"
  local f, err = io.open(tmp, "wb")
  if not f then return nil, err end
  local wrote, werr = f:write(text)
  f:close()
  if not wrote then
    os.remove(tmp)
    return nil, tmp .. ": " .. tostring(werr)
  end
  local ok, ferr = fsync_path(tmp)
  if not ok then return nil, ferr end
  local rok, rerr = os.rename(tmp, path)
  if not rok then return nil, rerr end
  return true
end
M.write_durable = write_durable

function M.dir_name(step) return string.format("step_%06d", step) end

local FILES = { "model.safetensors", "optimizer.safetensors", "state.json" }

-- Saves a checkpoint of `step` under root and returns its path. opts: params (named_parameters()),
-- optimizer (optim.AdamW; its moments in params order), state (a JSON-able table), pause_s (tests
-- only: sleeps after the weights are written, so a test can kill the process mid-checkpoint).
-- Parameters a Fairy2Linear trains as U/W planes (no HF name) go to optimizer.safetensors too.
function M.save(root, step, opts)
  local function must(ok, err) if not ok then error("checkpoint: " .. tostring(err), 3) end end
  local final = root .. "/" .. M.dir_name(step)
  local tmp = final .. ".tmp"
  must(M.mkdir_p(root))
  if exists(tmp) then remove_dir(tmp) end
  must(M.mkdir_p(tmp))
  local weights, moments, rebuilt = {}, {}, {}
  for i, p in ipairs(opts.params) do
    local plane = p.module.param == "uw" and p.name:match("%.[uw]_[ri][em]$")
    local list = plane and moments or weights
    list[#list + 1] = { p.name, p.value }
    if plane and not rebuilt[p.module] then   -- R itself under the HF name, for export and eval
      rebuilt[p.module] = true
      weights[#weights + 1] = { (p.name:gsub("[uw]_[ri][em]$", "weight")), p.module:master():clone() }
    end
    moments[#moments + 1] = { p.name .. ".exp_avg", opts.optimizer.m[i] }
    moments[#moments + 1] = { p.name .. ".exp_avg_sq", opts.optimizer.v[i] }
  end
  local meta = { format = "pt", fairy2 = f2.version, step = tostring(step) }
  must(safetensors.save(tmp .. "/model.safetensors", weights, meta))
  if opts.pause_s and opts.pause_s > 0 then C.f2_ckpt_poll(nil, 0, math.floor(opts.pause_s * 1000)) end
  must(safetensors.save(tmp .. "/optimizer.safetensors", moments, meta))
  must(write_durable(tmp .. "/state.json", data.to_json(opts.state) .. "\n"))
  must(fsync_path(tmp))
  if exists(final) then remove_dir(final) end   -- an unfinished one of the same step (never loaded)
  local ok, err = os.rename(tmp, final)
  must(ok, "cannot rename " .. tmp .. ": " .. tostring(err))
  must(fsync_path(root))
  local sizes = {}
  for _, name in ipairs(FILES) do sizes[name] = file_size(final .. "/" .. name) end
  must(write_durable(final .. "/DONE", data.to_json({ step = step, files = sizes }) .. "\n"))
  must(fsync_path(final))
  return final
end

-- Checkpoint directories under root, newest first: { {name, path, step, tmp = bool} }.
function M.list(root)
  local out = {}
  for _, name in ipairs(list_dir(root)) do
    local digits, tmp = name:match("^step_(%d+)$"), name:match("^step_(%d+)%.tmp$")
    if digits or tmp then
      out[#out + 1] = { name = name, path = root .. "/" .. name, step = tonumber(digits or tmp), tmp = tmp ~= nil }
    end
  end
  table.sort(out, function(a, b)
    if a.step ~= b.step then return a.step > b.step end
    return not a.tmp and b.tmp
  end)
  return out
end

-- Opens a checkpoint and checks it whole; returns { path, step, state, model, optimizer } or nil, why.
function M.open(path)
  if not exists(path .. "/DONE") then return nil, "no DONE marker (the write did not finish)" end
  local done, err = data.read_json(path .. "/DONE")
  if type(done) ~= "table" or type(done.files) ~= "table" then return nil, "DONE is unreadable: " .. tostring(err) end
  for _, name in ipairs(FILES) do
    local size = file_size(path .. "/" .. name)
    if size == nil then return nil, name .. " is missing" end
    if size ~= done.files[name] then
      return nil, string.format("%s has %d bytes, DONE says %s (truncated or changed)", name, size, tostring(done.files[name]))
    end
  end
  local state
  state, err = data.read_json(path .. "/state.json")
  if type(state) ~= "table" or type(state.step) ~= "number" then return nil, "state.json: " .. tostring(err or "no step") end
  if state.step ~= done.step then return nil, "state.json is of step " .. state.step .. ", DONE of " .. tostring(done.step) end
  local model, optimizer
  model, err = safetensors.load(path .. "/model.safetensors")
  if not model then return nil, err end
  optimizer, err = safetensors.load(path .. "/optimizer.safetensors")
  if not optimizer then return nil, err end
  return { path = path, step = state.step, state = state, model = model, optimizer = optimizer }
end

-- The newest checkpoint that opens whole, or nil. Every newer one that doesn't is reported through
-- warn(message) (default: a line on stderr) and skipped, never loaded.
function M.latest(root, warn)
  warn = warn or function(msg) io.stderr:write("warning: ", msg, "\n") end
  for _, c in ipairs(M.list(root)) do
    if c.tmp then
      warn("skipping checkpoint " .. c.path .. ": an unfinished write (it was interrupted)")
    else
      local ck, why = M.open(c.path)
      if ck then return ck end
      warn("skipping checkpoint " .. c.path .. ": " .. why)
    end
  end
  return nil
end

local function shape_text(t) return table.concat(t:shape(), "x") end

-- Copies the checkpoint into the live parameters and the optimizer's moments and step count. Every
-- tensor is checked (present, same shape) before anything is copied.
function M.restore(ck, params, optimizer)
  local plan = {}
  local function find(name) return ck.model.tensors[name] or ck.optimizer.tensors[name] end
  for i, p in ipairs(params) do
    local names = { p.name, p.name .. ".exp_avg", p.name .. ".exp_avg_sq" }
    local dst = { p.value, optimizer.m[i], optimizer.v[i] }
    local src = { find(names[1]), find(names[2]), find(names[3]) }
    for k = 1, 3 do
      local what = names[k]
      if not src[k] then error("checkpoint " .. ck.path .. ": " .. what .. " is missing", 2) end
      if shape_text(src[k]) ~= shape_text(dst[k]) then
        error("checkpoint " .. ck.path .. ": " .. what .. " has shape " .. shape_text(src[k]) .. ", the model has " ..
          shape_text(dst[k]), 2)
      end
      plan[#plan + 1] = { dst[k], src[k], what }
    end
  end
  for _, c in ipairs(plan) do f2.check(C.f2_copy(c[1].h, c[2].h), "checkpoint restore " .. c[3], 2) end
  optimizer.step_count = ck.state.optimizer_step or 0
end

-- Deletes all but the newest `keep` complete checkpoints (keep <= 0: keeps all), and unfinished
-- writes older than the newest complete one. Returns the paths removed.
function M.prune(root, keep)
  local removed, complete = {}, 0
  for _, c in ipairs(M.list(root)) do
    local whole = not c.tmp and exists(c.path .. "/DONE")
    if whole then complete = complete + 1 end
    if (whole and keep > 0 and complete > keep) or (not whole and complete > 0) then
      remove_dir(c.path)
      removed[#removed + 1] = c.path
    end
  end
  return removed
end

return M
