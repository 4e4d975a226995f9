"""Per-key quotas (`ref2img keys create|update --max-concurrent N --per-minute N`): past one, a create is
refused with 680005 / HTTP 429 and a Retry-After that is true; nothing already accepted is touched."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from .conftest import Cloud, Server, data_uri, img2img_body


pytestmark = pytest.mark.slow  # a server of its own with 500-step tasks


@pytest.fixture(scope="module")
def slow_server(tiny_sd15, tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("quotas") / "data", tiny_sd15, "--part", "steps=500").start()
    yield server
    server.stop()


def keys(server: Server, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ref2img.cli", "keys", *args, "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def new_cloud(server: Server, *limits: str) -> Cloud:
    import json

    created = json.loads(keys(server, "create", "--json", *limits))
    return Cloud(server.url, created["app_key"], created["app_secret"])


def test_max_concurrent_refuses_the_next_create_until_one_ends(slow_server, astronaut):
    cloud = new_cloud(slow_server, "--max-concurrent", "1")
    body = img2img_body(data_uri(astronaut.resize((64, 64))))
    first = cloud.create_id(body)
    refused = cloud.create(body)
    assert refused.status_code == 429 and refused.json()["code"] == 680005
    assert "1 at once" in refused.json()["msg"] and int(refused.headers["Retry-After"]) > 0
    assert cloud.query(first)["data"]["status"] in (1, 2)  # the accepted one is untouched
    cloud.cancel(first)
    cloud.wait_final(first)
    assert cloud.create(body).json()["code"] == 0  # a slot is free again


def test_per_minute_refuses_with_the_seconds_until_a_slot_frees(slow_server, astronaut):
    cloud = new_cloud(slow_server, "--per-minute", "2")
    body = img2img_body(data_uri(astronaut.resize((64, 64))))
    started = time.time()
    ids = [cloud.create_id(body) for _ in range(2)]
    refused = cloud.create(body)
    assert refused.status_code == 429 and "2 a minute" in refused.json()["msg"]
    retry_after = int(refused.headers["Retry-After"])
    assert 0 < retry_after <= 60 - int(time.time() - started) + 1

    keys(slow_server, "update", cloud.app_key, "--per-minute", "0")  # 0: no limit
    assert cloud.create(body).json()["code"] == 0
    for task_id in ids:
        cloud.cancel(task_id)


def test_keys_without_quotas_are_not_limited(slow_server, astronaut):
    cloud = new_cloud(slow_server)
    body = img2img_body(data_uri(astronaut.resize((64, 64))))
    ids = [cloud.create_id(body) for _ in range(5)]
    assert len(set(ids)) == 5
    for task_id in ids:
        cloud.cancel(task_id)
    listed = keys(slow_server, "list")
    assert cloud.app_key in listed
    assert httpx.get(f"{slow_server.url}/healthz").json()["code"] == 0


def test_one_keys_tasks_never_fill_the_queue_for_another(slow_server, astronaut):
    """No key has a quota here, and the queue takes 100: key A is refused at its share (a quarter), naming
    that share, while key B's create goes through."""
    greedy, other = new_cloud(slow_server), new_cloud(slow_server)
    body = img2img_body(data_uri(astronaut.resize((64, 64))))
    accepted, refused = [], None
    for _ in range(30):
        answer = greedy.create(body)
        if answer.json()["code"] != 0:
            refused = answer
            break
        accepted.append(answer.json()["data"]["task_id"])
    try:
        assert refused is not None and refused.status_code == 429 and refused.json()["code"] == 680005
        assert "its share of the queue (25 of 100)" in refused.json()["msg"], refused.json()
        assert 25 <= len(accepted) <= 26  # 25 queued, and perhaps one the worker took
        answer = other.create(body).json()
        assert answer["code"] == 0
        other.cancel(answer["data"]["task_id"])
    finally:
        for task_id in accepted:
            greedy.cancel(task_id)
