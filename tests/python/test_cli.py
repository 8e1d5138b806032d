"""test_cli.py — the fairy2 command line as a user meets it: runs F2_BIN as a subprocess and checks
--version, --help, -e, recipes with overrides, --print-config, kinds, tools, plain scripts, -i, and
that every error is one line "fairy2: ..." with exit status 1 (2 for a bad command line).
Values and names are fresh random ones each run (seed printed; F2_TEST_SEED replays)."""
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

BIN = os.environ.get("F2_BIN", "build/fairy2")
SRC = os.environ.get("F2_SOURCE_DIR", os.getcwd())
RECIPES = os.path.join(SRC, "tests", "lua", "recipes")
from f2harness import check, summary, test_seed  # noqa: E402


def run(*args, stdin=None, env=None, cwd=SRC):
    full_env = dict(os.environ, **(env or {}))
    p = subprocess.run([BIN, *args], input=stdin, capture_output=True, text=True, timeout=60, env=full_env,
                       cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def one_line_error(rc, err, status, *needles, what=""):
    lines = err.strip("\n").split("\n")
    ok = rc == status and len(lines) == 1 and lines[0].startswith("fairy2: ")
    ok = ok and all(n in lines[0] for n in needles)
    check(ok, f"{what}: exit {status} and one line 'fairy2: ...' containing {needles}", f"rc={rc} stderr={err!r}")


seed = test_seed()
rng = random.Random(seed)
tmp = tempfile.mkdtemp(prefix="f2cli")

# --version, --help
rc, out, err = run("--version")
check(rc == 0 and out.startswith("fairy2 ") and "LuaJIT" in out and "CUDA" in out and "GPU" in out,
      "--version names fairy2, LuaJIT, CUDA and GPUs", out + err)
if "CUDA runtime" in out:   # a CUDA build: the cuDNN attention line, and a bad F2_CUDNN_LIB named in it
    check("cuDNN attention: " in out, "--version says whether cuDNN attention is built and found", out)
    if "not built" not in out:
        env = dict(os.environ, F2_CUDNN_LIB="/nonexistent/libcudnn.so.9")
        p = subprocess.run([BIN, "--version"], capture_output=True, text=True, env=env)
        check(p.returncode == 0 and "cuDNN attention: off, F2_CUDNN_LIB=/nonexistent/libcudnn.so.9" in p.stdout,
              "--version names an F2_CUDNN_LIB that does not open", p.stdout + p.stderr)
rc, out, err = run("--help")
check(rc == 0 and "usage: fairy2" in out and "--print-config" in out and "key=value" in out and "tools:" in out,
      "--help shows usage, options, overrides, tools", out + err)
check(run("-h")[1] == out, "-h is --help")

# -e
a, b = rng.randint(-10**6, 10**6), rng.randint(1, 10**6)
rc, out, err = run("-e", f"print({a} * {b})")
check(rc == 0 and out.strip() == str(a * b), "-e runs a chunk", out + err)
rc, out, err = run("-e", f"x = {a}", "-e", f"print(x + {b})")
check(rc == 0 and out.strip() == str(a + b), "-e twice runs both, in order", out + err)
rc, out, err = run("-e", "local f2 = require 'fairy2'; print(f2.version)")
check(rc == 0 and out.strip() != "", "-e can require fairy2", out + err)
if os.path.exists(os.path.join(SRC, "lua", "fairy2", "tensor.lua")):
    rc, out, err = run("-e", 'local f2=require"fairy2"; print(f2.randn({2,3}))')
    check(rc == 0 and out.strip() != "" and not err, "the issue's -e randn example", out + err)
rc, out, err = run("-e", "error('boom" + str(a) + "')")
one_line_error(rc, err, 1, "(command line):1:", "boom" + str(a), what="-e runtime error")
rc, out, err = run("-e", "x = = 1")
one_line_error(rc, err, 1, "(command line):1:", what="-e syntax error")
rc, out, err = run("-e")
one_line_error(rc, err, 2, "-e needs", what="-e without a chunk")

# A recipe with overrides: child.lua runs and prints its resolved config as JSON.
child = os.path.join(RECIPES, "child.lua")
steps, layers = rng.randint(1, 10**9), rng.randint(1, 100)
lr = rng.uniform(1e-6, 1e-2)
name = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 10)))
lr_steps = [rng.randint(0, 1000) for _ in range(rng.randint(0, 5))]
rc, out, err = run(child, f"train.steps={steps}", f"train.lr={lr!r}", f"model.layers={layers}",
                   f"model.name={name}", "quant.enabled=no", "train.lr_steps=[" + ",".join(map(str, lr_steps)) + "]",
                   "train.tokens=2e8")
