-- test_export.lua — export.lua end to end on tiny random models: a checkpoint in the training layout
-- (run/checkpoints/step_N/{model.safetensors, state.json, DONE}) is exported to a Hugging Face directory
-- and a packed file; the HF directory, reloaded through hub.resolve, gives the checkpoint model's logits
-- within bf16 rounding, and its R_hat is the quantizer's bit for bit; the packed file, reloaded, gives
-- exactly the logits of an independently built model (R_hat from fairy2.quantize, the other weights
-- rounded to bf16). Three models: Llama tied W2 per-tensor; Llama untied with biases, llama3 rope, W1
-- per-group with lm_head converted and down_proj excluded; Qwen3 W3 per-row trained as U/W. Also the
-- tokenizer (copied, absent, or written from the real SmolLM2 GGUF when present), the packed report, a
-- full-precision run, corrupted packed files, checkpoint selection, the A8 warning and the tool.
local t = dofile("tests/lua/harness.lua")
local ffi = require "ffi"
local cjson = require "cjson"
local f2 = require "fairy2"
local config = require "fairy2.config"
local export = require "fairy2.export"
local fairy2 = require "fairy2.fairy2"
local hub = require "fairy2.hub"
local llama = require "fairy2.models.llama"
local safetensors = require "fairy2.safetensors"
local Fairy2Linear = require "fairy2.nn.fairy2_linear"

local seed = t.seed()
math.randomseed(seed)

local tmp = os.tmpname()
os.remove(tmp)
local function sh(cmd)
  local rc = os.execute(cmd)
  assert(rc == 0 or rc == true, cmd)
end
sh("mkdir -p '" .. tmp .. "'")

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end
local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- A sink for warnings: remembers what was written.
local function sink()
  local s = { text = "" }
  function s:write(...) self.text = self.text .. table.concat({ ... }) end
  return s
end

-- max|a - b| / max|b|, and ||a - b|| / ||b|| (read in double). Logits of a model whose weights are
-- rounded to bf16 differ by ~5e-3 in the norm; the max ratio reaches 2e-2 on a badly conditioned draw.
local function rel_err(a, b)
  a, b = a:float():contiguous(), b:float():contiguous()
  local pa, pb = ffi.cast("const float *", a.h.data), ffi.cast("const float *", b.h.data)
  local num, den, num2, den2 = 0, 0, 0, 0
  for i = 0, a:numel() - 1 do
    num = math.max(num, math.abs(pa[i] - pb[i]))
    den = math.max(den, math.abs(pb[i]))
    num2, den2 = num2 + (pa[i] - pb[i]) ^ 2, den2 + pb[i] ^ 2
  end
  return num / math.max(den, 1e-30), math.sqrt(num2 / math.max(den2, 1e-30))
end

local function same_bytes(a, b)
  if table.concat(a:shape(), "x") ~= table.concat(b:shape(), "x") or a:dtype() ~= b:dtype() then return false end
  a, b = a:contiguous(), b:contiguous()
  local n = a:numel() * f2.dtypes.size(a:dtype())
  return ffi.string(a.h.data, n) == ffi.string(b.h.data, n)
end

local function random_ids(vocab, rows, cols)
  local ids = {}
  for i = 1, rows do
    ids[i] = {}
    for j = 1, cols do ids[i][j] = math.random(0, vocab - 1) end
  end
  return f2.tensor(ids, { dtype = "i32" })
end

local GGUF = "models/smollm2-135m-instruct.gguf"
local have_gguf = io.open(GGUF, "rb")
if have_gguf then have_gguf:close() else print("the real SmolLM2 GGUF is absent: its tokenizer is not exported here") end

-- A model source directory with a tokenizer (contents need not be a real tokenizer: it is copied).
local src_dir = tmp .. "/source"
sh("mkdir -p '" .. src_dir .. "'")
local tok_text = '{"version": "1.0", "marker": ' .. math.random(1, 1e9) .. "}"
write(src_dir .. "/tokenizer.json", tok_text)
write(src_dir .. "/tokenizer_config.json", '{"eos_token": "<e>"}')

