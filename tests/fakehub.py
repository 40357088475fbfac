"""A tiny fake Hugging Face Hub on 127.0.0.1 for tests of the real download and upload code.

It answers ``HEAD``/``GET /{org}/{name}/resolve/{revision}/{filename}`` the way the Hub
does for plain (non-Xet) files: ``X-Repo-Commit``, ``ETag: "<sha256>"`` and
``Content-Length``; unknown repositories, revisions and files get a 404 with
``X-Error-Code`` ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``, which
huggingface_hub maps to its exceptions. Every request is recorded in ``requests``.

Enough of the write API for huggingface_hub's ``create_repo`` / ``create_commit`` / ``CommitScheduler``
(writes need ``Authorization: Bearer``): ``POST /api/repos/create`` (visibility kept in ``private``; a
private repo answers 401 without a token, downloads too); ``POST /api/{type}s/{repo}/preupload/{branch}``
(every file "regular", i.e. sent inline, with the ``oid`` of the file held now so unchanged files are
skipped); ``POST /api/{type}s/{repo}/commit/{branch}`` (NDJSON: inline base64 files and deleted files make
a new commit and move the branch; set ``commit_status`` to e.g. 500 to make commits fail); and
``GET /api/{type}s/{repo}[/revision/{rev}]`` (id, sha, private). Anything else under ``/api/`` (LFS files,
pull requests, ...) gets a 501 naming what the fake Hub lacks.

Also: :func:`fill_hub_cache` writes a Hub cache entry by hand (refs + snapshot file),
:func:`closed_port_url` / :class:`SilentServer` give endpoints that refuse or never answer, and
:func:`self_signed_certificate` lets the fake Hub serve HTTPS (``FakeHub(tls=(cert, key))``; the
client trusts it through ``SSL_CERT_FILE``). Run as a script, it serves files from a folder
(``python tests/fakehub.py ROOT --port-file F``), for a separate process such as the Space rehearsal.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_like_commit(seed: str) -> str:
    """A deterministic 40-hex commit id for a test repository."""
    return hashlib.sha1(seed.encode()).hexdigest()


class FakeHub:
    """Serve repositories held in memory: ``repos[repo_id][commit][filename] = bytes``."""

    def __init__(self, tls: tuple[Path, Path] | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.tls, self.host, self.port = tls, host, port
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}
        self.branches: dict[str, dict[str, str]] = {}
        self.requests: list[tuple[str, str]] = []
        self.private: dict[str, bool] = {}   # repos made with create_repo: visibility asked for
        self.commit_status = 200             # set to e.g. 500 to make every commit fail
        self._commit_lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add_file(self, repo_id: str, filename: str, data: bytes, commit: str | None = None) -> str:
        """Add a file at ``commit`` (default: a commit derived from the repo id); return the commit."""
        commit = commit or git_like_commit(repo_id)
        self.repos.setdefault(repo_id, {}).setdefault(commit, {})[filename] = data
        self.branches.setdefault(repo_id, {})["main"] = commit
        return commit

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake Hub is not running")
        host, port = self._server.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, with_body=False)

            def do_GET(self) -> None:
                if self.path.startswith("/api/"):
                    return hub._answer_api(self)
                hub._answer(self, with_body=True)

            def do_POST(self) -> None:
                hub._answer_api(self)

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _answer(self, handler: BaseHTTPRequestHandler, with_body: bool) -> None:
        self.requests.append((handler.command, handler.path))
        parts = handler.path.split("?")[0].lstrip("/").split("/")
        if parts and parts[0] == "datasets":  # a dataset repo's files: the same answers (repos are keyed by id)
            parts = parts[1:]
        if len(parts) < 5 or parts[2] != "resolve":
            return self._reply(handler, 404, {"X-Error-Code": "RepoNotFound"}, b"", with_body)
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        commits = self.repos.get(repo_id)
        if commits is None or (self.private.get(repo_id) and not _authorized(handler)):
            return self._reply(handler, 404 if commits is None else 401, {"X-Error-Code": "RepoNotFound",
                                              "X-Error-Message": "Repository not found"}, b"", with_body)
        commit = self.branches.get(repo_id, {}).get(revision, revision)
        if commit not in commits:
            return self._reply(handler, 404, {"X-Error-Code": "RevisionNotFound",
                                              "X-Error-Message": "Invalid rev id"}, b"", with_body)
        data = commits[commit].get(filename)
        if data is None:
            return self._reply(handler, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit,
                                              "X-Error-Message": "Entry not found"}, b"", with_body)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{sha256_hex(data)}"',
                   "Content-Type": "application/octet-stream"}
        return self._reply(handler, 200, headers, data, with_body)

    # ------------------------------------------------------------ the write API

    def _answer_api(self, handler: BaseHTTPRequestHandler) -> None:
        """``/api/...``: create a repo, preupload, commit, repo info; anything else a 501."""
        self.requests.append((handler.command, handler.path))
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        path, _, query = handler.path.partition("?")
        route = re.fullmatch(r"/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(preupload|commit|revision)/([^/]+))?",
                             path)
        kind, repo_id, action, revision = route.groups() if route else ("", "", "", "")
        revision = unquote(revision or "main")
        if handler.command == "POST" and not _authorized(handler):
            status, answer = 401, {"error": "fake Hub: writes need 'Authorization: Bearer <token>'"}
        elif handler.command == "POST" and path == "/api/repos/create":
            status, answer = self._create_repo(json.loads(body))
        elif route is None or "create_pr" in query or (handler.command == "GET") != (action in (None, "revision")):
            status, answer = 501, {"error": f"fake Hub: {handler.command} {path} is not implemented"}
        elif repo_id not in self.repos or (self.private.get(repo_id) and not _authorized(handler)):
            status = 404 if repo_id not in self.repos else 401   # the Hub hides private repos the same way
            answer = {"error": f"Repository {repo_id} not found", "code": "RepoNotFound"}
        elif action in (None, "revision"):
            status, answer = self._repo_info(repo_id, revision)
        elif revision not in self.branches.get(repo_id, {}):
            status, answer = 404, {"error": f"fake Hub: no branch {revision!r}", "code": "RevisionNotFound"}
        elif action == "preupload":
            status, answer = self._preupload(repo_id, revision, json.loads(body))
        else:
            status, answer = self._commit(f"{self.url}/{'' if kind == 'models' else kind + '/'}{repo_id}",
                                          repo_id, revision, body)
        headers = {"Content-Type": "application/json"}
        if status >= 400:
            headers.update({"X-Error-Message": answer["error"], "X-Error-Code": answer.pop("code", "")})
        self._reply(handler, status, headers, json.dumps(answer).encode(), with_body=True)

    def _create_repo(self, request: dict) -> tuple[int, dict]:
        repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
        kind = request.get("type") or "model"
        url = f"{self.url}/{repo_id}" if kind == "model" else f"{self.url}/{kind}s/{repo_id}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this repo"}
        self.private[repo_id] = request.get("visibility") == "private"
        self.repos[repo_id] = {git_like_commit(repo_id): {}}
        self.branches[repo_id] = {"main": git_like_commit(repo_id)}
        return 200, {"url": url, "name": repo_id}

    def _repo_info(self, repo_id: str, revision: str) -> tuple[int, dict]:
        commit = self.branches.get(repo_id, {}).get(revision, revision)
        if commit not in self.repos[repo_id]:
            return 404, {"error": f"Invalid rev id: {revision}", "code": "RevisionNotFound"}
        return 200, {"id": repo_id, "sha": commit, "private": self.private.get(repo_id, False)}

    def _preupload(self, repo_id: str, branch: str, request: dict) -> tuple[int, dict]:
        """Every file goes inline ("regular"); ``oid`` is the git blob id of the file held now, if any."""
        held = self.repos[repo_id][self.branches[repo_id][branch]]
        return 200, {"files": [{"path": entry["path"], "uploadMode": "regular", "shouldIgnore": False,
                                "oid": git_blob_id(held[entry["path"]]) if entry["path"] in held else None}
                               for entry in request["files"]]}

    def _commit(self, repo_url: str, repo_id: str, branch: str, body: bytes) -> tuple[int, dict]:
        """Apply an NDJSON commit (header, then ``file`` / ``deletedFile`` lines) on top of ``branch``."""
        if self.commit_status != 200:
            return self.commit_status, {"error": f"fake Hub: commits answer {self.commit_status} for this test"}
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        with self._commit_lock:
            parent = self.branches[repo_id][branch]
            files = dict(self.repos[repo_id][parent])
            for line in lines[1:]:
                value = line["value"]
                if line["key"] == "file" and value.get("encoding") == "base64":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif line["key"] == "deletedFile" and value["path"] in files:
                    del files[value["path"]]
                elif line["key"] == "deletedFile":
                    return 404, {"error": f"A file with this name doesn't exist: {value['path']}",
                                 "code": "EntryNotFound"}
                else:
                    return 501, {"error": f"fake Hub: commit line {line['key']!r} is not implemented"}
            commit = hashlib.sha1(parent.encode() + body).hexdigest()
            self.repos[repo_id][commit] = files
            self.branches[repo_id][branch] = commit
        return 200, {"commitUrl": f"{repo_url}/commit/{commit}", "commitOid": commit}

    @staticmethod
    def _reply(handler, status: int, headers: dict[str, str], body: bytes, with_body: bool) -> None:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if with_body and body:
            handler.wfile.write(body)


def git_blob_id(data: bytes) -> str:
    """The id git gives a file's contents (``git hash-object``), as the Hub answers it for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _authorized(handler: BaseHTTPRequestHandler) -> bool:
    return handler.headers.get("Authorization", "").startswith("Bearer ")


