-- test_generate.lua — inference with a KV cache and `fairy2 generate`, on tiny random models (fresh
-- weights each run): forward_step equals the training forward (whole prompts, token by token, batched;
-- Llama, Qwen3, Fairy2-converted, and with A8 for whole sequences); greedy generation with the cache
-- equals greedy generation re-running the full forward every step; the sampler's distributions by hand
-- (temperature, top-k, top-p, ties), against brute force on a large vocabulary, by frequency, and its
-- determinism by seed; UTF-8 streaming; the CLI on a tiny HF directory (tokenizer.json built here), and
-- on the real SmolLM2 GGUF when it is present.
local t = dofile("tests/lua/harness.lua")
local ffi = require "ffi"
local cjson = require "cjson"
local f2 = require "fairy2"
local config = require "fairy2.config"
local fairy2 = require "fairy2.fairy2"
local llama = require "fairy2.models.llama"
local safetensors = require "fairy2.safetensors"
local sample = require "fairy2.sample"
local gen = require "fairy2.tools.generate"
local C = f2.C

local seed = t.seed()
math.randomseed(seed)

-- max|a - b| / max|b| over two f32 CPU tensors of equal numel.
local function rel_err(a, b)
  a, b = a:contiguous(), b:contiguous()
  if a:numel() ~= b:numel() then return math.huge end
  local pa, pb = ffi.cast("const float *", a.h.data), ffi.cast("const float *", b.h.data)
  local num, den = 0, 0
  for i = 0, a:numel() - 1 do
    num = math.max(num, math.abs(pa[i] - pb[i]))
    den = math.max(den, math.abs(pb[i]))
  end
  return num / math.max(den, 1e-30)
end

local function random_ids(n, vocab)
  local ids = {}
  for i = 1, n do ids[i] = math.random(0, vocab - 1) end
  return ids
end

local function ids_tensor(rows) return f2.tensor(rows, { dtype = "i32" }) end

local function tiny(arch, over)
  local cfg = { model_type = arch, vocab_size = 67, hidden_size = 32, num_hidden_layers = 2, num_attention_heads = 4,
    num_key_value_heads = 2, intermediate_size = 48, tie_word_embeddings = arch == "qwen3", rms_norm_eps = 1e-5,
    max_position_embeddings = 256, rope_theta = 10000, head_dim = arch == "qwen3" and 8 or nil }
  for k, v in pairs(over or {}) do cfg[k] = v end
  local model = llama.build(config.from_json(cfg))
  llama.init_random(model, math.random(1, 1e6), { std = 0.2 })
  return model
end