local CASES = {
  { name = "llama_tied_w2", source = src_dir, std = 0.25,
    config = { model_type = "llama", vocab_size = 64, hidden_size = 20, intermediate_size = 36, num_hidden_layers = 2,
      num_attention_heads = 2, num_key_value_heads = 1, tie_word_embeddings = true, rms_norm_eps = 1e-5,
      bos_token_id = 1, eos_token_id = 2 },
    quant = { stages = 2, granularity = "tensor" } },
  { name = "llama3_untied_w1_group", source = "hf:example/none", std = 0.2,
    config = { model_type = "llama", vocab_size = 70, hidden_size = 24, intermediate_size = 40, num_hidden_layers = 2,
      num_attention_heads = 4, num_key_value_heads = 2, head_dim = 8, tie_word_embeddings = false, attention_bias = true,
      mlp_bias = true, rope_theta = 500000, max_position_embeddings = 256, eos_token_id = { 3, 4 },
      rope_scaling = { rope_type = "llama3", factor = 8, low_freq_factor = 1, high_freq_factor = 4,
        original_max_position_embeddings = 32 } },
    quant = { stages = 1, granularity = "group", group_size = 3, include = { "layers%.%d+%.", "^lm_head$" },
      exclude = { "down_proj" } } },
  { name = "qwen3_w3_row_uw", source = have_gguf and ("gguf:" .. GGUF) or src_dir, std = 0.2,
    config = { model_type = "qwen3", vocab_size = 48, hidden_size = 16, intermediate_size = 28, num_hidden_layers = 1,
      num_attention_heads = 3, num_key_value_heads = 1, head_dim = 12, tie_word_embeddings = true, rope_theta = 1e6 },
    quant = { stages = 3, granularity = "row", param = "uw" } },
}

local packed_of_first

