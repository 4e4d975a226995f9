"""The worker side of one process, wired from the settings: store, storage, image inputs, engine, queue
and the context the runner needs. `ref2img serve` puts its HTTP side on top (server/services.py);
`ref2img worker` runs it alone (worker_process.py)."""

from __future__ import annotations

from typing import Any

from pathlib import Path

from ref2img.images import image_cap_bytes
from ref2img.lifecycle import CLOUD, LOCAL, RunContext
from ref2img.safe_http import SafeHttp
from ref2img.settings import ServerSettings
from ref2img.tasks.execution.cloud_route import CloudRoute
from ref2img.tasks.execution.engine_pool import EnginePool, preset_providers
from ref2img.tasks.execution.engine_provider import (
    ENGINES,
    EngineProvider,
    local_engine_factory,
    preset_name,
)
from ref2img.tasks.execution.estimate import DurationEstimate
from ref2img.tasks.execution.worker import Worker
from ref2img.tasks.inputs import ImageResolver
from ref2img.tasks.private_files import mark_data_dir, private_dir
from ref2img.tasks.queue import TaskQueue, open_queue
from ref2img.tasks.storage import open_storage
from ref2img.tasks.store import Store


CLOUD_WORKER_KIND = "worker-cloud"  # the owner-id prefix of a fleet's cloud followers (see `worker`)


