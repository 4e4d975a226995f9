"""Finding model parts on disk, and downloading them (`ref2img models pull`).

Generation never downloads: `locate` looks only at local folders and the Hugging Face cache, and a
missing part is one sentence naming it and the command that fetches it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ref2img.engines.base import ModelMissingError
from ref2img.engines.local.presets import ModelRef, Preset


def locate(ref: ModelRef, part: str, preset: Preset) -> Path:
    """The local folder (or file, with `weight_name`) of one part; ModelMissingError if absent."""
    root = _root(ref, part, preset)
    path = root / ref.subfolder if ref.subfolder else root
    if ref.weight_name:
        path = path / ref.weight_name
    if not path.exists():
        raise _missing(ref, part, preset)
    return path


def folder_of(ref: ModelRef, part: str, preset: Preset) -> Path:
    """The folder that holds a part (its subfolder, not its weight file)."""
    path = locate(ref, part, preset)
    return path.parent if ref.weight_name else path


def locate_snapshot(ref: ModelRef, part: str, preset: Preset) -> Path:
    """The cache snapshot folder (the repo at its commit) that holds a hub part; ModelMissingError if absent."""
    return _root(ref, part, preset)


def _root(ref: ModelRef, part: str, preset: Preset) -> Path:
    if ref.is_local:
        return Path(ref.source).expanduser()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(ref.source, local_files_only=True, allow_patterns=list(ref.files or ["*"])))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        raise _missing(ref, part, preset) from None


def _missing(ref: ModelRef, part: str, preset: Preset) -> ModelMissingError:
    where = (
        ref.source + (f"/{ref.subfolder}" if ref.subfolder else "") + (f"/{ref.weight_name}" if ref.weight_name else "")
    )
    if ref.is_local:
        return ModelMissingError(
            f"The {part} model of preset {preset.name!r} is missing: {where} does not exist "
            f"(build the tiny models with `ref2img models tiny DIR`, or fix the path)."
        )
    return ModelMissingError(
        f"The {part} model of preset {preset.name!r} ({where}) is not on this machine; "
        f"get it with `ref2img models pull {preset.pull_target}`."
    )


@dataclass(frozen=True)
class PartStatus:
    part: str
    source: str
    present: bool
    size_bytes: int


def part_statuses(preset: Preset) -> Iterator[PartStatus]:
    for part, ref in preset.parts().items():
        try:
            path = locate(ref, part, preset)
        except ModelMissingError:
            yield PartStatus(part, ref.source, False, 0)
            continue
        yield PartStatus(part, ref.source, True, _size(path))


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size  # follows the hub cache's symlinks to the blobs
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class PullError(RuntimeError):
    """A download failed; the message says which part and why, in one line."""


def pull(preset: Preset, on_part=lambda part, ref: None) -> list[Path]:
    """Download every hub part of a preset into the Hugging Face cache (with tqdm progress bars)."""
    from huggingface_hub import snapshot_download

    fetched = []
    for part, ref in preset.parts().items():
        if ref.is_local:
            continue
        on_part(part, ref)
        try:
            fetched.append(Path(snapshot_download(ref.source, allow_patterns=list(ref.files or ["*"]))))
        except Exception as exc:  # noqa: BLE001 - any hub/network failure becomes one clear line
            offline = os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True")
            reason = (
                "HF_HUB_OFFLINE is set"
                if offline
                else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )
            raise PullError(
                f"could not download the {part} model ({ref.source}) from the Hugging Face Hub: {reason}. "
                "Check the network (or HF_ENDPOINT / HF_TOKEN for gated or mirrored repos) and try again."
            ) from None
    return fetched
