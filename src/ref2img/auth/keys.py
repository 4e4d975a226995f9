"""App keys: the secret is shown once and stored only as a salted scrypt hash.

Callbacks are signed with a key derived from the secret (`ref2img.webhooks.signing_key`); the
webhook verifier derives the same key from the app secret, so receivers only ever hold the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from ref2img.protocol import text_problem
from ref2img.tasks.store.models import APP_KEY_WIDTH, AppKeyRow
from ref2img.tasks.store import Store
from ref2img.webhooks import signing_key

_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)


@dataclass(frozen=True)
class NewKey:
    app_key: str
    app_secret: str
    name: str


def create_key(
    store: Store, name: str = "", max_concurrent: int | None = None, per_minute: int | None = None
) -> NewKey:
    app_key = f"ak_{secrets.token_hex(12)}"
    secret = f"sk_{secrets.token_urlsafe(32)}"
    salt = secrets.token_bytes(16)
    store.keys.add(
        AppKeyRow(
            app_key=app_key,
            name=name,
            salt=salt,
            secret_hash=_hash(secret, salt),
            webhook_key=signing_key(secret),
            created_at=time.time(),
            max_concurrent=max_concurrent,
            per_minute=per_minute,
        )
    )
    return NewKey(app_key, secret, name)


class KeyVerifier:
    """Checks app_key + secret. scrypt is slow on purpose, so a verified pair is remembered as a
    SHA-256 digest (never the secret) for a short while; revocation is seen within that time."""

    def __init__(self, store: Store, cache_s: float = 30.0):
        self._store = store
        self._cache_s = cache_s
        self._verified: dict[str, tuple[bytes, float]] = {}
        self._live: dict[str, float] = {}  # app key -> until when it is known live
        self._lock = threading.Lock()

    def verify_cached(self, app_key: str, secret: str) -> bool:
        """True when memory vouches for the pair (cheap: no store, no scrypt). Memory never refuses: a
        wrong secret for a key in use goes through scrypt like any other, so an answer's time does not
        tell which keys were used lately."""
        with self._lock:
            cached = self._verified.get(app_key)
        if cached and cached[1] > time.monotonic():
            return hmac.compare_digest(cached[0], hashlib.sha256(secret.encode()).digest())
        return False

    def verify(self, app_key: str, secret: str) -> bool:
        if self.verify_cached(app_key, secret):
            return True
        digest = hashlib.sha256(secret.encode()).digest()
        now = time.monotonic()
        # A key no store could hold (NUL, over the column's width) is unknown without asking it.
        storable = len(app_key) <= APP_KEY_WIDTH and text_problem(app_key) is None
        row = self._store.keys.get(app_key) if storable else None
        if row is None or row.revoked_at is not None:
            _hash(secret, b"\0" * 16)  # same work either way: timing says nothing about which keys exist
            return False
        if not hmac.compare_digest(_hash(secret, row.salt), row.secret_hash):
            return False
        with self._lock:
            self._verified[app_key] = (digest, now + self._cache_s)
        return True

    def is_live_cached(self, app_key: str) -> bool | None:
        """From memory: True when the key was found live lately, None when the store must be asked."""
        with self._lock:
            until = self._live.get(app_key)
        return True if until and until > time.monotonic() else None

    def is_live(self, app_key: str) -> bool:
        """The key exists and is not revoked (a studio session's key: the cookie vouches for the secret)."""
        if self.is_live_cached(app_key):
            return True
        row = self._store.keys.get(app_key) if len(app_key) <= APP_KEY_WIDTH and text_problem(app_key) is None else None
        if row is None or row.revoked_at is not None:
            return False
        with self._lock:
            self._live[app_key] = time.monotonic() + self._cache_s
        return True

    def forget(self, app_key: str) -> None:
        with self._lock:
            self._verified.pop(app_key, None)
