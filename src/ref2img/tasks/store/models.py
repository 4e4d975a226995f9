"""The tables: tasks (which are also the embedded queue), app keys, uploaded files, callback outbox."""

from __future__ import annotations

from sqlalchemy import Boolean, Float, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


APP_KEY_WIDTH = 64  # the longest app key any store can hold


class Base(DeclarativeBase):
    pass


class TaskRow(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("app_key", "idempotency_key", name="uq_tasks_idempotency"),
        Index("ix_tasks_queue", "status", "created_at"),
        Index("ix_tasks_owner", "app_key", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    app_key: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # "img2img" | "img2mask"
    status: Mapped[int] = mapped_column(Integer, default=1)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(Text, default="")
    request: Mapped[str] = mapped_column(Text)  # the validated request, JSON
    params: Mapped[str | None] = mapped_column(Text, nullable=True)
    callback: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list of stored file names
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    deadline: Mapped[float] = mapped_column(Float)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    preview: Mapped[str | None] = mapped_column(String(255), nullable=True)  # the latest step preview (stored name)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # scale-out: last queue message
    route: Mapped[str] = mapped_column(String(16), default="local", server_default="local")  # "local" | "cloud"
    remote_id: Mapped[str | None] = mapped_column(String(128), nullable=True)  # the cloud's task id, once created
    remote_wait_s: Mapped[float | None] = mapped_column(Float, nullable=True)  # the cloud's last wait_time
    fallbacks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # cloud → local moves
    # A generation's preset (the one it names, or the API node's default): a fleet's queue per preset.
    # None: any local worker runs it (control maps, Image Repaint).
    preset: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # JSON: what a success's images carry ({"c2pa": true, "watermark": "1a2b3c4d"}) and `flagged`, with
    # the content filter's reason, when it flagged them.
    marks: Mapped[str | None] = mapped_column(Text, nullable=True)
    watermark: Mapped[str | None] = mapped_column(String(8), nullable=True, index=True)  # its images' id


class AppKeyRow(Base):
    __tablename__ = "app_keys"

    app_key: Mapped[str] = mapped_column(String(APP_KEY_WIDTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    salt: Mapped[bytes] = mapped_column(LargeBinary)
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary)  # scrypt(secret, salt)
    webhook_key: Mapped[bytes] = mapped_column(LargeBinary)  # HMAC(secret, label): signs callbacks
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True)  # queued + running; None: no limit
    per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)  # tasks created in any 60 s
    content_filter: Mapped[str | None] = mapped_column(String(8), nullable=True)  # its own mode; None: the server's


class FileRow(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    app_key: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255))  # path under the storage root
    created_at: Mapped[float] = mapped_column(Float)


class OutboxRow(Base):
    __tablename__ = "callback_outbox"
    __table_args__ = (Index("ix_outbox_due", "delivered_at", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the webhook-id, stable across retries
    task_id: Mapped[str] = mapped_column(String(40))
    app_key: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[str | None] = mapped_column(Text, nullable=True)  # rendered on the first attempt
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    failed_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")


class WorkerRow(Base):
    """One worker process (scale-out) or server (embedded): heartbeat and throughput, for /metrics
    and for `wait_time` estimates that know how many workers share the queue."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(120), primary_key=True)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    tasks_done: Mapped[int] = mapped_column(Integer, default=0)
    busy_s: Mapped[float] = mapped_column(Float, default=0.0)
    steps: Mapped[int] = mapped_column(Integer, default=0)
    step_s: Mapped[float] = mapped_column(Float, default=0.0)  # seconds spent in engine steps
    presets: Mapped[str] = mapped_column(Text, default="", server_default="")  # those it holds, comma-separated


class SecretRow(Base):
    """Server-wide secrets every node must share (the key that signs file URLs)."""

    __tablename__ = "secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)


class SignInLinkRow(Base):
    """A studio sign-in link's token (as its SHA-256: the store never holds a usable one): single use,
    short-lived."""

    __tablename__ = "sign_in_links"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class StudioSessionRow(Base):
    """A signed-in browser: the cookie names this row, so that signing out ends it on every node."""

    __tablename__ = "studio_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_key: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
