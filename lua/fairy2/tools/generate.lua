-- tools/generate.lua — `fairy2 generate`: text from a causal LM with a KV cache, streamed to stdout
-- as it is decoded, with prompt and generation tokens/s on stderr. M.generate(model, ids, opts) is
-- the loop itself, for scripts and tests.
local f2 = require "fairy2"
local toolargs = require "fairy2.toolargs"
local clock = require "fairy2.clock"
local sample = require "fairy2.sample"

local M = {}

M.usage = [[
usage: fairy2 generate --model SRC --prompt TEXT [options]

--model SRC          gguf:PATH (or a .gguf path), or an HF directory (config.json,
                     model.safetensors, tokenizer.json)
--prompt TEXT        the prompt ("-": read it from stdin)
--chat               wrap the prompt in the chat template (ChatML) as a user message, and
                     answer as the assistant
--system TEXT        the system message with --chat (default: the template's own)
--bos                put the BOS token before a plain (non-chat) prompt
--max-tokens N       generate at most N tokens (default 256)
--temperature T      0 (default): greedy; > 0: sample from softmax(logits / T)
--top-k K            sample from the K most probable tokens only (0: all, the default)
--top-p P            sample from the smallest set of tokens holding probability P (default 1: all)
--seed S             the sampling seed (default 0); one seed, one text
--quant-stages T     Fairy2i post-training quantization with T stages first (1: W1, 2: W2)
--granularity G      its scales: tensor (default, the authors'), row, or group
--group-size N       complex input columns per scale group, with --granularity group
--device cpu|cuda    where the model runs (default cpu)
Generation stops at the EOS token, <|im_end|> or <|endoftext|>, or after --max-tokens.]]

local function parse(args)
  local o = { max_tokens = 256, temperature = 0, top_k = 0, top_p = 1, seed = 0, device = "cpu" }
  local i = 1
  local function value(flag)
    i = i + 1
    if args[i] == nil then error({ usage = flag .. " needs a value" }) end
    return args[i]
  end
  local function number(flag)
    local v = tonumber(value(flag))
    if v == nil then error({ usage = flag .. " needs a number, got '" .. args[i] .. "'" }) end
    return v
  end
  while i <= #args do
    local a = args[i]
    if a == "--help" or a == "-h" then o.help = true
    elseif a == "--model" then o.model = value(a)
    elseif a == "--prompt" then o.prompt = value(a)
    elseif a == "--chat" then o.chat = true
    elseif a == "--system" then o.system = value(a)
    elseif a == "--bos" then o.bos = true
    elseif a == "--max-tokens" then o.max_tokens = number(a)
    elseif a == "--temperature" then o.temperature = number(a)
    elseif a == "--top-k" then o.top_k = number(a)
    elseif a == "--top-p" then o.top_p = number(a)
    elseif a == "--seed" then o.seed = number(a)
    elseif a == "--quant-stages" then o.quant_stages = number(a)
    elseif a == "--device" then o.device = value(a)
    elseif a == "--granularity" then o.granularity = value(a)
    elseif a == "--group-size" then o.group_size = number(a)
    else error({ usage = "unknown argument " .. a }) end
    i = i + 1
  end
  if o.help then return o end
  if not o.model then error({ usage = "--model is required" }) end
  if not o.prompt then error({ usage = "--prompt is required" }) end
  if o.max_tokens < 1 or o.max_tokens % 1 ~= 0 then error({ usage = "--max-tokens must be a positive integer" }) end
  if o.quant_stages and (o.quant_stages < 1 or o.quant_stages % 1 ~= 0) then
    error({ usage = "--quant-stages must be an integer >= 1" })
  end
  if o.device ~= "cpu" and o.device ~= "cuda" then error({ usage = "--device must be cpu or cuda" }) end
  if o.system and not o.chat then error({ usage = "--system needs --chat" }) end
  return o
end

-- The length of the longest prefix of s that does not end inside a UTF-8 sequence: what can be
-- printed now; the rest waits for the next token's bytes. Invalid bytes count as complete.
function M.utf8_complete(s)
  local n = #s
  for back = 1, math.min(3, n) do
    local b = s:byte(n - back + 1)
    if b < 0x80 then return n end                 -- ASCII: complete
    if b >= 0xC0 then                             -- a lead byte: how long is its sequence?
      local len = b >= 0xF0 and 4 or b >= 0xE0 and 3 or 2
      if b >= 0xF8 then return n end              -- not a lead byte of valid UTF-8
      return back < len and n - back or n
    end
  end
  return n                                        -- only continuation bytes: nothing to wait for
end

-- The ids that end a generation: the tokenizer's EOS, the model config's EOS ids, and ChatML's and
-- GPT-style end markers when the vocabulary has them.
function M.stop_ids(tok, desc)
  local stop = {}
  if tok.eos_id then stop[tok.eos_id] = true end
  if desc then
    if desc.eos_id then stop[desc.eos_id] = true end
    for _, id in ipairs(desc.eos_ids or {}) do stop[id] = true end
  end
  for _, s in ipairs { "<|im_end|>", "<|endoftext|>" } do
    local id = tok:token_to_id(s)
    if id then stop[id] = true end
  end
  return stop
end

-- Generates from prompt ids (a Lua list) with model's KV cache. opts: max_tokens (256), sampler
-- (sample.new(...); default greedy), stop = {[id] = true}, on_token = function(id) called as each
-- token comes, cache (a model:new_cache(1, n) to use; default a new one of prompt + max_tokens).
-- Returns the generated ids (the stop id left out) and { prompt_tokens, prompt_seconds,
-- decode_steps, decode_seconds, stopped = "stop" | "length" }.
function M.generate(model, prompt, opts)
  opts = opts or {}
  if type(prompt) ~= "table" or #prompt == 0 then error("generate: the prompt must be a non-empty list of ids", 2) end
  local max_tokens = opts.max_tokens or 256
  local sampler = opts.sampler or sample.new()
  local stop = opts.stop or {}
  local cache = opts.cache or model:new_cache(1, #prompt + max_tokens)
  local out, info = {}, { prompt_tokens = #prompt, decode_steps = 0, decode_seconds = 0, stopped = "length" }
  local t0 = clock.now()
  -- The sampler reads logits on the CPU (a model on a GPU hands back one row per step: [1, V]).
  local function step(x)
    local l = model:forward_step(x, cache)
    if l:device() == "cpu" then return l end
    local host = l:to("cpu")
    l:free()
    return host
  end
  local ids = f2.tensor({ prompt }, { dtype = "i32" })
  local logits = step(ids)
  info.prompt_seconds = clock.now() - t0
  local one = f2.empty({ 1, 1 }, { dtype = "i32" })
  while true do
    local id = sampler:next(logits)
    logits:free()
    if stop[id] then
      info.stopped = "stop"
      break
    end
    out[#out + 1] = id
    if opts.on_token then opts.on_token(id) end
    if #out >= max_tokens then break end
    t0 = clock.now()
    one:fill(id)
    logits = step(one)
    info.decode_seconds = info.decode_seconds + clock.now() - t0
    info.decode_steps = info.decode_steps + 1
  end
  if not opts.cache then cache:free() end
  return out, info
end

-- The tokenizer of a resolved model source (hub.resolve's tokenizer_source), or nil, err.
function M.load_tokenizer(src)
  local tokenizer = require "fairy2.tokenizer"
  local ts = src.tokenizer_source
  if not ts then return nil, "the model source has no tokenizer (tokenizer.json)" end
  local ok, tok = pcall(function()
    if ts.kind == "gguf" then return tokenizer.from_gguf(require("fairy2.gguf").tokenizer_data(ts.gguf)) end
    return tokenizer.from_json(ts.path)
  end)
  if not ok then return nil, tostring(tok) end
  return tok
end

local function fail(msg)
  io.stderr:write("fairy2 generate: ", msg, "\n")
  return 1
end

function M.main(args)
  local o, status = toolargs.parse("generate", M.usage, parse, args)
  if not o then return status end
  local problem = toolargs.device_problem(o.device)
  if problem then return fail(problem) end
  local okc, sampler = pcall(sample.new, { temperature = o.temperature, top_k = o.top_k, top_p = o.top_p, seed = o.seed })
  if not okc then return fail(tostring(sampler):gsub("^.-sample%.new: ", "")) end
  if o.prompt == "-" then o.prompt = io.stdin:read("*a") end

  local llama = require "fairy2.models.llama"
  local t0 = clock.now()
  local model, src = llama.load(o.model, { device = o.device })
  if not model then return fail(src) end
  local tok, terr = M.load_tokenizer(src)
  if not tok then return fail(terr) end
  if o.quant_stages then
    local fairy2 = require "fairy2.fairy2"
    local okc, report = pcall(fairy2.convert, model, { stages = o.quant_stages, granularity = o.granularity,
      group_size = o.group_size, quiet = true })
    if not okc then return fail(tostring(report):gsub("^.-fairy2%.convert: ", "")) end
    io.stderr:write(fairy2.format_report(report), "\n")
  end
  local ids
  if o.chat then
    ids = tok:apply_chat_template({ { role = "user", content = o.prompt } },
      { add_generation_prompt = true, system = o.system, tokenize = true })
  else
    ids = tok:encode(o.prompt, { add_bos = o.bos })
    if #ids == 0 then return fail("the prompt encodes to no tokens") end
  end
  local max_len = src.config.max_position
  if max_len and #ids + o.max_tokens > max_len then
    o.max_tokens = max_len - #ids
    if o.max_tokens < 1 then return fail(string.format("the prompt has %d tokens; the model takes %d", #ids, max_len)) end
  end
  io.stderr:write(string.format("fairy2 generate: %s loaded in %.1f s; prompt %d tokens\n", o.model, clock.now() - t0, #ids))

  local pending = ""
  local function on_token(id)
    pending = pending .. tok:decode({ id }, { skip_special = true })
    local n = M.utf8_complete(pending)
    if n > 0 then
      io.stdout:write(pending:sub(1, n))
      io.stdout:flush()
      pending = pending:sub(n + 1)
    end
  end
  local out, info = M.generate(model, ids, { max_tokens = o.max_tokens, sampler = sampler,
    stop = M.stop_ids(tok, src.config), on_token = on_token })
  io.stdout:write(pending, "\n")
  io.stdout:flush()
  io.stderr:write(string.format(
    "fairy2 generate: prompt %d tokens in %.2f s (%.1f tokens/s); generated %d tokens, %d decode steps in %.2f s " ..
    "(%.2f tokens/s); stopped at %s\n", info.prompt_tokens, info.prompt_seconds,
    info.prompt_tokens / math.max(info.prompt_seconds, 1e-9), #out, info.decode_steps, info.decode_seconds,
    info.decode_steps / math.max(info.decode_seconds, 1e-9), info.stopped == "stop" and "the end token" or "--max-tokens"))
  return 0
end

return M