def fill_hub_cache(cache_dir: Path, repo_id: str, commit: str, filename: str, data: bytes) -> Path:
    """Write ``refs/main`` and ``snapshots/<commit>/<filename>`` like a finished download."""
    repo_dir = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    path = repo_dir / "snapshots" / commit / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 whose port nobody listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class SilentServer:
    """Accepts TCP connections and never answers: the worst case for a reachability probe."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "SilentServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, made with the openssl command line, valid for a day."""
    cert, key = Path(folder) / "cert.pem", Path(folder) / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def serve_folder(root: Path, port_file: Path) -> None:
    """Serve ``root/<org>/<name>/<commit>/<file>`` as Hub repositories (and any URL path of that
    form) until killed; the URL goes into ``port_file`` once listening."""
    hub = FakeHub()
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        org, name, commit, *rest = path.relative_to(root).parts
        hub.add_file(f"{org}/{name}", "/".join(rest), path.read_bytes(), commit)
    hub.start()
    port_file.write_text(hub.url)
    threading.Event().wait()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="a fake Hugging Face Hub on 127.0.0.1 serving a folder")
    parser.add_argument("root", type=Path)
    parser.add_argument("--port-file", type=Path, required=True)
    arguments = parser.parse_args()
    serve_folder(arguments.root, arguments.port_file)
