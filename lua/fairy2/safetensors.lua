-- safetensors.lua — safetensors files from Lua, over runtime/safetensors.c:
--   load(path)          -> { names = {...in file order}, tensors = {name = tensor}, metadata = {key = value} }
--   load_sharded(dir)   -> the same, over the shards that dir/model.safetensors.index.json names
--   save(path, tensors, metadata) -> true; tensors: { {name, tensor}, ... } in order, or a table as load returns
-- Tensors are CPU fairy2 tensors (lua/fairy2/tensor.lua), zero-copy over the file's mapping where
-- possible; the file stays mapped while any of them lives. Runtime failures (I/O, malformed files) return nil, err; misuse raises.
local ffi = require "ffi"
local cjson = require "cjson"
local f2 = require "fairy2"
local C = f2.C

local M = {}

local function last_error()
  local msg = f2.last_error()
  C.f2_clear_error()
  return msg
end

function M.load(path)
  if type(path) ~= "string" then error("safetensors.load: path must be a string", 2) end
  local st = C.f2_safetensors_open(path)
  if st == nil then return nil, last_error() end
  local out = { names = {}, tensors = {}, metadata = {} }
  for i = 0, tonumber(C.f2_safetensors_count(st)) - 1 do
    local name = ffi.string(C.f2_safetensors_name(st, i))
    local t = C.f2_safetensors_tensor(st, i)
    if t == nil then
      C.f2_safetensors_close(st)
      return nil, last_error()
    end
    out.names[#out.names + 1] = name
    out.tensors[name] = f2.from_handle(t)
  end
  for i = 0, tonumber(C.f2_safetensors_metadata_count(st)) - 1 do
    out.metadata[ffi.string(C.f2_safetensors_metadata_key(st, i))] = ffi.string(C.f2_safetensors_metadata_value(st, i))
  end
  C.f2_safetensors_close(st)
  return out
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local text = f:read("*a")
  f:close()
  return text
end

-- A checkpoint split over shards: the index maps every tensor name to its shard file. Shards are
-- read in name order; each tensor the index lists must be in the shard it names.
function M.load_sharded(dir)
  if type(dir) ~= "string" then error("safetensors.load_sharded: dir must be a string", 2) end
  local index_path = dir .. "/model.safetensors.index.json"
  local text, err = read_file(index_path)
  if not text then return nil, "safetensors index: " .. err end
  local ok, index = pcall(cjson.decode, text)
  if not ok then return nil, "safetensors index '" .. index_path .. "': invalid JSON: " .. tostring(index) end
  if type(index) ~= "table" or type(index.weight_map) ~= "table" then
    return nil, "safetensors index '" .. index_path .. "': no weight_map object"
  end
  local shards, seen = {}, {}
  for name, shard in pairs(index.weight_map) do
    if type(name) ~= "string" or type(shard) ~= "string" or shard == "" or shard:find("/", 1, true) or shard:find("^%.") then
      return nil, "safetensors index '" .. index_path .. "': bad weight_map entry for '" .. tostring(name) ..
        "' (a shard is a plain file name in " .. dir .. ")"
    end
    if not seen[shard] then
      seen[shard] = true
      shards[#shards + 1] = shard
    end
  end
  table.sort(shards)
  local out = { names = {}, tensors = {}, metadata = {}, shards = shards }
  if type(index.metadata) == "table" then
    for k, v in pairs(index.metadata) do out.metadata[k] = v end
  end
  for _, shard in ipairs(shards) do
    local part, perr = M.load(dir .. "/" .. shard)
    if not part then return nil, perr end
    for _, name in ipairs(part.names) do
      if out.tensors[name] then
        return nil, "safetensors shards in " .. dir .. ": tensor '" .. name .. "' appears in two shards"
      end
      out.names[#out.names + 1] = name
      out.tensors[name] = part.tensors[name]
    end
  end
  for name, shard in pairs(index.weight_map) do
    if not out.tensors[name] then
      return nil, "safetensors shard '" .. dir .. "/" .. shard .. "': tensor '" .. name .. "' (listed in the index) is missing"
    end
  end
  return out
end

-- metadata defaults to { format = "pt" }, which transformers expects of a checkpoint.
function M.save(path, tensors, metadata)
  if type(path) ~= "string" then error("safetensors.save: path must be a string", 2) end
  if type(tensors) ~= "table" then error("safetensors.save: tensors must be a table", 2) end
  local pairs_in_order = {}
  if tensors.names and tensors.tensors then
    for i, name in ipairs(tensors.names) do pairs_in_order[i] = { name, tensors.tensors[name] } end
  else
    pairs_in_order = tensors
  end
  local n = #pairs_in_order
  local host_copies = {}
  local names = ffi.new("const char *[?]", n + 1)
  local ptrs = ffi.new("const f2_tensor *[?]", n + 1)
  for i, entry in ipairs(pairs_in_order) do
    local name, t = entry[1], entry[2]
    if type(name) ~= "string" then error("safetensors.save: entry " .. i .. " has no name (want {name, tensor})", 2) end
    if not f2.is_tensor(t) or t.h == nil then error("safetensors.save: '" .. name .. "' is not a (live) tensor", 2) end
    if t:device() ~= "cpu" then   -- a GPU tensor is written from a host copy
      t = t:to("cpu")
      host_copies[#host_copies + 1] = t
    end
    names[i - 1] = name
    ptrs[i - 1] = t.h
  end
  metadata = metadata or { format = "pt" }
  local keys = {}
  for k, v in pairs(metadata) do
    if type(k) ~= "string" or type(v) ~= "string" then
      error("safetensors.save: metadata must map strings to strings (key " .. tostring(k) .. ")", 2)
    end
    keys[#keys + 1] = k
  end
  table.sort(keys)
  local mkeys = ffi.new("const char *[?]", #keys + 1)
  local mvalues = ffi.new("const char *[?]", #keys + 1)
  for i, k in ipairs(keys) do
    mkeys[i - 1] = k
    mvalues[i - 1] = metadata[k]
  end
  -- pairs_in_order, host_copies and metadata keep the names and tensors alive across the call.
  local rc = C.f2_safetensors_save(path, names, ptrs, n, mkeys, mvalues, #keys)
  for _, t in ipairs(host_copies) do t:free() end
  if rc ~= 0 then return nil, last_error() end
  return true
end

return M
