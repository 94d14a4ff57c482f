"""The HumanEval sandbox against hostile programs: each is scored failed, the harness finishes, nothing outside
the program's temporary directory changes, nothing it started outlives it. Run with kernel isolation (where
this OS allows unprivileged namespaces) and with the Python guard alone (the fallback elsewhere)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from autoevol_train.eval.sandbox import Limits, Sandbox


def namespaces_allowed() -> bool:
    """Independent probe: can an unprivileged process make user/net/mount/PID namespaces here?"""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--net", "--mount", "--pid", "--fork", "true"],
                           capture_output=True, timeout=20)
    return probe.returncode == 0


@pytest.fixture
def workroot(tmp_path, monkeypatch):
    """Sandbox work dirs go under this test's tmp dir, so leftovers can be found by their cwd."""
    root = tmp_path / "work"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


@pytest.fixture
def canary(tmp_path):
    directory = tmp_path / "canary"
    directory.mkdir()
    (directory / "keep.txt").write_text("precious")
    return directory


@pytest.fixture
def listener():
    """A real TCP server on 127.0.0.1 that records whatever reaches it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                received.append(conn.recv(100) or b"<connected>")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], received
    stop.set()
    thread.join()
    server.close()


def hostile_programs(canary: Path, port: int) -> dict[str, str]:
    return {
        "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except Exception:\n        pass\n",
        "fork_bomb_raw": "import posix\nwhile True:\n    posix.fork()\n",
        "rm_rf_shutil": f"import shutil\nshutil.rmtree({str(canary)!r})\n",
        "rm_rf_shell": f"import os\nos.system('rm -rf {canary}')\nassert False\n",
        "rm_rf_subprocess": f"import subprocess\nsubprocess.run(['rm', '-rf', {str(canary)!r}])\nassert False\n",
        "unlink_each_file": f"import os\nfor f in os.listdir({str(canary)!r}):\n"
                            f"    os.unlink(os.path.join({str(canary)!r}, f))\n",
        "allocate_10gb": "x = bytearray(10 * 1024 ** 3)\n",
        "infinite_loop": "while True:\n    pass\n",
        "swallow_timeouts": "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n"
                            "        pass\n",
        "socket_connect": f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                          "s.sendall(b'pwned')\n",
        "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
        "kill_group": "import os, signal\nos.killpg(0, signal.SIGKILL)\n",
        "exit_inside_check": "def check(candidate):\n    import sys\n    sys.exit(0)\n    assert candidate() == 1\n"
                             "check(lambda: 2)\n",
        "os_exit_inside_check": "def check(candidate):\n    import os\n    os._exit(0)\n    assert candidate() == 1\n"
                                "check(lambda: 2)\n",
        "forged_success": "print('{\"status\": \"passed\", \"nonce\": \"guess\"}')\nimport sys\nsys.exit(0)\n",
        "stdout_flood": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
        "escape_session": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n",
        "sleep_forever": "import time\ntime.sleep(3600)\n",
    }


def running_in(root: Path) -> list[int]:
    """PIDs of live processes whose working directory is under `root`."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cwd = os.readlink(proc / "cwd")
            state = (proc / "stat").read_text().split(") ")[-1][:1]
        except OSError:
            continue
        if cwd.startswith(str(root)) and state != "Z":
            found.append(int(proc.name))
    return found


@pytest.mark.parametrize("isolation", ["auto", "guard"])
def test_hostile_programs_all_fail_and_leave_nothing_behind(isolation, workroot, canary, listener, tmp_path):
    port, received = listener
    sandbox = Sandbox(Limits(timeout_s=1.0, isolation=isolation))
    assert sandbox.isolation == ("namespaces" if isolation == "auto" and namespaces_allowed() else "guard")
    programs = hostile_programs(canary, port)
    start = time.monotonic()
    outcomes = dict(zip(programs, sandbox.run_many(list(programs.values()))))
    elapsed = time.monotonic() - start
    assert {name: o.status for name, o in outcomes.items() if o.passed} == {}
    assert outcomes["infinite_loop"].status == outcomes["stdout_flood"].status == "timed out"
    assert outcomes["allocate_10gb"].detail.startswith("MemoryError")
    assert "SystemExit" in outcomes["exit_inside_check"].detail
    assert (canary / "keep.txt").read_text() == "precious"
    assert received == []
    assert elapsed < 60  # a dozen 1 s timeouts on the machine's cores, not one hang
    time.sleep(0.2)
    assert running_in(workroot) == []
    assert list(workroot.iterdir()) == []  # every temporary work dir removed


def test_good_programs_pass_despite_output_and_files_in_their_own_dir(workroot):
    sandbox = Sandbox(Limits(timeout_s=3.0))
    programs = [
        "assert sum(range(10)) == 45\n",
        "print('x' * 5_000_000)\nimport sys\nsys.stderr.write('noise')\nassert True\n",
        "open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'\n",
        "import random, math, itertools, collections, hashlib, re, string\nassert math.isclose(1.0, 1)\n",
        "assert False, 'wrong answer'\n",
        "def check(candidate):\n    assert candidate(2) == 4\ncheck(lambda x: x * 2)\n",
    ]
    outcomes = sandbox.run_many(programs)
    assert [o.status for o in outcomes] == ["passed"] * 4 + ["failed", "passed"]
    assert outcomes[4].detail == "AssertionError: wrong answer"


def test_writes_outside_the_work_dir_are_refused_under_namespaces(workroot, tmp_path):
    sandbox = Sandbox(Limits(timeout_s=2.0))
    outside = tmp_path / "outside.txt"
    outcome = sandbox.run(f"open({str(outside)!r}, 'w').write('x')\n")
    if sandbox.isolation == "namespaces":
        assert not outcome.passed and "Read-only file system" in outcome.detail
        assert not outside.exists()
    else:  # the Python guard alone cannot stop open(): documented in docs/evaluation.md
        assert not namespaces_allowed()


def test_a_dead_worker_is_replaced_and_the_harness_goes_on(workroot):
    sandbox = Sandbox(Limits(timeout_s=5.0, workers=1))
    worker = sandbox._workers[0]
    killer = threading.Timer(0.5, lambda: os.killpg(worker.proc.pid, 9))  # as if a program escaped the guard
    killer.start()
    outcome = sandbox.run("while True:\n    pass\n")
    killer.join()
    assert outcome.status == "failed" and "worker died" in outcome.detail
    assert sandbox.run("assert 1 + 1 == 2\n").passed
    assert sandbox._workers[0] is not worker and worker.proc.poll() is not None
    sandbox.close()
    assert all(w.proc.poll() is not None for w in sandbox._workers)
