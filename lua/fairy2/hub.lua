-- hub.lua — resolves a model source string to what a model builder needs:
--   hub.resolve("gguf:models/smollm2-135m-instruct.gguf")   -- or any path ending .gguf
--   hub.resolve("path/to/hf_dir")       -- config.json + model.safetensors or model.safetensors.index.json
--   hub.resolve("packed:model.f2.safetensors")   -- a packed Fairy2 file (export.lua): R_hat dequantized
--   hub.resolve("hf:org/name")          -- not implemented yet (needs the HTTP client)
-- -> { config = config.from_json(...) description, state = { hf_name = CPU tensor },
--      names = { hf names in file order }, tokenizer_source = { kind = "json", path = } or
--      { kind = "gguf", gguf = <open gguf file> } (nil when a directory has no tokenizer.json) }
-- or nil, err.
local config = require "fairy2.config"
local safetensors = require "fairy2.safetensors"
local gguf = require "fairy2.gguf"

local M = {}

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function from_gguf(path, opts)
  local g, err = gguf.open(path)
  if not g then return nil, err end
  local cfg = config.from_json(gguf.config_from_gguf(g))
  local state = gguf.to_hf(g, { dtype = opts.dtype })
  return { config = cfg, state = state.tensors, names = state.names, tokenizer_source = { kind = "gguf", gguf = g } }
end

local function from_dir(dir, opts)
  if not exists(dir .. "/config.json") then return nil, "model source '" .. dir .. "': no config.json there" end
  local cfg = config.from_json(dir .. "/config.json")
  local state, err
  if exists(dir .. "/model.safetensors.index.json") then
    state, err = safetensors.load_sharded(dir)
  elseif exists(dir .. "/model.safetensors") then
    state, err = safetensors.load(dir .. "/model.safetensors")
  else
    return nil, "model source '" .. dir .. "': neither model.safetensors nor model.safetensors.index.json there"
  end
  if not state then return nil, err end
  if not cfg.tie_embeddings and not state.tensors["lm_head.weight"] then
    return nil, "model source '" .. dir .. "': config says the embeddings are not tied but there is no lm_head.weight"
  end
  local tok = dir .. "/tokenizer.json"
  return { config = cfg, state = state.tensors, names = state.names,
           tokenizer_source = exists(tok) and { kind = "json", path = tok } or nil }
end

-- opts.dtype: for GGUF, the dtype of dequantized tensors ("f32", default, or "bf16").
function M.resolve(source, opts)
  if type(source) ~= "string" or source == "" then error("hub.resolve: source must be a non-empty string", 2) end
  opts = opts or {}
  if source:match("^hf:") then
    return nil, "model source '" .. source .. "': hf: (download from the Hugging Face Hub) is not implemented yet; " ..
      "use a local directory or gguf:PATH"
  end
  local path = source:match("^gguf:(.+)$")
  local ok, res, err
  local packed = source:match("^packed:(.+)$")
  if packed then
    ok, res, err = pcall(require("fairy2.export").read_packed, packed)
  elseif path or source:match("%.gguf$") then
    ok, res, err = pcall(from_gguf, path or source, opts)
  else
    ok, res, err = pcall(from_dir, (source:gsub("/+$", "")), opts)
  end
  if not ok then return nil, tostring(res) end
  return res, err
end

return M
