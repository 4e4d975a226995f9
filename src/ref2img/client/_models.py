"""Typed views of what the server sends back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ref2img.protocol import TaskStatus


@dataclass(frozen=True)
class Task:
    """One task's state, from the query `data` object (also the body of a callback)."""

    task_id: str
    status: TaskStatus
    progress: int = 0
    position: int | None = None
    wait_time: float | None = None
    reason: str = ""
    params: str = ""
    images: list[str] = field(default_factory=list)  # result URLs (`images_path`, else `image_path`)
    masks: list[str] = field(default_factory=list)  # recognition results (`mask_path`)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        return self.status.is_final

    @property
    def succeeded(self) -> bool:
        return self.status == TaskStatus.SUCCEEDED

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Task:
        result = data.get("result") or ""
        decoded: dict[str, Any] = {}
        if isinstance(result, str) and result.strip():
            try:
                decoded = json.loads(result)
            except ValueError:
                decoded = {}
        elif isinstance(result, dict):  # lenient: some gateways send the object itself
            decoded = result
        progress = data.get("progress", data.get("process", 0))
        return cls(
            task_id=str(data.get("task_id", "")),
            status=TaskStatus(int(data.get("status", 1))),
            progress=int(progress or 0),
            position=data.get("position"),
            wait_time=data.get("wait_time"),
            reason=str(data.get("reason") or ""),
            params=str(data.get("params") or ""),
            images=list(decoded.get("images_path") or decoded.get("image_path") or []),
            masks=list(decoded.get("mask_path") or []),
            raw=data,
        )
