"""The `tomoviee` engine: a job forwarded to the Tomoviee cloud with the operator's app key.

create (once: the cloud task's id is kept through `job.handoff` before anything else, so a restarted
worker follows the same cloud task) → follow it with the SDK's cloud polling plan, mirroring progress
and `wait_time` → download the images (the cloud's links expire; ours are served from our storage).

Errors, in the engine's terms (the runner turns them into our statuses):
- the cloud never took the task (unreachable, HTTP 5xx, busy): `RemoteUnavailable`, so a hybrid
  server runs it locally instead;
- the cloud refused it (a parameter, the operator's key): `EngineError` with the cloud's code and message;
- cloud status 4 / 5: `EngineError` with the cloud's reason; status 6: `RemoteTimedOut`.
A query that fails is tried again with backoff until the task's own deadline: the cloud task is still
running, and one lost answer must not lose it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ref2img.client import Client
from ref2img.client import (
    DEFAULT_BASE_URL as DEFAULT_CLOUD_URL,
    APIConnectionError,
    APIError,
    AuthenticationError,
    PollPlan,
    RateLimitError,
    Task,
    retry_delay,
)
from ref2img.engines.base import (
    CancelCheck,
    EngineError,
    EngineOptionError,
    Job,
    JobCancelled,
    PreviewCallback,
    ProgressCallback,
    RemoteTimedOut,
    RemoteUnavailable,
    RepaintJob,
)
from ref2img.protocol import ControlType, TaskStatus

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger("ref2img.cloud")

KEY_VARIABLE, SECRET_VARIABLE = "REF2IMG_CLOUD_APP_KEY", "REF2IMG_CLOUD_APP_SECRET"
CANCEL_CHECK_S = 0.25  # how often a wait between two polls looks at should_cancel
DOWNLOAD_ATTEMPTS = 3


@dataclass(frozen=True)
class CloudCredentials:
    app_key: str
    app_secret: str = field(repr=False)

    @classmethod
    def load(cls, file: str | Path | None = None, environ: Mapping[str, str] = os.environ) -> CloudCredentials:
        """From REF2IMG_CLOUD_APP_KEY / REF2IMG_CLOUD_APP_SECRET, else from `file` (lines `NAME=value`
        with those names, as systemd's EnvironmentFile reads them): never from a flag, which `ps` shows."""
        values = {name: value for name, value in environ.items() if value}  # set and not empty
        if file is not None:
            try:
                lines = Path(file).read_text().splitlines()
            except OSError as exc:
                raise EngineOptionError(f"--cloud-credentials: cannot read {file}: {exc.strerror}") from None
            for line in lines:
                name, sep, value = line.strip().partition("=")
                if sep and not name.startswith("#"):
                    values.setdefault(name.strip().removeprefix("export "), value.strip().strip("'\""))
        key, secret = values.get(KEY_VARIABLE), values.get(SECRET_VARIABLE)
        if not key or not secret:
            raise EngineOptionError(
                f"the tomoviee engine needs the operator's cloud app key: set {KEY_VARIABLE} and "
                f"{SECRET_VARIABLE}, or give --cloud-credentials FILE with those two lines"
            )
        return cls(key, secret)


class TomovieeEngine:
    """`download(url) -> bytes` fetches a result image (the server's guarded HTTP client); `decode`
    turns bytes into an image with our error messages."""

    def __init__(
        self,
        credentials: CloudCredentials,
        download: Callable[[str], bytes],
        decode: Callable[[bytes, str], Image.Image],
        *,
        base_url: str = DEFAULT_CLOUD_URL,
        timeout_s: float = 30.0,
        poll_plan: Callable[[], PollPlan] = PollPlan,
    ):
        self.base_url = base_url
        self._client = Client(
            credentials.app_key, credentials.app_secret, base_url=base_url, server="cloud", timeout=timeout_s
        )
        self._download = download
        self._decode = decode
        self._poll_plan = poll_plan

    def close(self) -> None:
        self._client.close()

    def generate(
        self,
        job: Job,
        on_progress: ProgressCallback = lambda done, total: None,
        should_cancel: CancelCheck = lambda: False,
        on_preview: PreviewCallback | None = None,  # the cloud shows no intermediate images
    ) -> list[Image.Image]:
        if "reference_image" not in job.sources:
            raise EngineError("the tomoviee engine forwards tasks by URL; this job came without its image URLs")
        return self._forward(
            job, lambda: self._client.submit(job.request.forwarded(dict(job.sources))), on_progress, should_cancel
        )

    def repaint(
        self,
        job: RepaintJob,
        on_progress: ProgressCallback = lambda done, total: None,
        should_cancel: CancelCheck = lambda: False,
        on_preview: PreviewCallback | None = None,
    ) -> list[Image.Image]:
        """Image Repaint, forwarded to the cloud's own `tm_redrawing`."""
        if "init_image" not in job.sources:
            raise EngineError("the tomoviee engine forwards tasks by URL; this job came without its image URLs")
        request = job.request.forwarded(dict(job.sources))
        return self._forward(job, lambda: self._client.submit_repaint(request), on_progress, should_cancel)

    def _forward(
        self,
        job: Job | RepaintJob,
        create: Callable[[], str],
        on_progress: ProgressCallback,
        should_cancel: CancelCheck,
    ) -> list[Image.Image]:
        if job.handoff is None:
            raise EngineError("the tomoviee engine forwards tasks by URL; this job came without its handoff")
        remote_id = job.handoff.remote_id
        if remote_id is None:
            if should_cancel():
                raise JobCancelled("cancelled before the task went to the cloud")
            remote_id = self._create(create)
            job.handoff.remember(remote_id)
            log.info("cloud task %s created", remote_id)
        else:
            log.info("following cloud task %s again", remote_id)
        task = self._follow(remote_id, job, on_progress, should_cancel)
        if should_cancel():  # cancelled while the last answer was on its way: nothing to download
            raise JobCancelled("cancelled while the task was in the cloud")
        return [self._fetch(url, index) for index, url in enumerate(task.images)]

    def recognize(self, image: Image.Image, control_type: ControlType) -> Image.Image:
        raise EngineError("control maps are made by a local engine; the tomoviee engine forwards generation only")

    def _create(self, create: Callable[[], str]) -> str:
        try:
            return create()
        except APIConnectionError as exc:
            raise RemoteUnavailable(f"the Tomoviee cloud could not be reached: {exc}") from None
        except RateLimitError as exc:
            raise RemoteUnavailable(f"the Tomoviee cloud is busy ({exc.code}): {exc.msg}") from None
        except AuthenticationError as exc:
            raise EngineError(f"the Tomoviee cloud refused this server's app key ({exc.code}): {exc.msg}") from None
        except APIError as exc:
            if exc.http_status is not None and exc.http_status >= 500:
                raise RemoteUnavailable(f"the Tomoviee cloud failed (HTTP {exc.http_status}): {exc.msg}") from None
            raise EngineError(f"the Tomoviee cloud refused the task ({exc.code}): {exc.msg}") from None

    def _follow(
        self, remote_id: str, job: Job | RepaintJob, on_progress: ProgressCallback, should_cancel: CancelCheck
    ) -> Task:
        assert job.handoff is not None
        plan = self._poll_plan()
        failures = 0
        while True:
            try:
                task = self._client.get(remote_id)
            except (APIConnectionError, APIError) as exc:
                if isinstance(exc, APIError) and (exc.http_status or 0) < 500 and not isinstance(exc, RateLimitError):
                    raise EngineError(f"the Tomoviee cloud answered ({exc.code}): {exc.msg}") from None
                failures += 1
                log.warning("cloud task %s: query failed (%d in a row): %s", remote_id, failures, exc)
                delay = retry_delay(min(failures, 5), getattr(exc, "retry_after", None))
            else:
                failures = 0
                if task.status == TaskStatus.SUCCEEDED:
                    if not task.images:
                        raise EngineError("the Tomoviee cloud ended the task with no images")
                    return task
                _raise_for_final(task)
                on_progress(task.progress, 100)
                if task.wait_time is not None:
                    job.handoff.report_wait(float(task.wait_time))
                delay = plan.next_delay(task)
            _pause(delay, should_cancel)

    def _fetch(self, url: str, index: int) -> Image.Image:
        for attempt in range(DOWNLOAD_ATTEMPTS):
            try:
                return self._decode(self._download(url), f"result image {index + 1}")
            except Exception as exc:  # noqa: BLE001 - any failure to get the bytes: try again, then say why
                if attempt + 1 == DOWNLOAD_ATTEMPTS:
                    raise EngineError(f"the cloud's image {index + 1} could not be downloaded: {exc}") from None
                time.sleep(retry_delay(attempt, None))
        raise AssertionError("unreachable")


def _raise_for_final(task: Task) -> None:
    reason = task.reason or "no reason given"
    if task.status == TaskStatus.FAILED:
        raise EngineError(f"the Tomoviee cloud failed the task: {reason}")
    if task.status == TaskStatus.CANCELLED:
        raise EngineError(f"the Tomoviee cloud closed the task: {reason}")
    if task.status == TaskStatus.TIMED_OUT:
        raise RemoteTimedOut(f"the Tomoviee cloud timed the task out: {reason}")


def _pause(seconds: float, should_cancel: CancelCheck) -> None:
    """Sleep between two polls, looking at should_cancel often: a cancel here is answered at once."""
    end = time.monotonic() + seconds
    while True:
        if should_cancel():
            raise JobCancelled("cancelled while the task was in the cloud")
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(CANCEL_CHECK_S, left))
