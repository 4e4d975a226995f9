"""`ref2img generate` and `ref2img recognize`: in-process on the local engine, or through the SDK."""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from ref2img.cli._common import (
    EXIT_USAGE,
    AppKeyOption,
    AppSecretOption,
    CloudOption,
    CompileOption,
    ControlOption,
    DeviceOption,
    DtypeOption,
    ModelOption,
    OffloadOption,
    PartOption,
    ServerOption,
    err,
    fail,
    load_engine,
    out,
    parse_control,
    read_image,
    resolve_model,
    sdk_call,
    sdk_client,
)
from ref2img.protocol import ControlType, ParameterError, parse_create_request


def generate(
    reference: Annotated[str, typer.Argument(metavar="REFERENCE", help="reference image: a path or an http(s) URL")],
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="what to make of it")],
    control: ControlOption = "edge",
    init: Annotated[
        str | None,
        typer.Option("--init", metavar="IMAGE", help="init image (img2img); subject mode defaults to the reference"),
    ] = None,
    control_map: Annotated[
        str | None,
        typer.Option("--control-map", metavar="IMAGE", help="a ready edge/pose/depth map: skips the annotator"),
    ] = None,
    width: Annotated[int, typer.Option("--width", "-W", metavar="PX", help="output width, 512..2048")] = 1024,
    height: Annotated[int, typer.Option("--height", "-H", metavar="PX", help="output height, 512..2048")] = 1024,
    batch: Annotated[int, typer.Option("--batch", "-n", metavar="N", help="images to make, 1..4")] = 1,
    intensity: Annotated[
        float, typer.Option("--intensity", "-i", metavar="0..1", help="how closely to follow the reference, 0..1")
    ] = 0.5,
    seed: Annotated[
        int | None, typer.Option("--seed", metavar="N", help="seed of image 1; image k uses seed+k-1 (default: random)")
    ] = None,
    negative: Annotated[str | None, typer.Option("--negative", metavar="TEXT", help="negative prompt")] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", metavar="N", min=1, max=200, help="denoising steps (default: the preset's)")
    ] = None,
    model: ModelOption = "sdxl",
    part: PartOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    offload: OffloadOption = "none",
    compile_kind: CompileOption = "none",
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", metavar="DIR", help="folder for the PNGs and the run's JSON")
    ] = Path("out"),
    as_json: Annotated[bool, typer.Option("--json", help="print the run record as JSON on stdout")] = False,
    server: ServerOption = None,
    cloud: CloudOption = False,
    app_key: AppKeyOption = None,
    app_secret: AppSecretOption = None,
) -> None:
    """Generate images: in-process with the local engine, or through a server (--server) or the cloud (--cloud)."""
    mode = parse_control(control)
    if server or cloud:
        if control_map:
            fail("--control-map: only in-process runs take a ready control map", EXIT_USAGE)
        client = sdk_client(server, cloud, app_key, app_secret)
        create = {
            "control_intensity": intensity,
            "width": width,
            "height": height,
            "batch_size": batch,
            "init_image": init,
            "seed": seed,
            "negative_prompt": negative,
        }
        generate_remote(client, prompt, reference, mode, create, out_dir, as_json)
        return
    started = time.perf_counter()
    body = {
        "prompt": prompt,
        "reference_image": reference,
        "control_type": mode.value,
        "control_intensity": intensity,
        "width": width,
        "height": height,
        "batch_size": batch,
    }
    body.update(
        {k: v for k, v in {"init_image": init, "seed": seed, "negative_prompt": negative}.items() if v is not None}
    )
    try:
        request = parse_create_request(body)
    except ParameterError as exc:
        fail(str(exc), EXIT_USAGE)
    preset = resolve_model(model, part)

    if control_map and mode is ControlType.SUBJECT:
        fail("--control-map: subject mode uses the reference itself, not a control map", EXIT_USAGE)
    from ref2img.engines.base import EngineError, Job

    job = Job.from_request(
        request, read_image, steps=steps, control_map=read_image(control_map, "control_map") if control_map else None
    )
    first_seed = job.seed

    engine = load_engine(preset, device, dtype, offload, compile_kind)
    loaded = time.perf_counter()
    try:
        # The map the engine conditions on, made once here so that the user can see what it caught.
        used_map = engine.control_map_for(job)
        images = run_with_progress(engine, dataclasses.replace(job, control_map=used_map), quiet=as_json)
    except EngineError as exc:
        fail(str(exc))
    finished = time.perf_counter()

    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[str] = []
    for index, image in enumerate(images):
        image_path = out_dir / f"{run_id}-{index + 1}.png"
        image.save(image_path)
        paths.append(str(image_path))
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
        "timings_s": {
            "load": round(loaded - started, 3),
            "generate": round(finished - loaded, 3),
            "total": round(finished - started, 3),
        },
    }
    (out_dir / f"{run_id}.json").write_text(json.dumps(record, indent=2) + "\n")
    if as_json:
        print(json.dumps(record))
    else:
        for path in paths:
            out.print(path, highlight=False)


def generate_remote(
    client, prompt: str, reference: str, mode: ControlType, create: dict, out_dir: Path, as_json: bool
) -> None:
    """The same job through the SDK: a progress bar while it waits, then the images downloaded."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    started = time.perf_counter()
    with (
        client,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=err,
            disable=as_json,
            transient=True,
        ) as progress,
    ):
        bar = progress.add_task("queued", total=100)

        def on_progress(task) -> None:
            label = {1: f"queued (position {task.position})", 2: "generating"}.get(int(task.status), "done")
            progress.update(bar, completed=task.progress, description=label)

        task_id = sdk_call(client.create, prompt, reference, mode, **create)
        task = sdk_call(client.wait, task_id, on_progress=on_progress)
        paths = sdk_call(client.download, task, out_dir)
    seed = create["seed"]
    record = {
        "run_id": task.task_id,
        "task_id": task.task_id,
        "server": client.base_url,
        "images": [str(path) for path in paths],
        "urls": task.images,
        "seeds": [seed + i for i in range(len(paths))] if seed is not None else None,
        "request": {
            "prompt": prompt,
            "reference_image": reference,
            "control_type": mode.value,
            **{k: v for k, v in create.items() if v is not None},
        },
        "timings_s": {"total": round(time.perf_counter() - started, 3)},
    }
    Path(out_dir, f"{task.task_id}.json").write_text(json.dumps(record, indent=2) + "\n")
    if as_json:
        print(json.dumps(record))
    else:
        for path in paths:
            out.print(str(path), highlight=False)


def run_with_progress(engine, job, quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=True,
    ) as progress:
        task = progress.add_task(f"{job.control_type.name.lower()} x{job.batch_size}", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return engine.generate(job, on_progress=on_progress)


def recognize(
    image: Annotated[str, typer.Argument(metavar="IMAGE", help="photo: a path or an http(s) URL")],
    control: ControlOption = "edge",
    out_file: Annotated[
        Path, typer.Option("--out", "-o", metavar="FILE", help="where to write the control map (PNG)")
    ] = Path("control-map.png"),
    model: ModelOption = "sdxl",
    part: PartOption = None,
    device: DeviceOption = None,
) -> None:
    """Write the control map (edges, pose skeleton or depth) the engine would use for IMAGE."""
    mode = parse_control(control)
    picture = read_image(image, "image")
    from ref2img.engines.base import EngineError

    engine = load_engine(resolve_model(model, part), device)
    try:
        result = engine.recognize(picture, mode)
    except EngineError as exc:
        fail(str(exc))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    result.save(out_file)
    out.print(str(out_file), highlight=False)
