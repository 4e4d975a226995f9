"""Scale-out on a real Redis and PostgreSQL of the suite's own (tests/services.py): an API node and
`ref2img worker`s."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time

import httpx
import pytest
from sqlalchemy import create_engine, text

from ..contract.test_storage import s3_endpoint  # noqa: F401  (shared fixture)
from ..server.conftest import image_host  # noqa: F401  (shared fixture)
from ..server.conftest import Cloud, Server, data_uri, img2img_body

pytestmark = pytest.mark.slow  # minutes long: CI runs it; `pytest -m "not slow"` leaves it out


class Fleet:
    def __init__(self, tmp_path, tiny_model, steps: int, postgres_url: str, redis_url: str, api_extra=(), env=None):
        self.postgres = postgres_url
        self.redis = redis_url
        self.schema = f"fleet_{secrets.token_hex(4)}"
        with create_engine(postgres_url).begin() as connection:
            connection.execute(text(f"CREATE SCHEMA {self.schema}"))
        self.db = f"{postgres_url}?options=-csearch_path%3D{self.schema}"
        self.storage = tmp_path / "shared"
        self.tmp_path = tmp_path
        self.model = str(tiny_model)
        self.steps = steps
        # Private URLs allowed: the tests' callback receiver listens on loopback.
        common = [
            "--queue",
            redis_url,
            "--db",
            self.db,
            "--storage",
            str(self.storage),
            "--lease",
            "3",
            "--allow-private-urls",
        ]
        self.api = Server(tmp_path / "api", tiny_model, *common, *api_extra, env=env).start()
        self.workers: list[subprocess.Popen] = []

    def start_worker(self, *extra: str, env=None, model=None) -> subprocess.Popen:
        log = open(self.tmp_path / f"worker-{len(self.workers)}.log", "ab")
        command = [
            sys.executable,
            "-m",
            "ref2img.cli",
            "worker",
            "--queue",
            self.redis,
            "--db",
            self.db,
            "--storage",
            str(self.storage),
            "--model",
            str(model or self.model),  # its public URL: from the store
            "--part",
            f"steps={self.steps}",
            "--lease",
            "3",
            "--data-dir",
            str(self.tmp_path / "w"),
            "--log-level",
            "warning",
            "--allow-private-urls",
            *extra,
        ]
        process = subprocess.Popen(
            command, stdout=log, stderr=log, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        )
        self.workers.append(process)
        return process

    def close(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.workers:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        self.api.stop()
        with create_engine(self.postgres).begin() as connection:
            connection.execute(text(f"DROP SCHEMA {self.schema} CASCADE"))


@pytest.fixture
def fleet(tmp_path, tiny_sd15, postgres_url, redis_server):
    instance = Fleet(tmp_path, tiny_sd15, 20, postgres_url, redis_server.url)  # steps: a task of about a second
    yield instance
    instance.close()


def cloud_for(fleet: Fleet) -> Cloud:
    from ref2img.auth.keys import create_key
    from ref2img.tasks.store import Store

    key = create_key(Store(fleet.db))
    return Cloud(fleet.api.url, key.app_key, key.app_secret)


def test_tasks_flow_through_workers_and_survive_a_killed_worker(fleet, astronaut):
    cloud = cloud_for(fleet)
    first, second = fleet.start_worker(), fleet.start_worker()
    task_ids = [cloud.create_id(img2img_body(data_uri(astronaut), seed=i)) for i in range(8)]
    assert httpx.get(f"{fleet.api.url}/healthz").json()["data"]["engine"] == "workers"

    # Kill a worker while it holds a task: the task must still end at 3, exactly once.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if any(cloud.query(task_id)["data"]["status"] == 2 for task_id in task_ids):
            break
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(10)

    finals = [cloud.wait_final(task_id, timeout_s=180) for task_id in task_ids]
    assert [data["status"] for data in finals] == [3] * 8, finals
    for data in finals:
        [url] = json.loads(data["result"])["images_path"]
        assert url.startswith(fleet.api.url) and httpx.get(url).status_code == 200
    assert second.poll() is None


def test_cancel_reaches_the_worker(tmp_path, tiny_sd15, astronaut, postgres_url, redis_server):
    fleet = Fleet(tmp_path, tiny_sd15, 500, postgres_url, redis_server.url)
    try:
        cloud = cloud_for(fleet)
        fleet.start_worker()
        task_id = cloud.create_id(img2img_body(data_uri(astronaut)))
        deadline = time.monotonic() + 90
        while cloud.query(task_id)["data"]["progress"] == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        cloud.cancel(task_id)
        started = time.monotonic()
        assert cloud.wait_final(task_id, timeout_s=30)["status"] == 5
        assert time.monotonic() - started < 5
    finally:
        fleet.close()


def test_accepted_while_no_worker_runs_is_done_later(fleet, astronaut):
    cloud = cloud_for(fleet)
    task_ids = [cloud.create_id(img2img_body(data_uri(astronaut))) for _ in range(3)]
    time.sleep(1)
    assert all(cloud.query(task_id)["data"]["status"] == 1 for task_id in task_ids)
    fleet.start_worker()
    assert [cloud.wait_final(task_id, timeout_s=120)["status"] for task_id in task_ids] == [3, 3, 3]


def test_chaos_two_api_nodes_three_workers_kills_and_restarts(
    tmp_path, tiny_sd15, astronaut, postgres_url, redis_server
):
    """60 tasks through 2 API nodes; a random worker SIGKILLed twice and one restarted; the store's
    connections cut once. Every task ends at 3, readable through either node, one webhook-id each."""
    import random

    from ..server.test_callbacks_and_fetch import Receiver

    # One key sends all 60 at once: no share of the queue per key here (that is test_quotas' subject).
    no_share = ("--key-queue-limit", "0")
    fleet = Fleet(tmp_path, tiny_sd15, 10, postgres_url, redis_server.url, api_extra=no_share)
    second_api = Server(
        tmp_path / "api2",
        tiny_sd15,
        "--queue",
        fleet.redis,
        "--db",
        fleet.db,
        "--storage",
        str(fleet.storage),
        "--lease",
        "3",
        "--allow-private-urls",
        *no_share,
    ).start()
    receiver = Receiver()
    try:
        workers = [fleet.start_worker() for _ in range(3)]
        first_node = cloud_for(fleet)
        clouds = [first_node, Cloud(second_api.url, *first_node.headers_pair())]
        body = img2img_body(data_uri(astronaut), callback=receiver.url)
        task_ids = [clouds[i % 2].create_id(body) for i in range(60)]

        rng = random.Random(7)
        for round_ in range(2):
            time.sleep(4)
            victim = rng.choice([w for w in workers if w.poll() is None])
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            if round_ == 0:
                _drop_store_connections(fleet.postgres)
        workers.append(fleet.start_worker())

        finals = [clouds[i % 2].wait_final(task_id, timeout_s=300) for i, task_id in enumerate(task_ids)]
        assert [data["status"] for data in finals].count(3) == 60, [d for d in finals if d["status"] != 3]
        for index, task_id in enumerate(task_ids[:10]):
            other = clouds[(index + 1) % 2]  # read through the node that did not take the task
            [url] = json.loads(other.query(task_id)["data"]["result"])["images_path"]
            assert httpx.get(url).status_code == 200

        calls = receiver.wait_calls(60, timeout_s=120)
        ids_by_task: dict[str, set[str]] = {}
        for headers, raw in calls:
            ids_by_task.setdefault(json.loads(raw)["task_id"], set()).add(headers["webhook-id"])
        assert set(ids_by_task) == set(task_ids)
        assert all(ids == {f"msg_{task_id}"} for task_id, ids in ids_by_task.items())
    finally:
        receiver.close()
        second_api.stop()
        fleet.close()


def _drop_store_connections(postgres_url: str) -> None:
    """Cut every connection to the run's own database (as a database failover would)."""
    admin = create_engine(postgres_url)
    with admin.begin() as connection:
        connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name <> 'keep'"
            )
        )
    admin.dispose()


