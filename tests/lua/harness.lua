-- harness.lua — the Lua test harness: local t = dofile("tests/lua/harness.lua")
-- t.check(cond, msg), t.close(a, b, rtol, atol, msg), t.raises(fn, pattern), t.done().
-- GPU tests call t.require_gpu() first (exit 77 = skipped).
local T = { passed = 0, failed = 0 }

local function where()
  local info = debug.getinfo(3, "Sl")
  return info.short_src .. ":" .. info.currentline
end

function T.check(cond, msg)
  if cond then
    T.passed = T.passed + 1
  else
    T.failed = T.failed + 1
    io.stderr:write(where(), ": FAILED ", tostring(msg or ""), "\n")
  end
  return cond
end

function T.close(a, b, rtol, atol, msg)
  local ok = math.abs(a - b) <= (atol or 0) + (rtol or 1e-6) * math.abs(b)
  if ok then
    T.passed = T.passed + 1
  else
    T.failed = T.failed + 1
    io.stderr:write(where(), ": FAILED ", tostring(msg or ""), string.format(" (%.9g vs %.9g)", a, b), "\n")
  end
  return ok
end

-- fn must raise an error whose message matches pattern (plain find).
function T.raises(fn, pattern, msg)
  local ok, err = pcall(fn)
  local good = not ok and (pattern == nil or tostring(err):find(pattern, 1, true) ~= nil)
  if good then
    T.passed = T.passed + 1
  else
    T.failed = T.failed + 1
    io.stderr:write(where(), ": FAILED ", tostring(msg or ""), " expected an error matching '",
      tostring(pattern), "', got ", ok and "no error" or tostring(err), "\n")
  end
  return good
end

function T.require_gpu()
  local f2 = require "fairy2"
  if f2.C.f2_cuda_device_count() < 1 then
    print("skipped: no usable GPU")
    os.exit(77)
  end
end

-- Fresh seed per run unless F2_TEST_SEED is set.
function T.seed()
  local s = tonumber(os.getenv("F2_TEST_SEED") or "") or (os.time() % 1000003)
  print("seed " .. s .. " (F2_TEST_SEED to replay)")
  return s
end

function T.done()
  print(string.format("%d passed, %d failed", T.passed, T.failed))
  os.exit(T.failed == 0 and 0 or 1)
end

return T
