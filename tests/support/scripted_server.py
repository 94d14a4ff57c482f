"""A test double: a scripted OpenAI-compatible chat server on 127.0.0.1. It is NOT a language model.

Its answers follow a rule a test or benchmark sets (a Python function of the request), so tests can demand
exact behaviour ("the optimizer's second candidate fixes the failure") that no real model gives on cue. It
also models what real servers do to clients: a fixed number of decoding slots (requests beyond them queue),
lognormal latencies, HTTP 500s, hangs and malformed bodies, all drawn from a seeded generator. The real
vLLM server is what the test-suite uses wherever behaviour need not be exact.
"""

from __future__ import annotations

import json
import math
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """What the server does with one request (one choice when the rule is asked per sample)."""

    content: str = ""
    finish_reason: str = "stop"
    status: int = 200
    hang: bool = False
    malformed: bool = False


@dataclass
class Faults:
    """Random failures injected before the rule is consulted (rates per HTTP request)."""

    error_rate: float = 0.0
    hang_rate: float = 0.0
    malformed_rate: float = 0.0
    seed: int = 0


@dataclass
class LatencyModel:
    """Service time per request: lognormal with this median and sigma, served by `slots` parallel slots."""

    median_s: float = 0.0
    sigma: float = 0.0
    slots: int | None = None
    seed: int = 0
    max_waiting: int | None = None  # like a rate-limited API: 429 when more than this many wait for a slot
    retry_after_s: float | None = None  # sent with those 429s as Retry-After

    def capacity(self) -> float:
        """Requests per second the server sustains when all slots are always busy."""
        mean = self.median_s * math.exp(self.sigma**2 / 2)
        return (self.slots or 1) / mean if mean > 0 else math.inf


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the listen backlog: the default 5 drops connections under load

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.connections: set[socket.socket] = set()

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        self.connections.add(connection)
        return connection, address

    def shutdown_request(self, request: Any) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)


Rule = Callable[[dict[str, Any], int], "Reply | str"]


def echo_rule(request: dict[str, Any], index: int) -> Reply:
    """Default rule: answer with the last message's text."""
    return Reply(content=str(request["messages"][-1]["content"]))


@dataclass
class _Counters:
    requests: int = 0
    errors: int = 0
    hangs: int = 0
    malformed: int = 0
    rate_limited: int = 0  # 429s sent because more than `max_waiting` requests waited (not in `requests`)
    bodies: list[dict[str, Any]] = field(default_factory=list)


class ScriptedServer:
    """Run with ``with ScriptedServer(rule) as server: server.base_url``.

    `served_models`: what ``GET /v1/models`` lists; None (the default) answers it 404, like a server without
    /models, so a preflight checks it by chat alone and tests may name any model. The preflight's 1-token
    chat goes through the rule like any request (and is counted): a rule that raises answers HTTP 500.
    """

    def __init__(self, rule: Rule = echo_rule, faults: Faults | None = None, latency: LatencyModel | None = None,
                 keep_bodies: bool = True, served_models: list[str] | None = None):
        self.rule = rule
        self.served_models = served_models
        self.faults = faults or Faults()
        self.latency = latency or LatencyModel()
        self.counters = _Counters()
        self._keep_bodies = keep_bodies
        self._lock = threading.Lock()
        self._fault_rng = random.Random(self.faults.seed)
        self._latency_rng = random.Random(self.latency.seed)
        self._slots = threading.Semaphore(self.latency.slots) if self.latency.slots else None
        self._stopping = threading.Event()
        self._busy_s = 0.0  # total slot-seconds spent serving, for utilisation figures
        self._active = 0  # requests being served or waiting for a slot
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def busy_seconds(self) -> float:
        return self._busy_s

    def start(self) -> "ScriptedServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                path = self.path.rstrip("/")
                if path == "/health":
                    self._send(200, b"{}")
                elif path == "/v1/models" and server.served_models is not None:
                    models = [{"id": name, "object": "model"} for name in server.served_models]
                    self._send(200, json.dumps({"object": "list", "data": models}).encode())
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not server._admit():
                    retry_after = server.latency.retry_after_s
                    self._send(429, b'{"error": {"message": "too many requests waiting", "type": "rate_limit"}}',
                               {"Retry-After": str(retry_after)} if retry_after is not None else {})
                    return
                try:
                    status, payload = server._handle(body)
                finally:
                    server._leave()
                if status is None:  # hang: hold the connection until the client gives up or we stop
                    server._stopping.wait()
                    return
                self._send(status, payload)

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True, name="scripted-server").start()
        return self

    def stop(self) -> None:
        """Stop like a server process that dies: the port refuses, open keep-alive connections are cut."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            for connection in list(self._httpd.connections):
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def __enter__(self) -> "ScriptedServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handle(self, body: dict[str, Any]) -> tuple[int | None, bytes]:
        with self._lock:
            self.counters.requests += 1
            if self._keep_bodies:
                self.counters.bodies.append(body)
            draw = self._fault_rng.random()
            delay = (self.latency.median_s * math.exp(self.latency.sigma * self._latency_rng.gauss(0, 1))
                     if self.latency.median_s > 0 else 0.0)
        faults = self.faults
        if draw < faults.error_rate:
            with self._lock:
                self.counters.errors += 1
            return 500, b'{"error": {"message": "injected server error", "type": "server_error"}}'
        if draw < faults.error_rate + faults.hang_rate:
            with self._lock:
                self.counters.hangs += 1
            return None, b""
        if draw < faults.error_rate + faults.hang_rate + faults.malformed_rate:
            with self._lock:
                self.counters.malformed += 1
            return 200, b'{"id": "chatcmpl-broken", "choices": [{"message": '
        if "messages" not in body or not isinstance(body["messages"], list):
            return 400, b'{"error": {"message": "messages is required", "type": "invalid_request_error"}}'
        if delay:
            self._serve_for(delay)
        n = int(body.get("n") or 1)
        try:
            replies = [self.rule(body, i) for i in range(n)]
        except Exception as exc:  # a rule that cannot answer this request: a server error, not a dropped socket
            return 500, json.dumps({"error": {"message": f"rule raised {type(exc).__name__}: {exc}"}}).encode()
        replies = [Reply(content=r) if isinstance(r, str) else r for r in replies]
        first = replies[0]
        if first.hang:
            return None, b""
        if first.malformed:
            return 200, b"this is not json"
        if first.status != 200:
            message = json.dumps({"error": {"message": first.content or "scripted error"}}).encode()
            return first.status, message
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        completion_tokens = sum(len(r.content.split()) for r in replies)
        payload = {
            "id": f"chatcmpl-scripted-{self.counters.requests}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model", "scripted"),
            "choices": [{"index": i, "message": {"role": "assistant", "content": r.content},
                         "finish_reason": r.finish_reason} for i, r in enumerate(replies)],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        return 200, json.dumps(payload).encode()

    def _admit(self) -> bool:
        """Count the request as active, unless `max_waiting` requests already wait for a slot (then a 429)."""
        with self._lock:
            limit = self.latency.max_waiting
            if limit is not None and self._active >= (self.latency.slots or 1) + limit:
                self.counters.rate_limited += 1
                return False
            self._active += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1

    def _serve_for(self, seconds: float) -> None:
        if self._slots is None:
            time.sleep(seconds)
            return
        with self._slots:
            time.sleep(seconds)
            with self._lock:
                self._busy_s += seconds