def test_redis_restart_mid_run_loses_no_task(fleet, redis_server, astronaut):
    """Redis here keeps nothing on disk: a restart drops every queued message. The store still has
    the tasks, and the housekeeping sends them again."""
    import redis

    cloud = cloud_for(fleet)
    fleet.start_worker()
    task_ids = [cloud.create_id(img2img_body(data_uri(astronaut), seed=i)) for i in range(8)]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not any(cloud.query(t)["data"]["status"] == 3 for t in task_ids):
        time.sleep(0.2)
    assert redis.Redis.from_url(redis_server.url).dbsize() > 0  # messages were waiting in Redis
    redis_server.stop()  # killed: everything it held is gone
    time.sleep(1)
    redis_server.start()
    finals = [cloud.wait_final(task_id, timeout_s=180) for task_id in task_ids]
    assert [data["status"] for data in finals] == [3] * 8


def test_metrics_show_the_fleet(fleet, astronaut):
    cloud = cloud_for(fleet)
    fleet.start_worker()
    task_ids = [cloud.create_id(img2img_body(data_uri(astronaut))) for _ in range(3)]
    assert [cloud.wait_final(task_id, timeout_s=120)["status"] for task_id in task_ids] == [3, 3, 3]
    text_ = httpx.get(f"{fleet.api.url}/metrics").text
    assert "ref2img_workers 1.0" in text_ and "ref2img_broker_queue_depth" in text_
    assert 'ref2img_worker_tasks_total{worker="worker-' in text_
    step_line = next(line for line in text_.splitlines() if line.startswith("ref2img_worker_step_seconds{"))
    assert float(step_line.split()[-1]) > 0


