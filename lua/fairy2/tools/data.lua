-- tools/data.lua — `fairy2 data`: assemble the real-text corpus from Debian packages (or from your
-- own text files), split it into train and held-out documents, tokenize it into shards, show stats.
-- docs/data.md describes the corpus, the split rule, the shard format and the loader.
local ffi = require "ffi"
local cjson = require "cjson"
local f2 = require "fairy2"
local data = require "fairy2.data"
local C = f2.C

local M = {}

M.usage = [[
usage: fairy2 data corpus --out DIR [--install] [--sources a,b,...] [--from PATH[=NAME] ...]
                          [--holdout-fraction 0.01] [--holdout-source NAME] [--work DIR]
       fairy2 data tokenize --tokenizer TOKENIZER --in CORPUS --out DIR [--threads N] [--token-bytes 2|4]
                            [--eos TOKEN]
       fairy2 data stats DIR [--verify]

corpus     documents as JSONL ({"text", "source", "path"}) per source, split into DIR/train and
           DIR/eval by a hash of each document's path (about --holdout-fraction of them held out;
           --holdout-source also holds out a whole source), with DIR/manifest.json (counts,
           package versions). Sources: the Debian packages below (--install installs missing
           ones with apt-get), or --from PATH[=NAME]: a directory or file of text (one document
           per file) and JSONL (one document per line, field "text").
tokenize   every source and split of a corpus into DIR/<split>/<source>.bin token shards (threads:
           all cores by default), with DIR/manifest.json (counts, hashes, tokenizer id).
           TOKENIZER: a tokenizer.json (or a directory holding one), or gguf:FILE.gguf; documents
           end with <|endoftext|> when the tokenizer has it, else its EOS token, or --eos TOKEN
stats      the shards of a token directory; --verify re-reads every token against its hash

Debian sources: ]]

-- ---------------------------------------------------------------- small helpers

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local function run(cmd)
  local ok = os.execute(cmd)
  return ok == 0 or ok == true
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function command_output(cmd)
  local p = io.popen(cmd, "r")
  local s = p:read("*a")
  p:close()
  return s
end

