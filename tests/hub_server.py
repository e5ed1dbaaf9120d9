"""A local stand-in for the Hugging Face Hub (real HTTP on 127.0.0.1, reached through
`HF_ENDPOINT`), in the Hub's own API shape as the installed `huggingface_hub` requests it:

- ``GET /api/{models|datasets}/{repo}[/revision/{rev}]``: repo info (``sha``, ``siblings``);
- ``GET /api/{models|datasets}/{repo}/tree/{rev}``: the file listing (no Xet storage offered);
- ``HEAD|GET /{repo}/resolve/{rev}/{path}`` (``/datasets/{repo}/…`` for datasets): the file,
  with ``X-Repo-Commit``, ``ETag`` and ``Content-Length``, and ``Range`` answered with 206.

Faults on purpose: the first GET of each file named in `drop_once` sends half the file and
closes the connection (the client must resume with ``Range``); a gated repo answers 401
(``X-Error-Code: GatedRepo``) unless the request carries the token; an unknown repo answers
404 (``RepoNotFound``). A hostile repo (`Repo.sha`, `Repo.listed`, `Repo.missing_commit`,
`Repo.fault`) answers as a hostile mirror would: a repo ``sha`` that is a climbing path, a
listing with names that climb, a 404 whose ``X-Repo-Commit`` climbs, HTML where JSON belongs,
403 / 502, or no answer at all.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

API = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+)(?:/revision/([^/?]+)|/tree/([^/?]+)"
                 r"(/[^?]*)?)?/?(?:\?.*)?$")
RESOLVE = re.compile(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/([^?]+)(?:\?.*)?$")


@dataclass
class Repo:
    files: dict[str, bytes]  # path in the repo -> content
    kind: str = "models"
    gated: bool = False
    commit: str = ""
    sha: str | None = None  # repo info's sha, instead of the commit
    listed: tuple[str, ...] = ()  # more names in the tree listing (a GET of them: 404)
    missing_commit: str | None = None  # X-Repo-Commit of a 404 for a listed, missing file
    fault: str | None = None  # html | 403 | 502 | silent: every API request answered so

    def __post_init__(self) -> None:
        digest = hashlib.sha1(b"".join(k.encode() + v for k, v in sorted(self.files.items())))
        self.commit = self.commit or digest.hexdigest()


@dataclass
class FakeHub:
    repos: dict[str, Repo]
    token: str = "hf_test_token_0123456789"
    drop_once: set[str] = field(default_factory=set)  # "repo/path" to cut short once
    log: list[dict[str, Any]] = field(default_factory=list)

    def __enter__(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                hub.handle(self, body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                hub.handle(self, body=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def env(self, token: bool = False) -> dict[str, str]:
        env = {"HF_ENDPOINT": self.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
        return {**env, "HF_TOKEN": self.token} if token else env

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict,
              send_body: bool, cut_at: int | None = None) -> None:
        h.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            h.send_header(key, value)
        h.end_headers()
        if send_body:
            h.wfile.write(body if cut_at is None else body[:cut_at])
            h.wfile.flush()
        if cut_at is not None:
            h.close_connection = True

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, send_body: bool) -> None:
        self._send(h, status, json.dumps({"error": code}).encode(),
                   {"X-Error-Code": code, "Content-Type": "application/json"}, send_body)

    def handle(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        entry = {"method": h.command, "path": h.path, "range": h.headers.get("Range"),
                 "auth": h.headers.get("Authorization")}
        self.log.append(entry)
        api, resolve = API.match(h.path), RESOLVE.match(h.path)
        name = (api.group(2) if api else resolve.group(2) if resolve else None)
        repo = self.repos.get(name or "")
        if repo is None:
            return self._error(h, 404, "RepoNotFound", body)
        if repo.gated and entry["auth"] != f"Bearer {self.token}":
            return self._error(h, 401, "GatedRepo", body)
        if repo.fault is not None:
            return self._fault(h, repo.fault, body)
        if api:
            return self._api(h, repo, name, api, body)
        return self._file(h, repo, name, resolve.group(4), body)

    def _fault(self, h: BaseHTTPRequestHandler, fault: str, body: bool) -> None:
        if fault == "silent":  # accepts, never answers (until the client gives up)
            time.sleep(8)
            h.close_connection = True
            return
        if fault == "html":
            return self._send(h, 200, b"<html><body>Sign in to continue</body></html>",
                              {"Content-Type": "text/html"}, body)
        self._send(h, int(fault), b"<html>upstream trouble</html>\n" * 40,
                   {"Content-Type": "text/html"}, body)

    def _api(self, h: BaseHTTPRequestHandler, repo: Repo, name: str, match: re.Match,
             body: bool) -> None:
        if match.group(4) is not None:  # tree listing
            data: Any = [{"type": "file", "path": path, "size": len(content),
                          "oid": hashlib.sha1(content).hexdigest()}
                         for path, content in sorted(repo.files.items())]
            data += [{"type": "file", "path": path, "size": 3, "oid": "0" * 40}
                     for path in repo.listed]
        else:
            data = {"id": name, "sha": repo.sha or repo.commit, "private": False,
                    "gated": repo.gated,
                    "siblings": [{"rfilename": p} for p in sorted([*repo.files, *repo.listed])]}
        self._send(h, 200, json.dumps(data).encode(), {"Content-Type": "application/json"},
                   body)

    def _file(self, h: BaseHTTPRequestHandler, repo: Repo, name: str, path: str,
              body: bool) -> None:
        content = repo.files.get(path)
        if content is None and repo.missing_commit is not None:
            return self._send(h, 404, b'{"error": "EntryNotFound"}',
                              {"X-Error-Code": "EntryNotFound",
                               "X-Repo-Commit": repo.missing_commit}, body)
        if content is None:
            return self._error(h, 404, "EntryNotFound", body)
        headers = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes",
                   "ETag": f'"{hashlib.sha256(content).hexdigest()}"'}
        wanted = h.headers.get("Range")
        if wanted and (m := re.match(r"bytes=(\d+)-", wanted)):
            start = int(m.group(1))
            headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
            return self._send(h, 206, content[start:], headers, body)
        key = f"{name}/{path}"
        if body and key in self.drop_once:
            self.drop_once.discard(key)
            return self._send(h, 200, content, headers, body, cut_at=len(content) // 2)
        self._send(h, 200, content, headers, body)


def files_of(folder: Path, prefix: str = "") -> dict[str, bytes]:
    return {prefix + str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}
