-- fairy2: the Lua library over the C runtime. require "fairy2" gives the FFI bindings (f2.C),
-- tensors and the submodules; see docs/architecture.md for the layers.
local ffi = require "ffi"

local header = require "fairy2.header"
local cdecl = header:match("/%* F2_FFI_BEGIN %*/(.-)/%* F2_FFI_END %*/")
assert(cdecl, "fairy2.header: F2_FFI_BEGIN/F2_FFI_END markers not found")
ffi.cdef(cdecl)

local C = ffi.C
local M = { C = C, ffi = ffi, cdecl = cdecl, version = ffi.string(C.f2_version()) }

-- The message of the last failed C call.
function M.last_error()
  return ffi.string(C.f2_last_error())
end

-- Raises with the C message when rc is a failure status; `level` points at the caller to blame.
function M.check(rc, what, level)
  if rc ~= 0 then
    local msg = M.last_error()
    C.f2_clear_error()
    error((what and (what .. ": ") or "") .. msg, (level or 1) + 1)
  end
  return rc
end

package.loaded.fairy2 = M   -- submodules may require "fairy2" while it loads

-- Submodules merge their public functions into M (tensor constructors, cuda, ...).
for _, name in ipairs { "tensor" } do
  local ok, mod = pcall(require, "fairy2." .. name)
  if ok then
    if type(mod) == "table" and mod.export then mod.export(M) end
  elseif not tostring(mod):find("module 'fairy2." .. name .. "' not found", 1, true) then
    error(mod, 0)
  end
end

return M
