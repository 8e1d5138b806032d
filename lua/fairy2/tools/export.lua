-- tools/export.lua — `fairy2 export`: a trained checkpoint to a Hugging Face directory and/or a packed
-- Fairy2 file (lua/fairy2/export.lua, docs/export.md).
local export = require "fairy2.export"
local toolargs = require "fairy2.toolargs"

local M = {}

M.usage = [[
usage: fairy2 export CKPT_DIR [--hf OUT_DIR] [--packed OUT.f2.safetensors]

CKPT_DIR   a checkpoint (model.safetensors, state.json, DONE) or a run directory: its newest
           complete checkpoint (checkpoints/step_N with a DONE marker)
--hf       write a directory transformers loads: R_hat and the other weights in bf16
           (model.safetensors), config.json, tokenizer.json + tokenizer_config.json
--packed   write one safetensors file with 2-bit codes + scales per converted layer and the
           other weights in bf16 (load it with source "packed:PATH")
At least one of --hf and --packed.]]

local function parse(args)
  local o, i = {}, 1
  while i <= #args do
    local a = args[i]
    if a == "--help" or a == "-h" then
      o.help = true
    elseif a == "--hf" or a == "--packed" then
      i = i + 1
      if args[i] == nil then error({ usage = a .. " needs a value" }) end
      o[a:sub(3)] = args[i]
    elseif a:sub(1, 1) == "-" then
      error({ usage = "unknown option " .. a })
    elseif o.ckpt then
      error({ usage = "one CKPT_DIR only (got " .. o.ckpt .. " and " .. a .. ")" })
    else
      o.ckpt = a
    end
    i = i + 1
  end
  return o
end

-- emit(line) prints (default print).
function M.main(args, emit)
  local print = emit or print
  local o, status = toolargs.parse("export", M.usage, parse, args, print, function(o)
    if not o.ckpt then return "give a CKPT_DIR" end
    if not (o.hf or o.packed) then return "give --hf OUT_DIR and/or --packed OUT" end
  end)
  if not o then return status end
  local ck, err = export.load_checkpoint(o.ckpt)
  if not ck then
    io.stderr:write("fairy2 export: ", tostring(err), "\n")
    return 1
  end
  print("checkpoint " .. ck.dir .. (ck.quant and string.format(" (Fairy2i W%d)", ck.quant.stages) or " (full precision)"))
  if o.hf then
    local info, herr = export.hf(ck, o.hf)
    if not info then
      io.stderr:write("fairy2 export: ", tostring(herr), "\n")
      return 1
    end
    print(string.format("hf %s: %.2fM parameters in bf16 (%.2fM of them R_hat)%s", info.dir, info.params / 1e6,
      info.converted / 1e6, info.tokenizer and ("; " .. info.tokenizer) or "; no tokenizer"))
  end
  if o.packed then
    local report, perr = export.packed(ck, o.packed)
    if not report then
      io.stderr:write("fairy2 export: ", tostring(perr), "\n")
      return 1
    end
    print(export.format_packed_report(report))
  end
  return 0
end

return M