-- Regular files under dir (recursively, following a symlinked dir itself), byte-sorted, as paths
-- relative to dir; filter(rel) decides which to keep.
local function list_files(dir, filter)
  local out = {}
  local p = io.popen("cd " .. shell_quote(dir) .. " 2>/dev/null && find -L . -type f 2>/dev/null | LC_ALL=C sort", "r")
  for line in p:lines() do
    local rel = line:gsub("^%./", "")
    if not filter or filter(rel) then out[#out + 1] = rel end
  end
  p:close()
  return out
end

local function exists(path) return os.rename(path, path) ~= nil end

local function mkdir_p(path)
  if not run("mkdir -p " .. shell_quote(path)) then error("cannot create directory " .. path, 0) end
end

local function package_version(pkg)
  local v = command_output("dpkg-query -W -f='${Status}|${Version}' " .. shell_quote(pkg) .. " 2>/dev/null")
  return v:match("^install ok installed|(.+)$")
end

local function mb(bytes) return string.format("%.1f MB", bytes / 1e6) end

-- ---------------------------------------------------------------- extracting documents
-- An extractor calls emit(path, text) once per document, in a fixed order; path names the
-- document for the split (the source name is put in front of it).

-- Groups of consecutive small entries, emitted once at least min_bytes have gathered, so that a
-- dictionary makes documents of a few KB instead of one per headword. Each group is named by its
-- first entry.
local function grouper(emit, min_bytes)
  local parts, size, name = {}, 0, nil
  local seen = {}
  local function flush()
    if #parts == 0 then return end
    local key = name
    seen[name] = (seen[name] or 0) + 1
    if seen[name] > 1 then key = name .. "#" .. seen[name] end
    emit(key, table.concat(parts, "\n\n"))
    parts, size, name = {}, 0, nil
  end
  return function(entry_name, text)
    if #text == 0 then return end
    name = name or entry_name
    parts[#parts + 1] = text
    size = size + #text
    if size >= min_bytes then flush() end
  end, flush
end

-- dictd databases (dict-gcide, dict-wn): the .index gives each headword's offset and length
-- (base64 numbers) in the gzip'd .dict.dz; entries are taken in file order, metadata skipped.
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64_VALUE = {}
for i = 1, 64 do B64_VALUE[B64:byte(i)] = i - 1 end
local function b64_number(s)
  local v = 0
  for i = 1, #s do
    local d = B64_VALUE[s:byte(i)]
    if not d then error("dictd index: bad base64 number '" .. s .. "'", 0) end
    v = v * 64 + d
  end
  return v
end

local function dictd(base)
  return function(emit)
    local index = read_file(base .. ".index")
    if not index then error("cannot read " .. base .. ".index", 0) end
    local text = command_output("gzip -dc " .. shell_quote(base .. ".dict.dz"))
    if #text == 0 then error("cannot decompress " .. base .. ".dict.dz", 0) end
    local entries = {}
    for word, off, len in index:gmatch("([^\t\n]*)\t([^\t\n]+)\t([^\t\n]+)\n") do
      if not word:match("^00%-?database") then
        entries[#entries + 1] = { word = word, off = b64_number(off), len = b64_number(len) }
      end
    end
    table.sort(entries, function(a, b) return a.off < b.off or (a.off == b.off and a.word < b.word) end)
    local add, flush = grouper(emit, 4096)
    local covered = 0   -- several headwords may share one entry: take each byte range once
    for _, e in ipairs(entries) do
      if e.off >= covered then
        add(e.word, (text:sub(e.off + 1, e.off + e.len):gsub("%s+$", "")))
        covered = e.off + e.len
      end
    end
    flush()
  end
end

-- The King James Bible through bible-kjv's decoder: one document per chapter.
local function bible(emit)
  local p = io.popen("bible -l 100000 gen1:1-rev22:21 2>/dev/null", "r")
  local title, verses = nil, {}
  local function flush()
    if title and #verses > 0 then emit(title, title .. "\n\n" .. table.concat(verses, "\n")) end
    verses = {}
  end
  for line in p:lines() do
    if line:match("^%S") then
      flush()
      title = line:gsub("%s+$", "")
    elseif line:match("^%s+%d") then
      verses[#verses + 1] = line:gsub("^%s+", ""):gsub("%s+$", "")
    end
  end
  p:close()
  flush()
  if not title then error("the bible decoder (package bible-kjv) printed nothing", 0) end
end

-- The Jargon File: the front matter, then entries (":word: ...") grouped into documents.
local function jargon(emit)
  local text = command_output("gzip -dc /usr/share/doc/jargon-text/jargon.txt.gz")
  if #text == 0 then error("cannot read /usr/share/doc/jargon-text/jargon.txt.gz", 0) end
  local add, flush = grouper(emit, 4096)
  local name, lines = "front matter", {}
  local function finish()
    local body = table.concat(lines, "\n"):gsub("^%s+", ""):gsub("%s+$", "")
    add(name, body)
    lines = {}
  end
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    local word = line:match("^   :(.-):")
    if word then
      finish()
      name = word
    end
    lines[#lines + 1] = (line:gsub("^   ", ""))
  end
  finish()
  flush()
end

-- Every file of a directory tree as one document (gzip'd files decompressed), read in one
-- stream: a shell loop prints a marker line before each file.
local MARK = "\1F2FILE\2 "   -- no pattern magic characters: it goes into string.find patterns
local function file_tree(dir, filter, strip)
  return function(emit)
    if not exists(dir) then error("no directory " .. dir, 0) end
    local files = list_files(dir, filter)
    if #files == 0 then error("no matching files under " .. dir, 0) end
    local list = os.tmpname()
    local f = io.open(list, "wb")
    f:write(table.concat(files, "\n"), "\n")
    f:close()
    local p = io.popen("cd " .. shell_quote(dir) .. " && while IFS= read -r f; do printf '" .. MARK:gsub("\1", "\\001"):gsub("\2", "\\002") ..
      "%s\\n' \"$f\"; case \"$f\" in *.gz) gzip -dc \"$f\";; *) cat \"$f\";; esac; done < " .. shell_quote(list), "r")
    local stream = p:read("*a")
    p:close()
    os.remove(list)
    local pos = 1
    while true do
      local a, b, name = stream:find(MARK .. "([^\n]*)\n", pos, false)
      if not a then break end
      local nxt = stream:find(MARK, b + 1, true)
      local body = stream:sub(b + 1, (nxt or #stream + 1) - 1)
      if not body:find("\0", 1, true) then emit(strip and strip(name) or name, body) end   -- binary files are no text
      pos = nxt or #stream + 1
    end
  end
end

local function first_existing(candidates)
  for _, c in ipairs(candidates) do
    if exists(c) then return c end
  end
  return candidates[1]
end

local function linux_doc_dir()
  local dirs = command_output("ls -d /usr/share/doc/linux-doc-*/Documentation 2>/dev/null | sort -V | tail -1")
  return (dirs:gsub("%s+$", ""))
end

local LINUX_DIRS = { "kernel", "mm", "fs", "net", "lib", "include", "block", "crypto", "security", "ipc", "init",
  "arch/x86" }

-- The kernel tarball's listed directories (never drivers/): C, headers, assembly, Kconfig, Makefiles.
local function linux_source(work)
  return function(emit)
    local tarball = command_output("ls /usr/src/linux-source-*.tar.xz 2>/dev/null | sort -V | tail -1"):gsub("%s+$", "")
    if tarball == "" then error("no /usr/src/linux-source-*.tar.xz (package linux-source-6.1)", 0) end
    local top = tarball:match("([^/]+)%.tar%.xz$")
    local dir = work .. "/linux"
    run("rm -rf " .. shell_quote(dir))
    mkdir_p(dir)
    local members = {}
    for _, d in ipairs(LINUX_DIRS) do members[#members + 1] = shell_quote(top .. "/" .. d) end
    io.stderr:write("  extracting ", tarball, " (", #LINUX_DIRS, " directories) ...\n")
    if not run("tar -xJf " .. shell_quote(tarball) .. " -C " .. shell_quote(dir) .. " " .. table.concat(members, " ")) then
      error("cannot extract " .. tarball, 0)
    end
    local keep = function(rel)
      local base = rel:match("[^/]+$")
      return base:match("%.[chS]$") or base == "Kconfig" or base == "Makefile"
    end
    file_tree(dir .. "/" .. top, keep, function(rel) return top .. "/" .. rel end)(emit)
    run("rm -rf " .. shell_quote(dir))
  end
end

-- The Debian sources, in a fixed order. packages: what --install installs and the manifest records.
local function debian_sources(work)
  return {
    { name = "gcide", packages = { "dict-gcide" }, extract = dictd("/usr/share/dictd/gcide") },
    { name = "wordnet", packages = { "dict-wn" }, extract = dictd("/usr/share/dictd/wn") },
    { name = "bible-kjv", packages = { "bible-kjv-text", "bible-kjv" }, extract = bible },
    { name = "jargon", packages = { "jargon-text" }, extract = jargon },
    { name = "python-doc", packages = { "python3-doc", "python3.11-doc" },
      extract = function(emit)
        local dir = first_existing { "/usr/share/doc/python3/html/_sources", "/usr/share/doc/python3.11/html/_sources" }
        file_tree(dir, function(rel) return rel:match("%.rst%.txt$") end)(emit)
      end },
    { name = "linux-doc", packages = { "linux-doc" },
      extract = function(emit)   -- English only: translations/ left out, and devicetree's binding notes
        local dir = linux_doc_dir()
        if dir == "" then error("no /usr/share/doc/linux-doc-*/Documentation (package linux-doc)", 0) end
        file_tree(dir, function(rel)
          if rel:match("^translations/") then return false end
          return rel:match("%.rst%.gz$") or (rel:match("%.txt%.gz$") and not rel:match("^devicetree/"))
        end)(emit)
      end },
    { name = "linux-source", packages = { "linux-source-6.1" }, extract = linux_source(work) },
  }
end

-- --from PATH[=NAME]: text files are one document each, JSONL files one per line ("text" field;
-- the document's path is FILE:LINE).
local function from_path(path)
  return function(emit)
    local function one(file, rel)
      if file:match("%.jsonl$") then
        local n = 0
        for line in io.lines(file) do
          n = n + 1
          if line:match("%S") then
            local ok, doc = pcall(cjson.decode, line)
            if not ok or type(doc) ~= "table" or type(doc.text) ~= "string" then
              error(file .. ":" .. n .. ": not a JSON object with a string field \"text\"", 0)
            end
            emit(rel .. ":" .. n, doc.text)
          end
        end
      else
        local text = read_file(file)
        if not text then error("cannot read " .. file, 0) end
        emit(rel, text)
      end
    end
    local files = list_files(path)
    if #files > 0 then
      for _, rel in ipairs(files) do one(path .. "/" .. rel, rel) end
    elseif exists(path) then
      one(path, path:match("[^/]+$"))
    else
      error("--from: no such file or directory: " .. path, 0)
    end
  end
end

-- ---------------------------------------------------------------- corpus

local function parse_args(args, spec)
  local opts, positional = {}, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    local key = a:match("^%-%-([%w%-]+)$")
    if key then
      local kind = spec[key]
      if not kind then return nil, "unknown option --" .. key end
      if kind == "flag" then
        opts[key] = true
      else
        local v = args[i + 1]
        if v == nil then return nil, "--" .. key .. " needs a value" end
        if kind == "list" then
          opts[key] = opts[key] or {}
          table.insert(opts[key], v)
        elseif kind == "number" then
          opts[key] = tonumber(v)
          if not opts[key] then return nil, "--" .. key .. " needs a number, got '" .. v .. "'" end
        else
          opts[key] = v
        end
        i = i + 1
      end
    else
      positional[#positional + 1] = a
    end
    i = i + 1
  end
  return opts, positional
end

-- Writes one source's documents into train/ and eval/ JSONL files; returns its manifest entry.
local function write_source(out, src, fraction, hold_all)
  local files, counts = {}, {}
  for _, split in ipairs { "train", "eval" } do
    local rel = split .. "/" .. src.name .. ".jsonl"
    files[split] = assert(io.open(out .. "/" .. rel .. ".tmp", "wb"))
    counts[split] = { file = rel, documents = 0, bytes = 0 }
  end
  local seen = {}
  local function emit(path, text)
    path = src.name .. "/" .. path
    if seen[path] then error(src.name .. ": two documents named '" .. path .. "'", 0) end
    seen[path] = true
    if #text == 0 then return end
    local split = (hold_all or data.held_out(path, fraction)) and "eval" or "train"
    files[split]:write('{"source":', data.json_string(src.name), ',"path":', data.json_string(path), ',"text":',
      data.json_string(text), "}\n")
    counts[split].documents = counts[split].documents + 1
    counts[split].bytes = counts[split].bytes + #text
  end
  local ok, err = pcall(src.extract, emit)
  for split, f in pairs(files) do
    f:close()
    if ok then os.rename(out .. "/" .. counts[split].file .. ".tmp", out .. "/" .. counts[split].file)
    else os.remove(out .. "/" .. counts[split].file .. ".tmp") end
  end
  if not ok then error(src.name .. ": " .. tostring(err), 0) end
  local versions = {}
  for _, p in ipairs(src.packages or {}) do versions[p] = package_version(p) or "not installed" end
  return { name = src.name, packages = next(versions) and versions or nil, from = src.from, train = counts.train,
    eval = counts.eval, held_out = hold_all or nil }
end

local function corpus(args)
  local opts, pos = parse_args(args, { out = "string", install = "flag", sources = "string", from = "list",
    ["holdout-fraction"] = "number", ["holdout-source"] = "string", work = "string" })
  if not opts then return nil, pos end
  if not opts.out or #pos > 0 then return nil, "corpus needs --out DIR (and no other arguments)" end
  local fraction = opts["holdout-fraction"] or 0.01
  if fraction < 0 or fraction >= 1 then return nil, "--holdout-fraction must be in [0, 1)" end
  local out = opts.out
  local work = opts.work or (out .. "/.work")

  local sources = {}
  if opts.from then
    for _, spec in ipairs(opts.from) do
      local path, name = spec:match("^(.-)=([%w_%-%.]+)$")
      path = path or spec
      name = name or path:gsub("/+$", ""):match("[^/]+$"):gsub("%.[^.]*$", "")
      sources[#sources + 1] = { name = name, from = path, extract = from_path(path) }
    end
  end
  if not opts.from or opts.sources then
    local all, wanted = debian_sources(work), nil
    if opts.sources then
      wanted = {}
      for n in opts.sources:gmatch("[^,]+") do wanted[n] = true end
      for n in pairs(wanted) do
        local found = false
        for _, s in ipairs(all) do found = found or s.name == n end
        if not found then
          local names = {}
          for _, s in ipairs(all) do names[#names + 1] = s.name end
          return nil, "unknown source '" .. n .. "' (sources: " .. table.concat(names, ", ") .. ")"
        end
      end
    end
    for _, s in ipairs(all) do
      if not wanted or wanted[s.name] then sources[#sources + 1] = s end
    end
  end
  local names = {}
  for _, s in ipairs(sources) do
    if names[s.name] then return nil, "two sources named '" .. s.name .. "'" end
    names[s.name] = true
  end
  if opts["holdout-source"] and not names[opts["holdout-source"]] then
    return nil, "--holdout-source: no source '" .. opts["holdout-source"] .. "'"
  end

  -- Packages: install the missing ones when asked, else refuse naming them.
  local missing = {}
  for _, s in ipairs(sources) do
    for _, p in ipairs(s.packages or {}) do
      if not package_version(p) then missing[#missing + 1] = p end
    end
  end
  if #missing > 0 then
    if not opts.install then
      error("missing Debian packages: " .. table.concat(missing, " ") .. " (add --install, or pick --sources)", 0)
    end
    local sudo = command_output("id -u"):match("^0") and "" or "sudo "
    io.stderr:write("installing ", table.concat(missing, " "), " ...\n")
    if not run(sudo .. "env DEBIAN_FRONTEND=noninteractive apt-get install -y -q " .. table.concat(missing, " ") .. " >&2") then
      error("apt-get install failed for: " .. table.concat(missing, " "), 0)
    end
  end

  mkdir_p(out .. "/train")
  mkdir_p(out .. "/eval")
  local manifest = { format = "fairy2-corpus", version = 1, sources = {},
    split = { rule = "held out when f2_hash64(path, seed 0x46325350) mod 1000000 < fraction * 1000000",
      fraction = fraction, held_out_source = opts["holdout-source"] } }
  for _, s in ipairs(sources) do
    local entry = write_source(out, s, fraction, opts["holdout-source"] == s.name)
    table.insert(manifest.sources, entry)
    local d = entry.train.documents + entry.eval.documents
    print(string.format("%-13s %8d documents %10s: train %d (%s), eval %d (%s)%s", s.name, d,
      mb(entry.train.bytes + entry.eval.bytes), entry.train.documents, mb(entry.train.bytes), entry.eval.documents,
      mb(entry.eval.bytes), entry.held_out and " (whole source held out)" or ""))
  end
  run("rm -rf " .. shell_quote(work))
  assert(data.write_json(out .. "/manifest.json", manifest))
  print("wrote " .. out .. "/manifest.json")
  return 0
end

-- ---------------------------------------------------------------- tokenize

local function load_tokenizer(spec)
  local tokenizer = require "fairy2.tokenizer"
  local path = spec:match("^gguf:(.+)$") or (spec:match("%.gguf$") and spec)
  if path then
    local gguf = require "fairy2.gguf"
    local g, err = gguf.open(path)
    if not g then error("tokenizer: " .. tostring(err), 0) end
    local tok = tokenizer.from_gguf(gguf.tokenizer_data(g))
    g:close()
    return tok, "gguf:" .. path
  end
  if not spec:match("%.json$") then spec = spec .. "/tokenizer.json" end
  return tokenizer.from_json(spec), spec
end

local function tokenize(args)
  local opts, pos = parse_args(args, { tokenizer = "string", ["in"] = "string", out = "string", threads = "number",
    ["token-bytes"] = "number", eos = "string" })
  if not opts then return nil, pos end
  if not (opts.tokenizer and opts["in"] and opts.out) or #pos > 0 then
    return nil, "tokenize needs --tokenizer, --in and --out"
  end
  local cm, err = data.read_json(opts["in"] .. "/manifest.json")
  if not cm or cm.format ~= "fairy2-corpus" then
    error("tokenize: " .. opts["in"] .. " is not a corpus (" .. (err or "no fairy2-corpus manifest.json") ..
      "); make one with fairy2 data corpus", 0)
  end
  local tok, tok_source = load_tokenizer(opts.tokenizer)
  local handle = tok.handle
  -- <|endoftext|> first: what pretraining put between documents (an instruct model's EOS may be
  -- its end-of-turn token, <|im_end|> for SmolLM2-Instruct).
  local eos
  if opts.eos then eos = tok:token_to_id(opts.eos) else eos = tok:token_to_id("<|endoftext|>") or tok.eos_id end
  if not eos then
    error("tokenize: " .. (opts.eos and ("--eos '" .. opts.eos .. "' is not a token of ") or "no EOS token in ") ..
      tok_source .. " to end documents with (name one with --eos TOKEN)", 0)
  end
  local id_out = ffi.new("uint64_t[1]")
  f2.check(C.f2_data_tokenizer_id(id_out, handle), "tokenize")
  local tok_id = id_out[0]
  local vocab = tok.vocab_size
  local token_bytes = opts["token-bytes"] or 0
  local threads = opts.threads or 0
  mkdir_p(opts.out .. "/train")
  mkdir_p(opts.out .. "/eval")

  local manifest = { format = "fairy2-tokens", version = 1, corpus = { path = opts["in"], split = cm.split }, sources = {},
    tokenizer = { source = tok_source, id = data.hex64(tok_id), vocab_size = vocab, eos_id = eos,
      eos = ffi.string(C.f2_tokenizer_id_to_token(handle, eos)) } }
  local stats = ffi.new("f2_tokenize_stats[1]")
  local total_bytes, total_tokens, total_secs = 0, 0, 0
  for _, s in ipairs(cm.sources) do
    local entry = { name = s.name, packages = s.packages, from = s.from, held_out = s.held_out, train = {}, eval = {} }
    for _, split in ipairs { "train", "eval" } do
      local rel = split .. "/" .. s.name .. ".bin"
      local input = opts["in"] .. "/" .. s[split].file
      local inputs = ffi.new("const char *[1]", { input })
      f2.check(C.f2_tokenize_files(stats, opts.out .. "/" .. rel, handle, inputs, 1, token_bytes, eos, tok_id, threads),
        "tokenize " .. input)
      local st = stats[0]
      local info = assert(data.shard_info(opts.out .. "/" .. rel))
      table.insert(entry[split], { path = rel, tokens = info.tokens, documents = info.documents, bytes = tonumber(st.bytes),
        hash = info.content_hash, token_bytes = info.token_bytes })
      total_bytes, total_tokens, total_secs = total_bytes + tonumber(st.bytes), total_tokens + info.tokens, total_secs + st.seconds
    end
    local tr, ev = entry.train[1], entry.eval[1]
    print(string.format("%-13s train %11d tokens (%d docs), eval %9d tokens (%d docs)", s.name, tr.tokens, tr.documents,
      ev.tokens, ev.documents))
    table.insert(manifest.sources, entry)
  end
  manifest.totals = { bytes = total_bytes, tokens = total_tokens }
  assert(data.write_json(opts.out .. "/manifest.json", manifest))
  print(string.format("%d tokens from %s in %.1f s (%.1f MB/s, %s threads); wrote %s/manifest.json", total_tokens,
    mb(total_bytes), total_secs, total_bytes / 1e6 / math.max(total_secs, 1e-9), threads > 0 and threads or "all", opts.out))
  return 0
end

-- ---------------------------------------------------------------- stats

local function stats_cmd(args)
  local opts, pos = parse_args(args, { verify = "flag" })
  if not opts then return nil, pos end
  if #pos ~= 1 then return nil, "stats needs one token directory" end
  local dir = pos[1]
  local m, err = data.read_json(dir .. "/manifest.json")
  if not m or m.format ~= "fairy2-tokens" then error("stats: " .. dir .. ": " .. (err or "not a token directory"), 0) end
  print(string.format("tokenizer %s (id %s, vocab %d, EOS %d %s)", m.tokenizer.source, m.tokenizer.id, m.tokenizer.vocab_size,
    m.tokenizer.eos_id, m.tokenizer.eos))
  local sum = { train = 0, eval = 0 }
  local bad = 0
  for _, s in ipairs(m.sources) do
    for _, split in ipairs { "train", "eval" } do
      for _, shard in ipairs(s[split]) do
        local info, ierr = data.shard_info(dir .. "/" .. shard.path, opts.verify)
        if not info then
          print("  BAD " .. ierr)
          bad = bad + 1
        else
          local ok = info.tokens == shard.tokens and info.content_hash == shard.hash and info.tokenizer_id == m.tokenizer.id
          if not ok then bad = bad + 1 end
          print(string.format("%-13s %-5s %11d tokens %8d docs %6.1f tokens/doc  %s%s", s.name, split, info.tokens,
            info.documents, info.tokens / math.max(info.documents, 1), info.content_hash,
            ok and "" or "  MISMATCH with manifest"))
          sum[split] = sum[split] + info.tokens
        end
      end
    end
  end
  print(string.format("total: train %d tokens, eval %d tokens (%.2f%%)%s", sum.train, sum.eval,
    100 * sum.eval / math.max(sum.train + sum.eval, 1), opts.verify and (bad == 0 and "; all verified" or "") or ""))
  if bad > 0 then error(bad .. " shard(s) bad or not matching the manifest", 0) end
  return 0
end

-- ---------------------------------------------------------------- main

local function usage_text()
  local names = {}
  for _, s in ipairs(debian_sources("")) do
    names[#names + 1] = s.name .. " (" .. table.concat(s.packages, ", ") .. ")"
  end
  return M.usage .. table.concat(names, ", ") .. "\n"
end

M.commands = { corpus = corpus, tokenize = tokenize, stats = stats_cmd }

function M.main(args)
  local cmd = args[1]
  if cmd == nil or cmd == "-h" or cmd == "--help" or cmd == "help" then
    io.write(usage_text())
    return cmd and 0 or 2
  end
  local fn = M.commands[cmd]
  if not fn then
    io.stderr:write("fairy2 data: unknown command '", cmd, "'\n", usage_text())
    return 2
  end
  local rest = {}
  for i = 2, #args do rest[#rest + 1] = args[i] end
  local status, err = fn(rest)
  if not status then
    io.stderr:write("fairy2 data ", cmd, ": ", err, "\n")
    return 2
  end
  return status
end

return M
