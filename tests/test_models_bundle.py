"""`ref2img models bundle` / `import`: a pulled preset carried as one file to a machine with no network,
checked on arrival (sizes, hashes, preset version), refused whole when truncated or altered."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from .hub_fixture import stand_in, write_repo
from .hub_layouts import LAYOUTS, SD15_NEEDS


def ref2img(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}  # no network, as on the target
    return subprocess.run(
        [sys.executable, "-m", "ref2img.cli", "models", *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def pulled(tmp_path_factory) -> Path:
    """A cache as `models pull sd15` leaves it (the real repos' paths; stand-in bytes)."""
    cache = tmp_path_factory.mktemp("pulled") / "hub"
    for repo, paths in SD15_NEEDS.items():
        write_repo(cache, repo, {path: stand_in(path) for path in paths})
    return cache


@pytest.fixture(scope="module")
def sd15_bundle(pulled, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("bundle") / "sd15.tar"
    made = ref2img("bundle", "sd15", str(target), cache=pulled)
    assert made.returncode == 0, made.stderr
    return target


def cache_files(cache: Path) -> dict[tuple[str, str], bytes]:
    files = {}
    for repo in SD15_NEEDS:
        [snapshot] = (cache / f"models--{repo.replace('/', '--')}" / "snapshots").iterdir()
        files.update(
            {(repo, p.relative_to(snapshot).as_posix()): p.read_bytes() for p in snapshot.rglob("*") if p.is_file()}
        )
    return files


def test_a_bundle_carries_a_preset_to_a_machine_with_no_network(pulled, sd15_bundle, tmp_path):
    with tarfile.open(sd15_bundle) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))
    assert manifest["preset"] == "sd15"
    assert {(f["repo"], f["path"]) for f in manifest["files"]} == {
        (repo, path) for repo, paths in SD15_NEEDS.items() for path in paths
    }  # each shared file once

    target = tmp_path / "offline-hub"
    assert ref2img("list", "sd15", "--json", cache=target).returncode == 0
    imported = ref2img("import", str(sd15_bundle), cache=target)
    assert imported.returncode == 0, imported.stderr
    listed = json.loads(ref2img("list", "sd15", "--json", cache=target).stdout)
    assert listed[0]["ready"]
    assert cache_files(target) == cache_files(pulled)


def test_a_truncated_bundle_is_refused_and_leaves_nothing_half_written(sd15_bundle, tmp_path):
    cut = tmp_path / "cut.tar"
    data = sd15_bundle.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    target = tmp_path / "hub"
    refused = ref2img("import", str(cut), cache=target)
    assert refused.returncode == 1 and "truncated" in refused.stderr, refused.stderr
    assert not list(target.rglob("*.import"))


def test_an_altered_bundle_is_refused(sd15_bundle, tmp_path):
    with tarfile.open(sd15_bundle) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("model.safetensors"))
    data = bytearray(sd15_bundle.read_bytes())
    data[member.offset_data + 10] ^= 0xFF  # one byte of the depth model, flipped
    altered = tmp_path / "altered.tar"
    altered.write_bytes(bytes(data))
    refused = ref2img("import", str(altered), cache=tmp_path / "hub")
    assert refused.returncode == 1 and "altered or damaged" in refused.stderr and "model.safetensors" in refused.stderr


def test_a_bundle_of_another_preset_version_names_both(sd15_bundle, tmp_path):
    with tarfile.open(sd15_bundle) as archive:
        members = [(m, archive.extractfile(m).read()) for m in archive.getmembers()]
    old = tmp_path / "old.tar"
    with tarfile.open(old, "w") as archive:
        for member, data in members:
            if member.name == "manifest.json":
                manifest = json.loads(data)
                manifest["preset_version"] = "0123456789ab"
                data = json.dumps(manifest).encode()
                member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    refused = ref2img("import", str(old), cache=tmp_path / "hub")
    assert refused.returncode == 1 and "0123456789ab" in refused.stderr and "version" in refused.stderr


def test_bundling_a_preset_that_is_not_pulled_names_the_pull_command(tmp_path):
    missing = ref2img("bundle", "sd15", str(tmp_path / "x.tar"), cache=tmp_path / "empty")
    assert missing.returncode == 1 and "ref2img models pull sd15" in missing.stderr
    assert not (tmp_path / "x.tar").exists()


def test_layouts_cover_what_the_preset_needs():
    assert all(set(paths) <= set(LAYOUTS[repo]) for repo, paths in SD15_NEEDS.items())
