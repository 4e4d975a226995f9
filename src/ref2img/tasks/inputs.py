"""Input images for a task: a `data:` URI, a signed URL of our own files or a `stored:` name of one (read
from storage, for the owning key only), or an http(s) URL fetched through SafeHttp. Decoding is
`ref2img.images`'.

An image sent inline is kept as a file of its key's, like an upload, and the task's row names it
(`stored:uploads/<id>.<ext>`, `keep_inline`): a row stays small however large its images, and the
retention period deletes the file like any upload. The file's id comes from the key and the image's bytes,
so the same body sent again (an Idempotency-Key's retry) names the same file.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from PIL import Image

from ref2img.images import ImageInputError, data_uri_bytes, decode_data_uri, decode_image, open_image
from ref2img.protocol import ErrorCode
from ref2img.safe_http import SafeHttp, UrlRefused
from ref2img.tasks.storage import Storage
from ref2img.tasks.store import Store, StoreConflict

FILES_PREFIX = "/v1/files/"
STORED = "stored:"  # a task's reference to a file of its key's, by its storage name
IMAGE_FIELDS = ("reference_image", "init_image", "mask_url")  # and each control's `image`
_EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}


class ImageResolver:
    def __init__(self, store: Store, storage: Storage, http: SafeHttp):
        self.store = store
        self.storage = storage
        self.http = http

    @property
    def max_bytes(self) -> int:
        """The node's image cap (`--max-image-mb`), the fetcher's too."""
        return self.http.max_bytes

    def check(self, url: str, field: str, app_key: str) -> None:
        """At create time: refuse what could never be fetched or used, before the task is queued. A data
        URI is at hand, so its header is read now (format, pixel count, shape: 680003 at once)."""
        if url.startswith("data:"):
            open_image(data_uri_bytes(url, field), field, self.max_bytes)
            return
        if self._stored(url, field, app_key) is not None or self._own_file(url, field, app_key) is not None:
            return
        try:
            self.http.check(url)
        except UrlRefused as exc:
            raise ImageInputError(field, str(exc), exc.code) from None

    def fetch(self, url: str, field: str, app_key: str) -> Image.Image:
        if url.startswith("data:"):
            return decode_data_uri(url, field, self.max_bytes)
        own = self._stored(url, field, app_key) or self._own_file(url, field, app_key)
        if own is not None:
            return decode_image(self.storage.read(own), field, self.max_bytes)
        try:
            return decode_image(self.http.get(url), field, self.max_bytes)
        except UrlRefused as exc:
            raise ImageInputError(field, str(exc), exc.code) from None

    def needs_publishing(self, url: str, field: str, app_key: str) -> bool:
        """True for what only this server can hand to another service (a data URI, our own file): those
        reach the cloud as signed URLs of this server, so they need a public URL."""
        return url.startswith(("data:", STORED)) or self._own_file(url, field, app_key) is not None

    def forwardable(self, url: str, field: str, app_key: str, task_id: str, base_url: str | None, ttl_s: int) -> str:
        """A URL another service (the Tomoviee cloud) can fetch the image from: a public URL as given; a
        data URI (stored under the task) or one of our files as a signed, expiring URL of `base_url`."""
        own = (
            None
            if url.startswith("data:")
            else self._stored(url, field, app_key) or self._own_file(url, field, app_key)
        )
        if own is None and not url.startswith("data:"):
            return url
        if base_url is None:
            raise ImageInputError(
                field,
                "the cloud fetches images by URL, and this server has no --public-url for it to reach",
                ErrorCode.INVALID_PARAMETER,
            )
        if own is None:  # a data URI: kept as a file under the task, for the cloud to fetch
            data = data_uri_bytes(url, field)
            own = self.storage.save_input(
                task_id, field, data, (open_image(data, field, self.max_bytes).format or "png").lower()
            )
        return self.storage.signed_url(base_url, own, ttl_s)

    def keep_inline(self, payload: dict[str, Any], app_key: str) -> dict[str, Any]:
        """`payload` (a task's request) with every `data:` image kept as a file of `app_key`'s and named
        `stored:<name>` in its place; the images were checked at the door (`check`)."""
        kept = dict(payload)
        for field in IMAGE_FIELDS:
            if isinstance(kept.get(field), str) and kept[field].startswith("data:"):
                kept[field] = self._keep(kept[field], field, app_key)
        if isinstance(kept.get("controls"), list):
            kept["controls"] = [
                {**control, "image": self._keep(control["image"], f"controls[{index}].image", app_key)}
                if isinstance(control, dict) and str(control.get("image") or "").startswith("data:")
                else control
                for index, control in enumerate(kept["controls"])
            ]
        return kept

    def _keep(self, uri: str, field: str, app_key: str) -> str:
        data = data_uri_bytes(uri, field)
        extension = _EXTENSIONS.get(open_image(data, field, self.max_bytes).format or "", "png")
        file_id = "f" + hashlib.sha256(f"{app_key}\n".encode() + data).hexdigest()[:24]
        name = f"uploads/{file_id}.{extension}"
        if self.store.files.get(file_id) is None:
            self.storage.write(name, data)
            with contextlib.suppress(StoreConflict):  # the same image of the same key, kept at the same moment
                self.store.files.add(file_id, app_key, name)
        return STORED + name

    def _stored(self, url: str, field: str, app_key: str) -> str | None:
        """The storage name of a `stored:` reference to a file of this key's; None for other URLs."""
        if not url.startswith(STORED):
            return None
        name = url[len(STORED) :]
        if not self._owned_by(name, app_key):
            raise ImageInputError(field, "no such file", ErrorCode.IMAGE_FETCH_FAILED)
        return name

    def _own_file(self, url: str, field: str, app_key: str) -> str | None:
        """The storage name when `url` is a signed URL we issued to this key, else None."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.path.startswith(FILES_PREFIX):
            return None
        query = parse_qs(parts.query)
        name = unquote(parts.path[len(FILES_PREFIX) :])
        expires, signature = query.get("expires", [""])[0], query.get("sig", [""])[0]
        if not self.storage.check_signature(name, expires, signature):
            return None  # not ours (or expired): treated as any other URL
        if not self._owned_by(name, app_key):
            raise ImageInputError(field, "no such file", ErrorCode.IMAGE_FETCH_FAILED)
        return name

    def _owned_by(self, name: str, app_key: str) -> bool:
        kind, _, rest = name.partition("/")
        if kind == "uploads":
            row = self.store.files.get(rest.split(".")[0])
            return row is not None and row.app_key == app_key
        if kind == "results":
            return self.store.tasks.get(rest.split("/")[0], app_key) is not None
        return False
