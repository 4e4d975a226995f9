"""Studio sessions: a signed cookie (itsdangerous) that names a session row in the store, its app key
and its CSRF token.

The browser never holds the app secret. The cookie is HttpOnly and SameSite=Strict; every request that
changes something must also carry the CSRF token in `X-CSRF-Token` (the page reads it from
`GET /studio/session`, which another site cannot read). The signing key is a deployment secret in the
store, so a session works on every API node and survives restarts. Signing out ends the session's row,
so a copy of the cookie taken before stops working on every node at once; revoking the key ends its
sessions within the verifier's cache time.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from ref2img.tasks.store.studio import StudioStore

COOKIE = "ref2img_session"
CSRF_HEADER = "x-csrf-token"
MAX_AGE_S = 7 * 24 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Session:
    id: str
    app_key: str
    csrf: str

    def allows(self, request: Request) -> bool:
        """Reads need the cookie alone; anything that changes state also needs the CSRF header."""
        if request.method in SAFE_METHODS:
            return True
        return hmac.compare_digest(request.headers.get(CSRF_HEADER, ""), self.csrf)


class Sessions:
    def __init__(self, secret: bytes, secure_cookie: bool, store: StudioStore):
        self._serializer = URLSafeTimedSerializer(secret, salt="ref2img-studio-session")
        self._secure = secure_cookie
        self._store = store

    def new(self, app_key: str) -> Session:
        """A session recorded in the store (a write: call it off the event loop)."""
        return Session(self._store.open_session(app_key, MAX_AGE_S), app_key, secrets.token_urlsafe(24))

    def is_live(self, session: Session) -> bool:
        """Not signed out nor expired (a store read: call it off the event loop)."""
        return self._store.session_live(session.id, session.app_key)

    def start(self, response: Response, session: Session) -> None:
        """Set the session's cookie on `response`."""
        cookie = self._serializer.dumps({"s": session.id, "k": session.app_key, "c": session.csrf})
        response.set_cookie(
            COOKIE, cookie, max_age=MAX_AGE_S, httponly=True, samesite="strict", secure=self._secure, path="/"
        )

    def read(self, request: Request) -> Session | None:
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return None
        try:
            fields = self._serializer.loads(cookie, max_age=MAX_AGE_S)
        except BadSignature:  # tampered, from another deployment, or expired
            return None
        if not isinstance(fields, dict) or "s" not in fields:  # a cookie of an earlier version: sign in again
            return None
        return Session(str(fields["s"]), str(fields["k"]), str(fields["c"]))

    def end(self, response: Response, session: Session | None) -> None:
        """End the session in the store (a write: call it off the event loop) and clear its cookie."""
        if session is not None:
            self._store.end_session(session.id)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=self._secure)
