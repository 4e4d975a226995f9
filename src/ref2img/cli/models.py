"""`ref2img models`: list, download and build the local engine's models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ref2img.engines.local.presets import DEFAULT_PRESET
from ref2img.engines.local.families import family_named, family_names

from ref2img.cli._common import EXIT_USAGE, err, fail, new_group, out, quiet_libraries

app = new_group("List, download and build the local engine's models.")


@app.command("list")
def models_list(
    model: Annotated[
        list[str] | None,
        typer.Argument(metavar="PRESET|DIR|FILE...", help="presets, folders or files (default: every preset)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Presets, their parts, and which are on this machine (with sizes)."""
    from ref2img.engines.base import EngineError
    from ref2img.engines.local.hub import part_statuses
    from ref2img.engines.local.presets import PRESETS, resolve_preset

    try:
        presets = [resolve_preset(name) for name in (model or list(PRESETS))]
    except EngineError as exc:
        fail(str(exc), EXIT_USAGE)
    listing: list[dict[str, Any]] = []
    for preset in presets:
        parts = [vars(status) for status in part_statuses(preset)]
        listing.append(
            {
                "preset": preset.name,
                "family": preset.family,
                "description": preset.description,
                "ready": all(p["present"] for p in parts),
                "parts": parts,
            }
        )
    if as_json:
        print(json.dumps(listing, indent=2))
        return
    from rich.table import Table

    for entry in listing:
        table = Table(
            title=f"{entry['preset']} ({'ready' if entry['ready'] else 'incomplete'}): {entry['description']}",
            title_justify="left",
        )
        for column in ("part", "source", "present", "size"):
            table.add_column(column)
        for p in entry["parts"]:
            table.add_row(
                p["part"],
                p["source"],
                "yes" if p["present"] else "[red]no[/]",
                human_size(p["size_bytes"]) if p["present"] else "",
            )
        out.print(table)


def human_size(size_bytes: int) -> str:
    size = float(size_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


@app.command("pull")
def models_pull(
    preset_name: Annotated[str, typer.Argument(metavar="PRESET", help="preset name or preset file")] = DEFAULT_PRESET,
) -> None:
    """Download a preset's models into the Hugging Face cache (progress bars per file)."""
    from ref2img.engines.base import EngineError
    from ref2img.engines.local.hub import PullError, pull
    from ref2img.engines.local.presets import resolve_preset

    try:
        preset = resolve_preset(preset_name)
        pull(preset, on_part=lambda part, ref: err.print(f"[bold]{part}[/]: {ref.source}", highlight=False))
    except (EngineError, PullError) as exc:
        fail(str(exc))
    err.print(f"preset {preset.name!r} is ready", highlight=False)


@app.command("pull-classifier")
def models_pull_classifier(
    repo: Annotated[
        str, typer.Argument(metavar="REPO", help="a transformers image-classification repo on the hub")
    ] = "Falconsai/nsfw_image_detection",
) -> None:
    """Download the content filter's image classifier (its config, preprocessor and safetensors weights,
    never a pickle) into the Hugging Face cache; then `--image-classifier REPO` reads it offline."""
    from ref2img.provenance.content_filter import pull_classifier

    err.print(f"[bold]image classifier[/]: {repo}", highlight=False)
    try:
        folder = pull_classifier(repo)
    except Exception as exc:  # noqa: BLE001 - any hub/network failure becomes one clear line
        fail(f"could not download {repo} from the Hugging Face Hub: {type(exc).__name__}: {str(exc)[:200]}")
    err.print(f"ready: --image-classifier {repo} ({folder})", highlight=False)


@app.command("mirror")
def models_mirror(
    port: Annotated[int, typer.Option("--port", metavar="PORT", min=1, max=65535, help="port to listen on")] = 8090,
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="address to listen on")] = "0.0.0.0",
    cache: Annotated[
        Path | None, typer.Option("--cache", metavar="DIR", help="a Hugging Face hub cache (default: this machine's)")
    ] = None,
) -> None:
    """Serve this machine's Hugging Face cache to other machines, read-only, over the Hub's download API:
    `HF_ENDPOINT=http://THIS-HOST:PORT ref2img models pull PRESET` on each worker."""
    import uvicorn
    from huggingface_hub import constants

    from ref2img.engines.local.mirror import create_mirror

    folder = (cache or Path(constants.HF_HUB_CACHE)).expanduser()
    if not folder.is_dir():
        fail(
            f"--cache: {folder} is not a folder (pull a preset first, or point at a Hugging Face hub cache)", EXIT_USAGE
        )
    err.print(f"serving {folder} at http://{host}:{port} (HF_ENDPOINT for the workers)", highlight=False)
    uvicorn.run(create_mirror(folder), host=host, port=port, log_level="warning")


@app.command("bundle")
def models_bundle(
    preset_name: Annotated[str, typer.Argument(metavar="PRESET", help="a pulled preset (name or preset file)")],
    target: Annotated[Path, typer.Argument(metavar="FILE", help="the bundle to write (a tar)")],
) -> None:
    """Put a pulled preset in one file, to carry to a machine with no network (`ref2img models import`)."""
    from ref2img.engines.base import EngineError
    from ref2img.engines.local.bundle import BundleError, bundle
    from ref2img.engines.local.presets import resolve_preset

    try:
        preset = resolve_preset(preset_name)
        files = bundle(preset, target, on_file=lambda f: err.print(f"{f.repo}/{f.path}", highlight=False))
    except (EngineError, BundleError) as exc:
        fail(str(exc))
    err.print(
        f"{target}: preset {preset.name!r}, {len(files)} files, {human_size(sum(f.size for f in files))}",
        highlight=False,
    )


@app.command("import")
def models_import(
    source: Annotated[Path, typer.Argument(metavar="FILE", help="a bundle made by `ref2img models bundle`")],
    cache: Annotated[
        Path | None,
        typer.Option("--cache", metavar="DIR", help="the Hugging Face hub cache to fill (default: this machine's)"),
    ] = None,
) -> None:
    """Check a bundle (sizes, hashes, preset version) and put its files in the model cache: the preset then
    works with no network (HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants

    from ref2img.engines.base import EngineError
    from ref2img.engines.local.bundle import BundleError, import_bundle
    from ref2img.engines.local.presets import resolve_preset

    if not source.is_file():
        fail(f"FILE: {source} does not exist", EXIT_USAGE)
    folder = (cache or Path(constants.HF_HUB_CACHE)).expanduser()
    try:
        name, files = import_bundle(
            source, resolve_preset, folder, on_file=lambda f: err.print(f"{f.repo}/{f.path}", highlight=False)
        )
    except (EngineError, BundleError) as exc:
        fail(str(exc))
    err.print(f"preset {name!r} is ready ({len(files)} files in {folder})", highlight=False)


@app.command("tiny")
def models_tiny(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="folder to build the tiny models in")],
    family: Annotated[
        str,
        typer.Option("--family", metavar="NAME", help="the model family: " + ", ".join(family_names())),
    ] = "sd15",
) -> None:
    """Build every part of the random-weight `tiny` preset offline (for tests and plumbing checks)."""
    if family not in family_names():
        fail(f"--family: must be one of {', '.join(family_names())} (got {family!r})", EXIT_USAGE)
    quiet_libraries()
    import torch

    family_named(family).build_random(directory, "tiny", torch.float32)
    out.print(f"built tiny {family} models in {directory}; use them with --model {directory}", highlight=False)
