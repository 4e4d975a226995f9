"""Stopping a server with SIGINT (Ctrl+C) while it runs a task: the running job stops at its next step,
goes back to the queue uncounted, the process exits at once, and the next start finishes the task."""

from __future__ import annotations

import signal
import sqlite3
import time

import httpx
import pytest

from .conftest import Cloud, Server, data_uri, img2img_body

pytestmark = pytest.mark.slow  # two server starts and a long task: about 20 s


def status_of(cloud: Cloud, task_id: str, wait: float = 0) -> dict:
    answer = httpx.post(
        f"{cloud.base}/v1/open/pub/task", json={"task_id": task_id, "wait": wait}, headers=cloud.headers, timeout=40
    )
    return answer.json()["data"]


def test_ctrl_c_gives_the_running_task_back_and_exits_at_once(tiny_sd15, tmp_path, astronaut):
    data_dir = tmp_path / "data"
    server = Server(data_dir, tiny_sd15, "--part", "steps=500", "--log-level", "info").start()
    cloud = Cloud(server.url, *server.new_key())
    body = img2img_body(data_uri(astronaut.resize((256, 256))), batch_size=4)
    task_id = httpx.post(
        f"{server.url}/v1/open/capacity/application/tm_reference_img2img", json=body, headers=cloud.headers, timeout=30
    ).json()["data"]["task_id"]
    deadline = time.monotonic() + 60
    while status_of(cloud, task_id, wait=1)["progress"] < 1 and time.monotonic() < deadline:
        pass  # running, a step or more done
    server.process.send_signal(signal.SIGINT)
    server.process.wait(20)  # far more than it needs: a hang fails here
    log = server.log()
    assert f"waiting for task {task_id} to stop at its next step" in log, log
    assert "went back to the queue" in log and "terminate called" not in log, log
    with sqlite3.connect(data_dir / "ref2img.db") as db:
        status, attempts, owner = db.execute("select status, attempts, lease_owner from tasks").fetchone()
    assert (status, attempts, owner) == (1, 0, None)  # queued again, the stop not counted as a failure

    again = Server(data_dir, tiny_sd15, "--part", "steps=4").start()  # the next start runs it to its end
    try:
        deadline = time.monotonic() + 60
        while (data := status_of(cloud.__class__(again.url, cloud.app_key, cloud.app_secret), task_id, wait=5))[
            "status"
        ] < 3 and time.monotonic() < deadline:
            pass
        assert data["status"] == 3, data
    finally:
        again.stop()
