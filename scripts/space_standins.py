"""Loopback stand-ins for the two services a Hugging Face Space talks to, so that its start
can be exercised with no network (scripts/space_start.py, tests/test_space.py):

- ``HubStandIn``: the part of the Hub's HTTP API that huggingface_hub uses to create a model
  repo, commit files to it (small ones inline, large ones through LFS's "basic" transfer) and
  download them (resolve). Point huggingface_hub at it with ``HF_ENDPOINT`` (read at import)
  and ``HF_HUB_DISABLE_XET=1`` (the Xet transfer protocol is not spoken here).
- ``ZeroGpuStandIn``: the ZeroGPU device API the ``spaces`` package reports to at start-up
  (``POST /startup-report``) and asks for a GPU per call (``/schedule``, ``/allow``,
  ``/release``); it lends a GPU that is not there, so a call's worker then fails to find a
  driver, after its arguments were pickled and handed over.

Both record every request (``log``) and keep everything in memory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


class _Server:
    """A threaded HTTP server on 127.0.0.1 (a free port) answering with ``handle``."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, bytes]] = []  # (method, path with query, body)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.log.append((self.command, self.path, body))
                status, headers, payload = outer.handle(self.command, self.path, self.headers, body)
                self.send_response(status)
                headers = {"Content-Length": str(len(payload)), **headers}
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD" and payload:
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def paths(self, method: str | None = None) -> list[str]:
        return [urlsplit(p).path for m, p, _ in self.log if method in (None, m)]

    def handle(self, method, path, headers, body) -> tuple[int, dict, bytes]:
        raise NotImplementedError


def _json(status: int, value, **headers: str) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json", **headers}, json.dumps(value).encode()


class ZeroGpuStandIn(_Server):
    """The ZeroGPU device API: start-up report and GPU scheduling (module doc)."""

    def handle(self, method, path, headers, body):
        route = urlsplit(path).path
        if (method, route) == ("POST", "/startup-report"):
            return 200, {}, b""
        if (method, route) == ("POST", "/schedule"):
            lent = {"idle": False, "nvidiaIndex": 0, "nvidiaUUID": "0", "allowToken": "lent"}
            return _json(200, lent)
        if (method, route) in {("POST", "/allow"), ("POST", "/release")}:
            return 200, {}, b""
        if (method, route) == ("GET", "/queue-size"):
            return _json(200, 0)
        return 404, {}, b""


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubStandIn(_Server):
    """Model repos in memory: create, commit (inline + LFS), resolve (module doc). Requests
    that change anything need ``Authorization: Bearer <token>``."""

    def __init__(self, token: str, user: str = "someone") -> None:
        super().__init__()
        self.token, self.user = token, user
        self.repos: dict[str, dict] = {}  # repo id -> {"commit": sha, "files": {path: bytes}}
        self.objects: dict[str, bytes] = {}  # LFS objects by sha256
        self._lock = threading.Lock()

    def files(self, repo_id: str) -> dict[str, bytes]:
        return dict(self.repos.get(repo_id, {}).get("files", {}))

    def handle(self, method, path, headers, body):
        route = unquote(urlsplit(path).path)
        authorised = headers.get("authorization") == f"Bearer {self.token}"
        if route == "/api/agent-harnesses":
            return _json(200, {"standardEnvVars": [], "harnesses": {}})
        if route == "/api/validate-yaml":
            return _json(200, {"errors": [], "warnings": []})
        if route == "/api/repos/create" and method == "POST":
            if not authorised:
                return _json(401, {"error": "Invalid credentials"})
            request = json.loads(body or b"{}")
            repo_id = f"{request.get('organization') or self.user}/{request['name']}"
            url = f"{self.url}/{repo_id}"
            with self._lock:
                if repo_id in self.repos:
                    return _json(409, {"error": "You already created this model repo", "url": url})
                self.repos[repo_id] = {"commit": uuid.uuid4().hex + "00000000", "files": {}}
            return _json(200, {"url": url, "name": repo_id})
        if route.startswith("/api/models/"):
            segments = route.removeprefix("/api/models/").split("/")
            repo_id, action = "/".join(segments[:2]), segments[2] if len(segments) > 2 else ""
            repo = self.repos.get(repo_id)
            if repo is None:
                return _json(
                    404, {"error": "Repository not found"}, **{"X-Error-Code": "RepoNotFound"}
                )
            if action == "preupload":
                modes = [
                    {
                        "path": f["path"],
                        "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
                        "shouldIgnore": False,
                        "oid": None,
                    }
                    for f in json.loads(body)["files"]
                ]
                return _json(200, {"files": modes, "commitOid": repo["commit"]})
            if action == "commit" and method == "POST":
                return self._commit(repo_id, repo, body, authorised)
            if action in ("", "revision"):
                siblings = [{"rfilename": name} for name in sorted(repo["files"])]
                return _json(200, {"id": repo_id, "sha": repo["commit"], "siblings": siblings})
        if route.endswith(".git/info/lfs/objects/batch") and method == "POST":
            objects = []
            for item in json.loads(body)["objects"]:
                entry = {"oid": item["oid"], "size": item["size"]}
                if item["oid"] not in self.objects:
                    href = f"{self.url}/lfs-upload/{item['oid']}"
                    entry["actions"] = {"upload": {"href": href}}
                objects.append(entry)
            return (
                200,
                {"Content-Type": "application/vnd.git-lfs+json"},
                json.dumps(
                    {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
                ).encode(),
            )
        if route.startswith("/lfs-upload/") and method == "PUT":
            oid = route.rsplit("/", 1)[1]
            if hashlib.sha256(body).hexdigest() != oid:
                return _json(400, {"error": "sha256 mismatch"})
            self.objects[oid] = body
            return 200, {}, b""
        if "/resolve/" in route and method in ("GET", "HEAD"):
            return self._resolve(route)
        return _json(404, {"error": f"no route {method} {route}"})

    def _commit(self, repo_id: str, repo: dict, body: bytes, authorised: bool):
        if not authorised:
            return _json(401, {"error": "Invalid credentials"})
        files = dict(repo["files"])
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.objects:
                    return _json(422, {"error": f"LFS object {value['oid']} was not uploaded"})
                files[value["path"]] = self.objects[value["oid"]]
        with self._lock:
            repo["files"], repo["commit"] = files, uuid.uuid4().hex + "00000000"
        url = f"{self.url}/{repo_id}/commit/{repo['commit']}"
        return _json(200, {"commitOid": repo["commit"], "commitUrl": url, "pullRequestUrl": None})

    def _resolve(self, route: str):
        repo_id, _, rest = route.lstrip("/").partition("/resolve/")
        repo = self.repos.get(repo_id)
        if repo is None:
            return _json(404, {"error": "Repository not found"}, **{"X-Error-Code": "RepoNotFound"})
        _revision, _, name = rest.partition("/")
        data = repo["files"].get(name)
        commit = {"X-Repo-Commit": repo["commit"]}
        if data is None:
            return _json(
                404, {"error": "Entry not found"}, **{"X-Error-Code": "EntryNotFound"}, **commit
            )
        headers = {
            **commit,
            "ETag": f'"{_git_sha1(data)}"',
            "Content-Type": "application/octet-stream",
        }
        if name.endswith(LFS_SUFFIXES):
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(data))
        return 200, headers, data
