"""The `ref2img` command line. Engine commands import torch lazily, so `--help` stays instant."""

from __future__ import annotations

import dataclasses
import json
import secrets
import sys
import time
from datetime import datetime, UTC
from pathlib import Path
from typing import Annotated, Literal, NoReturn

import typer
from rich.console import Console

from ref2img.images import ImageInputError, load_image
from ref2img.protocol import ControlType, ParameterError, parse_create_request

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  help="Images from a reference image and a prompt: edge, pose, subject or depth control.")


def _print_version(value: bool) -> None:
    if value:
        from ref2img import __version__

        print(f"ref2img {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="print the version and exit")] = False) -> None:
    """Images from a reference image and a prompt: edge, pose, subject or depth control."""


models_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="List, download and build the local engine's models.")
app.add_typer(models_app, name="models")
keys_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Create, list and revoke the server's app keys.")
app.add_typer(keys_app, name="keys")

err = Console(stderr=True)
out = Console()

EXIT_USAGE = 2  # bad input
EXIT_FAILURE = 1  # the engine or a model failed

ControlOption = Annotated[str, typer.Option("--control", "-c", metavar="MODE", help="edge|pose|subject|depth, or 0..3")]
ModelOption = Annotated[str, typer.Option("--model", "-m", metavar="PRESET|DIR|FILE", help="preset (sdxl, sdxl-fast, sd15), a tiny-model DIR or a preset file")]
PartOption = Annotated[list[str] | None, typer.Option("--part", metavar="KEY=VALUE", help="override one preset part: KEY=VALUE (e.g. base=/models/sd15)")]
DataDirOption = Annotated[Path, typer.Option("--data-dir", metavar="DIR", envvar="REF2IMG_DATA_DIR",
                                             help="server data: SQLite store, images, keys")]
DbOption = Annotated[str | None, typer.Option("--db", metavar="URL", envvar="REF2IMG_DB", help="sqlite:///… (default: in the data dir) or postgresql+psycopg://…")]
QueueOption = Annotated[str, typer.Option("--queue", metavar="URL", envvar="REF2IMG_QUEUE", help="embedded, or redis://… for scale-out")]
StorageOption = Annotated[str | None, typer.Option("--storage", metavar="DIR|s3://…", envvar="REF2IMG_STORAGE", help="image directory (default: the data dir; scale-out: shared) or s3://bucket/prefix")]
LeaseOption = Annotated[float, typer.Option("--lease", metavar="SECONDS", min=1, help="seconds a worker holds a task between heartbeats")]
DeviceOption = Annotated[str | None, typer.Option("--device", metavar="DEVICE", help="cuda, cuda:1, mps or cpu (default: the fastest present)")]
DtypeOption = Annotated[Literal["float32", "float16", "bfloat16"] | None, typer.Option(
    "--dtype", help="weights and activations (default: bfloat16 on CUDA, float16 on MPS, float32 on CPU)")]
OffloadOption = Annotated[Literal["none", "model", "sequential", "auto"], typer.Option(
    "--offload", help="small GPUs: keep weights on the CPU and move them in when needed; auto picks from the free GPU memory")]
CompileOption = Annotated[Literal["none", "regional", "full"], typer.Option(
    "--compile", help="torch.compile the UNet/ControlNet blocks (regional) or the whole UNet; kernels are cached in "
         "$REF2IMG_COMPILE_CACHE (default ~/.cache/ref2img/torch-compile)")]
ServerOption = Annotated[str | None, typer.Option("--server", metavar="URL", envvar="REF2IMG_BASE_URL", help="a ref2img server (or any Tomoviee-compatible base URL)")]
TaskIdArgument = Annotated[str, typer.Argument(metavar="TASK_ID", help="the id create returned")]
CloudOption = Annotated[bool, typer.Option("--cloud", help="use the Tomoviee cloud (https://open-api.wondershare.cc)")]
AppKeyOption = Annotated[str | None, typer.Option("--app-key", metavar="KEY", envvar="REF2IMG_APP_KEY", help="app key (remote runs)")]
AppSecretOption = Annotated[str | None, typer.Option("--app-secret", metavar="SECRET", envvar="REF2IMG_APP_SECRET", help="app secret (remote runs)", show_default=False)]


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _parse_control(value: str) -> ControlType:
    try:
        return ControlType.parse(value)
    except ValueError:
        _fail(f"--control: must be edge, pose, subject, depth or 0..3 (got {value!r})", EXIT_USAGE)