resolved = None
for line in out.splitlines():
    if line.startswith("resolved "):
        resolved = json.loads(line[len("resolved "):])
check(rc == 0 and resolved is not None, "the recipe ran", out + err)
if resolved:
    tr = resolved["train"]
    check(tr["steps"] == steps and resolved["model"]["layers"] == layers and tr["tokens"] == 2e8,
          "number overrides reached run()", out)
    check(abs(tr["lr"] - lr) <= 1e-13 * lr, "float override", out)
    check(resolved["model"]["name"] == name and resolved["quant"]["enabled"] is False, "string, boolean", out)
    check((tr["lr_steps"] or []) == lr_steps, "list", out)   # cjson writes an empty list as {}
    check(tr["batch"] == 8 and tr["warmup"] == 10 and resolved["name"] == "child",
          "other settings come from the recipe and its base", out)

# --print-config: before the file or among the overrides; Lua or JSON; does not run the recipe.
rc, out, err = run("--print-config=json", child, f"train.steps={steps}")
cfg = json.loads(out) if rc == 0 else None
check(cfg is not None and cfg["train"]["steps"] == steps and cfg["model"]["dim"] == 64 and "run" not in cfg
      and "resolved" not in out, "--print-config=json prints the resolved recipe and does not run it", out + err)
rc, out, err = run(child, f"model.layers={layers}", "--print-config")
check(rc == 0 and f"layers = {layers}," in out and "train = {" in out and "resolved" not in out,
      "--print-config after the overrides prints Lua", out + err)
rc, out, err = run("--print-config")
one_line_error(rc, err, 2, "--print-config needs a recipe", what="--print-config without a file")

# Override errors: exit 2, one line, saying which override and why.
rc, out, err = run(child, "train.tokns=5")
one_line_error(rc, err, 2, "train.tokns=5", "unknown key 'train.tokns'", "did you mean 'train.tokens'?",
               what="unknown key")
check("resolved" not in out, "a bad override stops the run before it starts", out)
rc, out, err = run(child, "modle.dim=3")
one_line_error(rc, err, 2, "did you mean 'model'?", what="unknown top-level key")
rc, out, err = run(child, f"train.steps={name}x")
one_line_error(rc, err, 2, f"train.steps={name}x", "expected a number", what="wrong type")
rc, out, err = run(child, "train.steps")
one_line_error(rc, err, 2, "'train.steps'", "expected key=value", what="no '='")
rc, out, err = run(child, "a..b=1")
one_line_error(rc, err, 2, "'a..b=1'", "empty part", what="empty key part")
rc, out, err = run(child, "model=3")
one_line_error(rc, err, 2, "'model' is a table", what="table set to a scalar")
rc, out, err = run(child, "--frobnicate")
one_line_error(rc, err, 2, "--frobnicate", what="an option after the recipe")

# kind: the recipe runs through require("fairy2." .. kind).run, and its status is the exit status.
rc, out, err = run(os.path.join(RECIPES, "child_dotted.lua"), f"train.steps={steps}")
check(rc == 3 and f"kind ran dotted steps {steps}" in out, "kind dispatch, with the kind's exit status", out + err)

# Files that fail.
rc, out, err = run(os.path.join(tmp, "no_such.lua"))
one_line_error(rc, err, 1, "cannot open", "no_such.lua", what="missing file")
rc, out, err = run(f"no_such_tool_{a}")
one_line_error(rc, err, 2, "neither a file nor a tool", what="unknown command")
bad = os.path.join(tmp, "syntax.lua")
with open(bad, "w") as f:
    f.write("return {\n  a = 1,\n  b = = 2,\n}\n")
