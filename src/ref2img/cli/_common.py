"""What the command groups share: consoles, exit codes, the options several commands take, and the
helpers that turn bad input into one line and exit code 2."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal, NoReturn

import typer
from rich.console import Console

from ref2img.engines.local.presets import DEFAULT_PRESET, preset_names
from ref2img.images import DEFAULT_MAX_IMAGE_MB, MAX_IMAGE_MB_RANGE, ImageInputError, load_image
from ref2img.protocol import ControlType, renamed_field

err = Console(stderr=True)
out = Console()

EXIT_USAGE = 2  # bad input
EXIT_FAILURE = 1  # the engine or a model failed

ControlOption = Annotated[str, typer.Option("--control", "-c", metavar="MODE", help="edge|pose|subject|depth, or 0..3")]
LoraDirOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--lora-dir",
        metavar="DIR",
        help="a folder of LoRAs (.safetensors) a request may name in `loras`, by file name; repeatable",
    ),
]
ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        metavar="PRESET|DIR|FILE",
        help=f"preset ({preset_names()}), a tiny-model DIR or a preset file (default: {DEFAULT_PRESET})",
    ),
]
PartOption = Annotated[
    list[str] | None,
    typer.Option("--part", metavar="KEY=VALUE", help="override one preset part: KEY=VALUE (e.g. base=/models/sd15)"),
]
DataDirOption = Annotated[
    Path,
    typer.Option(
        "--data-dir", metavar="DIR", envvar="REF2IMG_DATA_DIR", help="server data: SQLite store, images, keys"
    ),
]
DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        metavar="URL",
        envvar="REF2IMG_DB",
        help="sqlite:///… (default: in the data dir) or postgresql+psycopg://…",
    ),
]
QueueOption = Annotated[
    str, typer.Option("--queue", metavar="URL", envvar="REF2IMG_QUEUE", help="embedded, or redis://… for scale-out")
]
StorageOption = Annotated[
    str | None,
    typer.Option(
        "--storage",
        metavar="DIR|s3://…",
        envvar="REF2IMG_STORAGE",
        help="image directory (default: the data dir; scale-out: shared) or s3://bucket/prefix",
    ),
]
MaxImageOption = Annotated[
    int,
    typer.Option(
        "--max-image-mb",
        metavar="MB",
        min=MAX_IMAGE_MB_RANGE[0],
        max=MAX_IMAGE_MB_RANGE[1],
        help=f"largest input image file in MB, fetched, uploaded or inline (default {DEFAULT_MAX_IMAGE_MB})",
    ),
]
LeaseOption = Annotated[
    float, typer.Option("--lease", metavar="SECONDS", min=1, help="seconds a worker holds a task between heartbeats")
]
DeviceOption = Annotated[
    str | None,
    typer.Option("--device", metavar="DEVICE", help="cuda, cuda:1, mps or cpu (default: the fastest present)"),
]
DtypeOption = Annotated[
    Literal["float32", "float16", "bfloat16"] | None,
    typer.Option("--dtype", help="weights and activations (default: bfloat16 on CUDA, float16 on MPS, float32 on CPU)"),
]
OffloadOption = Annotated[
    Literal["none", "model", "sequential", "auto"],
    typer.Option(
        "--offload",
        help="small GPUs: keep weights on the CPU and move them in when needed; auto picks from the free GPU memory",
    ),
]
CompileOption = Annotated[
    Literal["none", "regional", "full"],
    typer.Option(
        "--compile",
        help="torch.compile the UNet/ControlNet blocks (regional) or the whole UNet; kernels are cached in "
        "$REF2IMG_COMPILE_CACHE (default ~/.cache/ref2img/torch-compile)",
    ),
]
CompileAfterOption = Annotated[
    int,
    typer.Option(
        "--compile-after",
        metavar="N",
        min=1,
        max=100,
        help="with --compile: a size/batch/mode compiles on its N-th request; earlier ones run eagerly, so a "
        "one-off size never waits for a compile (1: at once)",
    ),
]
ApproximateOption = Annotated[
    str,
    typer.Option(
        "--approximate",
        metavar="LEVERS",
        help="output-changing speed levers, comma-separated: controlnet-cond-only (the ControlNet on the "
        "conditional half of CFG), cfg-cut (no CFG once the ControlNet stops), step-cache (the zimage "
        "transformer's First Block Cache); none by default (docs/speed.md)",
    ),
]
EngineOption = Annotated[
    Literal["local", "tomoviee"],
    typer.Option(
        "--engine",
        help="local: diffusers on this machine; tomoviee: forward every generation to the Tomoviee cloud with the "
        "operator's key (REF2IMG_CLOUD_APP_KEY / REF2IMG_CLOUD_APP_SECRET; docs/cloud.md)",
    ),
]
CloudUrlOption = Annotated[
    str,
    typer.Option("--cloud-url", metavar="URL", envvar="REF2IMG_CLOUD_URL", help="the Tomoviee cloud's base URL"),
]
CloudCredentialsOption = Annotated[
    Path | None,
    typer.Option(
        "--cloud-credentials",
        metavar="FILE",
        envvar="REF2IMG_CLOUD_CREDENTIALS_FILE",
        help="a file with REF2IMG_CLOUD_APP_KEY=… and REF2IMG_CLOUD_APP_SECRET=… lines (else the environment)",
    ),
]
CloudWorkersOption = Annotated[
    int,
    typer.Option("--cloud-workers", metavar="N", min=1, max=256, help="cloud tasks followed at once"),
]
ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        metavar="URL",
        envvar="REF2IMG_BASE_URL",
        help="a ref2img server (or any Tomoviee-compatible base URL)",
    ),
]
TaskIdArgument = Annotated[str, typer.Argument(metavar="TASK_ID", help="the id create returned")]
CloudOption = Annotated[bool, typer.Option("--cloud", help="use the Tomoviee cloud (https://open-api.wondershare.cc)")]
AppKeyOption = Annotated[
    str | None, typer.Option("--app-key", metavar="KEY", envvar="REF2IMG_APP_KEY", help="app key (remote runs)")
]
AppSecretOption = Annotated[
    str | None,
    typer.Option(
        "--app-secret",
        metavar="SECRET",
        envvar="REF2IMG_APP_SECRET",
        help="app secret (remote runs)",
        show_default=False,
    ),
]


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# A wire field as the command line spells it: the CLI's errors name what the user typed.
FLAG_OF_FIELD = {
    "prompt": "PROMPT",
    "reference_image": "REFERENCE",
    "init_image": "--init",
    "control_type": "--control",
    "control_intensity": "--intensity",
    "width": "--width",
    "height": "--height",
    "batch_size": "--batch",
    "seed": "--seed",
    "negative_prompt": "--negative",
    "mask_url": "--mask",
    "steps": "--steps",
    "guidance_scale": "--guidance",
    "model": "--model",
}


def in_flags(message: str, fields: dict[str, str] | None = None) -> str:
    """A protocol error (`batch_size: must be …`) in the command line's words (`--batch: must be …`);
    `controls[1].intensity: …` becomes `--control #2, intensity: …`."""
    field, _, rest = message.partition(": ")
    found = re.fullmatch(r"(controls|loras)\[(\d+)\](?:\.(\w+))?", field)
    if found:
        flag = "--control" if found.group(1) == "controls" else "--lora"
        detail = f", {found.group(3)}" if found.group(3) else ""
        return f"{flag} #{int(found.group(2)) + 1}{detail}: {rest}"
    return renamed_field(message, {**FLAG_OF_FIELD, **(fields or {})})


def fail_in_flags(exc: Exception, fields: dict[str, str] | None = None) -> NoReturn:
    fail(in_flags(str(exc), fields), EXIT_USAGE)


@contextlib.contextmanager
def plain_progress() -> Iterator[None]:
    """Without a terminal on stderr (a log, a pipe, CI) the bars draw nothing: say each model part as it
    loads, in plain lines, instead of a minute of silence (the steps: `step_progress`)."""
    if err.is_terminal:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("ref2img")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def parse_control(value: str) -> ControlType:
    try:
        return ControlType.parse(value)
    except ValueError:
        fail(f"--control: must be edge, pose, subject, depth or 0..3 (got {value!r})", EXIT_USAGE)


def parse_parts(parts: list[str] | None) -> dict[str, str]:
    overrides = {}
    for item in parts or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--part: expected KEY=VALUE (got {item!r})", EXIT_USAGE)
        overrides[key.strip()] = value.strip()
    return overrides


def quiet_libraries() -> None:
    from ref2img.engines.local.chatter import quiet_libraries

    quiet_libraries()


def resolve_model(model: str, parts: list[str] | None):
    """The preset a --model names, checked before torch loads: a bad name is bad input (exit 2), at once."""
    from ref2img.engines.base import EngineError
    from ref2img.engines.local.presets import resolve_preset

    try:
        return resolve_preset(model, parse_parts(parts))
    except EngineError as exc:
        fail(f"--model: {exc}", EXIT_USAGE)


def load_engine(
    preset,
    device: str | None,
    dtype: str | None = None,
    offload: str = "none",
    compile_kind: str = "none",
    approximate: str = "",
    compile_after: int = 1,
):
    from ref2img.engines.base import EngineError, EngineOptionError
    from ref2img.engines.local import LocalOptions

    try:
        engine = LocalOptions(
            preset,
            device=device,
            dtype=dtype,
            offload=offload,
            compile=compile_kind,
            compile_after=compile_after,
            approximate=approximate,
        ).build()
    except EngineOptionError as exc:
        fail(str(exc), EXIT_USAGE)
    except EngineError as exc:
        fail(str(exc))
    err.print(
        f"[dim]model {engine.preset.name} on {engine.placement.device} ({engine.placement.dtype_name})[/]",
        highlight=False,
    )
    return engine


def read_image(source: str, field: str):
    try:
        return load_image(source, field)
    except ImageInputError as exc:
        fail_in_flags(exc)


def sdk_client(server: str | None, cloud: bool, app_key: str | None, app_secret: str | None):
    from ref2img.client import Client, Ref2ImgError
    from ref2img.client import DEFAULT_BASE_URL

    try:
        return Client(app_key, app_secret, base_url=DEFAULT_BASE_URL if cloud else server)
    except Ref2ImgError as exc:
        fail(str(exc), EXIT_USAGE)


def sdk_call(function, *args, **kwargs):
    """Run an SDK call; its errors become one line and an exit code (2: the request was bad)."""
    from ref2img.client import InvalidRequestError, Ref2ImgError

    try:
        return function(*args, **kwargs)
    except InvalidRequestError as exc:
        fail(str(exc), EXIT_USAGE)
    except Ref2ImgError as exc:
        fail(str(exc))


class UsageCommand(typer.core.TyperCommand):
    """Usage lines as other tools write them: `generate [OPTIONS] REFERENCE PROMPT`, not `{reference}`."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar or param.name.upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