for ci, case in ipairs(CASES) do
  local name = case.name
  local desc = config.from_json(case.config)
  local model = llama.build(desc)
  llama.init_random(model, seed + 100 * ci, { std = case.std })
  local q = {}
  for k, v in pairs(case.quant) do q[k] = v end
  q.quiet = true
  fairy2.convert(model, q)

  -- The checkpoint, in a run directory, with a newer incomplete one beside it.
  local run = tmp .. "/" .. name
  local ck = run .. "/checkpoints/step_000002"
  sh("mkdir -p '" .. ck .. "' '" .. run .. "/checkpoints/step_000003'")
  local list = {}
  for _, p in ipairs(model:named_parameters()) do list[#list + 1] = { p.name, p.value } end
  assert(safetensors.save(ck .. "/model.safetensors", list))
  write(ck .. "/state.json", cjson.encode({ step = 2, recipe = { model = case.source, quant = case.quant }, model_desc = desc }))
  write(ck .. "/DONE", "")
  write(run .. "/checkpoints/step_000003/state.json", "{")

  -- The checkpoint model's logits, and an independent model of what the packed file should hold:
  -- R_hat (f32) from fairy2.quantize for converted layers, every other weight rounded to bf16.
  local ids = random_ids(desc.vocab_size, 2, 7)
  local want = model:forward(ids)
  local plain, plain_state, hf_state, converted = llama.build(desc), {}, {}, {}
  for _, p in ipairs(model:named_parameters()) do
    if getmetatable(p.module) == Fairy2Linear and p.local_name ~= "bias" then
      local lname = p.name:match("^(.*)%.[^.]+$")
      if not converted[lname] then
        local cfg = p.module.cfg
        converted[lname] = { r_hat = fairy2.quantize(p.module:master():clone(), { stages = cfg.stages,
          granularity = cfg.granularity, group_size = cfg.group_size }), master = p.module:master():clone() }
        plain_state[lname .. ".weight"] = converted[lname].r_hat
        hf_state[lname .. ".weight"] = converted[lname].r_hat:bf16():float()
      end
    else
      plain_state[p.name] = p.value:bf16():float()
      hf_state[p.name] = plain_state[p.name]
    end
  end
  local want_rounded = llama.load_state(plain, plain_state):forward(ids)
  local want_hf = llama.load_state(llama.build(desc), hf_state):forward(ids)
  local n_converted = 0
  for _ in pairs(converted) do n_converted = n_converted + 1 end
  t.check(n_converted == ({ 14, 13, 7 })[ci], name .. ": converted layers " .. n_converted)

  -- Hugging Face directory.
  local log = sink()
  local hf_dir = tmp .. "/" .. name .. "_hf"
  local info, err = export.hf(run, hf_dir, { log = log })
  if t.check(info ~= nil, name .. ": export.hf: " .. tostring(err)) then
    t.check(log.text:find("step_000003: incomplete", 1, true) ~= nil, name .. ": newer incomplete checkpoint skipped: " .. log.text)
    local r, rerr = hub.resolve(hf_dir)
    if t.check(r ~= nil, name .. ": hub.resolve(hf dir): " .. tostring(rerr)) then
      for _, k in ipairs { "arch", "vocab_size", "hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate",
                           "rope_theta", "rms_eps", "tie_embeddings", "attention_bias", "mlp_bias", "max_position",
                           "bos_id", "eos_id", "qk_norm" } do
        t.check(r.config[k] == desc[k], name .. ": config.json gives " .. k .. " = " .. tostring(r.config[k]) ..
          ", the checkpoint " .. tostring(desc[k]))
      end
      t.check((desc.rope_scaling == nil) == (r.config.rope_scaling == nil), name .. ": rope_scaling present")
      for k, v in pairs(desc.rope_scaling or {}) do t.check(r.config.rope_scaling[k] == v, name .. ": rope_scaling." .. k) end
      t.check(cjson.encode(r.config.eos_ids or {}) == cjson.encode(desc.eos_ids or {}), name .. ": eos ids")
      t.check(r.state["lm_head.weight"] == nil or not desc.tie_embeddings, name .. ": tied: no lm_head.weight")
      for _, n in ipairs(r.names) do
        t.check(r.state[n]:dtype() == "bf16", name .. ": " .. n .. " is bf16")
      end
      for lname, c in pairs(converted) do
        local w = r.state[lname .. ".weight"]
        t.check(same_bytes(w, c.r_hat:bf16()), name .. ": " .. lname .. " holds bf16(R_hat) bit for bit")
        t.check(not same_bytes(w, c.master:bf16()), name .. ": " .. lname .. " is not the master R")
      end
      local hf_model = llama.load_state(llama.build(r.config), r.state)
      local got = hf_model:forward(ids)
      t.check(rel_err(got, want_hf) == 0, string.format("%s: HF export logits equal the bf16 R_hat reference exactly (rel %.2e)",
        name, rel_err(got, want_hf)))
      local e, e2 = rel_err(got, want)
      print(string.format("%s: HF export logits vs the checkpoint's: rel %.2e fro %.2e", name, e, e2))
      t.check(e2 < 2e-2, string.format("%s: HF export logits within bf16 rounding of the checkpoint's (||d||/||b|| %.2e)",
        name, e2))
    end
    if case.source == src_dir then
      t.check(read(hf_dir .. "/tokenizer.json") == tok_text and read(hf_dir .. "/tokenizer_config.json") == '{"eos_token": "<e>"}',
        name .. ": tokenizer files copied from the source directory")
    elseif case.source:match("^hf:") then
      t.check(info.tokenizer == nil and read(hf_dir .. "/tokenizer.json") == nil and log.text:find("no tokenizer", 1, true),
        name .. ": no tokenizer, and a warning: " .. log.text)
    else
      -- From the GGUF: fairy2 reads the written tokenizer.json as it reads the GGUF.
      local tokenizer = require "fairy2.tokenizer"
      local gguf = require "fairy2.gguf"
      local g = assert(gguf.open(GGUF))
      local a = tokenizer.from_gguf(gguf.tokenizer_data(g))
      g:close()
      local b = tokenizer.from_json(hf_dir .. "/tokenizer.json")
      t.check(a.vocab_size == b.vocab_size and a.bos_id == b.bos_id and a.eos_id == b.eos_id and a.pad_id == b.pad_id,
        name .. ": GGUF tokenizer: vocab size and special ids")
      for _, s in ipairs { "Hello world!", "  12345 x=3.14\n\tdef f():", "<|im_start|>user\nHi<|im_end|>", "naïve café 東京 🙂",
                           string.format("%d %x", math.random(1, 1e9), math.random(1, 1e9)) } do
        t.check(table.concat(a:encode(s), " ") == table.concat(b:encode(s), " "), name .. ": same ids for " .. s)
      end
    end
  end

  -- Packed file.
  local packed_path = tmp .. "/" .. name .. ".f2.safetensors"
  local rep, perr = export.packed(ck, packed_path)
  if t.check(rep ~= nil, name .. ": export.packed: " .. tostring(perr)) then
    if ci == 1 then packed_of_first = packed_path end
    local codes_bytes, scales_bytes, params = 0, 0, 0
    local cfg = fairy2.config(case.quant)
    for _, c in pairs(converted) do
      local s = c.master:shape()
      codes_bytes = codes_bytes + cfg.stages * 2 * (s[1] / 2) * math.ceil(s[2] / 8)
      scales_bytes = scales_bytes + 4 * cfg.stages * 4 * fairy2.scale_groups(cfg, s[1], s[2])
      params = params + s[1] * s[2]
    end
    t.check(rep.layers == n_converted and rep.converted_params == params, name .. ": report counts layers and parameters")
    t.close(rep.bits_per_weight, 8 * (codes_bytes + scales_bytes) / params, 1e-12, 0, name .. ": bits per weight")
    local f = assert(io.open(packed_path, "rb"))
    t.check(rep.file_bytes == f:seek("end"), name .. ": file size")
    f:close()
    t.check(export.format_packed_report(rep):find("bits/weight", 1, true) ~= nil, name .. ": report text")

    local m2, r2 = export.load_packed(packed_path)
    if t.check(m2 ~= nil, name .. ": load_packed: " .. tostring(r2)) then
      local got = m2:forward(ids)
      t.check(rel_err(got, want_rounded) == 0,
        string.format("%s: packed logits equal the R_hat reference exactly (rel %.2e)", name, rel_err(got, want_rounded)))
      t.check(select(2, rel_err(got, want)) < 2e-2, name .. ": packed logits within bf16 rounding of the checkpoint's")
      t.check(r2.metadata.stages == tostring(case.quant.stages) and r2.metadata.granularity == case.quant.granularity,
        name .. ": metadata stages and granularity")
    end
    local r3, e3 = hub.resolve("packed:" .. packed_path)
    t.check(r3 ~= nil and r3.config.hidden == desc.hidden and r3.state[next(converted) .. ".weight"] ~= nil,
      name .. ": hub.resolve packed: " .. tostring(e3))
  end
end

-- ---------------------------------------------------------------- a full-precision run (stages = 0)

do
  local desc = config.from_json(CASES[1].config)
  local model = llama.init_random(llama.build(desc), seed + 7, { std = 0.2 })
  local ck = tmp .. "/fp/step_000001"
  sh("mkdir -p '" .. ck .. "'")
  local list, rounded = {}, {}
  for _, p in ipairs(model:named_parameters()) do
    list[#list + 1] = { p.name, p.value }
    rounded[p.name] = p.value:bf16():float()
  end
  assert(safetensors.save(ck .. "/model.safetensors", list))
  write(ck .. "/state.json", cjson.encode({ recipe = { model = src_dir, quant = { stages = 0 } }, model_desc = desc }))
  write(ck .. "/DONE", "")
  local ids = random_ids(desc.vocab_size, 1, 5)
  local want = llama.load_state(llama.build(desc), rounded):forward(ids)
  local rep = export.packed(tmp .. "/fp", tmp .. "/fp.f2.safetensors")
  t.check(rep and rep.layers == 0 and rep.bits_per_weight == 0, "full precision: no packed layers")
  local m = export.load_packed(tmp .. "/fp.f2.safetensors")
  t.check(m and rel_err(m:forward(ids), want) == 0, "full precision: packed = the bf16 model")
  t.check(export.hf(tmp .. "/fp", tmp .. "/fp_hf") ~= nil, "full precision: HF export")
  local r = hub.resolve(tmp .. "/fp_hf")
  t.check(r and rel_err(llama.load_state(llama.build(r.config), r.state):forward(ids), want) == 0,
    "full precision: HF export = the bf16 model")
end

-- ---------------------------------------------------------------- corrupted packed files

local base = assert(safetensors.load(packed_of_first))
local function variant(tag, edit)
  local names, tensors, meta = {}, {}, {}
  for _, n in ipairs(base.names) do
    names[#names + 1] = n
    tensors[n] = base.tensors[n]
  end
  for k, v in pairs(base.metadata) do meta[k] = v end
  edit(names, tensors, meta)
  local list = {}
  for _, n in ipairs(names) do if tensors[n] then list[#list + 1] = { n, tensors[n] } end end
  local path = tmp .. "/bad_" .. tag .. ".safetensors"
  assert(safetensors.save(path, list, meta))
  return path
end
local function refused(path, pattern, what)
  local m, err = export.load_packed(path)
  t.check(m == nil and tostring(err):find(pattern, 1, true) ~= nil and tostring(err):find(path, 1, true) ~= nil,
    what .. ": '" .. pattern .. "' expected, got " .. tostring(err))
end
local layer = "model.layers.0.self_attn.q_proj"
refused(variant("format", function(_, _, m) m.format = "pt" end), "not a fairy2 packed file", "format")
refused(variant("version", function(_, _, m) m.version = "2" end), "version '2' is not supported", "version")
refused(variant("config", function(_, _, m) m.config = "{" end), "config is not JSON", "config JSON")
refused(variant("arch", function(_, _, m) m.config = '{"model_type": "gpt2"}' end), "unsupported architecture 'gpt2'", "config arch")
refused(variant("layers", function(_, _, m) m.layers = nil end), "layers is not a JSON object", "no layers")
refused(variant("stages", function(_, _, m) m.stages = "0" end), "not a quantizer config", "stages 0")
refused(variant("shape", function(_, _, m) m.layers = m.layers:gsub("%[20,20%]", "[20,21]", 1) end), "is not [out, in]", "odd shape")
refused(variant("shape_text", function(_, _, m) m.layers = m.layers:gsub("%[20,20%]", '["20",20]', 1) end), "is not [out, in]",
  "shape as text")
refused(variant("noscales", function(_, ts) ts[layer .. ".scales"] = nil end), "'" .. layer .. ".scales' is missing", "missing scales")
refused(variant("codes", function(_, ts) ts[layer .. ".codes"] = ts[layer .. ".codes"]:narrow(2, 0, 9):contiguous() end),
  "tensor '" .. layer .. ".codes' is u8 [2,2,9,3], expected u8 [2,2,10,3]", "codes shape")
refused(variant("scales_dtype", function(_, ts) ts[layer .. ".scales"] = ts[layer .. ".scales"]:bf16() end),
  "expected f32", "scales dtype")
refused(variant("stray", function(ns, ts)
  ns[#ns + 1] = "model.extra.codes"
  ts["model.extra.codes"] = f2.zeros({ 4 }, { dtype = "u8" })
end), "'model.extra.codes' belongs to no layer", "stray codes")
refused(variant("padding", function(_, ts)
  local c = ts[layer .. ".codes"]:clone()
  ffi.cast("uint8_t *", c.h.data)[2] = 0xf0   -- row 0 holds 10 codes in 3 bytes: the top 4 bits of byte 2 are padding
  ts[layer .. ".codes"] = c
end), "non-zero padding bits", "padding bits")
refused(variant("noembed", function(_, ts) ts["model.embed_tokens.weight"] = nil end),
  "model.embed_tokens.weight is missing", "missing embedding")
local whole = read(packed_of_first)
write(tmp .. "/truncated.safetensors", whole:sub(1, #whole - 10))
refused(tmp .. "/truncated.safetensors", "out of range", "truncated file")

-- ---------------------------------------------------------------- checkpoints and the tool

local first = tmp .. "/" .. CASES[1].name
local found = export.find_checkpoint(first, sink())
t.check(found == first .. "/checkpoints/step_000002", "find_checkpoint picks the newest complete: " .. tostring(found))
t.check(export.find_checkpoint(first .. "/checkpoints/step_000002") == first .. "/checkpoints/step_000002", "a checkpoint itself")
local none, nerr = export.find_checkpoint(tmp .. "/source")
t.check(none == nil and nerr:find("neither a checkpoint", 1, true), "not a checkpoint: " .. tostring(nerr))
local inc, ierr = export.hf(first .. "/checkpoints/step_000003", tmp .. "/x")
t.check(inc == nil and ierr:find("incomplete (no DONE marker)", 1, true), "an incomplete checkpoint is refused: " .. tostring(ierr))
sh("mkdir -p '" .. tmp .. "/nodesc/step_000001' && touch '" .. tmp .. "/nodesc/step_000001/DONE'")
write(tmp .. "/nodesc/step_000001/state.json", '{"step": 1}')
local nd, nderr = export.packed(tmp .. "/nodesc", tmp .. "/x.safetensors")
t.check(nd == nil and nderr:find("no model_desc", 1, true), "state.json without model_desc: " .. tostring(nderr))
t.raises(function() export.hf(nil, tmp .. "/x") end, "ckpt must be", "export.hf without a checkpoint")
t.raises(function() export.packed(first, nil) end, "out_path must be a path", "export.packed without a path")

do   -- A8 is not part of the weights: exporting such a checkpoint says so
  local ck = first .. "/checkpoints/step_000002"
  local st = cjson.decode(read(ck .. "/state.json"))
  st.recipe.quant.a8 = true
  write(tmp .. "/a8_state.json", read(ck .. "/state.json"))
  write(ck .. "/state.json", cjson.encode(st))
  local log = sink()
  t.check(export.load_checkpoint(ck, { log = log }) ~= nil and log.text:find("A8", 1, true) ~= nil, "A8 warning: " .. log.text)
  write(ck .. "/state.json", read(tmp .. "/a8_state.json"))
end

local tool = require "fairy2.tools.export"
local lines = {}
local rc = tool.main({ first, "--hf", tmp .. "/tool_hf", "--packed", tmp .. "/tool/p.f2.safetensors" },
  function(s) lines[#lines + 1] = s end)
local out = table.concat(lines, "\n")
t.check(rc == 0 and out:find("step_000002", 1, true) and out:find("W2", 1, true) and out:find("bits/weight", 1, true),
  "the tool exports both: " .. out)
t.check(read(tmp .. "/tool_hf/config.json") ~= nil and read(tmp .. "/tool/p.f2.safetensors") ~= nil, "the tool wrote the files")
t.check(read(tmp .. "/tool_hf/model.safetensors") == read(tmp .. "/" .. CASES[1].name .. "_hf/model.safetensors"),
  "exports are deterministic")
t.check(tool.main({ first }, function() end) == 2, "the tool wants --hf or --packed")
t.check(tool.main({ "--hf" }, function() end) == 2, "--hf needs a value")
t.check(tool.main({ tmp .. "/source", "--hf", tmp .. "/y" }, function() end) == 1, "the tool fails on a non-checkpoint")

sh("rm -rf '" .. tmp .. "'")
t.done()
