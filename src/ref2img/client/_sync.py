"""`Client`: the blocking SDK. `AsyncClient` (in `_async.py`) mirrors it call for call."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ref2img.client import _core as core
from ref2img.client._exceptions import APIConnectionError, UnsupportedError
from ref2img.client._models import Task
from ref2img.protocol import Control, ControlType, CreateRequest, RepaintRequest


class Client:
    """Talks to the Tomoviee cloud (default) or to a `ref2img serve` server, unchanged.

    Credentials and base URL come from the arguments or REF2IMG_APP_KEY, REF2IMG_APP_SECRET and
    REF2IMG_BASE_URL. `timeout` and `max_retries` apply per request and can be overridden per call.
    `server` is "cloud" or "ref2img" when the host does not tell (a gateway in front of the cloud):
    against the cloud, `wait()` polls with a schedule instead of long-polling, and uploads and
    cancels are refused with UnsupportedError.
    """

    def __init__(
        self,
        app_key: str | None = None,
        app_secret: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = core.DEFAULT_TIMEOUT_S,
        max_retries: int = core.DEFAULT_MAX_RETRIES,
        server: str | None = None,
        http_client: httpx.Client | None = None,
    ):
        self._config = core.ClientConfig.resolve(app_key, app_secret, base_url, timeout, max_retries, server)
        self._http = http_client or httpx.Client(timeout=timeout)

    def __repr__(self) -> str:
        return core.client_repr(type(self).__name__, self._config)

    @property
    def base_url(self) -> str:
        return self._config.base_url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict | None = None,
        files: dict | None = None,
        headers: dict | None = None,
        idempotent: bool = True,
        timeout: float | None = None,
        max_retries: int | None = None,
    ) -> Any:
        config = self._config
        retries = config.max_retries if max_retries is None else max_retries
        attempt = 0
        while True:
            try:
                response = self._http.request(
                    method,
                    config.base_url + path,
                    json=json,
                    params=params,
                    files=files,
                    headers={**config.headers(), **(headers or {})},
                    timeout=config.timeout if timeout is None else timeout,
                )
            except httpx.HTTPError as exc:
                decision = core.decide_retry(attempt, retries, idempotent, error=exc)
                if not decision.retry:
                    raise APIConnectionError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            else:
                decision = core.decide_retry(attempt, retries, idempotent, response=response)
                if not decision.retry:
                    return core.envelope_data(response)
            time.sleep(decision.delay)
            attempt += 1

    # -- tasks ----------------------------------------------------------------------------------
    def create(
        self,
        prompt: str,
        reference_image: core.ImageInput,
        control_type: str | int | ControlType = "0",
        *,
        control_intensity: float = 0.5,
        width: int = 1024,
        height: int = 1024,
        batch_size: int = 1,
        init_image: core.ImageInput | None = None,
        callback: str | None = None,
        params: str | None = None,
        seed: int | None = None,
        negative_prompt: str | None = None,
        controls: list[Control | dict] | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        model: str | None = None,
        loras: list[dict] | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
    ) -> str:
        """Create a task; returns its id. Local files and PIL images are uploaded first (ref2img servers).
        `controls`: several controls at once (`ref2img.Control`, or dicts of its fields; our extension),
        with `control_type` "2" to keep the reference's subject too. `steps`, `guidance_scale`: the
        model's denoising steps and guidance instead of its preset's; `model`: which of a server's presets
        (`GET /v1/info`) makes the images; `loras`: `[{"name", "weight"}]` of the server's LoRAs (`GET
        /v1/loras`) (our extensions; ref2img servers)."""
        fields = {
            "control_intensity": control_intensity,
            "width": width,
            "height": height,
            "batch_size": batch_size,
            "init_image": init_image,
            "callback": callback,
            "params": params,
            "seed": seed,
            "negative_prompt": negative_prompt,
            "controls": controls,
            "steps": steps,
            "guidance_scale": guidance_scale,
            "model": model,
            "loras": loras,
        }
        request, uploads = core.create_request(prompt, reference_image, control_type, fields)
        return self.submit(
            request, uploads=uploads, idempotency_key=idempotency_key, timeout=timeout, max_retries=max_retries
        )

    def submit(
        self,
        request: CreateRequest,
        *,
        uploads: dict[str, core.ImageInput] | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
    ) -> str:
        """Create a task from a ready request (`ref2img.CreateRequest`, every wire field); returns its id.
        Image fields that hold a local file path, or are given in `uploads`, are uploaded first."""
        body, pending = core.submit_body(request, uploads, self._config)
        body = core.with_images(body, {field: self.upload(value) for field, value in pending.items()})
        return self._create(core.CREATE_PATH, body, idempotency_key, timeout, max_retries)

    def _create(self, path: str, body: dict, idempotency_key: str | None, timeout, max_retries) -> str:
        # Our server dedupes on Idempotency-Key, so a create can be resent safely; the cloud cannot,
        # so there a create is resent only when it never left this machine.
        headers, idempotent = {}, False
        if not self._config.is_cloud or idempotency_key:
            headers["Idempotency-Key"] = idempotency_key or core.new_idempotency_key()
            idempotent = not self._config.is_cloud
        data = self._request(
            "POST", path, json=body, headers=headers, idempotent=idempotent, timeout=timeout, max_retries=max_retries
        )
        return data["task_id"]

    def get(self, task_id: str, *, wait: float | None = None, timeout: float | None = None) -> Task:
        """The task's state now; with `wait` (ref2img servers) as soon as it changes, ≤ 30 s."""
        body: dict[str, Any] = {"task_id": task_id}
        if wait:
            body["wait"] = wait
            timeout = max(timeout or self._config.timeout, wait + 10)
        return Task.from_data(self._request("POST", core.QUERY_PATH, json=body, timeout=timeout))

    def wait(self, task_id: str, *, timeout: float = 600.0, on_progress: Callable[[Task], None] | None = None) -> Task:
        """Block until the task ends. Returns it at status 3; raises TaskFailedError / TaskCancelledError /
        TaskTimedOutError for 4 / 5 / 6, WaitTimeoutError after `timeout` seconds."""
        loop = core.WaitLoop(task_id, timeout, self._config.long_poll, on_progress)
        while True:
            asked = loop.poll_wait()
            started = time.monotonic()
            task = self.get(task_id, wait=asked)
            took = time.monotonic() - started
            loop.report(task)
            pause = loop.observe(task, asked, took)
            if pause is None:
                return task
            if pause:
                time.sleep(pause)

    def generate(
        self,
        prompt: str,
        reference_image: core.ImageInput,
        control_type: str | int | ControlType = "0",
        *,
        timeout: float = 600.0,
        on_progress: Callable[[Task], None] | None = None,
        **create_args,
    ) -> Task:
        """create() then wait(): the finished task, with its image URLs in `.images`."""
        task_id = self.create(prompt, reference_image, control_type, **create_args)
        return self.wait(task_id, timeout=timeout, on_progress=on_progress)

    def cancel(self, task_id: str) -> Task:
        if self._config.is_cloud:
            raise UnsupportedError("the Tomoviee cloud API has no cancel call")
        return Task.from_data(self._request("POST", core.CANCEL_PATH, json={"task_id": task_id}))

    def recognize(
        self, image: core.ImageInput, control_type: str | int | ControlType, *, timeout: float = 600.0
    ) -> Task:
        """The control map (edge, pose or depth) of an image: a finished task with `.masks`."""
        body = core.recognize_body(image, control_type)
        for field, value in core.upload_needed(body, self._config).items():
            body[field] = self.upload(value)
        task_id = self._create(core.RECOGNIZE_PATH, body, None, None, None)
        return self.wait(task_id, timeout=timeout)

    def create_repaint(
        self,
        prompt: str,
        image: core.ImageInput,
        mask: core.ImageInput | None = None,
        *,
        callback: str | None = None,
        params: str | None = None,
        seed: int | None = None,
        negative_prompt: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
    ) -> str:
        """Create an Image Repaint task (`tm_redrawing`): `mask` white where `image` is redrawn, at its size;
        without one the whole image is redrawn from the prompt. Returns the task id."""
        fields = {"callback": callback, "params": params, "seed": seed, "negative_prompt": negative_prompt}
        request, uploads = core.repaint_request(prompt, image, mask, fields)
        return self.submit_repaint(
            request, uploads=uploads, idempotency_key=idempotency_key, timeout=timeout, max_retries=max_retries
        )

    def submit_repaint(
        self,
        request: RepaintRequest,
        *,
        uploads: dict[str, core.ImageInput] | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
    ) -> str:
        """Create an Image Repaint task from a ready request (`ref2img.RepaintRequest`); returns its id."""
        body, pending = core.submit_body(request, uploads, self._config)
        body = core.with_images(body, {field: self.upload(value) for field, value in pending.items()})
        return self._create(core.REPAINT_PATH, body, idempotency_key, timeout, max_retries)

    def repaint(
        self,
        prompt: str,
        image: core.ImageInput,
        mask: core.ImageInput | None = None,
        *,
        timeout: float = 600.0,
        on_progress: Callable[[Task], None] | None = None,
        **create_args,
    ) -> Task:
        """create_repaint() then wait(): the finished task, with the repainted image's URL in `.images`."""
        task_id = self.create_repaint(prompt, image, mask, **create_args)
        return self.wait(task_id, timeout=timeout, on_progress=on_progress)

    def upload(self, image: core.ImageInput) -> str:
        """Upload a local file, PIL image or bytes to a ref2img server; returns a URL tasks accept."""
        if self._config.is_cloud:
            raise UnsupportedError("the Tomoviee cloud has no upload call; it needs a public image URL")
        name, data, content_type = core.upload_payload(image)
        return self._request("POST", core.FILES_PATH, files={"file": (name, data, content_type)})["url"]

    def download(self, task: Task, directory: str | Path) -> list[Path]:
        """Save a finished task's images (or masks) into `directory`; returns the paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, url in enumerate(task.images or task.masks):
            path = core.download_path(directory, task.task_id, index, url)
            try:
                with self._http.stream("GET", url, timeout=self._config.timeout) as response:
                    response.raise_for_status()
                    with path.open("wb") as handle:
                        for chunk in response.iter_bytes():
                            handle.write(chunk)
            except httpx.HTTPError as exc:
                raise APIConnectionError(f"download of image {index + 1} failed: {exc}") from exc
            paths.append(path)
        return paths

    def token(self) -> str:
        """The `Basic …` token from the token endpoint (a credential: keep it secret)."""
        return self._request(
            "GET", core.TOKEN_PATH, params={"access_key": self._config.app_key, "secret": self._config.app_secret}
        )["access_token"]
