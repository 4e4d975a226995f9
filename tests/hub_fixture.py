"""A Hugging Face hub cache written by hand, in the cache's own layout (blobs named by their etag,
snapshots of symlinks, refs/main), for the mirror to serve: a fixture hub without the internet."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".onnx", ".ckpt", ".pth", ".msgpack", ".png")


def write_repo(cache: Path, repo_id: str, files: dict[str, bytes], commit: str | None = None) -> str:
    """Put `files` (repo path -> bytes) in `cache` as revision `commit` of `repo_id`, on branch main."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    commit = commit or secrets.token_hex(20)
    for path, data in files.items():
        if path.endswith(LFS_SUFFIXES):  # an LFS file's etag is its sha256; a git file's, its blob id
            etag = hashlib.sha256(data).hexdigest()
        else:
            etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        blob = folder / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = folder / "snapshots" / commit / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return commit


def stand_in(path: str) -> bytes:
    """Small bytes of their own for each path (distinct, so that a mix-up shows)."""
    return hashlib.sha256(path.encode()).digest() * (8 if path.endswith(LFS_SUFFIXES) else 2)