def test_keys_cli_on_the_shared_store(fleet):
    from typer.testing import CliRunner

    from ref2img.cli import app

    created = CliRunner().invoke(app, ["keys", "create", "--db", fleet.db, "--json"])
    key = json.loads(created.stdout)
    cloud = Cloud(fleet.api.url, key["app_key"], key["app_secret"])
    assert cloud.query("t_none")["code"] == 680004  # authenticated by the API node: the key is shared


def test_s3_storage_end_to_end(tmp_path, tiny_sd15, astronaut, s3_endpoint):
    """An embedded server keeping its images in S3 (moto's real S3 server)."""
    import boto3

    server = Server(tmp_path / "data", tiny_sd15, "--storage", "s3://ref2img-test/e2e").start()
    try:
        cloud = Cloud(server.url, *server.new_key())
        data = cloud.wait_final(cloud.create_id(img2img_body(data_uri(astronaut))))
        [url] = json.loads(data["result"])["images_path"]
        assert httpx.get(url).content[:4] == b"\x89PNG"
        keys = [
            item["Key"] for item in boto3.client("s3").list_objects_v2(Bucket="ref2img-test", Prefix="e2e/")["Contents"]
        ]
        assert f"e2e/results/{data['task_id']}/1.png" in keys
        assert not (tmp_path / "data" / "files").exists()
    finally:
        server.stop()


def test_a_worker_needs_no_public_url_and_callbacks_carry_the_api_nodes(fleet, astronaut):
    """The worker ends the task and queues its callback; the API node renders and sends it, with result
    links under its own URL (the worker was started with no --public-url)."""
    from ..server.test_callbacks_and_fetch import Receiver

    receiver = Receiver()
    try:
        cloud = cloud_for(fleet)
        fleet.start_worker()
        task_id = cloud.create_id(img2img_body(data_uri(astronaut), callback=receiver.url))
        assert cloud.wait_final(task_id, timeout_s=180)["status"] == 3
        [(_headers, raw)] = receiver.wait_calls(1, timeout_s=30)
        data = json.loads(raw)
        [url] = json.loads(data["result"])["images_path"]
        assert data["task_id"] == task_id and url.startswith(fleet.api.url)
        assert httpx.get(url).status_code == 200
    finally:
        receiver.close()


def test_overflow_goes_through_the_cloud_queue_to_a_cloud_worker(
    tmp_path, tiny_sd15, postgres_url, redis_server, image_host
):
    from ..cloud.fake_cloud import FakeCloud, Script
    from ..cloud.test_cloud_engine import CLOUD_ENV

    fake = FakeCloud()
    fake.reset(Script(queued_s=0.1, run_s=0.5))
    api_extra = ("--overflow", "tomoviee", "--overflow-after", "0", "--cloud-url", fake.url)
    fleet = Fleet(tmp_path, tiny_sd15, 20, postgres_url, redis_server.url, api_extra=api_extra, env=CLOUD_ENV)
    try:
        fleet.start_worker()  # a GPU worker: the local queue
        fleet.start_worker("--engine", "tomoviee", "--cloud-url", fake.url, env=CLOUD_ENV)  # the cloud queue's
        cloud = cloud_for(fleet)
        wait_until_held(fleet, cloud, "tiny")  # until then, no local worker holds the preset: the cloud gets it
        reference = image_host.url("/astronaut.png")  # public: the cloud fetches it as it is
        first = cloud.create_id(img2img_body(reference))
        second = cloud.create_id(img2img_body(reference))
        done = [cloud.wait_final(task_id, timeout_s=120) for task_id in (first, second)]
        assert [(d["status"], d["route"]) for d in done] == [(3, "local"), (3, "cloud")], done
        assert len(fake.creates) == 1
        (cloud_task,) = fake.tasks.values()
        assert isinstance(cloud_task.inputs["reference_image"], bytes)
    finally:
        fleet.close()
        fake.close()


