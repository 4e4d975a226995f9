"""`ref2img models bundle PRESET FILE` and `ref2img models import FILE`: a pulled preset as one file, for
machines with no network.

A bundle is a tar: `manifest.json` first (the preset, its version, and per file its repo, commit,
path, blob etag, size and sha256), then each file's bytes. Import checks every file's size and sha256
as it writes it, refuses a truncated or altered bundle (or one made for another version of the preset)
with a message that says which, and places the files in the Hugging Face cache's own layout, so the
preset loads with `HF_HUB_OFFLINE=1`. A file is moved into the cache only once it checks out: a refused
import leaves no partial file behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ref2img.engines.local.hub import locate_snapshot
from ref2img.engines.local.presets import Preset

FORMAT = 1
CHUNK = 8 * 1024 * 1024


class BundleError(RuntimeError):
    """The bundle cannot be made or used; the message says why, in one line."""


@dataclass(frozen=True)
class BundledFile:
    repo: str
    commit: str
    path: str  # inside the repo
    etag: str  # the blob's name in a Hugging Face cache
    size: int
    sha256: str

    @property
    def member(self) -> str:
        return f"repos/{self.repo}/{self.commit}/{self.path}"


def preset_version(preset: Preset) -> str:
    """A short hash of what a preset fetches (each hub part's repo, files, subfolder, weight, variant):
    two ref2img releases whose preset fetches the same files share it."""
    parts = {
        name: [ref.source, list(ref.files or []), ref.subfolder, ref.weight_name, ref.variant]
        for name, ref in sorted(preset.parts().items())
        if not ref.is_local
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def bundle(
    preset: Preset, target: Path, on_file: Callable[[BundledFile], None] = lambda file: None
) -> list[BundledFile]:
    """Write every hub file of a pulled preset into `target`; BundleError names a part not pulled yet."""
    pulled = _pulled_files(preset)
    files = [file for file, _ in pulled]
    manifest = {
        "format": FORMAT,
        "preset": preset.name,
        "preset_version": preset_version(preset),
        "files": [asdict(file) for file in files],
    }
    partial = target.with_name(target.name + ".partial")
    with tarfile.open(partial, "w") as archive:
        data = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
        for file, source in pulled:
            on_file(file)
            info = tarfile.TarInfo(file.member)
            info.size = file.size
            with source.open("rb") as handle:
                archive.addfile(info, handle)
    partial.replace(target)  # a bundle is whole, or not there
    return files


def _pulled_files(preset: Preset) -> list[tuple[BundledFile, Path]]:
    """Each hub file the preset's parts select (once, though two parts share a repo), with its blob."""
    from huggingface_hub.utils import filter_repo_objects

    found: dict[tuple[str, str], tuple[BundledFile, Path]] = {}
    for part, ref in preset.parts().items():
        if ref.is_local:
            continue
        snapshot = locate_snapshot(ref, part, preset)
        present = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
        for path in filter_repo_objects(present, allow_patterns=list(ref.files or ["*"])):
            if (ref.source, path) not in found:
                blob = (snapshot / path).resolve()
                file = BundledFile(ref.source, snapshot.name, path, blob.name, blob.stat().st_size, _sha256(blob))
                found[(ref.source, path)] = (file, blob)
    return list(found.values())


def import_bundle(
    source: Path,
    preset_for: Callable[[str], Preset],
    cache_dir: Path,
    on_file: Callable[[BundledFile], None] = lambda file: None,
) -> tuple[str, list[BundledFile]]:
    """Check and place a bundle's files in the cache at `cache_dir`; returns (preset name, files)."""
    try:
        opened = tarfile.open(source, "r")  # noqa: SIM115 - the with below closes it
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{source} is not a ref2img bundle ({exc})") from None
    with opened as archive:
        manifest = _manifest(archive, source)
        preset = preset_for(manifest["preset"])
        theirs, ours = manifest["preset_version"], preset_version(preset)
        if theirs != ours:
            raise BundleError(
                f"{source} holds preset {preset.name!r} version {theirs}, but this ref2img's "
                f"{preset.name!r} is version {ours}: make the bundle again with this release"
            )
        files = [BundledFile(**entry) for entry in manifest["files"]]
        members = {member.name: member for member in _members(archive, source)}
        for file in files:
            on_file(file)
            member = members.get(file.member)
            if member is None:
                raise BundleError(f"{source} is truncated: {file.repo}/{file.path} is missing from it")
            _place(archive, member, file, cache_dir, source)
    return preset.name, files


def _manifest(archive: tarfile.TarFile, source: Path) -> dict:
    try:
        handle = archive.extractfile("manifest.json")
        manifest = json.loads(handle.read()) if handle else None
    except (KeyError, ValueError, tarfile.TarError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{source} has no ref2img bundle manifest (format {FORMAT})")
    return manifest


def _members(archive: tarfile.TarFile, source: Path) -> list[tarfile.TarInfo]:
    try:
        return archive.getmembers()
    except (tarfile.TarError, EOFError, OSError):
        raise BundleError(f"{source} is truncated or damaged: its file list cannot be read to the end") from None


def _place(archive: tarfile.TarFile, member: tarfile.TarInfo, file: BundledFile, cache_dir: Path, source: Path) -> None:
    repo_dir = cache_dir / f"models--{file.repo.replace('/', '--')}"
    blob = repo_dir / "blobs" / file.etag
    if not blob.exists():
        blob.parent.mkdir(parents=True, exist_ok=True)
        partial = blob.with_name(blob.name + ".import")
        digest, size = hashlib.sha256(), 0
        try:
            handle = archive.extractfile(member)
            if handle is None:
                raise BundleError(f"{source}: {file.repo}/{file.path} is not a file")
            with partial.open("wb") as out:
                while chunk := handle.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        except (tarfile.TarError, EOFError, OSError) as exc:
            partial.unlink(missing_ok=True)
            raise BundleError(f"{source} is truncated: {file.repo}/{file.path} ends early ({exc})") from None
        if size != file.size or digest.hexdigest() != file.sha256:
            partial.unlink(missing_ok=True)
            what = f"{size} bytes, expected {file.size}" if size != file.size else "its sha256 differs"
            raise BundleError(
                f"{source} was altered or damaged: {file.repo}/{file.path} ({what}); nothing of it was placed"
            )
        partial.replace(blob)
    link = repo_dir / "snapshots" / file.commit / file.path
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(os.path.relpath(blob, link.parent))
    refs = repo_dir / "refs" / "main"
    refs.parent.mkdir(parents=True, exist_ok=True)
    refs.write_text(file.commit)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
