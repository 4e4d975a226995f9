"""One deployment's settings, shared by every kind of node: `ref2img serve` (an API node, or the whole
embedded server) and `ref2img worker`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ref2img.client import DEFAULT_BASE_URL as DEFAULT_CLOUD_URL
from ref2img.engines.local.presets import DEFAULT_PRESET
from ref2img.images import DEFAULT_MAX_IMAGE_MB
from ref2img.provenance.options import ProvenanceOptions

if TYPE_CHECKING:
    from ref2img.engines.base import Engine
    from ref2img.engines.local.options import LocalOptions


@dataclass
class ServerSettings:
    data_dir: Path
    model: str = DEFAULT_PRESET
    more_models: tuple[str, ...] = ()  # --model given again: presets a request may pick by name (`model`)
    max_loaded: int = 0  # presets held loaded at once; 0 = auto (all on a CPU; on a GPU, as many as fit)
    max_parked: int = 2  # presets set aside on the CPU (a fast switch back) before one is unloaded
    model_overrides: dict[str, str] = field(default_factory=dict)
    lora_dirs: tuple[str, ...] = ()  # --lora-dir: the operator's folders a request's `loras` name files in
    device: str | None = None
    dtype: str | None = None  # float32 | float16 | bfloat16; default per device
    offload: str = "none"  # none | model | sequential | auto
    compile: str = "none"  # none | regional | full (torch.compile, kernels cached on disk)
    compile_after: int = 1  # --compile-after: calls of a shape before one compiles for it
    approximate: str = ""  # --approximate: output-changing speed levers, none by default
    workers: int = 1
    allow_private_urls: bool = False
    queue_limit: int = 100
    retention_days: float = 30.0  # finished tasks, their files, and uploads are deleted past it; 0: kept forever
    # A fleet's API node started with no --model: the presets it offers are those its live workers advertise
    # (the default: the one most of them hold, ties by name), never a preset of its own that none may hold.
    follow_workers: bool = False
    # One key's share of the queue: its queued tasks past this are refused (429), so that no key fills the
    # queue for the others. None: a quarter of queue_limit (`key_share`); 0: no share (one key may fill it).
    key_queue_limit: int | None = None
    task_timeout_s: float = 1800.0
    public_url: str | None = None  # base of result URLs in callbacks (API nodes send them); default: loopback
    lease_s: float = 30.0
    callback_retry_scale: float = 1.0
    max_body_bytes: int = 30 * 1024 * 1024
    max_image_mb: int = DEFAULT_MAX_IMAGE_MB  # --max-image-mb: the largest input image file, however it comes
    auth_failure_limit: int = 20  # failed authentications per key and per client address per minute
    studio_link: bool = False  # print the studio's sign-in link at start (`ref2img serve` does)
    engine_factory: Callable[[], Engine] | None = None  # default: the local diffusers engine
    db_url: str | None = None  # default: SQLite in the data dir; postgresql+psycopg://… for scale-out
    queue_url: str = "embedded"  # or redis://…: tasks go to `ref2img worker` processes
    storage: str | Path | None = None  # default: the data dir; scale-out: a shared directory or s3://bucket/prefix
    # The Tomoviee cloud (docs/cloud.md): the only engine (engine="tomoviee"), or where the local queue's
    # overflow goes (overflow="tomoviee": tasks that would wait over overflow_after_s).
    engine: str = "local"  # local | tomoviee
    overflow: str | None = None  # None | tomoviee
    overflow_after_s: float = 60.0
    cloud_url: str = DEFAULT_CLOUD_URL
    cloud_credentials_file: str | None = None  # else REF2IMG_CLOUD_APP_KEY / REF2IMG_CLOUD_APP_SECRET
    cloud_workers: int = 8  # cloud tasks followed at once (threads that mostly wait on HTTP)
    cloud_reachable_url: str | None = None  # an explicit --public-url: the base of input URLs the cloud fetches
    provenance: ProvenanceOptions = field(default_factory=ProvenanceOptions)  # marks and the content filter

    @property
    def key_share(self) -> int | None:
        """Queued tasks one key may hold (None: no share)."""
        if self.key_queue_limit is None:
            return max(1, self.queue_limit // 4)
        return self.key_queue_limit or None

    @property
    def embedded(self) -> bool:
        return self.queue_url.lower() in ("embedded", "embedded://")  # tasks/queue: the registry's key

    def local_options(self, model: str | None = None) -> LocalOptions:
        """The local engine's options for `model` (default: the default preset), with this node's flags."""
        from ref2img.engines.local.options import LocalOptions

        return LocalOptions(
            model or self.model,
            device=self.device,
            dtype=self.dtype,
            offload=self.offload,
            compile=self.compile,
            compile_after=self.compile_after,
            approximate=self.approximate,
            overrides=dict(self.model_overrides or {}),
            lora_dirs=self.lora_dirs,
        )

    @property
    def cloud_only(self) -> bool:
        return self.engine == "tomoviee"

    @property
    def uses_cloud(self) -> bool:
        return self.cloud_only or self.overflow == "tomoviee"
