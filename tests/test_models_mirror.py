"""`ref2img models mirror`, spoken to by the real `huggingface_hub` client (HF_ENDPOINT), over a
fixture hub: a cache written in the Hub cache's layout with the real repos' file names (hub_layouts.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from .hub_fixture import stand_in, write_repo
from .hub_layouts import LAYOUTS, SD15_NEEDS, SDXL_FAST_NEEDS, SDXL_NEEDS, ZIMAGE_TURBO_NEEDS, real_bytes
from .server.conftest import free_port

pytest.importorskip("huggingface_hub")


class Mirror:
    """The mirror app on uvicorn in a thread, recording each request it serves (method, path, Range)."""

    def __init__(self, cache: Path):
        from ref2img.engines.local.mirror import create_mirror

        self.requests: list[tuple[str, str, str | None]] = []
        app = create_mirror(cache)

        async def recording(scope, receive, send):
            if scope["type"] == "http":
                headers = dict(scope["headers"])
                self.requests.append((scope["method"], scope["path"], headers.get(b"range", b"").decode() or None))
            await app(scope, receive, send)

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(recording, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Mirror:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(autouse=True)
def online_to_the_mirror(monkeypatch):
    """The suite runs with HF_HUB_OFFLINE=1 (tests/conftest.py); these tests talk to their own mirror on
    loopback, never to the Hub: their endpoint is always the mirror's."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def fixture_hub(tmp_path) -> Path:
    cache = tmp_path / "source-cache"
    for repo, files in LAYOUTS.items():
        write_repo(cache, repo, {path: stand_in(path) for path in files})
    return cache


def snapshot_files(cache: Path, repo: str) -> dict[str, bytes]:
    [snapshot] = (cache / f"models--{repo.replace('/', '--')}" / "snapshots").iterdir()
    return {path.relative_to(snapshot).as_posix(): path.read_bytes() for path in snapshot.rglob("*") if path.is_file()}


def test_snapshot_download_through_the_mirror_gets_the_same_files(fixture_hub, tmp_path):
    from huggingface_hub import hf_hub_download, snapshot_download

    repo = "lllyasviel/control_v11p_sd15_canny"
    with Mirror(fixture_hub) as mirror:
        folder = snapshot_download(
            repo, allow_patterns=["config.json", "images/*"], cache_dir=tmp_path / "dest", endpoint=mirror.url
        )
        single = hf_hub_download(
            repo, "diffusion_pytorch_model.fp16.safetensors", cache_dir=tmp_path / "dest", endpoint=mirror.url
        )
    fetched = {p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file()}
    assert fetched == {
        "config.json",
        "images/control.png",
        "images/image_out.png",
        "images/input.png",
        "diffusion_pytorch_model.fp16.safetensors",
    }
    source = snapshot_files(fixture_hub, repo)
    assert all(Path(folder, path).read_bytes() == source[path] for path in fetched)
    assert Path(single).read_bytes() == source["diffusion_pytorch_model.fp16.safetensors"]
    assert Path(folder).name == (fixture_hub / "models--lllyasviel--control_v11p_sd15_canny/refs/main").read_text()


def test_what_the_mirror_lacks_is_a_404_in_the_hubs_own_form(fixture_hub, tmp_path):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    with Mirror(fixture_hub) as mirror:
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("nobody/nothing", "config.json", cache_dir=tmp_path, endpoint=mirror.url)
        with pytest.raises(EntryNotFoundError):
            hf_hub_download("yzd-v/DWPose", "missing.onnx", cache_dir=tmp_path, endpoint=mirror.url)
        with pytest.raises(RevisionNotFoundError):
            hf_hub_download("yzd-v/DWPose", "yolox_l.onnx", revision="v9", cache_dir=tmp_path, endpoint=mirror.url)
        raw = httpx.get(f"{mirror.url}/nobody/nothing/resolve/main/config.json")
        writes = httpx.post(f"{mirror.url}/api/repos/create", json={"name": "x"})
    assert raw.status_code == 404 and raw.headers["X-Error-Code"] == "RepoNotFound" and "error" in raw.json()
    assert writes.status_code == 405  # read-only


