"""Run model-written Python in a locked-down child process: PAL's interpreter and ReAct's ``calculate``.

``run(code)`` always returns a ``SandboxResult``; it never raises for anything the code does. The child
is a fresh ``python -I -S`` with an empty environment, its own session and temporary directory, and
``sandbox_child.py`` confines it before the code is read. It needs no privileges, so it works as the
chart's non-root, capability-less, read-only-root pod and on a Linux laptop alike:

- **Landlock** (unprivileged LSM, Linux >= 5.13): it may read only the Python standard library and its
  own temporary directory, and write nowhere unless ``allow_writes`` (then only in that directory).
  With ABI 4 and later it cannot bind or connect TCP. With ABI 6 and later it cannot signal or reach
  abstract sockets outside itself.
- **seccomp** (libseccomp): no sockets, fork, clone or exec, ptrace, namespaces, mounts or io_uring. It
  cannot change permissions, owners or extended attributes, and cannot raise a limit.
- **rlimits**: address space ``memory_mb``, CPU seconds, the size of any file (so stdout/stderr are capped
  at ``max_output_bytes``), 64 open files and no core dumps. The parent kills the whole session at the
  wall-clock ``timeout_s``.

Without Landlock or libseccomp the child refuses to run the code, and the result's ``error`` says why.
At most ``concurrency()`` programs run at once (the CPU count, at least 2); a call that waits longer than
its ``timeout_s`` for a slot gets a ``busy`` error, so a flood of requests cannot exhaust the pod.
It does not protect against kernel exploits, against CPU use up to its limits, against disk use with
``allow_writes`` (each file is capped, not their number), or against timing side channels. Nor does it
protect against code that prints a wrong or hostile *answer*; the caller must treat stdout as untrusted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from shipyard.apps.sandbox_child import SETUP_FAILED

CHILD = Path(__file__).with_name("sandbox_child.py")
_size = max(2, os.cpu_count() or 2)
_slots = threading.BoundedSemaphore(_size)


def concurrency(n: int | None = None) -> int:
    """How many programs may run at once; ``n`` sets it (for the server's options and tests)."""
    global _slots, _size
    if n is not None:
        if n < 1:
            raise ValueError("sandbox concurrency must be at least 1")
        _slots, _size = threading.BoundedSemaphore(n), n
    return _size


@dataclass(frozen=True)
class SandboxResult:
    stdout: str
    stderr: str
    returncode: int | None
    error: str | None  # None when the code ran to completion with exit status 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


READ_DIRS = sorted({os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")})


def _head(path: Path, limit: int) -> tuple[str, bool]:
    data = path.read_bytes()[:limit] if path.exists() else b""
    return data.decode("utf-8", "replace"), len(data) >= limit


def _error(returncode: int | None, timed_out: bool, truncated: bool, stderr: str, timeout_s: float) -> str | None:
    if timed_out:
        return f"timeout: the program ran past {timeout_s:g} s of wall time and was killed"
    if returncode == SETUP_FAILED and stderr.startswith("sandbox setup failed"):
        return "sandbox unavailable: " + stderr.splitlines()[0].removeprefix("sandbox setup failed: ")
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        return "cpu time limit: killed by SIGXCPU" if name == "SIGXCPU" else f"killed by {name}"
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if truncated:
        return "output limit: stdout or stderr passed the limit and was cut"
    if last.startswith("MemoryError"):
        return "memory limit: the program ran out of its address space"
    if returncode:
        return f"exit status {returncode}" + (f": {last[:300]}" if last else "")
    return None


def _check(code: object, timeout_s: float, memory_mb: int, max_output_bytes: int) -> str | None:
    if not isinstance(code, str):
        return f"code must be a string, not {type(code).__name__}"
    if "\x00" in code:
        return "code must not contain NUL bytes"
    try:
        code.encode("utf-8")
    except UnicodeEncodeError:
        return "code must be valid Unicode (it holds a lone surrogate)"
    if not 0 < timeout_s <= 600:
        return "timeout_s must be in (0, 600]"
    if not 32 <= memory_mb <= 65536:
        return "memory_mb must be in [32, 65536]"
    if not 1024 <= max_output_bytes <= 1 << 30:
        return "max_output_bytes must be in [1024, 2**30]"
    return None


def run(code: str, *, timeout_s: float = 5, memory_mb: int = 256, max_output_bytes: int = 65536,
        allow_writes: bool = False) -> SandboxResult:
    """Run ``code`` as a Python program in the sandbox; its stdout is the answer."""
    bad = _check(code, timeout_s, memory_mb, max_output_bytes)
    if bad:
        return SandboxResult("", "", None, f"bad input: {bad}")
    t0, slots = time.monotonic(), _slots
    if not slots.acquire(timeout=timeout_s):
        return SandboxResult("", "", None, f"busy: {_size} programs were running for all of {timeout_s:g} s",
                             time.monotonic() - t0)
    try:
        with tempfile.TemporaryDirectory(prefix="shipyard-sandbox-") as tmp:
            return _run_in(Path(tmp), code, (timeout_s, memory_mb, max_output_bytes, allow_writes), t0)
    except OSError as e:  # no temporary space, no processes left, ...: still an answer, never a crash
        return SandboxResult("", "", None, f"sandbox unavailable: {e}", time.monotonic() - t0)
    finally:
        slots.release()


def _run_in(tmp: Path, code: str, limits: tuple, t0: float) -> SandboxResult:
    timeout_s, memory_mb, limit, writable = limits
    work = tmp / "work"
    work.mkdir(mode=0o700)
    (work / "program.py").write_text(code, encoding="utf-8")
    out, err = tmp / "stdout", tmp / "stderr"
    cpu_s = max(1, int(timeout_s + 0.999))
    cmd = [sys.executable, "-I", "-S", "-B", str(CHILD), str(work), "1" if writable else "0", str(memory_mb),
           str(cpu_s), str(limit), *READ_DIRS]
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, cwd=work,
                                env={"LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
    stdout, cut_out = _head(out, limit)
    stderr, cut_err = _head(err, limit)
    error = _error(None if timed_out else proc.returncode, timed_out, cut_out or cut_err, stderr, timeout_s)
    return SandboxResult(stdout, stderr, None if timed_out else proc.returncode, error, time.monotonic() - t0)