def wait_until_held(fleet: Fleet, cloud: Cloud, preset: str, timeout_s: float = 90) -> dict:
    """The API node's /v1/info entry of `preset`, once a live worker's heartbeat says it holds it."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = httpx.get(f"{fleet.api.url}/v1/info", headers=cloud.headers).json()["data"]
        entry = next((p for p in info["presets"] if p["name"] == preset), None)  # absent: no worker yet
        if (entry and entry["workers"]) or time.monotonic() > deadline:
            return entry or {"name": preset, "workers": 0}
        time.sleep(0.2)


def test_each_preset_goes_to_the_workers_holding_it(
    tmp_path, tiny_sd15, tiny_sdxl, astronaut, postgres_url, redis_server
):
    """An API node offering two presets; one worker a preset. A task for a preset no live worker holds
    waits, saying so, and runs once a worker holding it starts; none runs on the wrong worker."""
    fleet = Fleet(tmp_path, tiny_sd15, 20, postgres_url, redis_server.url, api_extra=("--model", str(tiny_sdxl)))
    try:
        cloud = cloud_for(fleet)
        fleet.start_worker()  # holds tiny (sd15) only
        assert wait_until_held(fleet, cloud, "tiny")["workers"] == 1
        for_sd15 = cloud.create_id(img2img_body(data_uri(astronaut)))
        for_sdxl = cloud.create_id(img2img_body(data_uri(astronaut), model="tiny-sdxl"))
        assert cloud.wait_final(for_sd15, timeout_s=120)["status"] == 3
        waiting = cloud.query(for_sdxl)["data"]
        assert waiting["status"] == 1 and "no live worker holds preset 'tiny-sdxl'" in waiting["reason"]
        assert waiting["wait_time"] > 60  # the time left to its deadline, not a made-up estimate
        entry = httpx.get(f"{fleet.api.url}/v1/info", headers=cloud.headers).json()["data"]["presets"]
        assert {p["name"]: p["workers"] for p in entry} == {"tiny": 1, "tiny-sdxl": 0}

        fleet.start_worker(model=tiny_sdxl)  # holds tiny-sdxl only
        done = cloud.wait_final(for_sdxl, timeout_s=120)
        assert done["status"] == 3, done
        more = [
            cloud.create_id(img2img_body(data_uri(astronaut), model=name, seed=i))
            for i, name in enumerate(["tiny", "tiny-sdxl"] * 3)
        ]
        assert [cloud.wait_final(task_id, timeout_s=120)["status"] for task_id in more] == [3] * 6
        tasks = httpx.get(f"{fleet.api.url}/v1/tasks", headers=cloud.headers).json()["data"]["tasks"]
        assert {t["settings"]["model"] for t in tasks} == {"tiny", "tiny-sdxl"}
    finally:
        fleet.close()


def test_an_api_node_without_model_offers_what_its_workers_hold(
    tmp_path, tiny_sd15, astronaut, postgres_url, redis_server
):
    """A fleet's API node started with no --model (as the scale-out docs' first form did) sends a task that
    names no preset to the preset its live workers hold, not to a preset of its own that none holds; before
    any worker lives it says so, and /v1/info says where its presets come from."""
    fleet = Fleet(tmp_path, "", 20, postgres_url, redis_server.url)
    try:
        cloud = cloud_for(fleet)
        refused = cloud.create(img2img_body(data_uri(astronaut))).json()
        assert refused["code"] == 680006 and "no live worker advertises a preset" in refused["msg"]
        fleet.start_worker(model=tiny_sd15)
        held = wait_until_held(fleet, cloud, "tiny")
        assert held["workers"] == 1 and held["default"] is True
        info = httpx.get(f"{fleet.api.url}/v1/info", headers=cloud.headers).json()["data"]
        assert info["presets_from"] == "workers" and info["preset"]["name"] == "tiny"
        tasks = [cloud.create_id(img2img_body(data_uri(astronaut), seed=i)) for i in range(3)]
        assert [cloud.wait_final(task_id, timeout_s=120)["status"] for task_id in tasks] == [3] * 3
    finally:
        fleet.close()
