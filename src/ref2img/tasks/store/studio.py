"""The studio's sign-in links and sessions (server/studio.py, server/sessions.py use them).

A link's token is kept only as its SHA-256 and is redeemed once, in one UPDATE, before it expires;
a session is a row that signing out ends, so a cookie copied before sign-out stops working on every
node at once.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from sqlalchemy import delete, or_, select, update

from ref2img.tasks.store.models import SignInLinkRow, StudioSessionRow
from ref2img.tasks.store.database import Database, rows_changed

LINK_TTL_S = 600.0


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class StudioStore:
    def __init__(self, db: Database):
        self._db = db

    def issue_link(self, ttl_s: float = LINK_TTL_S) -> str:
        """A new sign-in token (returned once: only its hash is stored). Expired links are swept here."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._db.session() as session:
            session.execute(delete(SignInLinkRow).where(SignInLinkRow.expires_at < now - 86400))
            session.add(SignInLinkRow(token_hash=_digest(token), created_at=now, expires_at=now + ttl_s))
        return token

    def redeem_link(self, token: str) -> bool:
        """True once for a live token; False when unknown, used or expired."""
        now = time.time()
        with self._db.session() as session:
            return bool(
                rows_changed(
                    session.execute(
                        update(SignInLinkRow)
                        .where(
                            SignInLinkRow.token_hash == _digest(token),
                            SignInLinkRow.used_at.is_(None),
                            SignInLinkRow.expires_at > now,
                        )
                        .values(used_at=now)
                    )
                )
            )

    def open_session(self, app_key: str, ttl_s: float) -> str:
        session_id = secrets.token_urlsafe(24)
        now = time.time()
        with self._db.session() as session:
            session.execute(
                delete(StudioSessionRow).where(
                    or_(StudioSessionRow.expires_at < now, StudioSessionRow.ended_at < now - 86400)
                )
            )
            session.add(StudioSessionRow(id=session_id, app_key=app_key, created_at=now, expires_at=now + ttl_s))
        return session_id

    def session_live(self, session_id: str, app_key: str) -> bool:
        with self._db.session(write=False) as session:
            row = session.scalar(select(StudioSessionRow).where(StudioSessionRow.id == session_id))
        return row is not None and row.app_key == app_key and row.ended_at is None and row.expires_at > time.time()

    def end_session(self, session_id: str) -> None:
        with self._db.session() as session:
            session.execute(
                update(StudioSessionRow)
                .where(StudioSessionRow.id == session_id, StudioSessionRow.ended_at.is_(None))
                .values(ended_at=time.time())
            )
