-- clock.lua — wall-clock time for timings (tokens/s): clock.now() is seconds from CLOCK_MONOTONIC
-- as a double. os.clock() would be CPU time, which counts every thread and stands still in sleeps.
local ffi = require "ffi"

local M = {}

-- clock_gettime may already be declared by other code; a declaration of our own struct type is
-- passed as void *, which converts to whichever pointer type that declaration has.
pcall(ffi.cdef, "typedef struct f2_clock_timespec { long tv_sec; long tv_nsec; } f2_clock_timespec;")
pcall(ffi.cdef, "int clock_gettime(int clock_id, struct f2_clock_timespec *ts);")

local CLOCK_MONOTONIC = 1   -- Linux
local ts = ffi.new("f2_clock_timespec")
local ts_ptr = ffi.cast("void *", ts)

function M.now()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts_ptr)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

return M
