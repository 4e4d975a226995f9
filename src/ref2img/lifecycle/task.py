"""What the runner reads of a task and where it writes what happens to it: small protocols that the
store (server) and `MemoryLedger` (in-process runs) both satisfy."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ref2img.protocol import CreateRequest, RepaintRequest, TaskStatus

if TYPE_CHECKING:
    from PIL import Image

    from ref2img.engines.base import Engine, Job, RepaintJob

# A task's kind: the three endpoints of the wire protocol (tm_reference_img2img, tm_reference_img2mask,
# tm_redrawing).
GENERATE, RECOGNIZE, REPAINT = "img2img", "img2mask", "redrawing"
LOCAL, CLOUD = "local", "cloud"  # a task's route: the local GPUs, or the Tomoviee cloud
ROUTES = (LOCAL, CLOUD)


class LedgerError(Exception):
    """The ledger itself failed (a store locked, unreachable or out of disk), not the task: the runner
    lets it out, and the task runs again once its lease expires."""


class TaskView(Protocol):
    """The fields of a task the runner reads."""

    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> str: ...  # GENERATE | RECOGNIZE | REPAINT
    @property
    def request(self) -> str: ...  # the validated request, JSON
    @property
    def app_key(self) -> str: ...  # whose inputs these are (uploads are per key)
    @property
    def route(self) -> str: ...  # LOCAL | CLOUD


class Ledger(Protocol):
    """Where a running task's state goes; every call is made under `owner`'s claim of the task."""

    def set_progress(self, task_id: str, owner: str, progress: int) -> None: ...
    def set_preview(self, task_id: str, owner: str, name: str) -> None: ...
    def should_stop(self, task_id: str, owner: str) -> TaskStatus | None:
        """CANCELLED when cancel was asked, TIMED_OUT past the deadline, else None."""

    def finish(
        self,
        task_id: str,
        owner: str | None,
        status: TaskStatus,
        *,
        result: list[str] | None = None,
        reason: str = "",
        marks: dict[str, Any] | None = None,
    ) -> bool:
        """`marks`: what a success's images carry (C2PA, the watermark's id) and `flagged`, if the filter did."""

    def release(self, task_id: str, owner: str) -> bool:
        """Back to the queue, unfinished: its worker is stopping."""


class Outputs(Protocol):
    """Where images go; each call returns the name the task's result lists."""

    def save_result(self, task_id: str, index: int, image: Image.Image, png: bytes | None = None) -> str:
        """`png`: the image's file as it must be stored, byte for byte (marked); None: encode `image`."""

    def save_preview(self, task_id: str, step: int, image: Image.Image) -> str: ...

    def discard(self, names: list[str]) -> None:
        """Delete these results (a task that could not store all of its images keeps none)."""


class RemoteRoute(Protocol):
    """A route whose tasks another service runs (the Tomoviee cloud): its engine, the job it needs (the
    inputs as URLs that service can fetch, where its task id is kept), and the way back to the local
    queue when the service never took the task."""

    @property
    def engine(self) -> Callable[[], Engine]: ...

    def job(
        self, task: TaskView, owner: str, request: CreateRequest, load: Callable[[str, str], Image.Image]
    ) -> Job: ...

    def repaint_job(
        self, task: TaskView, owner: str, request: RepaintRequest, load: Callable[[str, str], Image.Image]
    ) -> RepaintJob: ...

    def fall_back(self, task_id: str, owner: str) -> bool:
        """Moved back to the local queue (True), or there is no local queue to go back to (False)."""
