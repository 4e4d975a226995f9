"""Several presets on one server (`--model` repeated): a request picks one by name (`model`), each runs on
the one it names, at most `--max-loaded` are held at once (the least recently used unloaded), and a bad
name is refused naming the ones offered. Also the pool's own rules, on its own."""

from __future__ import annotations

import io
import shutil
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from ref2img.engines.base import EngineOptionError
from ref2img.tasks.execution.engine_pool import EnginePool
from ref2img.tasks.execution.engine_provider import EngineProvider

from .conftest import Cloud, data_uri, img2img_body, running


@pytest.fixture(scope="module")
def two_presets(tiny_sd15, tiny_sdxl, tmp_path_factory):
    loras = tmp_path_factory.mktemp("loras")
    shutil.copy(tiny_sd15 / "lora" / "pytorch_lora_weights.safetensors", loras / "style.safetensors")
    with running(
        tmp_path_factory, "presets", tiny_sd15, "--model", str(tiny_sdxl), "--max-loaded", "1", "--lora-dir", str(loras)
    ) as server:
        yield server


def info(server, cloud) -> dict:
    return httpx.get(f"{server.url}/v1/info", headers=cloud.headers, timeout=10).json()["data"]


def run(cloud: Cloud, body: dict) -> tuple[dict, np.ndarray]:
    created = httpx.post(
        f"{cloud.base}/v1/open/capacity/application/tm_reference_img2img", json=body, headers=cloud.headers, timeout=30
    ).json()
    assert created["code"] == 0, created
    deadline = time.monotonic() + 60
    while True:
        data = httpx.post(
            f"{cloud.base}/v1/open/pub/task",
            json={"task_id": created["data"]["task_id"], "wait": 10},
            headers=cloud.headers,
            timeout=40,
        ).json()["data"]
        if data["status"] >= 3 or time.monotonic() > deadline:
            break
    assert data["status"] == 3, data
    import json

    [url] = json.loads(data["result"])["images_path"]
    return data, np.asarray(Image.open(io.BytesIO(httpx.get(url, timeout=10).content)))


@pytest.mark.slow  # a server of two presets, loaded in turn: over 5 s
def test_each_request_runs_on_the_preset_it_names_within_the_loaded_bound(two_presets, astronaut):
    cloud = Cloud(two_presets.url, *two_presets.new_key())
    presets = info(two_presets, cloud)["presets"]
    assert [(p["name"], p["family"], p["default"]) for p in presets] == [
        ("tiny", "sd15", True),
        ("tiny-sdxl", "sdxl", False),
    ]
    body = img2img_body(data_uri(astronaut.resize((128, 128))), seed=5)
    _, xl_first = run(cloud, {**body, "model": "tiny-sdxl"})
    states = {p["name"]: p["state"] for p in info(two_presets, cloud)["presets"]}
    assert states == {"tiny": "not loaded", "tiny-sdxl": "loaded"}  # --max-loaded 1: the default made room
    _, default = run(cloud, body)  # no model: the default preset
    states = {p["name"]: p["state"] for p in info(two_presets, cloud)["presets"]}
    assert states == {"tiny": "loaded", "tiny-sdxl": "not loaded"}
    _, xl_again = run(cloud, {**body, "model": "tiny-sdxl"})
    assert (xl_first == xl_again).all()  # the same preset, reloaded: the same pixels
    assert not (xl_first == default).all()  # another preset: another image
    tasks = httpx.get(f"{cloud.base}/v1/tasks", headers=cloud.headers, timeout=10).json()["data"]["tasks"]
    assert [task["settings"]["model"] for task in tasks] == ["tiny-sdxl", "tiny", "tiny-sdxl"]  # named in each


@pytest.mark.slow  # the same server
def test_an_unknown_preset_is_refused_naming_those_offered(two_presets, astronaut):
    cloud = Cloud(two_presets.url, *two_presets.new_key())
    body = {**img2img_body(data_uri(astronaut.resize((64, 64)))), "model": "sdxl"}
    answer = httpx.post(
        f"{cloud.base}/v1/open/capacity/application/tm_reference_img2img", json=body, headers=cloud.headers, timeout=30
    ).json()
    assert answer["code"] == 680001
    assert answer["msg"] == "model: 'sdxl' is not a preset of this server; it offers tiny, tiny-sdxl"


class Marker:
    """An engine stand-in for the pool's bookkeeping: which preset it is, and whether it was unloaded."""

    def __init__(self, name: str, loads: list[str]):
        self.name = name
        loads.append(name)


class ParkingMarker(Marker):
    """A stand-in that can be parked on the CPU (as a GPU LocalEngine can): it records where it is."""

    def __init__(self, name: str, loads: list[str]):
        super().__init__(name, loads)
        self.where = "gpu"
        self.moves: list[str] = []

    def park(self) -> bool:
        self.where = "cpu"
        self.moves.append("park")
        return True

    def unpark(self) -> None:
        if self.where == "cpu":
            self.where = "gpu"
            self.moves.append("unpark")


