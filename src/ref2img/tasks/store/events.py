"""A change counter that threads bump and both threads and asyncio tasks can wait on.

Workers (threads) change task state; long-poll requests (asyncio) and idle workers wait for it.
Waiters always re-read the store after waking: the feed says *that* something changed, not what.
"""

from __future__ import annotations

import asyncio
import threading


class ChangeFeed:
    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._version = 0
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = set()

    @property
    def version(self) -> int:
        return self._version

    def notify(self) -> None:
        with self._condition:
            self._version += 1
            self._condition.notify_all()
            waiters, self._async_waiters = self._async_waiters, set()
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)

    def wait(self, seen: int, timeout: float) -> int:
        """Block a thread until the version passes `seen` or the time runs out."""
        with self._condition:
            self._condition.wait_for(lambda: self._version != seen, timeout=timeout)
            return self._version

    async def wait_async(self, seen: int, timeout: float) -> int:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._condition:
            if self._version != seen:
                return self._version
            entry = (loop, future)
            self._async_waiters.add(entry)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            with self._condition:
                self._async_waiters.discard(entry)
        return self._version


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
