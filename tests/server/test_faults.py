"""Faults under a running server: the engine raising or running out of memory, the task store locked by
another process, the data disk full. Each ends in a clear answer or a clear task reason; no worker dies
and no accepted task is lost. (SIGKILL of a server: test_lifecycle; of a fleet worker: scale/test_fleet.)"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from PIL import Image

from ref2img.engines.local import LocalEngine
from ref2img.server import ServerSettings, create_app

from .conftest import Cloud, Server, data_uri, free_port, img2img_body, png_bytes

FAULTS = {  # a prompt naming a fault makes the engine's pipeline raise it, as the real one would
    "fault:cuda-oom": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    "fault:cpu-oom": lambda: RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
        "can't allocate memory: you tried to allocate 85899345920 bytes."
    ),
    "fault:bug": lambda: ValueError("an engine bug"),
}


class FaultyEngine(LocalEngine):
    """The real engine, whose pipeline raises the fault a prompt names (the call itself is diffusers')."""

    def _prepare(self, job, gen_w, gen_h):
        pipe, kwargs = super()._prepare(job, gen_w, gen_h)
        if job.prompt in FAULTS:

            def pipe(**_kwargs):
                raise FAULTS[job.prompt]()

        return pipe, kwargs


class InProcessServer:
    """create_app on uvicorn in a thread: a real HTTP server whose engine the test chooses."""

    def __init__(self, settings: ServerSettings):
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings), host="127.0.0.1", port=self.port, log_level="warning", access_log=False
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def reference() -> str:
    return data_uri(Image.new("RGB", (64, 64), (200, 120, 40)))


def test_engine_faults_end_the_task_clearly_and_the_worker_goes_on(tiny_sd15, tmp_path, reference, caplog):
    settings = ServerSettings(
        data_dir=tmp_path / "data",
        model=str(tiny_sd15),
        workers=1,
        engine_factory=lambda: FaultyEngine(str(tiny_sd15)).load(),
    )
    with InProcessServer(settings) as url:
        cloud = Cloud(url, *Server(tmp_path / "data", tiny_sd15).new_key())

        def run(prompt: str) -> dict:
            return cloud.wait_final(cloud.create_id(img2img_body(reference, prompt=prompt, width=512, height=512)))

        for prompt in ("fault:cuda-oom", "fault:cpu-oom"):
            data = run(prompt)
            assert data["status"] == 4
            assert data["reason"].startswith("out of memory on cpu generating 1 image(s) at ")
            assert "try a smaller width/height or batch_size" in data["reason"]
        bug = run("fault:bug")
        assert bug["status"] == 4 and bug["reason"].startswith("internal error (incident ")
        incident = bug["reason"].removeprefix("internal error (incident ").rstrip(")")
        assert f"incident {incident}" in caplog.text and "an engine bug" in caplog.text  # for the operator
        assert run("a calm lake")["status"] == 3  # the same single worker, still alive


