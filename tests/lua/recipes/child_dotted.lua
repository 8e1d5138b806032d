-- child_dotted.lua — test fixture: extends the base as "recipes.base" (found from the parent
-- directory) and is run through kind = "probe_kind" (fairy2/probe_kind.lua beside it).
local recipe = require "fairy2.recipe"
return recipe.merge(require "recipes.base", { name = "dotted", kind = "probe_kind" })
