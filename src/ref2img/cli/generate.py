"""`ref2img generate` and `ref2img recognize`: in-process on the local engine, or through the SDK."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from ref2img.cli._common import (
    BlocklistOption,
    C2paCertOption,
    C2paFlag,
    C2paKeyOption,
    ClassifierOption,
    ContentFilterFlag,
    WatermarkFlag,
    in_process_provenance,
    provenance_options,
    LoraDirOption,
    EXIT_USAGE,
    AppKeyOption,
    AppSecretOption,
    CloudOption,
    ApproximateOption,
    CompileAfterOption,
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
    fail_in_flags,
    load_engine,
    out,
    parse_control,
    plain_progress,
    read_image,
    resolve_model,
    sdk_call,
    sdk_client,
)
from ref2img.engines.local.presets import DEFAULT_PRESET, preset_names
from ref2img.protocol import ControlType, CreateRequest, ParameterError, parse_create_request


def generate(
    reference: Annotated[str, typer.Argument(metavar="REFERENCE", help="reference image: a path or an http(s) URL")],
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="what to make of it")],
    control: Annotated[
        list[str] | None,
        typer.Option(
            "--control",
            "-c",
            metavar="MODE[=IMAGE][:INTENSITY]",
            help="edge|pose|subject|depth (or 0..3); repeat it for several controls at once, each from the "
            "reference or its own IMAGE (map:FILE for a ready map), e.g. -c subject -c pose -c depth=map:d.png:0.4",
        ),
    ] = None,
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
    guidance: Annotated[
        float | None,
        typer.Option("--guidance", metavar="G", min=0, max=30, help="guidance scale, 0..30 (default: the preset's)"),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            metavar="PRESET|DIR|FILE",
            help=f"preset ({preset_names()}), a tiny-model DIR or a preset file (default: {DEFAULT_PRESET}); "
            "with --server, the name of one of the server's presets (default: the server's own)",
        ),
    ] = None,
    part: PartOption = None,
    lora: Annotated[
        list[str] | None,
        typer.Option(
            "--lora",
            metavar="NAME[:WEIGHT]",
            help="a LoRA by name (a .safetensors of --lora-dir, or of the server's), weight 1 by default; repeatable",
        ),
    ] = None,
    lora_dir: LoraDirOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    offload: OffloadOption = "none",
    compile_kind: CompileOption = "none",
    compile_after: CompileAfterOption = 1,
    approximate: ApproximateOption = "",
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", metavar="DIR", help="folder for the PNGs and the run's JSON")
    ] = Path("out"),
    as_json: Annotated[bool, typer.Option("--json", help="print the run record as JSON on stdout")] = False,
    server: ServerOption = None,
    cloud: CloudOption = False,
    app_key: AppKeyOption = None,
    app_secret: AppSecretOption = None,
    c2pa: C2paFlag = True,
    watermark: WatermarkFlag = True,
    c2pa_cert: C2paCertOption = None,
    c2pa_key: C2paKeyOption = None,
    content_filter: ContentFilterFlag = "off",
    blocklist: BlocklistOption = None,
    image_classifier: ClassifierOption = None,
) -> None:
    """Generate images: in-process with the local engine, or through a server (--server) or the cloud (--cloud).
    In-process, every image is marked as AI-generated (a C2PA manifest, an invisible watermark)."""
    marking = provenance_options(c2pa, watermark, c2pa_cert, c2pa_key, content_filter, blocklist, image_classifier)
    mode, controls = parse_controls(control or ["edge"])
    options = {
        "control_intensity": intensity,
        "width": width,
        "height": height,
        "batch_size": batch,
        "init_image": init,
        "seed": seed,
        "negative_prompt": negative,
        "controls": controls,
        "steps": steps,
        "guidance_scale": guidance,
        "loras": [parse_lora(spec) for spec in lora] if lora else None,
    }
    if server and model:
        options["model"] = model  # one of the server's presets, by name
    request = build_request(prompt, reference, mode, options)
    if server or cloud:
        if control_map:
            fail("--control-map: only in-process runs take a ready control map", EXIT_USAGE)
        if cloud and model:
            fail("--model: the Tomoviee cloud runs its own model; give --model with --server or in-process", EXIT_USAGE)
        generate_remote(sdk_client(server, cloud, app_key, app_secret), request, out_dir, as_json)
        return
    if control_map and controls:
        fail("--control-map: with several controls, give each its map as -c TYPE=map:FILE", EXIT_USAGE)
    if control_map and mode is ControlType.SUBJECT:
        fail("--control-map: subject mode uses the reference itself, not a control map", EXIT_USAGE)
    run = InProcessRun(request.with_seed(), control_map, steps, (compile_kind, compile_after, approximate))
    run.lora_dirs = tuple(str(folder) for folder in lora_dir or ())
    run.provenance = marking
    with plain_progress():
        run.execute(resolve_model(model or DEFAULT_PRESET, part), device, dtype, offload, out_dir, as_json)


def parse_lora(spec: str) -> dict[str, Any]:
    """`--lora NAME[:WEIGHT]` as a `loras` entry (the protocol checks the name and the weight's range)."""
    name, _, weight = spec.partition(":")
    if weight and not _is_number(weight):
        fail(f"--lora: the weight after ':' must be a number (got {spec!r})", EXIT_USAGE)
    return {"name": name, "weight": float(weight)} if weight else {"name": name}


def parse_controls(specs: list[str]) -> tuple[ControlType, list[dict] | None]:
    """`-c` as given: one plain MODE is a plain request (control_type); several, or one with an image or an
    intensity, are `controls`, with control_type "2" when `subject` is among them (else the first's type)."""
    if len(specs) == 1 and "=" not in specs[0] and ":" not in specs[0]:
        return parse_control(specs[0]), None
    controls: list[dict] = []
    subject = False
    for spec in specs:
        head, _, image = spec.partition("=")
        intensity = None
        text = image or head
        if ":" in text and _is_number(text.rsplit(":", 1)[1]):
            text, number = text.rsplit(":", 1)
            intensity = float(number)
        if image:
            image = text
        else:
            head = text
        kind = parse_control(head)
        if kind is ControlType.SUBJECT:
            subject = True
            continue
        entry: dict[str, Any] = {"type": kind.name.lower()}
        if image:
            entry["map"] = image.startswith("map:")
            entry["image"] = image.removeprefix("map:")
        if intensity is not None:
            entry["intensity"] = intensity
        controls.append(entry)
    if not controls:
        fail("--control: subject alone is a plain request: -c subject", EXIT_USAGE)
    return (ControlType.SUBJECT if subject else ControlType.parse(controls[0]["type"])), controls


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def build_request(prompt: str, reference: str, mode: ControlType, options: dict[str, Any]) -> CreateRequest:
    """The command line as the one request model; a bad value is bad input (exit 2), named as the server would."""
    body = {"prompt": prompt, "reference_image": reference, "control_type": mode.value, **options}
    try:
        return parse_create_request({key: value for key, value in body.items() if value is not None})
    except ParameterError as exc:
        fail_in_flags(exc)


class InProcessRun:
    """One `ref2img generate` on the local engine: the server's runner (`ref2img.lifecycle`) over an
    in-memory ledger, the PNGs and the run's JSON record in the output folder."""

    def __init__(self, request: CreateRequest, control_map: str | None, steps: int | None, speed: tuple[str, int, str]):
        self.request = request
        self.control_map_input = control_map
        self.steps = steps
        self.compile_kind, self.compile_after, self.approximate = speed  # --compile, --compile-after, --approximate
        self.run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        self.used_map = None  # the map the engine conditioned on, saved so that the user can see what it caught
        self.lora_dirs: tuple[str, ...] = ()  # --lora-dir
        self.provenance: Any = None  # ProvenanceOptions: the marks and the content filter
        self.marks: dict[str, Any] = {}

    def execute(self, preset, device, dtype, offload: str, out_dir: Path, as_json: bool) -> None:
        from ref2img.engines.base import EngineError
        from ref2img.engines.local.loras import resolve_loras
        from ref2img.lifecycle import FolderOutputs, MemoryLedger, RunContext, run_task
        from ref2img.protocol import TaskStatus

        started = time.perf_counter()
        # The images are read and checked before the model loads: bad input exits 2 at once.
        images = {self.request.reference_image: read_image(self.request.reference_image, "reference_image")}
        if self.request.init_image:
            images.setdefault(self.request.init_image, read_image(self.request.init_image, "init_image"))
        for index, entry in enumerate(self.request.controls or ()):
            if entry.image:
                images.setdefault(entry.image, read_image(entry.image, f"controls[{index}].image"))
        given_map = read_image(self.control_map_input, "control_map") if self.control_map_input else None
        try:  # the LoRAs' names too: a bad one exits 2 before the model loads
            resolve_loras(self.request.loras or (), self.lora_dirs)
        except EngineError as exc:
            fail_in_flags(exc)
        engine = load_engine(preset, device, dtype, offload, self.compile_kind, self.approximate, self.compile_after)
        engine.lora_dirs = self.lora_dirs
        loaded = time.perf_counter()

        def shape_job(job, engine):
            if job.controls:  # each control's map is made by the engine itself
                return dataclasses.replace(job, steps=self.steps)
            self.used_map = engine.control_map_for(dataclasses.replace(job, control_map=given_map))
            return dataclasses.replace(job, control_map=self.used_map, steps=self.steps)

        ledger = MemoryLedger()
        task = ledger.add(self.request, task_id=self.run_id)
        ledger.claim(task.id)
        with step_progress(f"{self.request.control_type.name.lower()} x{self.request.batch_size}", as_json) as on_step:
            context = RunContext(
                ledger=ledger,
                outputs=FolderOutputs(out_dir),
                engine=lambda: engine,
                load_image=lambda source, field, app_key: images[source],
                previews=False,
                on_step=on_step,
                shape_job=shape_job,
                **(in_process_provenance(self.provenance) if self.provenance is not None else {}),
            )
            outcome = run_task(task, "cli", context)
        if outcome.status != TaskStatus.SUCCEEDED:
            fail(outcome.reason)
        finished = time.perf_counter()
        timings = {"load": loaded - started, "generate": finished - loaded, "total": finished - started}
        done = ledger.get(task.id)
        self.marks = done.marks if done is not None else {}
        self.write_record(engine, outcome.result, out_dir, timings, as_json)

    def write_record(self, engine, paths: list[str], out_dir: Path, timings: dict[str, float], as_json: bool) -> None:
        map_path = None
        if self.used_map is not None:
            map_path = str(out_dir / f"{self.run_id}-control.png")
            self.used_map.save(map_path)
        seed = self.request.seed or 0
        record = {
            "run_id": self.run_id,
            "images": paths,
            "seeds": [seed + i for i in range(len(paths))],
            "request": self.request.model_dump(mode="json", exclude_none=True),
            "control_map": map_path,  # the map the images were conditioned on (None in subject mode)
            # at the size the model ran at (the request's aspect ratio, sides multiples of 8 or 64, capped area)
            "control_map_size": list(self.used_map.size) if self.used_map is not None else None,
            "control_map_input": self.control_map_input,
            "steps": self.steps or engine.preset.steps,
            "preset": engine.preset.name,
            "device": str(engine.placement.device),
            "dtype": engine.placement.dtype_name,
            "dtypes": engine.component_dtypes(),  # read from the modules after the job: a stray cast shows here
            "offload": engine.pipelines.offload,
            "compile": self.compile_kind,
            "approximate": sorted(engine.speedups.approximate),  # output-changing levers asked for
            "ignored": engine.last_ignored,  # what of the request this model has no knob for
            "marks": self.marks,  # what the images carry (C2PA, the watermark's id); `flagged`, if filtered
            "timings_s": {name: round(seconds, 3) for name, seconds in timings.items()},
        }
        (out_dir / f"{self.run_id}.json").write_text(json.dumps(record, indent=2) + "\n")
        print_result(record, paths, as_json)


def print_result(record: dict, paths: list, as_json: bool) -> None:
    if as_json:
        print(json.dumps(record))
    else:
        for path in paths:
            out.print(str(path), highlight=False)


def generate_remote(client, request, out_dir: Path, as_json: bool, submit: Callable | None = None) -> None:
    """The same request through the SDK (`submit`: the client's method that creates its task; default
    `client.submit`): a progress bar while it waits, then the images downloaded."""
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

        task_id = sdk_call(submit or client.submit, request)
        task = sdk_call(client.wait, task_id, on_progress=on_progress)
        paths = sdk_call(client.download, task, out_dir)
    seed = request.seed
    record = {
        "run_id": task.task_id,
        "task_id": task.task_id,
        "server": client.base_url,
        "images": [str(path) for path in paths],
        "urls": task.images,
        "seeds": [seed + i for i in range(len(paths))] if seed is not None else None,
        "request": request.to_wire(),
        "timings_s": {"total": round(time.perf_counter() - started, 3)},
    }
    Path(out_dir, f"{task.task_id}.json").write_text(json.dumps(record, indent=2) + "\n")
    print_result(record, paths, as_json)


@contextlib.contextmanager
def step_progress(label: str, quiet: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A bar of the engine's steps on stderr; yields the runner's `on_step`."""
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
        bar = progress.add_task(label, total=None)
        if quiet or err.is_terminal:
            yield lambda task_id, done, total: progress.update(bar, completed=done, total=total)
            return
        printed = [0]

        def plain(task_id: str, done: int, total: int) -> None:  # no terminal: a line every tenth of the steps
            if done == total or done - printed[0] >= max(1, total // 10):
                printed[0] = done
                print(f"{label}: step {done}/{total}", file=sys.stderr, flush=True)

        yield plain


def recognize(
    image: Annotated[str, typer.Argument(metavar="IMAGE", help="photo: a path or an http(s) URL")],
    control: ControlOption = "edge",
    out_file: Annotated[
        Path, typer.Option("--out", "-o", metavar="FILE", help="where to write the control map or mask (PNG)")
    ] = Path("control-map.png"),
    model: ModelOption = DEFAULT_PRESET,
    part: PartOption = None,
    device: DeviceOption = None,
) -> None:
    """Write the control map (edges, pose skeleton or depth) the engine would use for IMAGE, or with
    `--control subject` the mask of its main subject (white on black, at its size)."""
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