rc, out, err = run(bad, "a=2")
one_line_error(rc, err, 1, "syntax.lua:3:", what="syntax error in a recipe")
script = os.path.join(tmp, "script.lua")
line = rng.randint(3, 20)
with open(script, "w") as f:
    f.write("print('started')\n" + "\n" * (line - 2) + f"error('broken {a}')\n")
rc, out, err = run(script)
one_line_error(rc, err, 1, f"script.lua:{line}: broken {a}", what="runtime error in a script")
check(out.strip() == "started", "output before the error still appears", out)
rc, out, err = run(script, env={"FAIRY2_TRACEBACK": "1"})
check(rc == 1 and "stack traceback" in err and f"broken {a}" in err, "FAIRY2_TRACEBACK=1 adds the traceback", err)
norun = os.path.join(tmp, "norun.lua")
with open(norun, "w") as f:
    f.write("return { steps = 1 }\n")
rc, out, err = run(norun)
one_line_error(rc, err, 1, "nothing to run", what="a recipe without run or kind")
with open(norun, "w") as f:
    f.write("return { kind = 'no_such_kind' }\n")
rc, out, err = run(norun)
one_line_error(rc, err, 1, "no_such_kind", what="an unknown kind")

# A plain script gets its arguments as ... and arg; returning nothing means no recipe.
with open(script, "w") as f:
    f.write("print(select('#', ...), arg[0] ~= nil, ...)\nos.exit(tonumber(arg[2]))\n")
rc, out, err = run(script, "x=1", str(a % 100), "--flag")
check(rc == a % 100 and out.split() == ["3", "true", "x=1", str(a % 100), "--flag"],
      "a script gets its arguments, and os.exit sets the status", f"rc={rc} {out} {err}")

# Tools: `fairy2 NAME args` runs lua/fairy2/tools/NAME.lua's main(args). A copy of the library
# (FAIRY2_LUA_DIR) gets a probe tool, so the source tree stays untouched.
lib = os.path.join(tmp, "lua")
shutil.copytree(os.path.join(SRC, "lua"), lib)
os.makedirs(os.path.join(lib, "fairy2", "tools"), exist_ok=True)
with open(os.path.join(lib, "fairy2", "tools", "probe.lua"), "w") as f:
    f.write("return { main = function(args) print('probe got ' .. table.concat(args, ' ')) return #args end }\n")
rc, out, err = run("probe", "one", str(b), env={"FAIRY2_LUA_DIR": lib})
check(rc == 2 and out.strip() == f"probe got one {b}", "tool dispatch passes args and returns main's status",
      f"rc={rc} {out} {err}")

# -i: run the file, then the REPL (here fed from a pipe) with the recipe in `recipe`.
rc, out, err = run("-i", child, f"train.steps={steps}", stdin="recipe.train.steps\nrecipe.model.dim * 2\n")
check(rc == 0 and out.split() == [str(steps), "128"], "-i loads the recipe (not run) into `recipe`", out + err)
with open(script, "w") as f:
    f.write(f"answer = {a}\nreturn 'ret{b}'\n")
rc, out, err = run("-i", script, stdin="answer\nresult\n")
check(rc == 0 and out.split() == [str(a), f"ret{b}"], "-i keeps the script's globals and its value in `result`",
      out + err)

# The REPL from a pipe: values printed, no prompt or escape codes.
rc, out, err = run(stdin=f"{a}+{b}\n")
check(rc == 0 and out == f"{a + b}\n", "printf 'a+b' | fairy2 prints the sum and nothing else", repr(out) + err)

# recipes/default.lua (what scripts/run.sh runs) resolves with the base recipe and takes overrides;
# running it for real (model download, corpus, QAT) is the default job, not a unit test.
steps = rng.randint(2, 40)
rc, out, err = run("--print-config", os.path.join(SRC, "recipes", "default.lua"), f"train.steps={steps}")
check(rc == 0 and re.search(rf"\bsteps\s*=\s*{steps}\b", out) is not None and "smollm2" in out.lower(),
      "--print-config recipes/default.lua resolves, with train.steps overridden", out + err)
rc, out, err = run("--print-config", os.path.join(SRC, "recipes", "default.lua"), "train.stepz=3")
check(rc == 2 and "did you mean 'train.steps'" in err, "a misspelt key in the default recipe is named", err)

shutil.rmtree(tmp)
sys.exit(summary())