def _parse_parts(parts: list[str] | None) -> dict[str, str]:
    overrides = {}
    for item in parts or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--part: expected KEY=VALUE (got {item!r})", EXIT_USAGE)
        overrides[key.strip()] = value.strip()
    return overrides


def _quiet_libraries() -> None:
    from ref2img.engines.local.chatter import quiet_libraries

    quiet_libraries()


def _preset(model: str, parts: list[str] | None):
    """The preset a --model names, checked before torch loads: a bad name is bad input (exit 2), at once."""
    from ref2img.engines.base import EngineError
    from ref2img.engines.local.presets import resolve_preset

    try:
        return resolve_preset(model, _parse_parts(parts))
    except EngineError as exc:
        _fail(f"--model: {exc}", EXIT_USAGE)


def _engine(preset, device: str | None, dtype: str | None = None, offload: str = "none",
            compile_kind: str = "none"):
    from ref2img.engines.base import EngineError, EngineOptionError
    from ref2img.engines.local import LocalEngine, Speedups

    try:
        engine = LocalEngine(preset, device=device, dtype=dtype, offload=offload,
                             speedups=Speedups(compile=compile_kind))
    except EngineOptionError as exc:
        _fail(str(exc), EXIT_USAGE)
    except EngineError as exc:
        _fail(str(exc))
    err.print(f"[dim]model {engine.preset.name} on {engine.placement.device} ({engine.placement.dtype_name})[/]",
              highlight=False)
    return engine


def _image(source: str, field: str):
    try:
        return load_image(source, field)
    except ImageInputError as exc:
        _fail(str(exc), EXIT_USAGE)


