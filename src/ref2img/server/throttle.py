"""Failed-authentication rate limiting, per (app key, client address) and per client address.

Each failure is remembered for `window_s`; once `limit` failures of one key from one address, or of
one address with any keys, fall inside the window, that pair or address is *throttled*: its requests
are still verified, but one at a time in the whole process (`one_at_a_time`, scrypt is slow on
purpose), and those that fail are answered 680005 / HTTP 429 + Retry-After rather than 401. A request
waiting for its turn waits on the event loop, never in a thread of the shared pool: a flood of throttled
sign-ins cannot starve the server's other requests of threads.

What this gives, as the big identity providers do it: a request whose secret verifies is never
refused; knowing an app key (not its secret) does not let anyone lock its owner out from elsewhere,
since failures count per (key, address); and a flood of guesses costs at most one core's scrypt.
Counters live in this process: each API node of a fleet limits on its own. The client address is the
connection's, unless `ref2img serve --trusted-proxy` names the proxy whose X-Forwarded-For to believe.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool


class FailureWindow:
    """Timestamps of recent failures per name, for at most `max_names` names (oldest dropped first),
    so a flood of made-up keys cannot grow memory without bound."""

    def __init__(self, limit: int, window_s: float, max_names: int = 10_000):
        self.limit = limit
        self.window_s = window_s
        self.max_names = max_names
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, name: str, now: float) -> deque[float] | None:
        times = self._failures.get(name)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[name]
            return None
        return times

    def retry_after(self, name: str, now: float) -> float:
        """Seconds until `name` may try again; 0 when it may now."""
        times = self._recent(name, now)
        if times is None or len(times) < self.limit:
            return 0.0
        return times[-self.limit] + self.window_s - now

    def add(self, name: str, now: float) -> None:
        times = self._recent(name, now)
        if times is None:
            times = self._failures[name] = deque(maxlen=self.limit)
            while len(self._failures) > self.max_names:
                self._failures.popitem(last=False)
        times.append(now)
        self._failures.move_to_end(name)


class LaneBusy(Exception):
    """A throttled verification waited too long for its turn."""


class AuthThrottle:
    LANE_WAIT_S = 10.0  # a throttled request waits this long at most for its turn to be verified

    def __init__(self, limit: int = 20, window_s: float = 60.0):
        self._by_pair = FailureWindow(limit, window_s)
        self._by_address = FailureWindow(limit, window_s)
        self._lock = threading.Lock()
        self._lane = asyncio.Semaphore(1)  # awaited, not blocked on: a waiter holds no thread

    def retry_after(self, app_key: str, address: str) -> int:
        """Whole seconds until this key from this address, and this address, are out of the throttle;
        0 when neither is throttled."""
        now = time.monotonic()
        with self._lock:
            wait = max(
                self._by_pair.retry_after(f"{app_key}\n{address}", now), self._by_address.retry_after(address, now)
            )
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, app_key: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            if app_key:
                self._by_pair.add(f"{app_key}\n{address}", now)
            self._by_address.add(address, now)

    async def one_at_a_time(self, verify: Callable[[], bool]) -> bool:
        """Run a throttled request's verification in the single lane (LaneBusy after LANE_WAIT_S); only
        the one whose turn it is takes a thread."""
        try:
            await asyncio.wait_for(self._lane.acquire(), self.LANE_WAIT_S)
        except TimeoutError:
            raise LaneBusy from None
        try:
            return await run_in_threadpool(verify)
        finally:
            self._lane.release()
