"""When to retry a request and when to poll again: pure functions, shared by Client and AsyncClient."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field

import httpx

from ref2img.client._models import Task

INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 8.0
MAX_RETRY_AFTER_S = 60.0
RETRYABLE_STATUS = {408, 429} | set(range(500, 600))


def retry_delay(retries_taken: int, retry_after: float | None) -> float:
    """Exponential backoff with jitter (up to 25% shorter); a server's Retry-After wins when sane."""
    if retry_after is not None and 0 < retry_after <= MAX_RETRY_AFTER_S:
        return retry_after
    delay = min(INITIAL_RETRY_DELAY_S * 2**retries_taken, MAX_RETRY_DELAY_S)
    return delay * (1 - 0.25 * random.random())


def parse_retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def request_never_left(exc: httpx.HTTPError) -> bool:
    """True when the server cannot have seen the request (safe to resend anything)."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


@dataclass
class PollPlan:
    """Spaces the queries of a task on a server without long-poll (the Tomoviee cloud).

    With a rate measured from two progress reports it expects the end at a known time and polls just
    after it; with only the server's `wait_time` it polls at 80% of it; knowing nothing, it backs off
    from `min_interval` to `blind_cap`. Waits never exceed `informed_cap`, so a wrong estimate costs
    one more request, not a long delay. A 60 s task costs about ten requests and its end is seen
    within a second or so (a fixed 10 s poller: seven requests and five seconds late on average).
    """

    min_interval: float = 1.0
    blind_cap: float = 5.0
    informed_cap: float = 20.0
    backoff: float = 1.5
    _samples: list[tuple[float, int]] = field(default_factory=list)
    _blind_delay: float = 0.0

    def next_delay(self, task: Task, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        measured = self._remaining_from_progress(task, now)
        if measured is not None:
            return min(self.informed_cap, max(0.5, measured + 0.2))
        if task.wait_time and task.wait_time > 0:
            return min(self.informed_cap, max(self.min_interval, 0.8 * float(task.wait_time)))
        self._blind_delay = min(self.blind_cap, max(self.min_interval, self._blind_delay * self.backoff))
        return self._blind_delay

    def _remaining_from_progress(self, task: Task, now: float) -> float | None:
        if task.status.value != 2 or not 0 < task.progress < 100:
            return None
        self._samples.append((now, task.progress))
        first_time, first_progress = self._samples[0]
        if task.progress <= first_progress or now <= first_time:
            return None
        rate = (task.progress - first_progress) / (now - first_time)  # percent per second
        return (100 - task.progress) / rate