@app.command()
def generate(
    reference: Annotated[str, typer.Argument(metavar="REFERENCE", help="reference image: a path or an http(s) URL")],
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="what to make of it")],
    control: ControlOption = "edge",
    init: Annotated[str | None, typer.Option("--init", metavar="IMAGE", help="init image (img2img); subject mode defaults to the reference")] = None,
    control_map: Annotated[str | None, typer.Option("--control-map", metavar="IMAGE", help="a ready edge/pose/depth map: skips the annotator")] = None,
    width: Annotated[int, typer.Option("--width", "-W", metavar="PX", help="output width, 512..2048")] = 1024,
    height: Annotated[int, typer.Option("--height", "-H", metavar="PX", help="output height, 512..2048")] = 1024,
    batch: Annotated[int, typer.Option("--batch", "-n", metavar="N", help="images to make, 1..4")] = 1,
    intensity: Annotated[float, typer.Option("--intensity", "-i", metavar="0..1", help="how closely to follow the reference, 0..1")] = 0.5,
    seed: Annotated[int | None, typer.Option("--seed", metavar="N", help="seed of image 1; image k uses seed+k-1 (default: random)")] = None,
    negative: Annotated[str | None, typer.Option("--negative", metavar="TEXT", help="negative prompt")] = None,
    steps: Annotated[int | None, typer.Option("--steps", metavar="N", min=1, max=200, help="denoising steps (default: the preset's)")] = None,
    model: ModelOption = "sdxl",
    part: PartOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    offload: OffloadOption = "none",
    compile_kind: CompileOption = "none",
    out_dir: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="folder for the PNGs and the run's JSON")] = Path("out"),
    as_json: Annotated[bool, typer.Option("--json", help="print the run record as JSON on stdout")] = False,
    server: ServerOption = None,
    cloud: CloudOption = False,
    app_key: AppKeyOption = None,
    app_secret: AppSecretOption = None,
) -> None:
    """Generate images: in-process with the local engine, or through a server (--server) or the cloud (--cloud)."""
    if server or cloud:
        _generate_remote(locals())
        return
    started = time.perf_counter()
    mode = _parse_control(control)
    body = {"prompt": prompt, "reference_image": reference, "control_type": mode.value,
            "control_intensity": intensity, "width": width, "height": height, "batch_size": batch}
    body.update({k: v for k, v in {"init_image": init, "seed": seed, "negative_prompt": negative}.items() if v is not None})
    try:
        request = parse_create_request(body)
    except ParameterError as exc:
        _fail(str(exc), EXIT_USAGE)
    preset = _preset(model, part)

    if control_map and mode is ControlType.SUBJECT:
        _fail("--control-map: subject mode uses the reference itself, not a control map", EXIT_USAGE)
    from ref2img.engines.base import EngineError, Job

    job = Job.from_request(request, _image, steps=steps,
                           control_map=_image(control_map, "control_map") if control_map else None)
    first_seed = job.seed

    engine = _engine(preset, device, dtype, offload, compile_kind)
    loaded = time.perf_counter()
    try:
        # The map the engine conditions on, made once here so that the user can see what it caught.
        used_map = engine.control_map_for(job)
        images = _run_with_progress(engine, dataclasses.replace(job, control_map=used_map), quiet=as_json)
    except EngineError as exc:
        _fail(str(exc))
    finished = time.perf_counter()

    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = out_dir / f"{run_id}-{index + 1}.png"
        image.save(path)
        paths.append(str(path))
    map_path = None
    if used_map is not None:
        map_path = str(out_dir / f"{run_id}-control.png")
        used_map.save(map_path)
    record = {
        "run_id": run_id,
        "images": paths,
        "seeds": [first_seed + i for i in range(len(images))],
        "request": request.model_dump(mode="json", exclude_none=True),
        "control_map": map_path,  # the map the images were conditioned on (None in subject mode)
        "control_map_input": control_map,
        "steps": steps or engine.preset.steps,
        "preset": engine.preset.name,
        "device": str(engine.placement.device),
        "dtype": engine.placement.dtype_name,
        "dtypes": engine.component_dtypes(),  # read from the modules after the job: a stray cast shows here
        "offload": engine.pipelines.offload,
        "compile": compile_kind,
        "timings_s": {"load": round(loaded - started, 3), "generate": round(finished - loaded, 3),
                      "total": round(finished - started, 3)},
    }
    (out_dir / f"{run_id}.json").write_text(json.dumps(record, indent=2) + "\n")
    if as_json:
        print(json.dumps(record))
    else:
        for path in paths:
            out.print(path, highlight=False)


def _client(server: str | None, cloud: bool, app_key: str | None, app_secret: str | None):
    from ref2img.client import Client, Ref2ImgError
    from ref2img.client._core import DEFAULT_BASE_URL

    try:
        return Client(app_key, app_secret, base_url=DEFAULT_BASE_URL if cloud else server)
    except Ref2ImgError as exc:
        _fail(str(exc), EXIT_USAGE)


def _sdk_call(function, *args, **kwargs):
    """Run an SDK call; its errors become one line and an exit code (2: the request was bad)."""
    from ref2img.client import InvalidRequestError, Ref2ImgError

    try:
        return function(*args, **kwargs)
    except InvalidRequestError as exc:
        _fail(str(exc), EXIT_USAGE)
    except Ref2ImgError as exc:
        _fail(str(exc))


