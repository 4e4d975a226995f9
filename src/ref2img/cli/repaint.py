"""`ref2img repaint`: Image Repaint (inpainting), in-process on the local engine or through the SDK."""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from ref2img.cli._common import (
    AppKeyOption,
    AppSecretOption,
    CloudOption,
    DeviceOption,
    DtypeOption,
    ModelOption,
    OffloadOption,
    PartOption,
    ServerOption,
    fail,
    fail_in_flags,
    load_engine,
    plain_progress,
    read_image,
    resolve_model,
    sdk_client,
)
from ref2img.cli.generate import generate_remote, print_result, step_progress
from ref2img.engines.local.presets import DEFAULT_PRESET
from ref2img.protocol import ParameterError, RepaintRequest, check_repaint_images, parse_repaint_request


def repaint(
    image: Annotated[str, typer.Argument(metavar="IMAGE", help="the image to repaint: a path or an http(s) URL")],
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="what to paint in the masked area")],
    mask: Annotated[
        str | None,
        typer.Option(
            "--mask", "-m", metavar="MASK", help="white where IMAGE is redrawn, at its size (default: all of it)"
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", metavar="N", help="seed (default: random)")] = None,
    negative: Annotated[str | None, typer.Option("--negative", metavar="TEXT", help="negative prompt")] = None,
    model: ModelOption = DEFAULT_PRESET,
    part: PartOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    offload: OffloadOption = "none",
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", metavar="DIR", help="folder for the PNG and the run's JSON")
    ] = Path("out"),
    as_json: Annotated[bool, typer.Option("--json", help="print the run record as JSON on stdout")] = False,
    server: ServerOption = None,
    cloud: CloudOption = False,
    app_key: AppKeyOption = None,
    app_secret: AppSecretOption = None,
) -> None:
    """Repaint the masked area of IMAGE from PROMPT (the whole image without --mask); every pixel outside
    the mask is kept. In-process with the local engine, or through a server (--server) or the cloud (--cloud)."""
    body = {"prompt": prompt, "init_image": image, "mask_url": mask, "seed": seed, "negative_prompt": negative}
    try:
        request = parse_repaint_request({key: value for key, value in body.items() if value is not None})
    except ParameterError as exc:
        fail_in_flags(exc, {"init_image": "IMAGE"})
    if server or cloud:
        client = sdk_client(server, cloud, app_key, app_secret)
        generate_remote(client, request, out_dir, as_json, submit=client.submit_repaint)
        return
    with plain_progress():
        _repaint_here(request.with_seed(), resolve_model(model, part), (device, dtype, offload), out_dir, as_json)


def _repaint_here(request: RepaintRequest, preset, placement: tuple, out_dir: Path, as_json: bool) -> None:
    """The server's runner over an in-memory ledger, as `ref2img generate` runs."""
    from ref2img.lifecycle import REPAINT, FolderOutputs, MemoryLedger, RunContext, run_task
    from ref2img.protocol import TaskStatus

    started = time.perf_counter()
    # The images are read and checked before the model loads: bad input exits 2 at once.
    images = {request.init_image: read_image(request.init_image, "IMAGE")}
    if request.mask_url:
        images[request.mask_url] = read_image(request.mask_url, "--mask")
    mask = images.get(request.mask_url) if request.mask_url else None
    try:
        check_repaint_images(images[request.init_image].size, mask.size if mask is not None else None)
    except ValueError as exc:
        fail_in_flags(exc, {"init_image": "IMAGE"})
    device, dtype, offload = placement
    engine = load_engine(preset, device, dtype, offload)
    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
    ledger = MemoryLedger()
    task = ledger.add(request, kind=REPAINT, task_id=run_id)
    ledger.claim(task.id)
    with step_progress("repaint", as_json) as on_step:
        context = RunContext(
            ledger=ledger,
            outputs=FolderOutputs(out_dir),
            engine=lambda: engine,
            load_image=lambda source, field, app_key: images[source],
            previews=False,
            on_step=on_step,
        )
        outcome = run_task(task, "cli", context)
    if outcome.status != TaskStatus.SUCCEEDED:
        fail(outcome.reason)
    record = {
        "run_id": run_id,
        "images": outcome.result,
        "seeds": [request.seed],
        "request": request.model_dump(mode="json", exclude_none=True),
        "preset": engine.preset.name,
        "device": str(engine.placement.device),
        "dtype": engine.placement.dtype_name,
        "ignored": engine.last_ignored,
        "timings_s": {"total": round(time.perf_counter() - started, 3)},
    }
    (out_dir / f"{run_id}.json").write_text(json.dumps(record, indent=2) + "\n")
    print_result(record, outcome.result, as_json)
