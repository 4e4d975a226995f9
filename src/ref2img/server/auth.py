"""Tomoviee auth: `X-App-Key: K` plus `Authorization: Basic base64(K:secret)`; both must agree."""

from __future__ import annotations

import base64
import binascii

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ref2img.protocol import ErrorCode
from ref2img.server.errors import ApiError


def basic_token(app_key: str, app_secret: str) -> str:
    return "Basic " + base64.b64encode(f"{app_key}:{app_secret}".encode()).decode()


def _unauthorized(why: str) -> ApiError:
    return ApiError(ErrorCode.UNAUTHORIZED, f"unauthorized: {why}", 401, {"WWW-Authenticate": "Basic"})


def parse_basic(header: str | None) -> tuple[str, str]:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "basic" or not token:
        raise _unauthorized("send Authorization: Basic base64(app_key:app_secret)")
    try:
        app_key, sep, secret = base64.b64decode(token.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise _unauthorized("the Basic token is not valid base64") from None
    if not sep or not app_key or not secret:
        raise _unauthorized("the Basic token must hold app_key:app_secret")
    return app_key, secret


async def authenticate(request: Request) -> str:
    """FastAPI dependency: the verified app key (raises 140013 / HTTP 401 otherwise)."""
    app_key, secret = parse_basic(request.headers.get("authorization"))
    header_key = request.headers.get("x-app-key")
    if header_key is None:
        raise _unauthorized("the X-App-Key header is missing")
    if header_key != app_key:
        raise _unauthorized("X-App-Key does not match the Authorization credentials")
    verifier = request.app.state.services.verifier
    verified = verifier.verify_cached(app_key, secret)
    if verified is None:  # scrypt and a store read: off the event loop
        verified = await run_in_threadpool(verifier.verify, app_key, secret)
    if not verified:
        raise _unauthorized("unknown app key or wrong secret")
    return app_key
