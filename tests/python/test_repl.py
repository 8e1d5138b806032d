"""test_repl.py — the fairy2 REPL driven through a pseudo-terminal, as a person would use it:
expressions print, multi-line chunks continue, errors print a traceback and the REPL goes on,
editing keys (Home, Ctrl-K, UTF-8 Backspace), Tab completion (global, field, method, listing),
history kept across sessions (HOME is a temp dir), Ctrl-C interrupts a running loop and clears a
typed line, Ctrl-D exits 0; and a session fed from a pipe. Fresh random values each run."""
import os
import pty
import random
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time

BIN = os.environ.get("F2_BIN", "build/fairy2")
SRC = os.environ.get("F2_SOURCE_DIR", os.getcwd())
from f2harness import check, summary, test_seed  # noqa: E402


ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Repl:
    """fairy2 on a pty; expect() waits for text in the output with escape codes and \\r removed."""

    def __init__(self, home):
        env = dict(os.environ, HOME=home, TERM="xterm")
        env.pop("FAIRY2_HISTORY", None)
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.chdir(SRC)
            os.execve(BIN, [BIN], env)
        self.raw = b""
        self.seen = 0   # expect() searches the text after what earlier expects consumed

    def text(self):
        return ESCAPES.sub("", self.raw.decode("utf-8", "replace")).replace("\r", "")

    def send(self, s):
        os.write(self.fd, s.encode())

    def _read(self, timeout):
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:   # the child exited
            return False
        self.raw += data
        return bool(data)

    def expect(self, needle, timeout=10):
        """Waits for needle; returns the text from the last match up to it, or None on timeout."""
        deadline = time.time() + timeout
        while True:
            t = self.text()
            i = t.find(needle, self.seen)
            if i >= 0:
                out = t[self.seen:i]
                self.seen = i + len(needle)
                return out
            if time.time() > deadline or not self._read(max(0.0, deadline - time.time())):
                if time.time() > deadline:
                    return None

    def line(self, src, result, what):
        """Types src + Enter; the value printed must be result, then a fresh prompt."""
        self.send(src + "\r")
        got = self.expect("\n" + result + "\nf2> ")
        if got is None:
            self.seen = len(self.text())   # resynchronize for the checks that follow
        return check(got is not None, what, f"sent {src!r}, want {result!r}; output tail:\n{self.text()[-600:]}")

    def close(self):
        """Ctrl-D; returns the exit status."""
        self.send("\x04")
        end = time.time() + 10
        while time.time() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            self._read(0.1)
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        os.close(self.fd)
        return None


seed = test_seed()
rng = random.Random(seed)
home = tempfile.mkdtemp(prefix="f2repl")
a, b, c = rng.randint(-10**6, 10**6), rng.randint(1, 10**6), rng.randint(2, 99)

r = Repl(home)
check(r.expect("f2> ") is not None, "banner and prompt", r.text())
check("fairy2" in r.text(), "the banner names fairy2", r.text())
r.line(f"{a} + {b}", str(a + b), "an expression prints its value")
r.line(f"={a} * 2, 'x{b}', nil", f"{a * 2}\tx{b}\tnil", "=expr and several values, tab-separated")
r.send(f"t = {{{a}, {b}, name = 'n{c}'}}\r")
check(r.expect("\nf2> ") is not None, "a statement prints nothing and prompts again", r.text()[-300:])
r.line("t", f'{{{a}, {b}, name = "n{c}"}}', "a table prints shallowly")
r.line("f2 ~= nil and type(f2.C)", "userdata", "f2 is pre-bound to require 'fairy2'")

# Multi-line: the continuation prompt, then the whole chunk runs.
r.send("function sq(x)\r")
check(r.expect(">> ") is not None, "an incomplete chunk gets the continuation prompt", r.text()[-300:])
r.send("  return x * x\r")
check(r.expect(">> ") is not None, "still incomplete", r.text()[-300:])
r.send("end\r")
check(r.expect("\nf2> ") is not None, "the chunk completes", r.text()[-300:])
r.line(f"sq({c})", str(c * c), "the multi-line function works")

# Errors: traceback, then the REPL goes on.
r.send(f"error('oops{b}')\r")
out = r.expect("\nf2> ")
check(out is not None and f"stdin:1: oops{b}" in out and "stack traceback" in out,
      "an error prints message and traceback", out or r.text()[-500:])
r.line(f"{c} * 3", str(c * 3), "the REPL goes on after an error")
r.send("x = = 1\r")
out = r.expect("\nf2> ")
check(out is not None and "unexpected symbol" in out, "a syntax error is reported", out or r.text()[-300:])