def _generate_remote(options: dict) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    started = time.perf_counter()
    mode = _parse_control(options["control"])
    if options["control_map"]:
        _fail("--control-map: only in-process runs take a ready control map", EXIT_USAGE)
    client = _client(options["server"], options["cloud"], options["app_key"], options["app_secret"])
    create = dict(control_intensity=options["intensity"], width=options["width"], height=options["height"],
                  batch_size=options["batch"], init_image=options["init"], seed=options["seed"],
                  negative_prompt=options["negative"])
    with client, Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                          TimeElapsedColumn(), console=err, disable=options["as_json"], transient=True) as progress:
        bar = progress.add_task("queued", total=100)

        def on_progress(task) -> None:
            label = {1: f"queued (position {task.position})", 2: "generating"}.get(int(task.status), "done")
            progress.update(bar, completed=task.progress, description=label)

        task_id = _sdk_call(client.create, options["prompt"], options["reference"], mode, **create)
        task = _sdk_call(client.wait, task_id, on_progress=on_progress)
        paths = _sdk_call(client.download, task, options["out_dir"])
    record = {"run_id": task.task_id, "task_id": task.task_id, "server": client.base_url,
              "images": [str(path) for path in paths], "urls": task.images,
              "seeds": [options["seed"] + i for i in range(len(paths))] if options["seed"] is not None else None,
              "request": {"prompt": options["prompt"], "reference_image": options["reference"],
                          "control_type": mode.value, **{k: v for k, v in create.items() if v is not None}},
              "timings_s": {"total": round(time.perf_counter() - started, 3)}}
    Path(options["out_dir"], f"{task.task_id}.json").write_text(json.dumps(record, indent=2) + "\n")
    if options["as_json"]:
        print(json.dumps(record))
    else:
        for path in paths:
            out.print(str(path), highlight=False)


def _run_with_progress(engine, job, quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, disable=quiet, transient=True) as progress:
        task = progress.add_task(f"{job.control_type.name.lower()} x{job.batch_size}", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return engine.generate(job, on_progress=on_progress)


@app.command()
def recognize(
    image: Annotated[str, typer.Argument(metavar="IMAGE", help="photo: a path or an http(s) URL")],
    control: ControlOption = "edge",
    out_file: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="where to write the control map (PNG)")] = Path("control-map.png"),
    model: ModelOption = "sdxl",
    part: PartOption = None,
    device: DeviceOption = None,
) -> None:
    """Write the control map (edges, pose skeleton or depth) the engine would use for IMAGE."""
    mode = _parse_control(control)
    picture = _image(image, "image")
    from ref2img.engines.base import EngineError

    engine = _engine(_preset(model, part), device)
    try:
        result = engine.recognize(picture, mode)
    except EngineError as exc:
        _fail(str(exc))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    result.save(out_file)
    out.print(str(out_file), highlight=False)


