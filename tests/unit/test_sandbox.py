"""The code sandbox: escape attempts fail, limits hold, and every call returns a result with a clear error."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipyard.apps.sandbox import SandboxResult, run

AVAILABLE = run("print('ok')")
needs_sandbox = pytest.mark.skipif(not AVAILABLE.ok, reason=f"no Landlock/libseccomp here: {AVAILABLE.error}")


@needs_sandbox
def test_a_program_runs_and_its_stdout_is_the_answer():
    res = run("import math, json, fractions\n"
              "print(json.dumps({'x': math.comb(10, 3), 'f': str(fractions.Fraction(3, 6))}))")
    assert res.ok and res.returncode == 0 and res.stdout == '{"x": 120, "f": "1/2"}\n', res
    inside = run("open('notes.txt', 'w').write('kept')\nprint(open('notes.txt').read())", allow_writes=True)
    assert inside.ok and inside.stdout == "kept\n"  # its own temporary directory, when writes are allowed
    denied = run("open('notes.txt', 'w')")
    assert denied.error.startswith("exit status 1: PermissionError"), denied  # and by default nowhere


@needs_sandbox
def test_files_outside_its_directory_cannot_be_read_listed_written_linked_or_changed(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    attempts = {
        "read": f"print(open({str(secret)!r}).read())",
        "read /etc": "print(open('/etc/passwd').read())",
        "list": "import os; print(os.listdir('/'))",
        "symlink": f"import os; os.symlink({str(secret)!r}, 'link'); print(open('link').read())",
        "hardlink": f"import os; os.link({str(secret)!r}, 'link'); print(open('link').read())",
        "write": f"open({str(tmp_path / 'pwned')!r}, 'w').write('x')",
        "delete": f"import os; os.remove({str(secret)!r})",
        "chmod": f"import os; os.chmod({str(secret)!r}, 0o777)",
        "rmtree": f"import shutil; shutil.rmtree({str(tmp_path)!r})",
        "the server's files": "import os; print(open(f'/proc/{os.getppid()}/environ').read())",
    }
    mode = secret.stat().st_mode
    for name, code in attempts.items():
        res = run(code)
        assert not res.ok and "hunter2" not in res.stdout and res.returncode == 1, (name, res)
        assert res.stderr.splitlines()[-1].startswith(("PermissionError", "OSError")), (name, res.stderr)
    assert secret.read_text() == "hunter2" and secret.stat().st_mode == mode and not (tmp_path / "pwned").exists()


@needs_sandbox
def test_it_sees_no_environment_variable_of_the_server(monkeypatch):
    monkeypatch.setenv("SHIPYARD_TEST_SECRET", "hunter2")
    res = run("import os; print(sorted(os.environ))")
    assert res.ok and "SHIPYARD_TEST_SECRET" not in res.stdout and res.stdout == "['LANG', 'PYTHONIOENCODING']\n"


@needs_sandbox
def test_no_network_no_processes_no_signals_and_dangerous_modules_change_nothing(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.settimeout(0.5)
    marker = tmp_path / "ran"
    attempts = {
        "socket": f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1)",
        "udp": "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 53))",
        "unix": "import socket; socket.socket(socket.AF_UNIX).connect('\\0shipyard')",
        "fork": "import os; os.fork()",
        "subprocess": f"import subprocess; subprocess.run(['/bin/touch', {str(marker)!r}])",
        "os.system": f"import os; assert os.system('touch {marker}') == 0",
        "ctypes": f"import ctypes; assert ctypes.CDLL(None).system(b'touch {marker}') == 0",
        "kill the server": "import os, signal; os.kill(os.getppid(), signal.SIGKILL)",
        "thread": "import threading; threading.Thread(target=print).start()",
        "raise a limit": "import resource; resource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
    }
    for name, code in attempts.items():
        res = run(code)
        assert not res.ok and res.returncode not in (0, None), (name, res)
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()
    assert not marker.exists()


@needs_sandbox
def test_time_memory_and_output_limits_end_the_program_with_a_clear_error():
    loop = run("while True: pass", timeout_s=1)
    assert loop.error.startswith(("timeout", "cpu time limit")) and loop.seconds < 3, loop
    sleep = run("import time; time.sleep(60)", timeout_s=1)
    assert sleep.error.startswith("timeout") and sleep.returncode is None and sleep.seconds < 3
    memory = run("x = bytearray(2 * 1024**3)", memory_mb=128)
    assert memory.error.startswith("memory limit"), memory
    huge = run("print('x' * 10**8)", max_output_bytes=4096)
    assert huge.error.startswith("output limit") and len(huge.stdout) == 4096
    spam = run("import sys\nfor _ in range(10**6): sys.stderr.write('y' * 100)", max_output_bytes=4096)
    assert spam.error.startswith("output limit") and len(spam.stderr) <= 4096


def test_bad_arguments_get_an_error_not_an_exception():
    for kwargs in ({"code": b"print(1)"}, {"code": "print(1)\0"}, {"code": "print('\ud800')"},
                   {"code": "1", "timeout_s": 0}, {"code": "1", "timeout_s": float("nan")},
                   {"code": "1", "memory_mb": 1}, {"code": "1", "max_output_bytes": 10}):
        res = run(**kwargs)
        assert isinstance(res, SandboxResult) and res.error.startswith("bad input"), (kwargs, res)


@needs_sandbox
def test_a_flood_of_programs_waits_for_slots_and_the_late_ones_are_told_busy():
    from shipyard.apps import sandbox

    before = sandbox.concurrency()
    try:
        sandbox.concurrency(2)
        results = [None] * 6
        work = [threading.Thread(target=lambda i=i: results.__setitem__(
            i, run("import time; time.sleep(1.5)", timeout_s=0.5 if i >= 2 else 3))) for i in range(6)]
        for t in work:
            t.start()
            if t is work[1]:
                time.sleep(0.2)  # the first two hold both slots before the rest arrive
        for t in work:
            t.join()
        assert [r.error for r in results[:2]] == [None, None], results[:2]
        assert all(r.error.startswith("busy: 2 programs") for r in results[2:]), results[2:]
    finally:
        sandbox.concurrency(before)
    with pytest.raises(ValueError):
        sandbox.concurrency(0)


@needs_sandbox
def test_many_programs_at_once_all_get_answers():
    results = [None] * 8
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, run(f"print({i} * {i})"))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(8)]


@settings(max_examples=25, deadline=None)
@given(code=st.text(max_size=200) | st.sampled_from(["raise SystemExit(3)", "import os; os._exit(7)", "exit()",
                                                     "import sys; sys.stdout.close()", "1/0", "import this"]))
def test_any_code_returns_a_result_and_never_raises(code):
    res = run(code, timeout_s=2)
    assert isinstance(res, SandboxResult)
    assert res.ok == (res.returncode == 0 and res.error is None)
    assert res.error is None or res.error.split(":")[0] in {
        "bad input", "timeout", "cpu time limit", "output limit", "memory limit", "sandbox unavailable", "busy",
    } or res.error.startswith(("exit status", "killed by"))
    assert os.getpid()  # the test process, which is the sandbox's parent, is still here


POD = """
import json, os
from shipyard.apps.sandbox import run
r = run("print(sum(range(10)))\\nopen(%r, 'w')" % os.path.join(os.environ["TMPDIR"], "escaped"))
print(json.dumps({"error": r.error, "stdout": r.stdout, "root_writable": os.access("/usr", os.W_OK),
                  "caps": open("/proc/self/status").read().split("CapEff:")[1].split()[0]}))
"""


@needs_sandbox
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"),
                    reason="simulating the pod needs root, unshare and setpriv")
def test_it_works_as_the_charts_pod_runs_read_only_root_no_capabilities_no_new_privileges(tmp_path):
    """The chart's securityContext, rebuilt here: the root filesystem read-only with a tmpfs as the only
    writable place (the chart's emptyDir), every capability dropped, no_new_privs set."""
    shell = (f"mount --bind / / && mount -o remount,bind,ro / && mount -t tmpfs tmpfs {tmp_path} && "
             f"TMPDIR={tmp_path} exec setpriv --no-new-privs --inh-caps=-all --bounding-set=-all "
             f"{sys.executable} -c \"$0\"")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", shell, POD],
                         capture_output=True, text=True, timeout=60)
    if out.returncode and "unshare failed" in out.stderr:
        pytest.skip(f"no mount namespace here: {out.stderr.strip()}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["caps"] == "0000000000000000" and res["root_writable"] is False, res
    # the tmpfs is writable, but not for the sandbox outside its own directory
    assert res["stdout"] == "45\n" and f"Permission denied: '{tmp_path}/escaped'" in res["error"], res
