"""`ref2img serve` (an API node, or the whole embedded server) and `ref2img worker` (a fleet's GPU worker)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer

from ref2img.cli._common import (
    BlocklistOption,
    C2paCertOption,
    C2paFlag,
    C2paKeyOption,
    ClassifierOption,
    ContentFilterFlag,
    WatermarkFlag,
    provenance_options,
    LoraDirOption,
    EXIT_USAGE,
    CloudCredentialsOption,
    CloudUrlOption,
    CloudWorkersOption,
    EngineOption,
    ApproximateOption,
    CompileAfterOption,
    CompileOption,
    DataDirOption,
    DbOption,
    DeviceOption,
    DtypeOption,
    LeaseOption,
    MaxImageOption,
    OffloadOption,
    PartOption,
    QueueOption,
    StorageOption,
    fail,
    parse_parts,
    quiet_libraries,
)
from ref2img.engines.local.presets import DEFAULT_PRESET, preset_names
from ref2img.settings import ServerSettings

# Every flag's default is the setting's own (settings.py): spelled once.
DEFAULTS = ServerSettings


ModelsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--model",
        "-m",
        metavar="PRESET|DIR|FILE",
        help=f"preset ({preset_names()}), a tiny-model DIR or a preset file; repeat it to "
        "serve several, which a request picks by name (`model`): the first is the default",
    ),
]
MaxLoadedOption = Annotated[
    int,
    typer.Option(
        "--max-loaded",
        metavar="N",
        min=0,
        help="presets held loaded at once, the least recently used unloaded for another; 0: auto (all on "
        "a CPU, on a GPU as many as its free memory holds)",
    ),
]

MaxParkedOption = Annotated[
    int,
    typer.Option(
        "--max-parked",
        metavar="N",
        min=0,
        help="presets set aside on the CPU, not unloaded, when another needs the GPU (a switch back moves "
        "them up instead of loading from disk); 0: always unload",
    ),
]


def serve(
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", help="port to listen on")] = 8080,
    data_dir: DataDirOption = Path("ref2img-data"),
    models: ModelsOption = None,
    max_loaded: MaxLoadedOption = DEFAULTS.max_loaded,
    max_parked: MaxParkedOption = DEFAULTS.max_parked,
    part: PartOption = None,
    lora_dirs: LoraDirOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    offload: OffloadOption = "none",
    compile_kind: CompileOption = "none",
    compile_after: CompileAfterOption = DEFAULTS.compile_after,
    approximate: ApproximateOption = DEFAULTS.approximate,
    workers: Annotated[
        int, typer.Option("--workers", metavar="N", min=1, max=64, help="worker threads (one engine, shared)")
    ] = DEFAULTS.workers,
    allow_private_urls: Annotated[
        bool, typer.Option("--allow-private-urls", help="let image and callback URLs reach loopback/private addresses")
    ] = False,
    queue_limit: Annotated[
        int,
        typer.Option("--queue-limit", metavar="N", min=1, help="queued tasks before create answers 680005 / HTTP 429"),
    ] = DEFAULTS.queue_limit,
    retention_days: Annotated[
        float,
        typer.Option(
            "--retention-days",
            metavar="DAYS",
            min=0,
            help="finished tasks with their images, and uploads, are deleted this long after (0: kept forever)",
        ),
    ] = DEFAULTS.retention_days,
    key_queue_limit: Annotated[
        int | None,
        typer.Option(
            "--key-queue-limit",
            metavar="N",
            min=0,
            help="queued tasks one key may hold, its share of the queue (default: a quarter of the queue limit; 0: no share)",
        ),
    ] = None,
    task_timeout: Annotated[
        float, typer.Option("--task-timeout", metavar="SECONDS", min=1, help="seconds from create to status 6")
    ] = DEFAULTS.task_timeout_s,
    public_url: Annotated[
        str | None,
        typer.Option(
            "--public-url", metavar="URL", help="base of result URLs sent in callbacks (default: http://HOST:PORT)"
        ),
    ] = None,
    callback_retry_scale: Annotated[float, typer.Option("--callback-retry-scale", hidden=True)] = 1.0,
    auth_failure_limit: Annotated[
        int,
        typer.Option(
            "--auth-failure-limit",
            metavar="N",
            min=1,
            help="failed authentications per app key and per client address per minute before 680005 / HTTP 429",
        ),
    ] = DEFAULTS.auth_failure_limit,
    max_body_mb: Annotated[
        int,
        typer.Option(
            "--max-body-mb", metavar="MB", min=1, max=1024, help="largest request body (JSON or upload) in MB"
        ),
    ] = 30,
    max_image_mb: MaxImageOption = DEFAULTS.max_image_mb,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option(
            "--trusted-proxy",
            metavar="IP",
            help="a reverse proxy whose X-Forwarded-For names the client (repeatable; default: none is believed)",
        ),
    ] = None,
    header_timeout: Annotated[
        float,
        typer.Option(
            "--header-timeout", metavar="SECONDS", min=0.1, help="a request's headers must arrive within this"
        ),
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option(
            "--body-timeout",
            metavar="SECONDS",
            min=0.1,
            help="a request's body must arrive within this of its headers (a dripped body is dropped)",
        ),
    ] = 60.0,
    max_connections: Annotated[
        int,
        typer.Option(
            "--max-connections", metavar="N", min=1, help="open connections and requests at once; past it, HTTP 503"
        ),
    ] = 1000,
    db: DbOption = None,
    queue: QueueOption = "embedded",
    storage: StorageOption = None,
    lease: LeaseOption = DEFAULTS.lease_s,
    engine: EngineOption = "local",
    overflow: Annotated[
        Literal["tomoviee"] | None,
        typer.Option("--overflow", help="send the tasks that would wait too long here to the Tomoviee cloud"),
    ] = None,
    overflow_after: Annotated[
        float,
        typer.Option(
            "--overflow-after",
            metavar="SECONDS",
            min=0,
            help="with --overflow: a task whose estimated wait on the local GPUs is over this goes to the cloud",
        ),
    ] = DEFAULTS.overflow_after_s,
    cloud_url: CloudUrlOption = DEFAULTS.cloud_url,
    cloud_credentials: CloudCredentialsOption = None,
    cloud_workers: CloudWorkersOption = DEFAULTS.cloud_workers,
    c2pa: C2paFlag = True,
    watermark: WatermarkFlag = True,
    c2pa_cert: C2paCertOption = None,
    c2pa_key: C2paKeyOption = None,
    content_filter: ContentFilterFlag = "off",
    blocklist: BlocklistOption = None,
    image_classifier: ClassifierOption = None,
) -> None:
    """Run the Tomoviee-compatible server: embedded (SQLite, workers in this process) or, with
    --queue redis://… --db postgresql+psycopg://…, an API node of a fleet of `ref2img worker`s.
    With --engine tomoviee it forwards every task to the Tomoviee cloud; with --overflow tomoviee, only
    the tasks that would wait too long on the local GPUs."""
    import uvicorn

    from ref2img.server import create_app
    from ref2img.server.http_protocol import with_deadlines

    if engine == "tomoviee" and overflow:
        fail("--overflow: the engine is already the cloud (--engine tomoviee)", EXIT_USAGE)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model, *more_models = models or [DEFAULT_PRESET]
    # An API node with no --model offers what its workers hold (a worker's --model), whatever that is.
    follow_workers = not models and queue != "embedded" and engine == "local"
    settings = node_settings(
        data_dir=data_dir,
        engine_options=(model, part, device, dtype, offload, compile_kind, compile_after, approximate),
        lora_dirs=tuple(str(folder) for folder in lora_dirs or ()),
        more_models=tuple(more_models),
        max_loaded=max_loaded,
        max_parked=max_parked,
        allow_private_urls=allow_private_urls,
        task_timeout_s=task_timeout,
        db_url=db,
        queue_url=queue,
        storage=storage,
        lease_s=lease,
        cloud=(engine, cloud_url, cloud_credentials, cloud_workers, public_url),
        # only an API node's:
        workers=workers,
        queue_limit=queue_limit,
        key_queue_limit=key_queue_limit,
        retention_days=retention_days,
        follow_workers=follow_workers,
        public_url=public_url or f"http://{host}:{port}",
        callback_retry_scale=callback_retry_scale,
        auth_failure_limit=auth_failure_limit,
        max_body_bytes=max_body_mb * 1024 * 1024,  # an upload over it is refused first: raise both for big images
        max_image_mb=max_image_mb,
        studio_link=True,
        overflow=overflow,
        overflow_after_s=overflow_after,
        provenance=provenance_options(
            c2pa, watermark, c2pa_cert, c2pa_key, content_filter, blocklist, image_classifier
        ),
    )
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        http=with_deadlines(header_timeout, body_timeout),
        limit_concurrency=max_connections,
        # The client address comes from X-Forwarded-For only when a named proxy sent it: uvicorn
        # believes loopback by default, which let any local client pick the address it was counted as.
        proxy_headers=bool(trusted_proxy),
        forwarded_allow_ips=",".join(trusted_proxy) if trusted_proxy else "",
    )
    exit_now()


def exit_now() -> NoReturn:
    """The server has stopped: its workers gave their running tasks back and the store is closed. Exit
    now rather than wait seconds for the native libraries' teardown (torch, onnxruntime) after the last
    line is logged, which looked like a hang."""
    logging.getLogger("ref2img").info("stopped")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def worker(
    queue: Annotated[str, typer.Option("--queue", metavar="URL", envvar="REF2IMG_QUEUE", help="redis://host:6379/0")],
    db: Annotated[
        str, typer.Option("--db", metavar="URL", envvar="REF2IMG_DB", help="postgresql+psycopg://user@host/db")
    ],
    storage: Annotated[
        str,
        typer.Option(
            "--storage",
            metavar="DIR|s3://…",
            envvar="REF2IMG_STORAGE",
            help="a directory every node mounts, or s3://bucket/prefix",
        ),
    ],
    models: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            metavar="PRESET|DIR|FILE",
            help=f"preset ({preset_names()}), a tiny-model DIR or a preset file; repeat it to "
            "hold several: this worker takes the generations naming one of them, and says so to the API nodes",
        ),
    ] = None,
    max_loaded: MaxLoadedOption = DEFAULTS.max_loaded,
    max_parked: MaxParkedOption = DEFAULTS.max_parked,
    part: PartOption = None,
    lora_dirs: LoraDirOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    offload: OffloadOption = "none",
    compile_kind: CompileOption = "none",
    compile_after: CompileAfterOption = DEFAULTS.compile_after,
    approximate: ApproximateOption = DEFAULTS.approximate,
    allow_private_urls: Annotated[bool, typer.Option("--allow-private-urls")] = False,
    task_timeout: Annotated[float, typer.Option("--task-timeout", metavar="SECONDS", min=1)] = DEFAULTS.task_timeout_s,
    lease: LeaseOption = DEFAULTS.lease_s,
    max_image_mb: MaxImageOption = DEFAULTS.max_image_mb,
    data_dir: DataDirOption = Path("ref2img-worker"),
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    engine: EngineOption = "local",
    cloud_url: CloudUrlOption = DEFAULTS.cloud_url,
    cloud_credentials: CloudCredentialsOption = None,
    cloud_workers: CloudWorkersOption = DEFAULTS.cloud_workers,
    public_url: Annotated[
        str | None,
        typer.Option(
            "--public-url",
            metavar="URL",
            help="--engine tomoviee: the API nodes' public URL, the base of the signed input URLs the cloud fetches",
        ),
    ] = None,
    c2pa: C2paFlag = True,
    watermark: WatermarkFlag = True,
    c2pa_cert: C2paCertOption = None,
    c2pa_key: C2paKeyOption = None,
    content_filter: ContentFilterFlag = "off",
    blocklist: BlocklistOption = None,
    image_classifier: ClassifierOption = None,
) -> None:
    """Run one worker of a scale-out fleet: loads the engine once, then takes tasks from Redis. A GPU
    worker takes the local queue (and needs no public URL: the API nodes send the callbacks); with
    --engine tomoviee it follows the cloud queue's tasks instead."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model, *more_models = models or [DEFAULT_PRESET]
    settings = node_settings(
        data_dir=data_dir,
        engine_options=(model, part, device, dtype, offload, compile_kind, compile_after, approximate),
        lora_dirs=tuple(str(folder) for folder in lora_dirs or ()),
        more_models=tuple(more_models),
        max_loaded=max_loaded,
        max_parked=max_parked,
        allow_private_urls=allow_private_urls,
        task_timeout_s=task_timeout,
        db_url=db,
        queue_url=queue,
        storage=storage,
        lease_s=lease,
        max_image_mb=max_image_mb,
        cloud=(engine, cloud_url, cloud_credentials, cloud_workers, public_url),
        provenance=provenance_options(
            c2pa, watermark, c2pa_cert, c2pa_key, content_filter, blocklist, image_classifier
        ),
    )
    # After the flags are checked: bad input exits at once, before torch and diffusers are imported.
    quiet_libraries()
    from ref2img.engines.base import EngineError
    from ref2img.tasks.execution.worker_process import run_worker_process

    try:
        run_worker_process(settings)
    except ValueError as exc:  # a flag at odds with the others: bad input
        fail(str(exc), EXIT_USAGE)
    except EngineError as exc:
        fail(str(exc))
    exit_now()


