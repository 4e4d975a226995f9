"""Failed-authentication rate limiting, per app key and per client address.

Each failure is remembered for `window_s`; once `limit` failures of one key or one address fall
inside the window, further attempts from it are refused with 680005 / HTTP 429 + Retry-After
*before* any secret is checked, so guessing costs the server nothing (scrypt is slow on purpose).
Counters live in this process: each API node of a fleet limits on its own.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque


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


class AuthThrottle:
    def __init__(self, limit: int = 20, window_s: float = 60.0):
        self._by_key = FailureWindow(limit, window_s)
        self._by_address = FailureWindow(limit, window_s)
        self._lock = threading.Lock()

    def retry_after(self, app_key: str, address: str) -> int:
        """Whole seconds to wait before this key or address may try again; 0 when it may now."""
        now = time.monotonic()
        with self._lock:
            wait = max(self._by_key.retry_after(app_key, now), self._by_address.retry_after(address, now))
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, app_key: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            if app_key:
                self._by_key.add(app_key, now)
            self._by_address.add(address, now)