-- The logits row of the last position of the full (training) forward over ids.
local function full_last(model, ids)
  local logits = model:forward(ids_tensor({ ids }))
  return logits:narrow(0, #ids - 1, 1):contiguous()
end

local function argmax_margin(row)
  local p, n = ffi.cast("const float *", row.h.data), row:numel()
  local best, second, id = -math.huge, -math.huge, 0
  for i = 0, n - 1 do
    if p[i] > best then best, second, id = p[i], best, i elseif p[i] > second then second = p[i] end
  end
  return id, best - second
end

-- ---------------------------------------------------------------- forward_step == forward
local function check_model(name, model)
  local V = model.desc.vocab_size
  local L = 14
  local ids = random_ids(L, V)
  -- The whole sequence at once, every position's logits.
  local cache = model:new_cache(1, 32)
  local all = model:forward_step(ids_tensor({ ids }), cache, { all = true })
  local ref = model:forward(ids_tensor({ ids }))
  local e = rel_err(all, ref)
  t.check(e < 1e-5, string.format("%s: forward_step(all) vs forward: %.3g", name, e))
  t.check(cache.n == L, name .. ": cache.n advances")
  -- A prefill, then one token at a time, then a short run: each last row equals the full forward's.
  cache:reset()
  local worst, pos = 0, 0
  local chunks = { 5, 1, 1, 1, 3, 1, 2 }
  for _, len in ipairs(chunks) do
    local chunk = {}
    for i = 1, len do chunk[i] = ids[pos + i] end
    local logits = model:forward_step(ids_tensor({ chunk }), cache)
    pos = pos + len
    local prefix = {}
    for i = 1, pos do prefix[i] = ids[i] end
    worst = math.max(worst, rel_err(logits, full_last(model, prefix)))
  end
  t.check(worst < 1e-5, string.format("%s: incremental decoding vs full forward: %.3g", name, worst))
  -- Batched: two sequences in one cache equal each on its own.
  local other = random_ids(L, V)
  local bc = model:new_cache(2, L)
  local both = model:forward_step(ids_tensor({ ids, other }), bc)
  local one = model:forward_step(ids_tensor({ other }), model:new_cache(1, L))
  t.check(rel_err(both:narrow(0, 1, 1), one) < 1e-5, name .. ": batch row 2 equals its own run")
  t.check(rel_err(both:narrow(0, 0, 1), full_last(model, ids)) < 1e-5, name .. ": batch row 1 equals the full forward")

  -- Greedy with the cache == greedy re-running the full forward each step (until a near tie, where
  -- rounding may rightly pick either).
  local prompt = random_ids(4, V)
  local cached = gen.generate(model, prompt, { max_tokens = 12 })
  local seq, agree, compared = { unpack(prompt) }, true, 0
  for i = 1, 12 do
    local id, margin = argmax_margin(full_last(model, seq))
    if margin < 1e-4 then break end
    compared = compared + 1
    if cached[i] ~= id then agree = false end
    seq[#seq + 1] = id
  end
  t.check(agree and #cached == 12, name .. ": greedy with the KV cache equals greedy with full forwards (" ..
    compared .. " tokens compared)")
end

check_model("llama GQA untied", tiny("llama", { attention_bias = true }))
check_model("qwen3 qk-norm tied", tiny("qwen3"))

do   -- Fairy2-converted: the cache holds R_hat, quantized once, as the training forward computes it
  local model = tiny("qwen3", { hidden_size = 32, intermediate_size = 64 })
  local report = fairy2.convert(model, { stages = 2, quiet = true })
  t.check(#report.converted == 14, "converted all 7 linears of 2 layers")
  check_model("qwen3 Fairy2 W2", model)
  -- A8 rounds activations per token, so GEMMs of other shapes (token by token) may flip a rounding;
  -- the whole sequence at once runs the same GEMMs as the training forward.
  local a8 = tiny("llama")
  fairy2.convert(a8, { stages = 1, a8 = true, quiet = true })
  local ids = ids_tensor({ random_ids(9, 67) })
  local got, want = a8:forward_step(ids, a8:new_cache(1, 9), { all = true }), a8:forward(ids)
  t.check(rel_err(got, want) < 1e-5, string.format("Fairy2 W1 A8: forward_step(all) vs forward: %.3g", rel_err(got, want)))
  for _, l in ipairs(fairy2.layers(a8)) do l.module.a8 = false end
  t.check(rel_err(a8:forward_step(ids, a8:new_cache(1, 9), { all = true }), want) > 1e-4, "A8 is applied")
  local cache = model:new_cache(1, 4)
  t.check(#cache.owned == 14, "the cache quantized each converted layer once")
  -- The snapshot: changing R afterwards does not change what this cache computes.
  local ids = ids_tensor({ random_ids(3, 67) })
  local before = model:forward_step(ids, cache)
  local r = model.model.layers["0"].mlp.up_proj.weight
  r:mul_(-1)
  cache:reset()
  t.check(rel_err(model:forward_step(ids, cache), before) == 0, "a cache keeps the weights it was made with")
  local fresh = model:forward_step(ids, model:new_cache(1, 4))
  t.check(rel_err(fresh, before) > 1e-3, "a new cache sees the changed weights")
  cache:free()
end

do   -- misuse
  local model = tiny("llama")
  local cache = model:new_cache(1, 4)
  model:forward_step(ids_tensor({ { 1, 2, 3 } }), cache)
  t.raises(function() model:forward_step(ids_tensor({ { 4, 5 } }), cache) end, "3 positions cached + 2 new exceed the cache's max_len 4")
  t.raises(function() model:forward_step(ids_tensor({ { 1 }, { 2 } }), cache) end, "ids have 2 rows, the cache 1")
  t.raises(function() model:forward_step(f2.tensor({ { 1 } }), cache) end, "ids must be an i32 tensor")
  t.raises(function() model:forward_step(ids_tensor({ { 1 } }), {}) end, "cache must come from model:new_cache")
  t.raises(function() model:new_cache(0, 4) end, "batch must be a positive integer")
  t.raises(function() gen.generate(model, {}) end, "non-empty list of ids")
end

-- ---------------------------------------------------------------- the sampler
local function logits_of(probs, shift)
  local l = {}
  for i, p in ipairs(probs) do l[i] = math.log(p) + (shift or 0) end
  return f2.tensor(l)
end

local function same_distribution(got, want, msg)
  local ok = #got == #want
  for i = 1, math.min(#got, #want) do
    ok = ok and got[i][1] == want[i][1] and math.abs(got[i][2] - want[i][2]) < 1e-6
  end
  if not ok then
    local parts = {}
    for _, g in ipairs(got) do parts[#parts + 1] = string.format("%d:%.6f", g[1], g[2]) end
    msg = msg .. " got {" .. table.concat(parts, ", ") .. "}"
  end
  return t.check(ok, msg)
end

do
  local l = logits_of({ 0.5, 0.25, 0.125, 0.125 }, math.random() * 10 - 5)
  same_distribution(sample.distribution(l, { temperature = 1 }),
    { { 0, 0.5 }, { 1, 0.25 }, { 2, 0.125 }, { 3, 0.125 } }, "temperature 1: the softmax, ties by id")
  same_distribution(sample.distribution(l, { temperature = 1, top_k = 2 }), { { 0, 2 / 3 }, { 1, 1 / 3 } }, "top-k 2")
  same_distribution(sample.distribution(l, { temperature = 1, top_p = 0.7 }), { { 0, 2 / 3 }, { 1, 1 / 3 } }, "top-p 0.7")
  same_distribution(sample.distribution(l, { temperature = 1, top_p = 0.49 }), { { 0, 1 } }, "top-p 0.49: one id")
  same_distribution(sample.distribution(l, { temperature = 1, top_p = 0.51 }), { { 0, 2 / 3 }, { 1, 1 / 3 } },
    "top-p 0.51: two ids")
  same_distribution(sample.distribution(l, { temperature = 1, top_p = 0.8 }),
    { { 0, 0.5 / 0.875 }, { 1, 0.25 / 0.875 }, { 2, 0.125 / 0.875 } }, "top-p 0.8")
  local z = 0.25 + 0.0625 + 2 * 0.015625
  same_distribution(sample.distribution(l, { temperature = 0.5 }),
    { { 0, 0.25 / z }, { 1, 0.0625 / z }, { 2, 0.015625 / z }, { 3, 0.015625 / z } }, "temperature 0.5 squares p")
  same_distribution(sample.distribution(l, { temperature = 1, top_k = 3, top_p = 0.6 }), { { 0, 2 / 3 }, { 1, 1 / 3 } },
    "top-k 3 then top-p 0.6 over the renormalized three")
  same_distribution(sample.distribution(l, { temperature = 0 }), { { 0, 1 } }, "temperature 0: greedy")

  -- Frequencies of 20000 draws (top-k 3) within 5 sigma of the distribution.
  local s = sample.new({ temperature = 1, top_k = 3, seed = math.random(0, 1e9) })
  local counts, N = { [0] = 0, 0, 0, 0 }, 20000
  for _ = 1, N do
    local id = s:next(l)
    counts[id] = counts[id] + 1
  end
  for id, p in pairs { [0] = 4 / 7, 2 / 7, 1 / 7, 0 } do
    local sigma = math.sqrt(N * p * (1 - p))
    t.check(math.abs(counts[id] - N * p) <= 5 * sigma + 1e-9,
      string.format("id %d drawn %d times of %d, expected %.0f", id, counts[id], N, N * p))
  end
end

do   -- a large vocabulary against brute force (the candidate margin has to widen for a flat top-p)
  local V = 5000
  local vals = {}
  for i = 1, V do vals[i] = (math.random() - 0.5) * (i % 3 == 0 and 12 or 2) end
  local l = f2.tensor(vals)
  local p = ffi.cast("const float *", l.h.data)
  local function brute(temp, k, top_p)
    local order = {}
    for i = 0, V - 1 do order[i + 1] = i end
    table.sort(order, function(a, b) if p[a] ~= p[b] then return p[a] > p[b] end return a < b end)
    local keep = k > 0 and k or V
    local w, total = {}, 0
    for i = 1, keep do
      w[i] = math.exp((p[order[i]] - p[order[1]]) / temp)
      total = total + w[i]
    end
    local cum, cut = 0, keep
    for i = 1, keep do
      cum = cum + w[i]
      if cum >= top_p * total then cut = i break end
    end
    local out = {}
    for i = 1, cut do out[i] = { order[i], w[i] / cum } end
    return out
  end
  for _, c in ipairs { { 1, 0, 0.9 }, { 3, 0, 0.95 }, { 0.7, 40, 1 }, { 2, 100, 0.5 }, { 0.3, 0, 0.99 } } do
    same_distribution(sample.distribution(l, { temperature = c[1], top_k = c[2], top_p = c[3] }), brute(c[1], c[2], c[3]),
      string.format("V=%d temperature %g top-k %d top-p %g vs brute force", V, c[1], c[2], c[3]))
  end
  -- Determinism by seed; another seed, another sequence; top-k 1 is greedy.
  local function draws(opts, n)
    local s, out = sample.new(opts), {}
    for i = 1, n do out[i] = s:next(l) end
    return table.concat(out, ",")
  end
  local sd = math.random(0, 1e9)
  for _, o in ipairs { { temperature = 1.5 }, { temperature = 1, top_p = 0.9 }, { temperature = 2, top_k = 50 } } do
    o.seed = sd
    local a, b = draws(o, 40), draws(o, 40)
    o.seed = sd + 1
    t.check(a == b and a ~= draws(o, 40), "one seed, one sequence; another seed, another")
  end
  t.check(draws({ temperature = 0.8, top_k = 1, seed = sd }, 3) == draws({}, 3), "top-k 1 == greedy")
  t.check(sample.greedy(l) == brute(1, 1, 1)[1][1], "greedy is the argmax")
  -- The draws are f2_rng_uniform's: f2_rand_uniform into i64 with [0, 2^53) gives the raw 53 bits.
  local bits = f2.empty({ 64 }, { dtype = "i64" })
  C.f2_rand_uniform(bits.h, sd, 0, 2 ^ 53)
  local bp, ok = ffi.cast("const int64_t *", bits.h.data), true
  for i = 0, 63 do ok = ok and sample.uniform(sd, i) * 2 ^ 53 == tonumber(bp[i]) end
  t.check(ok, "sample.uniform(seed, i) is f2_rand_uniform's element i")
  t.raises(function() sample.new({ temperature = -1 }) end, "temperature must be a number >= 0")
  t.raises(function() sample.new({ top_p = 0 }) end, "top_p must be in (0, 1]")
  t.raises(function() sample.new({ top_k = 1.5 }) end, "top_k must be an integer")
  t.raises(function() sample.greedy(f2.tensor({ { 1, 2 }, { 3, 4 } })) end, "one contiguous f32 CPU row")
end

-- ---------------------------------------------------------------- UTF-8 streaming
do
  local cases = { { "abc", 3 }, { "a\xC3", 1 }, { "a\xC3\xA9", 3 }, { "\xE2\x82", 0 }, { "\xE2\x82\xAC", 3 },
    { "x\xF0\x9F\x98", 1 }, { "\xF0\x9F\x98\x80", 4 }, { "\x80", 1 }, { "", 0 }, { "\xFF", 1 } }
  for _, c in ipairs(cases) do
    t.check(gen.utf8_complete(c[1]) == c[2], string.format("utf8_complete(%q) = %d, want %d", c[1],
      gen.utf8_complete(c[1]), c[2]))
  end
  -- Random text cut at random bytes and streamed piece by piece prints whole characters only, and
  -- all of it in the end.
  local chars = { "a", " ", "é", "€", "😀", "日", "\n" }
  local parts = {}
  for i = 1, 200 do parts[i] = chars[math.random(#chars)] end
  local text = table.concat(parts)
  local boundary, at = { [0] = true }, 0
  for _, c in ipairs(parts) do
    at = at + #c
    boundary[at] = true
  end
  local printed, pending, whole, done = {}, "", true, 0
  local i = 1
  while i <= #text do
    local j = math.min(#text, i + math.random(0, 4))
    pending = pending .. text:sub(i, j)
    local n = gen.utf8_complete(pending)
    printed[#printed + 1] = pending:sub(1, n)
    done = done + n
    whole = whole and boundary[done] == true
    pending = pending:sub(n + 1)
    i = j + 1
  end
  t.check(whole, "streamed pieces end on whole characters")
  t.check(table.concat(printed) .. pending == text and pending == "", "streaming prints the whole text")
end

-- ---------------------------------------------------------------- the CLI on a tiny HF directory
local tmp = os.tmpname()
os.remove(tmp)
os.execute("mkdir -p '" .. tmp .. "'")
local bin = os.getenv("F2_BIN") or "build/fairy2"

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end
local function read(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end
-- Runs the fairy2 binary with args (a shell-quoted string): exit status, stdout, stderr.
local function run(args)
  local out, err = tmp .. "/stdout", tmp .. "/stderr"
  local a, b, c = os.execute(string.format("'%s' %s >'%s' 2>'%s'", bin, args, out, err))
  local code = type(a) == "number" and (a > 255 and a / 256 or a) or (b == "exit" and c) or -1
  return code, read(out), read(err)
end

do
  -- GPT-2's byte map; 256 byte tokens, a few merges, then ChatML's special tokens.
  local function utf8_char(cp)
    if cp < 0x80 then return string.char(cp) end
    return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64)
  end
  local byte_char, k = {}, 0
  for b = 0, 255 do
    if (b >= 33 and b <= 126) or (b >= 161 and b <= 172) or (b >= 174 and b <= 255) then byte_char[b] = utf8_char(b)
    else byte_char[b] = utf8_char(256 + k); k = k + 1 end
  end
  local vocab, merges, next_id = {}, {}, 256
  for b = 0, 255 do vocab[byte_char[b]] = b end
  for _, m in ipairs { { "t", "h" }, { "th", "e" }, { byte_char[32], "the" }, { "c", "a" }, { "ca", "t" } } do
    merges[#merges + 1] = m[1] .. " " .. m[2]
    vocab[m[1] .. m[2]] = next_id
    next_id = next_id + 1
  end
  local added = {}
  for i, s in ipairs { "<|endoftext|>", "<|im_start|>", "<|im_end|>" } do
    added[i] = { id = next_id + i - 1, content = s, special = true, normalized = false }
  end
  local V = next_id + 3
  write(tmp .. "/tokenizer.json", cjson.encode {
    version = "1.0", added_tokens = added, normalizer = cjson.null, post_processor = cjson.null,
    pre_tokenizer = { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = true },
    decoder = { type = "ByteLevel", add_prefix_space = true, trim_offsets = true, use_regex = true },
    model = { type = "BPE", vocab = vocab, merges = merges },
  })
  write(tmp .. "/tokenizer_config.json", cjson.encode { eos_token = "<|im_end|>", bos_token = "<|im_start|>" })
  local cfg = { model_type = "llama", architectures = { "LlamaForCausalLM" }, vocab_size = V, hidden_size = 32,
    num_hidden_layers = 2, num_attention_heads = 4, num_key_value_heads = 2, intermediate_size = 48,
    tie_word_embeddings = true, rms_norm_eps = 1e-5, max_position_embeddings = 256, eos_token_id = next_id + 2,
    bos_token_id = next_id + 1 }
  write(tmp .. "/config.json", cjson.encode(cfg))
  local model = llama.build(config.from_json(cfg))
  llama.init_random(model, math.random(1, 1e6), { std = 0.3 })
  local entries = {}
  for _, p in ipairs(model:named_parameters()) do entries[#entries + 1] = { p.name, p.value } end
  assert(safetensors.save(tmp .. "/model.safetensors", entries))

  -- The tool's greedy text equals the in-process greedy generation, decoded.
  local tokenizer = require "fairy2.tokenizer"
  local tok = tokenizer.from_json(tmp .. "/tokenizer.json")
  local prompt = "the cat"
  local ids = gen.generate(model, tok:encode(prompt), { max_tokens = 9, stop = gen.stop_ids(tok, model.desc) })
  local code, out, err = run("generate --model '" .. tmp .. "' --prompt '" .. prompt .. "' --max-tokens 9")
  t.check(code == 0, "generate exits 0: " .. err)
  t.check(out == tok:decode(ids, { skip_special = true }) .. "\n", "the tool prints the greedy text: " .. cjson.encode(out))
  t.check(err:find("tokens/s", 1, true) ~= nil, "tokens/s on stderr")

  -- Chat, sampling, PTQ: runs, and one seed gives one text.
  local args = "generate --model '" .. tmp .. "' --prompt hi --chat --system 'be brief' --temperature 1.2 --top-p 0.95 " ..
    "--top-k 20 --max-tokens 12 --quant-stages 2 --seed " .. math.random(0, 1e6)
  local c1, o1, e1 = run(args)
  local c2, o2 = run(args)
  t.check(c1 == 0 and c2 == 0 and o1 == o2, "sampled chat with PTQ: one seed, one text: " .. e1)
  t.check(e1:find("fairy2 convert: T=2", 1, true) ~= nil, "the conversion report goes to stderr")

  local cb, _, eb = run("generate --model '" .. tmp .. "' --prompt x --top-p 2")
  t.check(cb == 1 and eb:find("top_p must be in (0, 1]", 1, true), "bad top-p: " .. eb)
  cb, _, eb = run("generate --prompt x")
  t.check(cb == 2 and eb:find("--model is required", 1, true), "missing --model: " .. eb)
  cb, _, eb = run("generate --model '" .. tmp .. "/nope' --prompt x")
  t.check(cb == 1 and eb:find("no config.json", 1, true), "missing model: " .. eb)
  cb, _, eb = run("generate --model '" .. tmp .. "' --prompt x --device cuda")
  t.check(cb == 1 and eb:find("--device cuda", 1, true), "--device cuda says why it cannot: " .. eb)
end

-- ---------------------------------------------------------------- the real SmolLM2, when present
local GGUF = "models/smollm2-135m-instruct.gguf"
if io.open(GGUF, "rb") then
  local code, out, err = run("generate --model gguf:" .. GGUF .. " --chat --prompt 'What is the capital of France?' --max-tokens 16")
  t.check(code == 0 and out:find("Paris", 1, true) ~= nil, "SmolLM2 knows the capital of France: " .. out .. err)
else
  print("skipped the real-model check: " .. GGUF .. " is absent (scripts/get_smollm2.sh fetches it)")
end

os.execute("rm -rf '" .. tmp .. "'")
t.done()