def node_settings(
    *,
    engine_options: tuple[str, list[str] | None, str | None, str | None, str, str, int, str],
    cloud: tuple[str, str, Path | None, int, str | None],
    queue_url: str,
    **fields: Any,
):
    """The settings of one node, built alike by `serve` and `worker`: the engine's flags (model, parts,
    device, dtype, offload, compile, compile-after, approximate), the Tomoviee cloud's (engine, URL, credentials, followers, the
    explicit --public-url: the only base the cloud can fetch input images from), the queue (checked
    against the registry here: an unknown one is bad input), and the rest as ServerSettings fields."""
    from ref2img.settings import ServerSettings
    from ref2img.tasks.queue import QUEUES, queue_scheme

    if queue_scheme(queue_url) not in QUEUES:
        fail(f"--queue: unknown queue {queue_url!r}; one of embedded, redis://…, rediss://…", EXIT_USAGE)
    model, part, device, dtype, offload, compile_kind, compile_after, approximate = engine_options
    engine, cloud_url, credentials, cloud_workers, reachable_url = cloud
    return ServerSettings(
        model=model,
        model_overrides=parse_parts(part),
        device=device,
        dtype=dtype,
        offload=offload,
        compile=compile_kind,
        compile_after=compile_after,
        approximate=approximate,
        queue_url=queue_url,
        engine=engine,
        cloud_url=cloud_url,
        cloud_credentials_file=str(credentials) if credentials else None,
        cloud_workers=cloud_workers,
        cloud_reachable_url=reachable_url,
        **fields,
    )
