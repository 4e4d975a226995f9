"""uvicorn's h11 protocol with a deadline on each request's head and on its body.

uvicorn times only the idle wait between two requests on a kept-alive connection: a client that sends
its request line and headers a byte at a time (slow loris) holds its connection, and a slot of the
server, for as long as it likes (300 such connections were all still open after minutes). Here a
request's head must be complete within `header_timeout_s` of its first byte, or of the connection's
opening, and its body within `body_timeout_s` of the head's end, or the connection is closed (the route
reading the body sees the client gone: an INFO line, no answer).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 60.0  # the largest body (--max-body-mb, 30 MB by default) at 0.5 MB/s


class HeaderDeadlineProtocol(H11Protocol):
    header_timeout_s = HEADER_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._body_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.IDLE:  # a head still arriving (or the next one on a kept-alive link)
            if self._head_deadline is None:
                self._arm()
            return
        self._disarm()
        if state is h11.SEND_BODY:
            if self._body_deadline is None:
                self._body_deadline = self.loop.call_later(self.body_timeout_s, self._body_too_slow)
        else:
            self._disarm_body()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_body()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._disarm()  # uvicorn's keep-alive timeout takes over until the next request's first byte

    def _arm(self) -> None:
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _disarm_body(self) -> None:
        if self._body_deadline is not None:
            self._body_deadline.cancel()
            self._body_deadline = None

    def _body_too_slow(self) -> None:
        self._body_deadline = None
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self.transport.close()

    def _too_slow(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def with_deadlines(header_s: float, body_s: float = BODY_TIMEOUT_S) -> type[HeaderDeadlineProtocol]:
    """The protocol class for uvicorn's `http=` with these deadlines."""
    return type(
        "HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": header_s, "body_timeout_s": body_s}
    )