def new_group(help_text: str) -> typer.Typer:
    """A command group with plain help (no boxes, no `<bool>` after flags)."""
    return typer.Typer(no_args_is_help=True, rich_markup_mode=None, help=help_text)


# -- provenance (serve, worker): both marks on by default; the content filter off ----------------------
C2paFlag = Annotated[
    bool,
    typer.Option(
        "--c2pa/--no-c2pa", envvar="REF2IMG_C2PA", help="sign a C2PA manifest into every result (docs/provenance.md)"
    ),
]
WatermarkFlag = Annotated[
    bool,
    typer.Option(
        "--watermark/--no-watermark",
        envvar="REF2IMG_WATERMARK",
        help="hide an invisible watermark naming the task in every result",
    ),
]
C2paCertOption = Annotated[
    Path | None,
    typer.Option(
        "--c2pa-cert",
        metavar="PEM",
        envvar="REF2IMG_C2PA_CERT",
        help="the signing certificate chain (default: a development one)",
    ),
]
C2paKeyOption = Annotated[
    Path | None, typer.Option("--c2pa-key", metavar="PEM", envvar="REF2IMG_C2PA_KEY", help="its private key")
]
ContentFilterFlag = Annotated[
    str,
    typer.Option(
        "--content-filter", metavar="MODE", help="off, flag or block: prompts and results (docs/provenance.md)"
    ),
]
BlocklistOption = Annotated[
    Path | None, typer.Option("--blocklist", metavar="FILE", help="blocked words and phrases, one a line")
]
ClassifierOption = Annotated[
    str | None,
    typer.Option(
        "--image-classifier",
        metavar="DIR|REPO",
        help="a transformers image classifier of unsafe content: a folder, or a hub repo pulled with "
        "`ref2img models pull-classifier` (Falconsai/nsfw_image_detection)",
    ),
]