# Editing: Home inserts at the start; Ctrl-A + Ctrl-K clears; Backspace removes a whole UTF-8 char.
r.line(f"0 + {b}\x01{c}", str(c * 10 + b), "Ctrl-A then typing inserts at the start")
r.line(f"garbage\x01\x0b{b} - 1", str(b - 1), "Ctrl-K kills to the end of the line")
r.line("'a\u00e9\x7fb'", "ab", "Backspace removes a whole UTF-8 character")
r.line(f"{b}9\x1b[D\x1b[D\x1b[C\x1b[3~", str(b), "Left, Right and Delete")
r.line(f"1{c}\x1b[H\x1b[3~", str(c), "Home and Delete")
r.line(f"{b} 99\x17", str(b), "Ctrl-W deletes the word before the cursor")

# Tab completion.
name = f"my_unique_variable_{c}"
r.send(f"{name} = {a}\r")
r.expect("\nf2> ")
r.send(name[:9] + "\t")
check(r.expect(name) is not None, "Tab completes a global", r.text()[-300:])
r.line("", str(a), "the completed global evaluates")
r.send("string.up\t")
check(r.expect("string.upper") is not None, "Tab completes a table field", r.text()[-300:])
r.line(f"('x{b}')", f"X{b}", "the completed field works")
r.send("string.g\t")
out = r.expect("gsub")
check(out is not None and "gmatch" in out, "an ambiguous Tab lists the candidates", r.text()[-300:])
r.send("\x15")   # Ctrl-U: drop the line
r.send(f"s = 'ab{c}'\r")
r.expect("\nf2> ")
r.line("s:reve\t()", f"{c}"[::-1] + "ba", "Tab completes a method through the string metatable")
tensor_lua = os.path.join(SRC, "lua", "fairy2", "tensor.lua")
if os.path.exists(tensor_lua):
    r.send("x = f2.randn({2, 3})\r")
    r.expect("\nf2> ")
    r.send("x:nu\t")
    check(r.expect("x:numel") is not None, "Tab completes a tensor method", r.text()[-300:])
    r.line("()", "6", "the completed tensor method works")

# Ctrl-C: interrupts a running loop (the REPL goes on), and drops a line being typed.
r.send("while true do end\r")
time.sleep(0.5)
r.send("\x03")
out = r.expect("\nf2> ")
check(out is not None and "interrupted" in out, "Ctrl-C interrupts while true do end", r.text()[-300:])
r.line(f"{b} + 1", str(b + 1), "the REPL goes on after Ctrl-C")
r.send("this line is dropped\x03")
check(r.expect("^C\nf2> ") is not None, "Ctrl-C at the prompt drops the line", r.text()[-300:])
r.line(f"{c} - 1", str(c - 1), "and the next line is fresh")
marker = f"print('history_{a}_{b}')"
r.send(marker + "\r")
r.expect(f"\nhistory_{a}_{b}\nf2> ")
check(r.close() == 0, "Ctrl-D exits with status 0")

# History: in ~/.fairy2_history, and Up recalls it in the next session.
with open(os.path.join(home, ".fairy2_history")) as f:
    hist = f.read().splitlines()
check(hist and hist[-1] == marker and f"{a} + {b}" in hist, "the history file has the session's lines", hist[-5:])
check(oct(os.stat(os.path.join(home, ".fairy2_history")).st_mode & 0o777) == "0o600", "history is private")
r = Repl(home)
r.expect("f2> ")
r.send("\x1b[A")
check(r.expect(marker) is not None, "Up recalls the last line of the previous session", r.text()[-300:])
r.send("\r")
check(r.expect(f"\nhistory_{a}_{b}\nf2> ") is not None, "and Enter runs it", r.text()[-300:])
r.send("\x1b[A\x1b[A\x1b[B")
check(r.expect(marker) is not None, "Up, Up, Down comes back to the newest line", r.text()[-300:])
r.send("\x15")
check(r.close() == 0, "Ctrl-D exits 0 again")

# From a pipe: plain reads, values only.
p = subprocess.run([BIN], input=f"{a}*{c}\nlocal s = 0\nfor i = 1, {c} do s = s + i end\nreturn {c}\n",
                   capture_output=True, text=True, timeout=30, cwd=SRC, env=dict(os.environ, HOME=home))
check(p.returncode == 0 and p.stdout == f"{a * c}\n{c}\n", "a piped session prints only the values", repr(p.stdout) + p.stderr)

shutil.rmtree(home)
sys.exit(summary())
