"""Delivering callbacks from the outbox: signed (Standard Webhooks), retried with backoff until a 2xx,
the same `webhook-id` and body on every attempt. Rows live in the store, so delivery survives a
restart. API nodes send them (they know the public URL the result links need); workers only queue."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable

from ref2img.tasks.store import Store
from ref2img.webhooks import signed_headers

log = logging.getLogger("ref2img.callbacks")

# Seconds after each failed attempt (the Standard Webhooks example schedule, about 3 days).
RETRY_DELAYS_S = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)

PostFunction = Callable[[str, bytes, dict[str, str]], int]  # (url, body, headers) -> HTTP status
RenderFunction = Callable[[str], dict]  # task id -> the callback body (the query's `data`)


class CallbackSender:
    def __init__(
        self, store: Store, post: PostFunction, render: RenderFunction, retry_scale: float = 1.0, poll_s: float = 1.0
    ):
        self.store = store
        self.post = post
        self.render = render
        self.retry_scale = retry_scale
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ref2img-callbacks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.store.outbox.due_feed.notify()
        if self._thread:
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            seen = self.store.outbox.due_feed.version
            try:
                sent = self.deliver_due()
            except Exception:  # keep delivering through store hiccups
                log.exception("callback delivery failed")
                sent = 0
            if not sent:
                self.store.outbox.due_feed.wait(seen, self.poll_s)

    def deliver_due(self) -> int:
        messages = self.store.outbox.claim()
        for message in messages:
            self._attempt(message)
        return len(messages)

    def _attempt(self, message) -> None:
        key_row = self.store.keys.get(message.app_key)
        if key_row is None:
            self.store.outbox.failed(message.id, "the app key no longer exists", None)
            return
        if message.payload is None:
            message.payload = json.dumps(self.render(message.task_id))
            self.store.outbox.keep_payload(message.id, message.payload)
        body = message.payload.encode()
        try:
            status = self.post(message.url, body, signed_headers(message.id, body, key_row.webhook_key))
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        except Exception as exc:  # noqa: BLE001 - any network failure is a failed attempt
            status, error = 0, f"{type(exc).__name__}: {exc}"
        if not error:
            self.store.outbox.delivered(message.id)
            return
        attempt = message.attempts  # attempts before this one
        if status == 410 or attempt >= len(RETRY_DELAYS_S):
            log.warning("callback %s given up after %d attempts: %s", message.id, attempt + 1, error)
            self.store.outbox.failed(message.id, error, None)
            return
        delay = RETRY_DELAYS_S[attempt] * self.retry_scale * random.uniform(0.8, 1.2)
        self.store.outbox.failed(message.id, error, time.time() + delay)
