-- test_optim.lua — schedules against hand-computed values, counted in optimizer steps.
local t = dofile("tests/lua/harness.lua")
local optim = require "fairy2.optim"

-- WSD: 10 warmup, total 100, decay over the last 20 to 0.1*lr.
local s = optim.wsd { lr = 1.0, total_steps = 100, warmup = 10, decay_steps = 20, min_lr = 0.1 }
t.close(s(1), 0.1, 1e-12, 0, "warmup step 1")
t.close(s(10), 1.0, 1e-12, 0, "end of warmup")
t.close(s(50), 1.0, 1e-12, 0, "stable")
t.close(s(80), 1.0, 1e-12, 0, "last stable step")
t.close(s(90), 0.55, 1e-12, 0, "half way through decay: 1 + (0.1-1)*0.5")
t.close(s(100), 0.1, 1e-12, 0, "end of decay")
local sc = optim.wsd { lr = 1.0, total_steps = 100, warmup = 0, decay_steps = 20, min_lr = 0, shape = "cosine" }
t.close(sc(90), 0.5, 1e-12, 0, "cosine decay midpoint")
t.close(sc(85), 1 - (1 - math.cos(math.pi * 0.25)) / 2, 1e-12, 0, "cosine decay quarter")

local c = optim.cosine { lr = 2.0, total_steps = 110, warmup = 10, min_lr = 0 }
t.close(c(5), 1.0, 1e-12, 0, "cosine warmup")
t.close(c(60), 1.0, 1e-12, 0, "cosine midpoint is lr/2")
t.close(c(110), 0.0, 1e-12, 1e-15, "cosine end")

local k = optim.constant { lr = 3e-4, warmup = 3 }
t.close(k(1), 1e-4, 1e-12, 0, "constant warmup")
t.close(k(1000), 3e-4, 1e-12, 0, "constant")

t.raises(function() optim.schedule { kind = "linear_warmup_exp" } end, "unknown schedule", "unknown kind")
t.raises(function() optim.wsd { lr = 1, total_steps = 10, warmup = 8, decay_steps = 5 } end, "exceed", "bad wsd")
t.done()
