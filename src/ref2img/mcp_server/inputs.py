"""What an MCP tool may read on the caller's word: local files only under the folders the operator
allowed, URLs only through the server's SSRF-guarded fetcher (`SafeHttp`: public addresses, every
redirect checked, size and time caps).

An MCP client is a program acting for someone else (a model, a web page through DNS rebinding), so a
path or URL it sends is treated as the server treats a create body, never opened as given. Outside the
allowed folders a refusal reads exactly like a missing file, so the tools cannot probe what exists. A
server's data dir (every tenant's uploads and results) below an allowed folder stays closed: only an
operator who names the data dir itself (`--allow-dir data`) opens it (lifecycle/data_dir.py).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from ref2img.lifecycle.data_dir import data_dir_between
from ref2img.images import MIB, ImageInputError, data_uri_bytes, decode_image
from ref2img.protocol import ErrorCode
from ref2img.safe_http import SafeHttp, UrlRefused


class InputGuard:
    def __init__(self, allowed_dirs: Iterable[Path], http: SafeHttp):
        self.allowed_dirs = [Path(folder).expanduser().resolve() for folder in allowed_dirs]
        self.http = http

    def read(self, source: str, field: str) -> bytes:
        """The bytes of a data URI, an http(s) URL or a local file, or ImageInputError."""
        if source.startswith("data:"):
            return data_uri_bytes(source, field)
        if source.startswith(("http://", "https://")):
            try:
                return self.http.get(source)
            except UrlRefused as exc:
                raise ImageInputError(field, str(exc), exc.code) from None
        return self._read_file(source, field)

    def load(self, source: str, field: str = "image") -> Image.Image:
        return decode_image(self.read(source, field), field, self.http.max_bytes)

    def is_local_file(self, source: str) -> bool:
        return not source.startswith(("data:", "http://", "https://"))

    def _read_file(self, text: str, field: str) -> bytes:
        # One message for "missing", "outside the folders", "a link leading out" and "not a file".
        refused = ImageInputError(
            field, f"no such file in the allowed folders: {text} (see --allow-dir)", ErrorCode.IMAGE_FETCH_FAILED
        )
        try:
            real = Path(text).expanduser().resolve(strict=True)  # every symlink followed to its end
        except (OSError, RuntimeError, ValueError):
            raise refused from None
        if not any(
            real.is_relative_to(folder) and data_dir_between(folder, real) is None for folder in self.allowed_dirs
        ):
            raise refused  # outside every allowed folder, or inside a server's data dir below one
        try:
            # O_NOFOLLOW: a link swapped in after the check above is not followed.
            descriptor = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            raise refused from None
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            raise refused  # a folder, or a FIFO or device that would block or never end
        with os.fdopen(descriptor, "rb") as handle:
            data = handle.read(self.http.max_bytes + 1)  # the MCP server's cap (`--max-image-mb`), its fetcher's too
        if len(data) > self.http.max_bytes:
            raise ImageInputError(field, f"the file is over {self.http.max_bytes // MIB} MB")
        return data
