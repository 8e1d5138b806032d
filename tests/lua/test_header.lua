-- test_header.lua — the FFI bindings and the C header agree: Lua loads the header text the binary was
-- built with, that text is runtime/f2.h as it is now, every declared function resolves in the binary,
-- and every f2_ function the binary exports is declared (nothing public hides outside f2.h).
local t = dofile("tests/lua/harness.lua")
local f2 = require "fairy2"
local ffi = require "ffi"

local src = assert(os.getenv("F2_SOURCE_DIR"), "F2_SOURCE_DIR not set (run through ctest)")
local f = assert(io.open(src .. "/runtime/f2.h", "rb"))
local on_disk = f:read("*a")
f:close()
t.check(require("fairy2.header") == on_disk, "embedded header differs from runtime/f2.h: rebuild")
t.check(f2.cdecl and #f2.cdecl > 1000, "the FFI section of the header was loaded")
t.check(not f2.cdecl:find("\n%s*#"), "no preprocessor lines between the FFI markers")

-- Functions declared in the FFI section: an identifier starting f2_ followed by "(".
local declared = {}
for name in f2.cdecl:gmatch("([%w_]+)%s*%(") do
  if name:match("^f2_") then declared[name] = true end
end
local n_declared = 0
for name in pairs(declared) do
  n_declared = n_declared + 1
  local ok, err = pcall(function() return f2.C[name] end)
  t.check(ok, "declared but not found in the binary: " .. name .. " (" .. tostring(err) .. ")")
end
t.check(n_declared > 30, "found the declarations (" .. n_declared .. ")")

-- Exported f2_ functions of the binary (dynamic symbol table).
local bin = assert(os.getenv("F2_BIN"))
local p = assert(io.popen("nm -D --defined-only '" .. bin .. "' 2>/dev/null"))
local n_exported = 0
for line in p:lines() do
  local kind, name = line:match("^%x+%s+(%a)%s+(f2_[%w_]+)$")
  if kind == "T" then
    n_exported = n_exported + 1
    t.check(declared[name], "exported by the binary but not declared in f2.h: " .. name)
  end
end
p:close()
t.check(n_exported >= n_declared, "every declared function is exported (" .. n_exported .. " >= " .. n_declared .. ")")

-- A declaration the bindings would reject is caught: a misspelt function does not resolve.
t.check(not pcall(function() return f2.C.f2_no_such_function end), "unknown names do not resolve")
t.done()
