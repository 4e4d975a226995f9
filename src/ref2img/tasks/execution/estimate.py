"""How long a task takes, as a moving average: the runner adds each run, `wait_time` reads it."""

from __future__ import annotations

import threading


class DurationEstimate:
    def __init__(self, initial_s: float = 10.0, weight: float = 0.2):
        self.seconds = initial_s
        self._weight = weight
        self._lock = threading.Lock()

    def seed(self, durations: list[float]) -> None:
        if durations:
            with self._lock:
                self.seconds = sum(durations) / len(durations)

    def add(self, duration_s: float) -> None:
        with self._lock:
            self.seconds += self._weight * (duration_s - self.seconds)
