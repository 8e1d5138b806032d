-- probe_kind.lua — test fixture: a recipe kind (what fairy2.train will be) that reports its config.
local M = {}
function M.run(cfg)
  print("kind ran " .. cfg.name .. " steps " .. cfg.train.steps)
  return 3
end
return M