@models_app.command("list")
def models_list(
    model: Annotated[list[str] | None, typer.Argument(metavar="PRESET|DIR|FILE...", help="presets, folders or files (default: every preset)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Presets, their parts, and which are on this machine (with sizes)."""
    from ref2img.engines.base import EngineError
    from ref2img.engines.local.hub import part_statuses
    from ref2img.engines.local.presets import PRESETS, resolve_preset

    try:
        presets = [resolve_preset(name) for name in (model or list(PRESETS))]
    except EngineError as exc:
        _fail(str(exc), EXIT_USAGE)
    listing = []
    for preset in presets:
        parts = [vars(status) for status in part_statuses(preset)]
        listing.append({"preset": preset.name, "family": preset.family, "description": preset.description,
                        "ready": all(p["present"] for p in parts), "parts": parts})
    if as_json:
        print(json.dumps(listing, indent=2))
        return
    from rich.table import Table

    for entry in listing:
        table = Table(title=f"{entry['preset']} ({'ready' if entry['ready'] else 'incomplete'}): {entry['description']}",
                      title_justify="left")
        for column in ("part", "source", "present", "size"):
            table.add_column(column)
        for p in entry["parts"]:
            table.add_row(p["part"], p["source"], "yes" if p["present"] else "[red]no[/]",
                          _human_size(p["size_bytes"]) if p["present"] else "")
        out.print(table)


def _human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


@models_app.command("pull")
def models_pull(preset_name: Annotated[str, typer.Argument(metavar="PRESET", help="preset name or preset file")]) -> None:
    """Download a preset's models into the Hugging Face cache (progress bars per file)."""
    from ref2img.engines.base import EngineError
    from ref2img.engines.local.hub import PullError, pull
    from ref2img.engines.local.presets import resolve_preset

    try:
        preset = resolve_preset(preset_name)
        pull(preset, on_part=lambda part, ref: err.print(f"[bold]{part}[/]: {ref.source}", highlight=False))
    except (EngineError, PullError) as exc:
        _fail(str(exc))
    err.print(f"preset {preset.name!r} is ready", highlight=False)


@models_app.command("tiny")
def models_tiny(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="folder to build the tiny models in")],
    family: Annotated[str, typer.Option("--family", metavar="sd15|sdxl", help="sd15 (per-mode ControlNets) or sdxl (union ControlNet)")] = "sd15",
) -> None:
    """Build every part of the random-weight `tiny` preset offline (for tests and plumbing checks)."""
    if family not in ("sd15", "sdxl"):
        _fail(f"--family: must be sd15 or sdxl (got {family!r})", EXIT_USAGE)
    _quiet_libraries()
    from ref2img.engines.local.random_models import build_tiny

    build_tiny(directory, family)
    out.print(f"built tiny {family} models in {directory}; use them with --model {directory}", highlight=False)


task_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Look at, wait for and cancel tasks on a server or the cloud.")
app.add_typer(task_app, name="task")


def _task_record(task) -> dict:
    return {"task_id": task.task_id, "status": int(task.status), "status_name": task.status.name.lower(),
            "progress": task.progress, "position": task.position, "wait_time": task.wait_time,
            "reason": task.reason, "params": task.params, "images": task.images, "masks": task.masks}


def _print_task(task, as_json: bool) -> None:
    if as_json:
        print(json.dumps(_task_record(task)))
        return
    out.print(f"{task.task_id}: {task.status.name.lower()} ({task.progress}%)"
              + (f", position {task.position}" if task.status == 1 else "")
              + (f" — {task.reason}" if task.reason else ""), highlight=False)
    for url in task.images or task.masks:
        out.print(url, highlight=False, soft_wrap=True)


@task_app.command("get")
def task_get(task_id: TaskIdArgument, server: ServerOption = None, cloud: CloudOption = False, app_key: AppKeyOption = None,
             app_secret: AppSecretOption = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The task's state now."""
    with _client(server, cloud, app_key, app_secret) as client:
        _print_task(_sdk_call(client.get, task_id), as_json)


@task_app.command("wait")
def task_wait(task_id: TaskIdArgument, server: ServerOption = None, cloud: CloudOption = False, app_key: AppKeyOption = None,
              app_secret: AppSecretOption = None, timeout: Annotated[float, typer.Option("--timeout")] = 600.0,
              out_dir: Annotated[Path | None, typer.Option("--out", "-o", metavar="DIR", help="download the images here")] = None,
              as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Wait until the task ends (exit 1 if it failed, was cancelled or timed out); optionally download."""
    with _client(server, cloud, app_key, app_secret) as client:
        task = _sdk_call(client.wait, task_id, timeout=timeout)
        if out_dir is not None:
            for path in _sdk_call(client.download, task, out_dir):
                err.print(str(path), highlight=False)
    _print_task(task, as_json)


@task_app.command("cancel")
def task_cancel(task_id: TaskIdArgument, server: ServerOption = None, app_key: AppKeyOption = None,
                app_secret: AppSecretOption = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Cancel a task (ref2img servers): queued ones at once, running ones between two steps."""
    with _client(server, False, app_key, app_secret) as client:
        _print_task(_sdk_call(client.cancel, task_id), as_json)


@app.command()
def token(app_key: Annotated[str, typer.Argument(metavar="APP_KEY", help="app key")],
          app_secret: Annotated[str, typer.Argument(metavar="APP_SECRET", help="app secret")],
          show: Annotated[bool, typer.Option("--print", help="print the token on stdout")] = False) -> None:
    """The `Authorization: Basic …` value for an app key (computed locally; nothing is sent)."""
    from ref2img.protocol import basic_token

    err.print("[yellow]The token is a credential: anyone who has it can use your key.[/]")
    if not show:
        err.print("Add --print to write it to stdout.")
        raise typer.Exit(0)
    print(basic_token(app_key, app_secret))


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", help="port to listen on")] = 8080,
    data_dir: DataDirOption = Path("ref2img-data"),
    model: ModelOption = "sdxl",
    part: PartOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    offload: OffloadOption = "none",
    compile_kind: CompileOption = "none",
    workers: Annotated[int, typer.Option("--workers", metavar="N", min=1, max=64, help="worker threads (one engine, shared)")] = 1,
    allow_private_urls: Annotated[bool, typer.Option("--allow-private-urls", help="let image and callback URLs reach loopback/private addresses")] = False,
    queue_limit: Annotated[int, typer.Option("--queue-limit", metavar="N", min=1, help="queued tasks before create answers 680005 / HTTP 429")] = 100,
    task_timeout: Annotated[float, typer.Option("--task-timeout", metavar="SECONDS", min=1, help="seconds from create to status 6")] = 1800.0,
    public_url: Annotated[str | None, typer.Option("--public-url", metavar="URL", help="base of result URLs sent in callbacks (default: http://HOST:PORT)")] = None,
    callback_retry_scale: Annotated[float, typer.Option("--callback-retry-scale", hidden=True)] = 1.0,
    auth_failure_limit: Annotated[int, typer.Option("--auth-failure-limit", metavar="N", min=1, help="failed authentications per app key and per client address per minute before 680005 / HTTP 429")] = 20,
    max_body_mb: Annotated[int, typer.Option("--max-body-mb", metavar="MB", min=1, max=1024, help="largest request body (JSON or upload) in MB")] = 30,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    db: DbOption = None,
    queue: QueueOption = "embedded",
    storage: StorageOption = None,
    lease: LeaseOption = 30.0,
) -> None:
    """Run the Tomoviee-compatible server: embedded (SQLite, workers in this process) or, with
    --queue redis://… --db postgresql+psycopg://…, an API node of a fleet of `ref2img worker`s."""
    import logging

    import uvicorn

    from ref2img.server import ServerSettings, create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ServerSettings(
        data_dir=data_dir, model=model, model_overrides=_parse_parts(part), device=device, dtype=dtype,
        offload=offload, compile=compile_kind, workers=workers,
        allow_private_urls=allow_private_urls, queue_limit=queue_limit, task_timeout_s=task_timeout,
        public_url=public_url or f"http://{host}:{port}", callback_retry_scale=callback_retry_scale,
        db_url=db, queue_url=queue, storage=storage, lease_s=lease, auth_failure_limit=auth_failure_limit,
        max_body_bytes=max_body_mb * 1024 * 1024)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, access_log=False)


@app.command()
def worker(
    queue: Annotated[str, typer.Option("--queue", metavar="URL", envvar="REF2IMG_QUEUE", help="redis://host:6379/0")],
    db: Annotated[str, typer.Option("--db", metavar="URL", envvar="REF2IMG_DB", help="postgresql+psycopg://user@host/db")],
    storage: Annotated[str, typer.Option("--storage", metavar="DIR|s3://…", envvar="REF2IMG_STORAGE", help="a directory every node mounts, or s3://bucket/prefix")],
    public_url: Annotated[str | None, typer.Option("--public-url", metavar="URL", envvar="REF2IMG_PUBLIC_URL",
                                                   help="the API nodes' base URL for result links in callbacks "
                                                        "(default: the one the API nodes recorded in the store)")] = None,
    model: ModelOption = "sdxl",
    part: PartOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    offload: OffloadOption = "none",
    compile_kind: CompileOption = "none",
    allow_private_urls: Annotated[bool, typer.Option("--allow-private-urls")] = False,
    task_timeout: Annotated[float, typer.Option("--task-timeout", metavar="SECONDS", min=1)] = 1800.0,
    lease: LeaseOption = 30.0,
    data_dir: DataDirOption = Path("ref2img-worker"),
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Run one GPU worker of a scale-out fleet: loads the engine once, then takes tasks from Redis."""
    import logging

    from ref2img.server.services import ServerSettings
    from ref2img.server.worker import ScaleWorker

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    settings = ServerSettings(data_dir=data_dir, model=model, model_overrides=_parse_parts(part), device=device,
                              dtype=dtype, offload=offload, compile=compile_kind, allow_private_urls=allow_private_urls, task_timeout_s=task_timeout,
                              public_url=public_url, db_url=db, queue_url=queue, storage=storage, lease_s=lease)
    from ref2img.engines.base import EngineError

    try:
        worker_process = ScaleWorker(settings)
    except ValueError as exc:  # a flag missing or at odds with the store: bad input
        _fail(str(exc), EXIT_USAGE)
    try:
        worker_process.run()
    except EngineError as exc:
        _fail(str(exc))


def _store(data_dir: Path, db: str | None = None):
    from ref2img.tasks.store import Store

    if db:
        return Store(db)
    data_dir.mkdir(parents=True, exist_ok=True)
    return Store(f"sqlite:///{data_dir / 'ref2img.db'}")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", metavar="NAME", help="a label for the key")] = "",
    data_dir: DataDirOption = Path("ref2img-data"),
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the key as JSON")] = False,
    as_env: Annotated[bool, typer.Option("--env", help="print `export REF2IMG_APP_KEY=… REF2IMG_APP_SECRET=…` "
                                                       "lines: `eval \"$(ref2img keys create --env)\"`")] = False,
) -> None:
    """Create an app key. The secret is shown this once; the server keeps only a salted hash."""
    import shlex

    from ref2img.tasks.keys import create_key

    key = create_key(_store(data_dir, db), name)
    if as_json:
        print(json.dumps({"app_key": key.app_key, "app_secret": key.app_secret, "name": key.name}))
        return
    if as_env:  # the names the SDK, the CLI and the README's curl lines all read
        print(f"export REF2IMG_APP_KEY={shlex.quote(key.app_key)}\n"
              f"export REF2IMG_APP_SECRET={shlex.quote(key.app_secret)}")
        return
    out.print(f"app_key:    {key.app_key}\napp_secret: {key.app_secret}", highlight=False)
    err.print("Store the secret now: it cannot be shown again.")


@keys_app.command("list")
def keys_list(data_dir: DataDirOption = Path("ref2img-data"), db: DbOption = None,
              as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """App keys with their names and state (never their secrets)."""
    rows = [{"app_key": row.app_key, "name": row.name,
             "created": datetime.fromtimestamp(row.created_at, UTC).isoformat(timespec="seconds"),
             "revoked": row.revoked_at is not None} for row in _store(data_dir, db).list_keys()]
    if as_json:
        print(json.dumps(rows))
        return
    for row in rows:
        out.print(f"{row['app_key']}  {row['created']}  {'revoked' if row['revoked'] else 'active'}  {row['name']}",
                  highlight=False)


@keys_app.command("revoke")
def keys_revoke(app_key: Annotated[str, typer.Argument(metavar="APP_KEY", help="the key to revoke")],
                data_dir: DataDirOption = Path("ref2img-data"), db: DbOption = None) -> None:
    """Revoke an app key: its requests are refused from now on (within 30 s on a running server)."""
    if not _store(data_dir, db).revoke_key(app_key):
        _fail(f"no active key {app_key!r}", EXIT_USAGE)
    out.print(f"revoked {app_key}", highlight=False)


class _Command(typer.core.TyperCommand):
    """Usage lines as other tools write them: `generate [OPTIONS] REFERENCE PROMPT`, not `{reference}`."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar or param.name.upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


for _group in (app, models_app, keys_app, task_app):
    for _info in _group.registered_commands:
        _info.cls = _Command


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
