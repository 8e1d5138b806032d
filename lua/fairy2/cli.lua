-- cli.lua — the fairy2 command line: fairy2 [FILE.lua [key=value ...] | -e CODE | -i FILE | --version].
local M = {}

local function run_file(path, args)
  local chunk, err = loadfile(path)
  if not chunk then error(err, 0) end
  return chunk(table.unpack and table.unpack(args) or unpack(args))
end

function M.main()
  local argv = {}
  for i = 1, #arg do argv[i] = arg[i] end
  local a = argv[1]
  if a == "--version" then
    local f2 = require "fairy2"
    local buf = f2.ffi.new("char[4096]")
    f2.check(f2.C.f2_build_info(buf, 4096), "build info")
    io.write(f2.ffi.string(buf))
    return 0
  elseif a == "-e" then
    local chunk, err = loadstring(argv[2] or "", "=(command line)")
    if not chunk then error(err, 0) end
    chunk()
    return 0
  elseif a then
    run_file(a, { select(2, unpack(argv)) })
    return 0
  end
  return 0
end

return M
