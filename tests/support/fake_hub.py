"""A test double: a local HTTP endpoint speaking just enough of the Hugging Face Hub API for the real
`huggingface_hub` client (set `HF_ENDPOINT` to its URL). It is NOT the Hub.

What it implements is what `HfApi.create_repo`, `create_branch` and `upload_folder` (also Trainer.push_to_hub,
which calls them) send with huggingface_hub 2.4, read from the client's source:

- ``POST /api/repos/create``                         {name, organization, type, visibility} → {url}; 409 if it exists
- ``POST /api/{type}s/{ns}/{name}/branch/{branch}``  create a branch (409 if it exists)
- ``POST /api/validate-yaml``                        a README.md's front matter; always valid here
- ``POST /api/{type}s/{ns}/{name}/preupload/{rev}``  every file is answered "regular" (inline base64 in the
  commit), so the LFS / Xet upload paths are not exercised
- ``POST /api/{type}s/{ns}/{name}/commit/{rev}``     the NDJSON commit: header + files, stored on disk
- ``GET /api/agent-harnesses``                        the client's best-effort agent detection: an empty registry

Every request must carry ``Authorization: Bearer <token>`` (401 otherwise), so a test proves the client sent the
token from HF_TOKEN. Files land in ``<root>/<type>s/<ns>/<name>/<revision>/<path>``; `repos` records each
created repository with its visibility; any other route answers 404 and is listed in `unknown` so a test sees
what else a client tried.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_REPO = r"(?P<type>model|dataset|space)s/(?P<repo>[^/]+/[^/]+)"
_ROUTES = {
    "branch": re.compile(rf"^/api/{_REPO}/branch/(?P<rev>[^/?]+)$"),
    "preupload": re.compile(rf"^/api/{_REPO}/preupload/(?P<rev>[^/?]+)$"),
    "commit": re.compile(rf"^/api/{_REPO}/commit/(?P<rev>[^/?]+)$"),
}


@dataclass
class FakeHub:
    """The endpoint's state: where files are stored, the token it accepts, what it saw."""

    root: Path
    token: str
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)   # "<type>/<ns>/<name>" → {private, branches}
    commits: list[dict[str, Any]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def files(self, repo_type: str, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """Every file committed to that repository and revision, by path."""
        base = self.root / f"{repo_type}s" / repo_id / revision
        return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/api/agent-harnesses":
                    self._send(200, {"standardEnvVars": [], "harnesses": {}})
                    return
                hub.unknown.append(f"GET {self.path}")
                self._send(404, {"error": f"not implemented by the fake hub: GET {self.path}"})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    self._send(401, {"error": "Invalid credentials in Authorization header"})
                    return
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    self._send(*hub._create_repo(json.loads(body)))
                elif path == "/api/validate-yaml":
                    self._send(200, {})
                elif match := _ROUTES["branch"].match(path):
                    self._send(*hub._create_branch(match["type"], match["repo"], match["rev"]))
                elif match := _ROUTES["preupload"].match(path):
                    files = json.loads(body)["files"]
                    self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                               for f in files]})
                elif match := _ROUTES["commit"].match(path):
                    self._send(*hub._commit(match["type"], match["repo"], match["rev"], body))
                else:
                    hub.unknown.append(f"POST {self.path}")
                    self._send(404, {"error": f"not implemented by the fake hub: POST {self.path}"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _create_repo(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        key = f"{repo_type}/{repo_id}"
        if key in self.repos:
            return 409, {"error": "You already created this repo", "url": self._repo_url(repo_type, repo_id)}
        self.repos[key] = {"private": payload.get("visibility") == "private", "branches": {"main"}}
        return 200, {"url": self._repo_url(repo_type, repo_id), "name": repo_id}

    def _create_branch(self, repo_type: str, repo_id: str, branch: str) -> tuple[int, dict[str, Any]]:
        repo = self.repos.get(f"{repo_type}/{repo_id}")
        if repo is None:
            return 404, {"error": "Repository not found"}
        if branch in repo["branches"]:
            return 409, {"error": "Reference already exists"}
        repo["branches"].add(branch)
        return 200, {}

    def _commit(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> tuple[int, dict[str, Any]]:
        repo = self.repos.get(f"{repo_type}/{repo_id}")
        if repo is None:
            return 404, {"error": "Repository not found"}
        if revision not in repo["branches"]:
            return 404, {"error": f"Invalid rev id: {revision}"}
        items = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(item["value"] for item in items if item["key"] == "header")
        paths = []
        for item in items:
            if item["key"] == "file":
                value = item["value"]
                target = self.root / f"{repo_type}s" / repo_id / revision / value["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(base64.b64decode(value["content"]))
                paths.append(value["path"])
            elif item["key"] != "header":
                return 400, {"error": f"the fake hub stores inline files only, not {item['key']}"}
        oid = hashlib.sha1(body).hexdigest()
        self.commits.append({"repo": f"{repo_type}/{repo_id}", "revision": revision, "summary": header["summary"],
                             "paths": paths, "oid": oid})
        return 200, {"commitUrl": f"{self._repo_url(repo_type, repo_id)}/commit/{oid}", "commitOid": oid}

    def _repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{repo_id}" if repo_type == "model" else f"{self.url}/{repo_type}s/{repo_id}"