def test_the_pool_parks_an_idle_preset_on_the_cpu_and_brings_it_back_without_a_load():
    loads: list[str] = []
    engines: dict[str, ParkingMarker] = {}

    def provider(name: str) -> EngineProvider:
        return EngineProvider(lambda: engines.setdefault(name, ParkingMarker(name, loads)))

    pool = EnginePool({name: provider(name) for name in "abc"}, "a", max_loaded=1, max_parked=1)
    for name in "ab":
        with pool.using(name):
            pass
    assert pool.states() == {"a": "parked on the CPU", "b": "loaded", "c": "not loaded"}
    with pool.using("a") as engine:  # back from the CPU: moved up, not loaded again
        assert engine.where == "gpu"
    assert loads == ["a", "b"] and engines["a"].moves == ["park", "unpark"]
    assert pool.states() == {"a": "loaded", "b": "parked on the CPU", "c": "not loaded"}
    with pool.using("c"):  # a is parked; past --max-parked 1, the least recently parked (b) is unloaded
        pass
    assert pool.states() == {"a": "parked on the CPU", "b": "not loaded", "c": "loaded"}
    with pool.using("b"):
        pass
    assert loads == ["a", "b", "c", "b"]  # b came back from disk; a never did


def test_a_cpu_engine_is_not_parked(tiny_sd15):
    """Parking frees a GPU: a CPU engine (or one with offload or compiled kernels) says there is nothing
    to gain, so the pool unloads it instead."""
    from ref2img.engines.local.engine import LocalEngine

    engine = LocalEngine(str(tiny_sd15)).load()
    assert engine.park() is False and engine.parked is False


def test_the_pool_unloads_the_least_recently_used_idle_preset_and_waits_for_a_busy_one():
    loads: list[str] = []
    pool = EnginePool(
        {name: EngineProvider(lambda name=name: Marker(name, loads)) for name in "abc"}, "a", max_loaded=2
    )
    with pool.using(None) as engine:
        assert engine.name == "a"
    with pool.using("b"):
        pass
    with pool.using("a"):  # a is now the more recent
        pass
    with pool.using("c"):  # room for c: b, the least recently used, goes
        pass
    assert pool.states() == {"a": "loaded", "b": "not loaded", "c": "loaded"}
    with (
        pytest.raises(EngineOptionError, match="model: 'd' is not a preset of this server; it offers a, b, c"),
        pool.using("d"),
    ):
        pass

    order: list[str] = []
    with pool.using("a"), pool.using("c"):  # both loaded presets busy: b must wait for one to end
        waiter = threading.Thread(
            target=lambda: (order.append("asked"), pool.using("b").__enter__(), order.append("b"))
        )
        waiter.start()
        time.sleep(0.3)
        assert order == ["asked"]  # still waiting: nothing busy is unloaded
        order.append("released")
    waiter.join(5)
    assert order == ["asked", "released", "b"] and loads.count("b") == 2


@pytest.mark.slow  # the same server
def test_the_openai_route_picks_a_preset_by_its_suffix(two_presets, astronaut):
    openai = pytest.importorskip("openai")
    app_key, secret = two_presets.new_key()
    client = openai.OpenAI(base_url=f"{two_presets.url}/v1", api_key=f"{app_key}:{secret}", max_retries=0)
    names = [model.id for model in client.models.list()]
    assert "ref2img-pose:tiny" in names and "ref2img-pose:tiny-sdxl" in names and len(names) == 12
    buffer = io.BytesIO()
    astronaut.resize((128, 128)).save(buffer, format="PNG")
    client.images.edit(
        image=("a.png", buffer.getvalue(), "image/png"),
        prompt="on the other preset",
        model="ref2img-edge:tiny-sdxl",
        size="512x512",
    )
    cloud = Cloud(two_presets.url, app_key, secret)
    tasks = httpx.get(f"{cloud.base}/v1/tasks", headers=cloud.headers, timeout=10).json()["data"]["tasks"]
    assert tasks[0]["settings"]["model"] == "tiny-sdxl"


@pytest.mark.slow  # the same server
def test_a_lora_of_the_servers_folder_changes_the_images_and_the_next_task_has_none(two_presets, astronaut):
    cloud = Cloud(two_presets.url, *two_presets.new_key())
    assert httpx.get(f"{cloud.base}/v1/loras", headers=cloud.headers, timeout=10).json()["data"] == {
        "loras": [{"name": "style"}]
    }
    body = img2img_body(data_uri(astronaut.resize((128, 128))), seed=9)
    _, plain = run(cloud, body)
    _data, styled = run(cloud, {**body, "loras": [{"name": "style", "weight": 1.0}]})
    _, plain_again = run(cloud, body)
    assert not (styled == plain).all() and (plain_again == plain).all()
