"""f2harness.py — what the Python tests share: counted checks, the summary line ctest's reader and
.ci/run expect, the run's seed, and the runtime's C tensor layout for ctypes.

    from f2harness import check, summary, test_seed, Tensor
    check(a == b, "what was compared", detail="optional longer text")
    ...
    sys.exit(summary())
"""
import ctypes
import os
import sys
import time

MAX_PRINTED = 50   # failures printed in full; the count is always exact
_counts = {"passed": 0, "failed": 0}


def check(cond, what, detail=""):
    """Counts one check; prints the failure (what, then detail) to stderr. Returns cond."""
    if cond:
        _counts["passed"] += 1
    else:
        _counts["failed"] += 1
        if _counts["failed"] <= MAX_PRINTED:
            print("FAILED " + str(what) + ("\n" + str(detail) if detail else ""), file=sys.stderr)
        elif _counts["failed"] == MAX_PRINTED + 1:
            print(f"(failures after the first {MAX_PRINTED} are counted, not printed)", file=sys.stderr)
    return cond


def failures():
    return _counts["failed"]


def summary():
    """Prints 'N passed, N failed' and returns the exit status (0 when nothing failed)."""
    print(f"{_counts['passed']} passed, {_counts['failed']} failed")
    return 1 if _counts["failed"] else 0


def test_seed():
    """The seed of this run: F2_TEST_SEED, else fresh from the clock; printed so a failure replays."""
    seed = int(os.environ.get("F2_TEST_SEED") or time.time_ns() % 1000003)
    print(f"seed {seed} (F2_TEST_SEED to replay)")
    return seed


class Tensor(ctypes.Structure):
    """struct f2_tensor of runtime/f2.h."""
    _fields_ = [("data", ctypes.c_void_p), ("storage", ctypes.c_void_p), ("dtype", ctypes.c_int32),
                ("device", ctypes.c_int32), ("ndim", ctypes.c_int32), ("flags", ctypes.c_int32),
                ("shape", ctypes.c_int64 * 8), ("stride", ctypes.c_int64 * 8)]