@pytest.mark.slow
def test_a_locked_store_answers_busy_and_loses_nothing(tiny_sd15, tmp_path, reference):
    server = Server(tmp_path / "data", tiny_sd15, "--workers", "1", "--lease", "2", "--part", "steps=30").start()
    try:
        cloud = Cloud(server.url, *server.new_key())
        running = cloud.create_id(img2img_body(reference, width=512, height=512))
        locker = sqlite3.connect(server.data_dir / "ref2img.db", timeout=10, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock past the busy timeout
        try:
            started = time.monotonic()
            answer = cloud.create(img2img_body(reference))
            waited = time.monotonic() - started
            assert answer.status_code == 429 and answer.headers["Retry-After"] == "5"
            assert answer.json() == {
                "code": 680005,
                "data": None,
                "msg": "busy: the task store is locked by another process; retry in 5 s",
            }
            assert 9 < waited < 25  # it waited its turn and the busy timeout (10 s each at most), then said so
            assert cloud.query(running)["code"] == 0  # readers are not blocked (WAL)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        # The task that was running under the lock is finished (or run again), and the worker still works.
        assert cloud.wait_final(running, timeout_s=120)["status"] == 3
        assert cloud.wait_final(cloud.create_id(img2img_body(reference)), timeout_s=120)["status"] == 3
    finally:
        server.stop()


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs for the data dir: a disk that can really fill (root only, as in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.fail("this test mounts a tmpfs to fill a disk: it needs root (CI runs as root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:  # unbuffered: closing must not flush into the full disk
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_a_full_data_disk_answers_busy_and_recovers(tiny_sd15, small_disk, reference):
    server = Server(small_disk / "data", tiny_sd15, "--workers", "1", "--lease", "2").start()
    try:
        cloud = Cloud(server.url, *server.new_key())
        accepted = [cloud.create_id(img2img_body(reference, width=512, height=512))]
        filler = fill(small_disk)
        refused = 0
        for _ in range(5):  # creates either land (room left in the database's pages) or are refused clearly
            answer = cloud.create(img2img_body(reference, width=512, height=512))
            body = answer.json()
            assert answer.status_code in (200, 429), answer.text
            if body["code"] == 0:
                accepted.append(body["data"]["task_id"])
            else:
                refused += 1
                assert body["code"] == 680005 and body["msg"].startswith("busy: the server's disk is full")
        upload = httpx.post(
            f"{server.url}/v1/files",
            files={"file": ("r.png", png_bytes(Image.new("RGB", (64, 64), "red")))},
            headers={k: v for k, v in cloud.headers.items() if k != "Content-Type"},
        )
        assert upload.status_code == 429
        assert upload.json()["msg"].startswith("busy: the server's disk is full")
        assert not list((small_disk / "data").rglob("*.part"))  # nothing half-written is left behind
        time.sleep(3)  # the worker meets the full disk while storing results
        filler.unlink()
        finals = [cloud.wait_final(task_id, timeout_s=120) for task_id in accepted]
        for final in finals:  # done once there is room again, or failed saying why; never lost
            assert final["status"] == 3 or (
                final["status"] == 4 and final["reason"].startswith("the server's disk is full")
            ), final
        assert cloud.wait_final(cloud.create_id(img2img_body(reference)), timeout_s=120)["status"] == 3
        assert refused > 0  # the full disk was really met (a create needs new pages in the database)
    finally:
        server.stop()
        shutil.rmtree(small_disk / "data", ignore_errors=True)


def test_tasks_stay_queued_while_the_engine_loads(tiny_sd15, tmp_path, reference):
    """The first start loads the model for seconds to minutes: a task waits at status 1 with its
    position meanwhile, never at status 2 before a step has run."""
    loading = threading.Event()

    def slow_engine():
        loading.wait(60)  # the test decides when the load ends
        return LocalEngine(str(tiny_sd15)).load()

    settings = ServerSettings(data_dir=tmp_path / "data", model=str(tiny_sd15), workers=1, engine_factory=slow_engine)
    with InProcessServer(settings) as url:
        cloud = Cloud(url, *Server(tmp_path / "data", tiny_sd15).new_key())
        task_id = cloud.create_id(img2img_body(reference))
        time.sleep(1.5)  # ample for a worker to claim it, if it did not wait for the engine
        data = cloud.query(task_id)["data"]
        assert (data["status"], data["progress"], data["position"]) == (1, 0, 0)  # queued, first in line
        assert httpx.get(f"{url}/healthz").json()["data"]["engine"] == "loading"
        loading.set()
        assert cloud.wait_final(task_id)["status"] == 3


def test_an_internal_error_carries_the_security_headers_and_no_traceback(tiny_sd15, tmp_path):
    """A 500 is answered by Starlette's outermost layer, past the headers middleware: it carries them all
    the same, in the envelope, with an incident id and nothing of the exception."""
    from fastapi.testclient import TestClient

    from ref2img.server.headers import security_headers

    settings = ServerSettings(
        data_dir=tmp_path / "data", model=str(tiny_sd15), workers=0, engine_factory=lambda: LocalEngine(str(tiny_sd15))
    )
    app = create_app(settings)

    @app.get("/v1/broken-on-purpose")
    def broken() -> dict:
        raise RuntimeError("a secret detail")

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/v1/broken-on-purpose")
        studio_answer = client.get("/studio/broken-on-purpose-too")
    assert answer.status_code == 500 and answer.json()["code"] == 680009
    assert "incident" in answer.json()["msg"] and "secret detail" not in answer.text
    for name, value in security_headers("/v1/broken-on-purpose").items():
        assert answer.headers.get(name) == value, name
    assert studio_answer.headers.get("X-Frame-Options") == "DENY"