class Backend:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        data_dir = private_dir(Path(settings.data_dir))
        mark_data_dir(data_dir)
        self.store = Store(settings.db_url or f"sqlite:///{data_dir / 'ref2img.db'}")
        self.storage = open_storage(settings.storage or data_dir, self.store.files.shared_secret("file-url-signing"))
        # This node's image cap, on every way in: fetches (here), uploads and decodes (`images.max_bytes`).
        self.http = SafeHttp(
            allow_private=settings.allow_private_urls, max_bytes=image_cap_bytes(settings.max_image_mb)
        )
        self.images = ImageResolver(self.store, self.storage, self.http)
        self.estimate = DurationEstimate()
        self.estimate.seed(self.store.tasks.recent_durations())
        self.pool = self._presets()
        local = self.pool.providers[self.pool.default]
        self.cloud_engine = EngineProvider(ENGINES["tomoviee"](settings, self.http)) if settings.uses_cloud else None
        # This server's engine (health, create checks): the cloud's when it is the only one; no local
        # model is ever loaded then.
        self.engine = self.cloud_engine if settings.cloud_only and self.cloud_engine else local
        self.queue: TaskQueue = open_queue(settings.queue_url, self.store.tasks, settings.task_timeout_s)
        cloud = self._cloud_route()
        self.marks = settings.provenance.marks(dev_folder=data_dir / "provenance")
        self.content = settings.provenance.content(mode_of_key=self.store.keys.content_filter_of)
        self.context = RunContext(
            ledger=self.store.tasks,
            outputs=self.storage,
            engine=self.engine,
            engine_for=None if settings.cloud_only else self.pool.using,
            load_image=self.images.fetch,
            remote_routes={CLOUD: cloud} if cloud is not None else {},
            on_success=self.estimate.add,
            marks=self.marks.apply if self.marks is not None else None,
            content=self.content,
        )

    def _presets(self) -> EnginePool:
        """The local presets this node serves: the default one, and those a request may pick (`model`)."""
        settings = self.settings
        if settings.engine_factory is not None:  # an engine the caller built (tests, embedding)
            return EnginePool({settings.model: EngineProvider(settings.engine_factory)}, settings.model)
        models = [settings.model, *settings.more_models]
        providers = preset_providers(
            models, lambda model: local_engine_factory(settings, model), lambda model: preset_name(settings, model)
        )
        return EnginePool(providers, next(iter(providers)), settings.max_loaded, settings.max_parked)

    @property
    def preset_names(self) -> list[str]:
        return self.pool.names

    def loras(self) -> dict[str, Path]:
        """The LoRAs a request may name: the `.safetensors` files of the operator's --lora-dir folders."""
        from ref2img.engines.local.loras import find_loras

        return find_loras(self.settings.lora_dirs)

    def loras_problem(self, loras: Any) -> str | None:
        """Why a request's `loras` cannot run here (one its folders do not hold, by name), or None; read
        before the task is queued."""
        from ref2img.engines.base import EngineError
        from ref2img.engines.local.loras import resolve_loras

        try:
            resolve_loras(loras or (), self.settings.lora_dirs)
        except EngineError as exc:
            return str(exc)
        return None

    def _cloud_route(self) -> CloudRoute | None:
        if self.cloud_engine is None:
            return None
        settings = self.settings
        input_ttl_s = int(settings.task_timeout_s) + 3600  # the cloud may fetch them late in the task's life

        def forwardable(source: str, field: str, app_key: str, task_id: str) -> str:
            return self.images.forwardable(source, field, app_key, task_id, settings.cloud_reachable_url, input_ttl_s)

        return CloudRoute(
            self.cloud_engine,
            self.store.tasks,
            forwardable,
            back_to_local=None if settings.cloud_only else self._fall_back_to_local,
        )

    def _fall_back_to_local(self, task_id: str, owner: str) -> bool:
        if not self.store.tasks.fall_back(task_id, owner):
            return False
        task = self.store.tasks.get(task_id)
        self.queue.send(task_id, LOCAL, task.preset if task is not None else None)
        return True

    @property
    def routes(self) -> dict[str, int]:
        """The routes this deployment's workers take, with the threads each gets in one process."""
        settings = self.settings
        if settings.cloud_only:
            return {CLOUD: settings.cloud_workers}
        if settings.uses_cloud:
            return {LOCAL: settings.workers, CLOUD: settings.cloud_workers}
        return {LOCAL: settings.workers}

    def worker(self, route: str = LOCAL) -> Worker:
        embedded = self.settings.embedded
        return Worker(
            self.store.tasks,
            self.store.fleet,
            self.context,
            kind=("embedded" if embedded else "worker") + ("-cloud" if route == CLOUD else ""),
            lease_s=self.settings.lease_s,
            record=not embedded,
            route=route,
            presets=tuple(self.pool.names) if route == LOCAL and not self.settings.cloud_only else (),
        )

    def close(self) -> None:
        self.queue.close()
        self.store.close()

    def preset_summary(self, model: str | None = None) -> dict[str, Any]:
        """A preset this node runs (default: its default one), for people and clients (`GET /v1/info`):
        its name, family and description, and whether its weights are random (`tiny`: noise out)."""
        from ref2img.engines.base import EngineError
        from ref2img.engines.local.presets import resolve_preset

        if self.settings.cloud_only:
            return {"name": "tomoviee", "family": None, "description": "the Tomoviee cloud", "random_weights": False}
        model = model or self.settings.model
        try:
            preset = resolve_preset(model, self.settings.model_overrides)
        except EngineError:
            return {"name": model, "family": None, "description": "", "random_weights": False}
        random = preset.name.startswith("tiny")  # `ref2img models tiny` names its presets so
        return {
            "name": preset.name,
            "family": preset.family,
            "description": preset.description,
            "random_weights": random,
        }

    def presets_summary(self) -> list[dict[str, Any]]:
        """Every preset a request may name (`model`), the default first, each with its state."""
        states = self.pool.states()
        models = [self.settings.model, *self.settings.more_models]
        return [
            {
                **self.preset_summary(model),
                "name": name,
                "default": name == self.pool.default,
                "state": states.get(name, "not loaded"),
            }
            for model, name in zip(models, self.pool.names, strict=False)
        ]

    def controls_problem(self, count: int, with_subject: bool, model: str | None = None) -> tuple[str, str] | None:
        """(field, message) when this node's local model cannot run `count` controls (with the subject), read
        from its preset's family before anything is queued; None when it can, or when the preset cannot be
        read here (a worker then says why it cannot run it)."""
        from ref2img.engines.base import EngineError
        from ref2img.engines.local.families import controls_problem
        from ref2img.engines.local.presets import resolve_preset

        try:
            family = resolve_preset(model or self.settings.model, self.settings.model_overrides).family
        except EngineError:
            return None
        return controls_problem(family, count, with_subject)