def provenance_options(
    c2pa: bool,
    watermark: bool,
    cert: Path | None,
    key: Path | None,
    content_filter: str,
    blocklist: Path | None,
    classifier: str | None,
):
    """The provenance flags as one `ProvenanceOptions`; a bad combination is a usage error naming the flag."""
    from ref2img.provenance.content_filter import MODES, ClassifierMissing, locate_classifier
    from ref2img.provenance.options import ProvenanceOptions

    if content_filter not in MODES:
        fail(f"--content-filter: {content_filter!r} is not one of {', '.join(MODES)}", EXIT_USAGE)
    if (cert is None) != (key is None):
        fail("--c2pa-cert and --c2pa-key: give both, or neither", EXIT_USAGE)
    for flag, path in (("--c2pa-cert", cert), ("--c2pa-key", key), ("--blocklist", blocklist)):
        if path is not None and not path.is_file():
            fail(f"{flag}: no file {str(path)!r}", EXIT_USAGE)
    if classifier is not None:
        try:
            locate_classifier(classifier)
        except ClassifierMissing as exc:
            fail(str(exc), EXIT_USAGE)
    return ProvenanceOptions(c2pa, watermark, cert, key, content_filter, blocklist, classifier)


def in_process_provenance(options) -> dict:
    """`RunContext` fields for an in-process run (`generate`, `mcp`): its marks and content filter. A
    development signing chain, when one is needed, lives in the user's config folder."""
    marks = options.marks(dev_folder=Path(typer.get_app_dir("ref2img")) / "provenance")
    return {"marks": marks.apply if marks is not None else None, "content": options.content()}
