-- export.lua — a trained checkpoint out of fairy2 (docs/export.md):
--   export.hf(ckpt, out_dir)        a Hugging Face directory transformers loads: model.safetensors (R_hat and
--                                   every other weight in bf16), config.json, tokenizer.json (+ its config)
--   export.packed(ckpt, out_path)   one safetensors file: per converted layer 2-bit codes + f32 scales,
--                                   the other weights in bf16, format "fairy2-packed" in __metadata__
--   export.load_packed(path)        -> a model (models/llama.lua) holding the dequantized R_hat
--   export.read_packed(path)        -> { config, state, names, metadata, layers, tokenizer_source } (hub.lua's "packed:")
-- ckpt: a checkpoint directory (model.safetensors, state.json with recipe and model_desc, DONE), a run
-- directory (its newest complete checkpoint), or what export.load_checkpoint returned (so one load serves
-- both exports). Runtime failures (files, malformed input) return nil, err; misuse raises.
local ffi = require "ffi"
local cjson = require "cjson"
local f2 = require "fairy2"
local config = require "fairy2.config"
local data = require "fairy2.data"
local fairy2 = require "fairy2.fairy2"
local llama = require "fairy2.models.llama"
local safetensors = require "fairy2.safetensors"
local checkpoint = require "fairy2.checkpoint"
local C = f2.C

local M = {}

M.FORMAT, M.VERSION = "fairy2-packed", "1"
local GRANULARITY_NAMES = { [0] = "tensor", [1] = "row", [2] = "group" }

-- ---------------------------------------------------------------- files

local shell_quote = checkpoint.shell_quote

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  return s
end

-- Written to path.tmp, fsync'd, then renamed: a reader sees the old file or the whole new one.
local write_file = checkpoint.write_durable
local file_size = checkpoint.file_size

local function mkdir_p(dir)
  local rc = os.execute("mkdir -p " .. shell_quote(dir))
  return rc == 0 or rc == true
end

-- ---------------------------------------------------------------- checkpoints

-- The checkpoint to export: dir itself when it holds state.json, else the newest complete
-- dir/checkpoints/step_N (or dir/step_N); newer incomplete ones (no DONE) are skipped with a warning.
function M.find_checkpoint(dir, log)
  if type(dir) ~= "string" or dir == "" then error("export.find_checkpoint: dir must be a path", 2) end
  log = log or io.stderr
  dir = dir:gsub("/+$", "")
  if exists(dir .. "/state.json") then return dir end
  for _, parent in ipairs { dir .. "/checkpoints", dir } do
    local steps = {}
    local p = io.popen("ls -1 " .. shell_quote(parent) .. " 2>/dev/null")
    for name in p:lines() do
      local n = name:match("^step_(%d+)$")
      if n then steps[#steps + 1] = { n = tonumber(n), path = parent .. "/" .. name } end
    end
    p:close()
    table.sort(steps, function(a, b) return a.n > b.n end)
    for _, s in ipairs(steps) do
      if exists(s.path .. "/DONE") then return s.path end
      log:write("fairy2 export: skipping ", s.path, ": incomplete (no DONE marker)\n")
    end
    if #steps > 0 then return nil, "no complete checkpoint in " .. parent end
  end
  return nil, dir .. " is neither a checkpoint (no state.json) nor a run directory with checkpoints"
end

-- cjson decodes JSON null as a sentinel; for the model description it means absent.
local function denull(t)
  local out = {}
  for k, v in pairs(t) do
    if v ~= cjson.null then out[k] = v end
  end
  return out
end

-- The options fairy2.convert takes, from the recipe's quant table; nil for a full-precision run.
local function convert_opts(quant)
  if type(quant) ~= "table" or (quant.stages or 0) == 0 then return nil end
  return { stages = quant.stages, granularity = quant.granularity, group_size = quant.group_size,
    include = quant.include, exclude = quant.exclude, quiet = true }
end

-- A checkpoint saved with param = "uw" holds U and W instead of R: R = rebuild(U, W).
local function r_from_planes(state, name)
  local planes = {}
  for i, p in ipairs { "u_re", "u_im", "w_re", "w_im" } do
    planes[i] = state[name .. "." .. p]
    if planes[i] == nil then return nil end
  end
  local s = planes[1]:shape()
  local r = f2.empty({ 2 * s[1], 2 * s[2] })
  local f32 = {}
  for i = 1, 4 do f32[i] = planes[i]:to("f32") end
  f2.check(C.f2_fairy2_rebuild(r.h, f32[1].h, f32[2].h, f32[3].h, f32[4].h), "export: rebuilding R of " .. name)
  for i, p in ipairs { "u_re", "u_im", "w_re", "w_im" } do state[name .. "." .. p] = nil end
  return r
end

local function load_checkpoint(dir, log)
  if not exists(dir .. "/DONE") then return nil, "checkpoint " .. dir .. " is incomplete (no DONE marker)" end
  local text, err = read_file(dir .. "/state.json")
  if not text then return nil, "checkpoint " .. dir .. ": " .. tostring(err) end
  local ok, st = pcall(cjson.decode, text)
  if not ok or type(st) ~= "table" then return nil, "checkpoint " .. dir .. ": state.json is not a JSON object" end
  if type(st.model_desc) ~= "table" then return nil, "checkpoint " .. dir .. ": state.json has no model_desc" end
  local recipe = type(st.recipe) == "table" and st.recipe or {}
  -- The description is normalized again from the config it came from (as a resumed run does), so
  -- it means what config.lua says today; without that config, it is taken as stored.
  local desc = denull(st.model_desc)
  if type(desc.hf) == "table" then
    local okd, d = pcall(config.from_json, desc.hf)
    if not okd then return nil, "checkpoint " .. dir .. ": model_desc.hf: " .. tostring(d) end
    desc = d
  end
  local weights, werr = safetensors.load(dir .. "/model.safetensors")
  if not weights then return nil, werr end
  local function build()
    local model = llama.build(desc)
    local opts = convert_opts(recipe.quant)
    if opts then fairy2.convert(model, opts) end
    local state = weights.tensors
    for _, l in ipairs(fairy2.layers(model)) do
      if state[l.name .. ".weight"] == nil then state[l.name .. ".weight"] = r_from_planes(state, l.name) end
    end
    llama.load_state(model, state)
    return model, opts
  end
  local built, model, opts = pcall(build)
  if not built then return nil, "checkpoint " .. dir .. ": " .. tostring(model) end
  if type(recipe.quant) == "table" and recipe.quant.a8 and opts then
    (log or io.stderr):write("fairy2 export: the checkpoint trained with A8 (int8 activations); the exports ",
      "hold the weights only and run with unquantized activations\n")
  end
  return { dir = dir, model = model, desc = desc, recipe = recipe, state = st, quant = opts,
    source = type(recipe.model) == "string" and recipe.model or nil }
end

-- { dir, model (converted as the recipe says, master weights loaded), desc, recipe, state (state.json),
-- quant (fairy2.convert's options, nil when full precision), source (the recipe's model source) }.
function M.load_checkpoint(dir, opts)
  if type(dir) ~= "string" then error("export.load_checkpoint: dir must be a path", 2) end
  opts = opts or {}
  local path, err = M.find_checkpoint(dir, opts.log)
  if not path then return nil, err end
  return load_checkpoint(path, opts.log)
end

local function checkpoint(ckpt, opts, what)
  if type(ckpt) == "table" and ckpt.model then return ckpt end
  if type(ckpt) ~= "string" then error(what .. ": ckpt must be a checkpoint or run directory (or a loaded checkpoint)", 3) end
  return M.load_checkpoint(ckpt, opts)
end

-- ---------------------------------------------------------------- config.json

-- An HF LlamaConfig / Qwen3Config (as config.json holds it) of a model description.
function M.hf_config(desc)
  if type(desc) ~= "table" or (desc.arch ~= "llama" and desc.arch ~= "qwen3") then
    error("export.hf_config: expects a llama or qwen3 model description", 2)
  end
  local is_llama = desc.arch == "llama"
  local scaling = cjson.null
  if desc.rope_scaling then
    local r = desc.rope_scaling
    scaling = { rope_type = r.type, factor = r.factor, low_freq_factor = r.low_freq_factor,
      high_freq_factor = r.high_freq_factor, original_max_position_embeddings = r.original_max_position_embeddings }
  end
  local eos = desc.eos_id
  if type(desc.eos_ids) == "table" and #desc.eos_ids > 1 then eos = desc.eos_ids end
  local hf = type(desc.hf) == "table" and desc.hf or {}
  local cfg = {
    architectures = { is_llama and "LlamaForCausalLM" or "Qwen3ForCausalLM" },
    model_type = desc.arch,
    vocab_size = desc.vocab_size,
    hidden_size = desc.hidden,
    intermediate_size = desc.intermediate,
    num_hidden_layers = desc.layers,
    num_attention_heads = desc.heads,
    num_key_value_heads = desc.kv_heads,
    head_dim = desc.head_dim,
    hidden_act = "silu",
    max_position_embeddings = desc.max_position,
    rms_norm_eps = desc.rms_eps,
    rope_theta = desc.rope_theta,
    rope_scaling = scaling,
    tie_word_embeddings = desc.tie_embeddings == true,
    attention_bias = desc.attention_bias == true,
    attention_dropout = 0,
    initializer_range = type(hf.initializer_range) == "number" and hf.initializer_range or 0.02,
    bos_token_id = desc.bos_id,
    eos_token_id = eos,
    torch_dtype = "bfloat16",
    use_cache = true,
  }
  if is_llama then
    cfg.mlp_bias = desc.mlp_bias == true
    cfg.pretraining_tp = 1
  else
    cfg.use_sliding_window = false
  end
  return cfg
end

-- ---------------------------------------------------------------- tokenizer

-- The pre-tokenizers, normalizers and tokenizer classes of the GGUF "pre" values fairy2 reads
-- (tokenizer.lua's GGUF_PRE), spelled as tokenizer.json spells them.
local QWEN2_REGEX = [[(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+]]
local BYTE_LEVEL = { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = true }
local GGUF_PRE = {
  smollm = { pre = { type = "Sequence", pretokenizers = { { type = "Digits", individual_digits = true }, BYTE_LEVEL } } },
  gpt2 = { pre = BYTE_LEVEL },
  qwen2 = { normalizer = { type = "NFC" }, pre = { type = "Sequence", pretokenizers = {
    { type = "Split", pattern = { Regex = QWEN2_REGEX }, behavior = "Isolated", invert = false },
    { type = "ByteLevel", add_prefix_space = false, trim_offsets = false, use_regex = false } } } },
}
GGUF_PRE["gpt-2"] = GGUF_PRE.gpt2

local function compact(v) return (data.to_json(v):gsub("\n%s*", "")) end

-- tokenizer.json and tokenizer_config.json texts from GGUF tokenizer metadata (gguf.tokenizer_data):
-- a byte-level BPE with the vocab in id order and the merges as pairs; token type 3 (control) is a
-- special added token, 4 (user defined) a plain one, both matched in the raw text as llama.cpp does.
function M.tokenizer_files(meta, desc)
  if type(meta) ~= "table" then error("export.tokenizer_files: expects gguf.tokenizer_data(g)", 2) end
  if meta.model ~= "gpt2" then
    return nil, "tokenizer.ggml.model '" .. tostring(meta.model) .. "' is not a byte-level BPE (gpt2)"
  end
  local kind = GGUF_PRE[meta.pre or "gpt2"]
  if not kind then return nil, "tokenizer.ggml.pre '" .. tostring(meta.pre) .. "' is not supported (smollm, gpt2, qwen2)" end
  local js = data.json_string
  local added, decoder, vocab = {}, {}, {}
  for i, s in ipairs(meta.tokens) do
    local ty = meta.token_type and meta.token_type[i]
    if ty == 3 or ty == 4 then
      local a = { id = i - 1, content = s, single_word = false, lstrip = false, rstrip = false, normalized = false,
        special = ty == 3 }
      added[#added + 1] = compact(a)
      a.id = nil
      decoder[tostring(i - 1)] = a
    end
    vocab[i] = js(s) .. ":" .. (i - 1)
  end
  local merges = {}
  for i, m in ipairs(meta.merges or {}) do
    local a, b = m:match("^([^ ]+) ([^ ]+)$")
    if not a then return nil, "tokenizer.ggml.merges[" .. (i - 1) .. "] is not two tokens: '" .. m .. "'" end
    merges[i] = "[" .. js(a) .. "," .. js(b) .. "]"
  end
  local byte_level = { type = "ByteLevel", add_prefix_space = true, trim_offsets = false, use_regex = true }
  local json = table.concat {
    '{"version":"1.0","truncation":null,"padding":null,\n"added_tokens":[', table.concat(added, ",\n"), "],\n",
    '"normalizer":', kind.normalizer and compact(kind.normalizer) or "null", ",\n",
    '"pre_tokenizer":', compact(kind.pre), ",\n",
    '"post_processor":', compact(byte_level), ",\n",
    '"decoder":', compact({ type = "ByteLevel", add_prefix_space = true, trim_offsets = true, use_regex = true }), ",\n",
    '"model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,',
    '"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"ignore_merges":false,\n"vocab":{\n',
    table.concat(vocab, ",\n"), '},\n"merges":[\n', table.concat(merges, ",\n"), "]}}\n",
  }
  local function content(id) return id and meta.tokens[id + 1] or cjson.null end
  local cfg = {
    add_bos_token = meta.add_bos == true,
    add_eos_token = meta.add_eos == true,
    added_tokens_decoder = decoder,
    bos_token = content(meta.bos_id),
    eos_token = content(meta.eos_id),
    pad_token = content(meta.pad_id),
    unk_token = content(meta.unk_id),
    chat_template = meta.chat_template,
    clean_up_tokenization_spaces = false,
    model_max_length = desc and desc.max_position or nil,
    -- the generic class keeps tokenizer.json's pipeline as written (a model-specific class may rebuild it)
    tokenizer_class = "PreTrainedTokenizerFast",
  }
  return json, data.to_json(cfg) .. "\n"
end

-- Writes out_dir's tokenizer files from a model source: a local HF directory's are copied, a GGUF's
-- metadata is turned into tokenizer.json. Returns a line saying what was done, or nil and why not.
function M.write_tokenizer(source, out_dir, desc)
  if type(source) ~= "string" then return nil, "the checkpoint's recipe names no model source" end
  local path = source:match("^gguf:(.+)$") or (source:match("%.gguf$") and source)
  if path then
    local gguf = require "fairy2.gguf"
    local g, err = gguf.open(path)
    if not g then return nil, err end
    local ok, meta = pcall(gguf.tokenizer_data, g)
    g:close()
    if not ok then return nil, tostring(meta) end
    local json, cfg = M.tokenizer_files(meta, desc)
    if not json then return nil, path .. ": " .. cfg end
    local w, werr = write_file(out_dir .. "/tokenizer.json", json)
    if w then w, werr = write_file(out_dir .. "/tokenizer_config.json", cfg) end
    if not w then return nil, werr end
    return "tokenizer.json written from the GGUF metadata of " .. path
  end
  local dir = source:match("^packed:(.+)$")
  dir = dir and (dir:match("^(.*)/[^/]*$") or ".") or source:gsub("/+$", "")
  if source:match("^hf:") or not exists(dir .. "/tokenizer.json") then
    return nil, "no tokenizer.json at the model source '" .. source .. "'"
  end
  local copied = {}
  for _, name in ipairs { "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json" } do
    local text = read_file(dir .. "/" .. name)
    if text then
      local w, werr = write_file(out_dir .. "/" .. name, text)
      if not w then return nil, werr end
      copied[#copied + 1] = name
    end
  end
  return table.concat(copied, ", ") .. " copied from " .. dir
end

-- ---------------------------------------------------------------- Hugging Face directory

-- A new CPU bf16 tensor (never t itself, so the caller may free it).
local function bf16_copy(t)
  local out = f2.empty(t:shape(), { dtype = "bf16" })
  f2.check(C.f2_copy(out.h, t.h), "export: bf16 copy")
  return out
end

-- R_hat in bf16 (round to nearest even from the fp32 R_hat), from the layer's master R.
local function r_hat_bf16(m)
  local r_hat = f2.empty({ m.out_features, m.in_features }, { dtype = "bf16" })
  f2.check(C.f2_fairy2_quantize(r_hat.h, m.scales.h, nil, m:master().h, m.cfg), "export: quantizing")
  return r_hat
end

-- Writes out_dir/{model.safetensors, config.json, tokenizer.json, tokenizer_config.json}. opts.log:
-- where warnings go (io.stderr). Returns { dir, params, converted, tokenizer = what was done or nil,
-- tokenizer_note = why not } or nil, err.
function M.hf(ckpt, out_dir, opts)
  if type(out_dir) ~= "string" or out_dir == "" then error("export.hf: out_dir must be a path", 2) end
  opts = opts or {}
  local ck, err = checkpoint(ckpt, opts, "export.hf")
  if not ck then return nil, err end
  out_dir = out_dir:gsub("/+$", "")
  if not mkdir_p(out_dir) then return nil, "export.hf: cannot create directory " .. out_dir end
  local Fairy2Linear = require "fairy2.nn.fairy2_linear"
  local tensors, params, converted = {}, 0, 0
  for _, p in ipairs(ck.model:named_parameters()) do
    local t
    if getmetatable(p.module) == Fairy2Linear and p.local_name == "weight" then
      t = r_hat_bf16(p.module)
      converted = converted + t:numel()
    else
      t = bf16_copy(p.value)
    end
    params = params + t:numel()
    tensors[#tensors + 1] = { p.name, t }
  end
  local meta = { format = "pt", fairy2_version = f2.version, fairy2_checkpoint = ck.dir }
  if ck.quant then meta.fairy2_quant = compact({ stages = ck.quant.stages, granularity = ck.quant.granularity or "tensor" }) end
  local ok, serr = safetensors.save(out_dir .. "/model.safetensors", tensors, meta)
  for _, e in ipairs(tensors) do e[2]:free() end
  if not ok then return nil, serr end
  local w, werr = write_file(out_dir .. "/config.json", data.to_json(M.hf_config(ck.desc)) .. "\n")
  if not w then return nil, werr end
  local info = { dir = out_dir, params = params, converted = converted }
  info.tokenizer, info.tokenizer_note = M.write_tokenizer(ck.source, out_dir, ck.desc)
  if not info.tokenizer then
    (opts.log or io.stderr):write("fairy2 export: no tokenizer written to ", out_dir, ": ", tostring(info.tokenizer_note), "\n")
  end
  return info
end

-- ---------------------------------------------------------------- packed file

-- Writes the packed file. Returns a report { path, layers, params, converted_params, codes_bytes,
-- scales_bytes, bits_per_weight (converted layers: codes + scales), file_bytes, bf16_bytes (the same
-- model's weights at 16 bits) } or nil, err.
function M.packed(ckpt, out_path, opts)
  if type(out_path) ~= "string" or out_path == "" then error("export.packed: out_path must be a path", 2) end
  opts = opts or {}
  local ck, err = checkpoint(ckpt, opts, "export.packed")
  if not ck then return nil, err end
  local parent = out_path:match("^(.*)/[^/]*$")
  if parent and parent ~= "" and not mkdir_p(parent) then return nil, "export.packed: cannot create directory " .. parent end
  local Fairy2Linear = require "fairy2.nn.fairy2_linear"
  local r = { path = out_path, layers = 0, params = 0, converted_params = 0, codes_bytes = 0, scales_bytes = 0 }
  local tensors, layers, cfg = {}, {}, nil
  for _, p in ipairs(ck.model:named_parameters()) do
    local m = p.module
    r.params = r.params + p.value:numel()
    if getmetatable(m) == Fairy2Linear and p.local_name == "weight" then
      local name = p.name:gsub("%.weight$", "")
      local packed = fairy2.pack(m)
      tensors[#tensors + 1] = { name .. ".codes", packed.packed }
      tensors[#tensors + 1] = { name .. ".scales", packed.scales }
      layers[name] = { m.out_features, m.in_features }
      cfg = m.cfg
      r.layers = r.layers + 1
      r.converted_params = r.converted_params + p.value:numel()
      r.codes_bytes = r.codes_bytes + packed.packed:numel()
      r.scales_bytes = r.scales_bytes + 4 * packed.scales:numel()
    else
      tensors[#tensors + 1] = { p.name, bf16_copy(p.value) }
    end
  end
  local meta = { format = M.FORMAT, version = M.VERSION, config = data.to_json(M.hf_config(ck.desc)),
    layers = compact(layers), stages = tostring(cfg and cfg.stages or 0),
    granularity = GRANULARITY_NAMES[cfg and cfg.granularity or 0], group_size = tostring(cfg and cfg.group_size or 0),
    source = ck.source or "", fairy2_version = f2.version }
  local ok, serr = safetensors.save(out_path, tensors, meta)
  for _, e in ipairs(tensors) do e[2]:free() end
  if not ok then return nil, serr end
  r.bits_per_weight = r.converted_params > 0 and 8 * (r.codes_bytes + r.scales_bytes) / r.converted_params or 0
  r.file_bytes = file_size(out_path)
  r.bf16_bytes = 2 * r.params
  return r
end

-- One line per figure of a packed report, for people.
function M.format_packed_report(r)
  return table.concat({
    string.format("packed %s: %d converted layers, %.2fM of %.2fM parameters", r.path, r.layers,
      r.converted_params / 1e6, r.params / 1e6),
    string.format("  converted layers: %.3f bits/weight (codes %.2f MB + scales %.1f KB)", r.bits_per_weight,
      r.codes_bytes / 1e6, r.scales_bytes / 1e3),
    string.format("  file %.2f MB vs %.2f MB of bf16 weights (%.1f%%)", r.file_bytes / 1e6, r.bf16_bytes / 1e6,
      100 * r.file_bytes / r.bf16_bytes),
  }, "\n")
end

local function is_int(v) return type(v) == "number" and v >= 0 and v % 1 == 0 end

-- A non-negative integer from a metadata string, or nil.
local function int_of(s)
  local n = tonumber(s)
  if is_int(n) then return n end
end

local function shape_is(t, want)
  local s = t:shape()
  if #s ~= #want then return false end
  for i = 1, #s do if s[i] ~= want[i] then return false end end
  return true
end

local function read_packed(path)
  local st, err = safetensors.load(path)
  if not st then return nil, err end
  local function bad(msg) return nil, path .. ": " .. msg end
  local md = st.metadata
  if md.format ~= M.FORMAT then return bad("not a fairy2 packed file (__metadata__ format is '" .. tostring(md.format) .. "')") end
  if md.version ~= M.VERSION then return bad("packed format version '" .. tostring(md.version) .. "' is not supported (1 is)") end
  local ok, cfg = pcall(cjson.decode, md.config or "")
  if not ok or type(cfg) ~= "table" then return bad("__metadata__ config is not JSON") end
  local okc, desc = pcall(config.from_json, cfg)
  if not okc then return bad("__metadata__ config: " .. tostring(desc)) end
  local okl, layers = pcall(cjson.decode, md.layers or "")
  if not okl or type(layers) ~= "table" then return bad("__metadata__ layers is not a JSON object") end
  local stages, group_size = int_of(md.stages), int_of(md.group_size)
  local granularity = fairy2.GRANULARITY[md.granularity or ""]
  if next(layers) and not (stages and stages >= 1 and granularity and group_size) then
    return bad(string.format("__metadata__ stages '%s', granularity '%s', group_size '%s' are not a quantizer config",
      tostring(md.stages), tostring(md.granularity), tostring(md.group_size)))
  end
  local state, names, owned = {}, {}, {}
  local layer_names = {}
  for name in pairs(layers) do layer_names[#layer_names + 1] = name end
  table.sort(layer_names)
  for _, name in ipairs(layer_names) do
    local shape = layers[name]
    local rows, cols = type(shape) == "table" and shape[1], type(shape) == "table" and shape[2]
    if not (is_int(rows) and is_int(cols) and rows >= 2 and cols >= 2 and rows % 2 == 0 and cols % 2 == 0
            and #shape == 2) then
      return bad("layer '" .. name .. "': shape " .. cjson.encode(shape) .. " is not [out, in] with both even")
    end
    local p = { stages = stages, granularity = granularity, group_size = group_size, shape = { rows, cols } }
    local okg, groups = pcall(fairy2.scale_groups, p, rows, cols)
    if not okg then return bad("layer '" .. name .. "': " .. tostring(groups)) end
    local want = {
      codes = { "u8", { stages, 2, rows / 2, math.ceil(cols / 8) } },
      scales = { "f32", { stages, 4, groups } },
    }
    for _, part in ipairs { "codes", "scales" } do
      local t = st.tensors[name .. "." .. part]
      if t == nil then return bad("layer '" .. name .. "': tensor '" .. name .. "." .. part .. "' is missing") end
      local dtype, dims = want[part][1], want[part][2]
      if t:dtype() ~= dtype or not shape_is(t, dims) then
        return bad(string.format("tensor '%s.%s' is %s [%s], expected %s [%s] for a %dx%d layer", name, part, t:dtype(),
          table.concat(t:shape(), ","), dtype, table.concat(dims, ","), rows, cols))
      end
      p[part == "codes" and "packed" or "scales"] = t
      owned[name .. "." .. part] = true
    end
    local okd, r_hat = pcall(fairy2.dequantize, p, "f32")
    if not okd then return bad("layer '" .. name .. "': " .. tostring(r_hat)) end
    state[name .. ".weight"] = r_hat
    names[#names + 1] = name .. ".weight"
  end
  for _, name in ipairs(st.names) do
    if not owned[name] then
      local layer = name:match("^(.*)%.codes$") or name:match("^(.*)%.scales$")
      if layer then return bad("tensor '" .. name .. "' belongs to no layer of __metadata__ layers") end
      if state[name] then return bad("tensor '" .. name .. "' is also a packed layer's weight") end
      state[name] = st.tensors[name]
      names[#names + 1] = name
    end
  end
  local dir = path:match("^(.*)/[^/]*$") or "."
  return { config = desc, state = state, names = names, metadata = md, layers = layers,
    tokenizer_source = exists(dir .. "/tokenizer.json") and { kind = "json", path = dir .. "/tokenizer.json" } or nil }
end

-- A packed file as a model source: { config (model description), state = { hf_name = tensor } with
-- each layer's R_hat (f32, dequantized from its codes and scales) as "<layer>.weight", names,
-- metadata, layers = { name = {out, in} }, tokenizer_source (a tokenizer.json beside the file) }.
function M.read_packed(path)
  if type(path) ~= "string" then error("export.read_packed: path must be a string", 2) end
  return read_packed(path)
end

-- A model (models/llama.lua, plain Linear layers) holding the packed file's weights: R_hat for the
-- converted layers, the bf16 tensors for the rest. Returns model, read_packed's table; or nil, err.
function M.load_packed(path)
  if type(path) ~= "string" then error("export.load_packed: path must be a string", 2) end
  local r, err = read_packed(path)
  if not r then return nil, err end
  local ok, model = pcall(function() return llama.load_state(llama.build(r.config), r.state) end)
  if not ok then return nil, path .. ": " .. tostring(model) end
  return model, r
end

return M
