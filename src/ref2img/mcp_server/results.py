"""What a backend hands the tools: finished images on disk, with where they came from."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# (done, total, message): MCP progress, sent only when the client asked for it with a progress token.
# The message starts with the task id, so that an agent can `cancel_task` while it waits.
Report = Callable[[float, float, str], Awaitable[None]]


@dataclass(frozen=True)
class Generated:
    task_id: str
    files: list[Path]  # full size, on this machine
    seeds: list[int]  # image i was made with seeds[i]: it alone can be made again
    urls: list[str] = field(default_factory=list)  # where the server or cloud serves them (remote backends)


@dataclass(frozen=True)
class TaskState:
    """A task as `get_task` and `cancel_task` answer: the wire protocol's words."""

    task_id: str
    status: int
    status_name: str
    progress: int
    position: int | None = None
    reason: str = ""
    files: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items()}
