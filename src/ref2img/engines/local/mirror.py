"""`ref2img models mirror`: the local Hugging Face cache, served over the part of the Hub's HTTP API
that `huggingface_hub` downloads use, so that a fleet's workers pull from one machine on a private
network: `HF_ENDPOINT=http://mirror:8090 ref2img models pull sdxl`.

Read-only, and only what is already in the cache. The routes, as `huggingface_hub` (2.x) calls them:

    GET  /api/models/{repo}/revision/{revision}         repo_info: the commit and its files
    GET  /api/models/{repo}/tree/{revision}[/{path}]    list_repo_tree: sizes, blob ids, LFS hashes
    HEAD /{repo}/resolve/{revision}/{file}              file metadata: X-Repo-Commit, ETag, size
    GET  /{repo}/resolve/{revision}/{file}              the bytes (Range requests resume a download)

A repo, revision or file the cache lacks is a 404 in the Hub's own form (`X-Error-Code` and a JSON
`error`), which the client turns into RepositoryNotFoundError, RevisionNotFoundError or
EntryNotFoundError.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"


@dataclass(frozen=True)
class CachedFile:
    path: str  # inside the repo, with forward slashes
    blob: Path  # the bytes
    etag: str  # the blob's name in the cache: a git blob id (40 hex) or an LFS sha256 (64 hex)
    size: int

    @property
    def is_lfs(self) -> bool:
        return len(self.etag) == 64

    def tree_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.etag, "size": self.size, "path": self.path}
        if self.is_lfs:  # the Hub's blob id of an LFS file is that of its pointer file
            pointer = LFS_POINTER.format(sha256=self.etag, size=self.size).encode()
            entry["oid"] = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
            entry["lfs"] = {"oid": self.etag, "size": self.size, "pointerSize": len(pointer)}
        return entry


class HubCache:
    """One repo revision at a time, read from the cache's own layout (`huggingface_hub.scan_cache_dir`)."""

    def __init__(self, cache_dir: Path | None):
        self.cache_dir = cache_dir

    def revision(self, repo_id: str, revision: str) -> tuple[str, list[CachedFile]]:
        """(commit, files) of a repo at a branch, tag or commit; LookupError names what is missing."""
        from huggingface_hub import scan_cache_dir

        repos = [
            repo
            for repo in scan_cache_dir(self.cache_dir).repos
            if repo.repo_id == repo_id and repo.repo_type == "model"
        ]
        if not repos:
            raise RepoMissing(f"Repository {repo_id} is not in this mirror's cache")
        [repo] = repos
        for cached in repo.revisions:
            if cached.commit_hash == revision or revision in cached.refs:
                files = [
                    CachedFile(
                        file.file_path.relative_to(cached.snapshot_path).as_posix(),
                        file.blob_path,
                        file.blob_path.name,
                        file.size_on_disk,
                    )
                    for file in cached.files
                ]
                return cached.commit_hash, sorted(files, key=lambda file: file.path)
        raise RevisionMissing(f"Revision {revision} of {repo_id} is not in this mirror's cache")


class RepoMissing(LookupError):
    code = "RepoNotFound"


class RevisionMissing(LookupError):
    code = "RevisionNotFound"


class EntryMissing(LookupError):
    code = "EntryNotFound"


def create_mirror(cache_dir: Path | None = None) -> Starlette:
    """The mirror's ASGI app over `cache_dir` (default: the Hugging Face cache, `HF_HOME`/`HF_HUB_CACHE`)."""
    cache = HubCache(cache_dir)

    async def repo_info(request: Request) -> Response:
        repo, revision = request.path_params["repo"], request.path_params["revision"]
        commit, files = cache.revision(repo, revision)
        siblings = [{"rfilename": file.path} for file in files]
        return JSONResponse(
            {
                "id": repo,
                "modelId": repo,
                "sha": commit,
                "private": False,
                "gated": False,
                "disabled": False,
                "siblings": siblings,
            }
        )

    async def tree(request: Request) -> Response:
        repo = request.path_params["repo"]
        revision, _, folder = request.path_params["rest"].partition("/")
        commit, files = cache.revision(repo, revision)
        inside = [file for file in files if not folder or file.path.startswith(folder.rstrip("/") + "/")]
        recursive = request.query_params.get("recursive", "").lower() in ("1", "true")
        entries, folders = [], set()
        for file in inside:
            relative = file.path[len(folder.rstrip("/")) + 1 :] if folder else file.path
            parts = relative.split("/")
            if len(parts) == 1 or recursive:
                entries.append(file.tree_entry())
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                name = "/".join(([folder.rstrip("/")] if folder else []) + parts[:depth])
                folders.add(name)
        listing = [
            {"type": "directory", "oid": hashlib.sha1(name.encode()).hexdigest(), "size": 0, "path": name}
            for name in sorted(folders)
        ]
        return JSONResponse(listing + entries, headers={"X-Repo-Commit": commit})

    async def resolve(request: Request) -> Response:
        repo = request.path_params["repo"]
        revision, _, filename = request.path_params["rest"].partition("/")
        commit, files = cache.revision(repo, revision)
        found = next((file for file in files if file.path == filename), None)
        if found is None:
            raise EntryMissing(f"{filename} of {repo} at {revision} is not in this mirror's cache")
        headers = {"X-Repo-Commit": commit, "ETag": f'"{found.etag}"', "Accept-Ranges": "bytes"}
        if found.is_lfs:
            headers.update({"X-Linked-Etag": f'"{found.etag}"', "X-Linked-Size": str(found.size)})
        return FileResponse(found.blob, headers=headers, media_type="application/octet-stream")

    async def missing(request: Request, exc: Exception) -> Response:
        code = getattr(exc, "code", "EntryNotFound")
        return JSONResponse(
            {"error": str(exc)}, status_code=404, headers={"X-Error-Code": code, "X-Error-Message": str(exc)}
        )

    async def refuse_writes(request: Request) -> Response:
        return JSONResponse({"error": "this mirror is read-only"}, status_code=405)

    routes = [
        Route("/api/models/{repo:path}/revision/{revision:path}", repo_info, methods=["GET"]),
        Route("/api/models/{repo:path}/tree/{rest:path}", tree, methods=["GET"]),
        Route("/{repo:path}/resolve/{rest:path}", resolve, methods=["GET", "HEAD"]),
        Route("/{anything:path}", refuse_writes, methods=["POST", "PUT", "PATCH", "DELETE"]),
    ]
    handlers = {RepoMissing: missing, RevisionMissing: missing, EntryMissing: missing}
    return Starlette(routes=routes, exception_handlers=handlers)
