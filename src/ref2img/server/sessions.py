"""Studio sessions: a signed cookie (itsdangerous) that holds an app key and the session's CSRF token.

The browser never holds the app secret. The cookie is HttpOnly and SameSite=Strict; every request that
changes something must also carry the CSRF token in `X-CSRF-Token` (the page reads it from
`GET /studio/session`, which another site cannot read). The signing key is a deployment secret in the
store, so a session works on every API node and survives restarts. Signing out clears the cookie;
revoking the key ends its sessions within the verifier's cache time.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

COOKIE = "ref2img_session"
CSRF_HEADER = "x-csrf-token"
MAX_AGE_S = 7 * 24 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Session:
    app_key: str
    csrf: str

    def allows(self, request: Request) -> bool:
        """Reads need the cookie alone; anything that changes state also needs the CSRF header."""
        if request.method in SAFE_METHODS:
            return True
        return hmac.compare_digest(request.headers.get(CSRF_HEADER, ""), self.csrf)


class Sessions:
    def __init__(self, secret: bytes, secure_cookie: bool):
        self._serializer = URLSafeTimedSerializer(secret, salt="ref2img-studio-session")
        self._secure = secure_cookie

    @staticmethod
    def new(app_key: str) -> Session:
        return Session(app_key, secrets.token_urlsafe(24))

    def start(self, response: Response, session: Session) -> None:
        """Set the session's cookie on `response`."""
        cookie = self._serializer.dumps({"k": session.app_key, "c": session.csrf})
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
        return Session(str(fields["k"]), str(fields["c"]))

    def end(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=self._secure)