def test_a_cut_off_pull_resumes_with_what_is_missing(fixture_hub, tmp_path):
    """huggingface_hub resumes a dropped transfer with a Range request inside one call, and a new call
    fetches only the files not yet in the cache: the mirror must serve both."""
    from huggingface_hub import snapshot_download

    repo = "depth-anything/Depth-Anything-V2-Small-hf"
    wanted = ["config.json", "preprocessor_config.json", "model.safetensors"]
    dest = tmp_path / "dest"
    data = snapshot_files(fixture_hub, repo)["model.safetensors"]
    with Mirror(fixture_hub) as mirror:
        part = httpx.get(f"{mirror.url}/{repo}/resolve/main/model.safetensors", headers={"Range": "bytes=100-"})
        assert part.status_code == 206 and part.content == data[100:]

        folder = Path(snapshot_download(repo, allow_patterns=wanted[:2], cache_dir=dest, endpoint=mirror.url))
        mirror.requests.clear()  # the first pull stopped before the weights; the second must finish it
        snapshot_download(repo, allow_patterns=wanted, cache_dir=dest, endpoint=mirror.url)
    fetched = {path for method, path, _ in mirror.requests if method == "GET" and "/resolve/" in path}
    assert fetched == {f"/{repo}/resolve/{folder.name}/model.safetensors"}
    assert (folder / "model.safetensors").read_bytes() == data


# (preset, the files its loaders read, what that pull downloads from the real Hub, in GB)
# (each with the subject segmenter's 0.22 GB since it came)
# The everyday run pulls sd15's; CI pulls every preset's (each about 2.5 s: marked slow to keep the
# everyday run under 3 minutes).
PRESET_PULLS = [
    pytest.param("sd15", SD15_NEEDS, 7.61, id="sd15"),
    pytest.param("sdxl", SDXL_NEEDS, 13.68, id="sdxl", marks=pytest.mark.slow),
    pytest.param("sdxl-fast", SDXL_FAST_NEEDS, 14.07, id="sdxl-fast", marks=pytest.mark.slow),
    pytest.param("zimage-turbo", ZIMAGE_TURBO_NEEDS, 40.29, id="zimage-turbo", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("preset", "needs", "real_gb"), PRESET_PULLS)
def test_models_pull_through_the_mirror_fetches_what_the_loaders_read_and_nothing_more(
    fixture_hub, tmp_path, preset, needs, real_gb
):
    home = tmp_path / "hf-home"
    with Mirror(fixture_hub) as mirror:
        env = {**os.environ, "HF_ENDPOINT": mirror.url, "HF_HOME": str(home)}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):  # online: to the mirror only
            env.pop(name, None)
        pulled = subprocess.run(
            [sys.executable, "-m", "ref2img.cli", "models", "pull", preset],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert pulled.returncode == 0, pulled.stderr
        listed = subprocess.run(
            [sys.executable, "-m", "ref2img.cli", "models", "list", preset, "--json"],
            env={**env, "HF_HUB_OFFLINE": "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    cache = home / "hub"
    fetched = {repo: set(snapshot_files(cache, repo)) for repo in needs}
    assert fetched == needs  # no safety checker, .bin/.ckpt/.pth, fp32 twins, flax, OpenVINO or promax files
    [entry] = json.loads(listed.stdout)
    assert entry["ready"] and all(part["present"] for part in entry["parts"])
    # The bytes the same pull downloads from the real Hub (docs/models.md).
    assert abs(real_bytes(needs) / 1e9 - real_gb) < 0.01


def test_the_mirror_command(fixture_hub, tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ref2img.cli",
            "models",
            "mirror",
            "--cache",
            str(fixture_hub),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                info = httpx.get(f"http://127.0.0.1:{port}/api/models/yzd-v/DWPose/revision/main").json()
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the mirror did not start"
                time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(15)
    assert {sibling["rfilename"] for sibling in info["siblings"]} == set(LAYOUTS["yzd-v/DWPose"])
    missing = subprocess.run(
        [sys.executable, "-m", "ref2img.cli", "models", "mirror", "--cache", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "--cache" in missing.stderr
