"""`ref2img serve --engine tomoviee`: a real server forwarding to a fake Tomoviee cloud on loopback."""

from __future__ import annotations

import base64
import json
import io
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from ..server.conftest import Cloud, Server, img2img_body, png_bytes
from .fake_cloud import FakeCloud, Script

pytestmark = (
    pytest.mark.slow
)  # servers in front of a fake cloud (about 14 s in all): CI runs it; the everyday run leaves the cloud routes out

CLOUD_ENV = {"REF2IMG_CLOUD_APP_KEY": "cloud_key", "REF2IMG_CLOUD_APP_SECRET": "cloud_secret"}


@pytest.fixture(scope="module")
def fake():
    cloud = FakeCloud()
    yield cloud
    cloud.close()


def cloud_server(data_dir, fake: FakeCloud, *extra: str, public: bool = True, env=CLOUD_ENV) -> Server:
    server = Server(
        data_dir, "sdxl", "--engine", "tomoviee", "--cloud-url", fake.url, "--allow-private-urls", *extra, env=env
    )
    if public:
        server.extra += ["--public-url", server.url]
    return server


@pytest.fixture(scope="module")
def server(fake, tmp_path_factory):
    instance = cloud_server(tmp_path_factory.mktemp("cloud") / "data", fake).start()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def client(server) -> Cloud:
    return Cloud(server.url, *server.new_key())


@pytest.fixture
def data_uri(astronaut) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(astronaut)).decode()


def wait_for(condition, timeout_s: float = 20, what: str = "the condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen in {timeout_s} s")


def test_a_task_runs_in_the_cloud_and_its_images_are_ours(fake, client, data_uri):
    fake.reset(Script(queued_s=0.3, run_s=2.0))
    task_id = client.create_id(img2img_body(data_uri, width=640, height=512, batch_size=2, params="mine"))
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data = client.query(task_id)["data"]
        seen.append(data)
        if data["status"] >= 3:
            break
        time.sleep(0.1)
    assert data["status"] == 3, data
    assert data["route"] == "cloud" and data["params"] == "mine"  # params stay the client's
    running = [d for d in seen if d["status"] == 2 and 0 < d["progress"] < 100]
    assert running, "the cloud's progress was not mirrored"
    # While the cloud still queues it (progress 0) our estimate would say 10 s; the cloud says about 2.
    assert any(d["wait_time"] <= 3 for d in seen if d["status"] == 2 and d["progress"] == 0)
    # Exactly one cloud task, created with the operator's key and a signed URL of ours for the data URI.
    assert len(fake.creates) == 1 and len(fake.tasks) == 1
    sent = fake.creates[0]
    assert sent["control_type"] == "0" and sent["batch_size"] == 2 and "params" not in sent
    reference = urlsplit(sent["reference_image"])
    assert sent["reference_image"].startswith(client.base) and {"expires", "sig"} <= set(parse_qs(reference.query))
    (cloud_task,) = fake.tasks.values()
    assert Image.open(io.BytesIO(cloud_task.inputs["reference_image"])).size == (512, 512)  # it could fetch it
    # The results were downloaded into our storage: our URLs, not the cloud's expiring ones.
    urls = json.loads(data["result"])["images_path"]
    assert len(urls) == 2 and all(url.startswith(client.base) for url in urls)
    image = Image.open(io.BytesIO(httpx.get(urls[0]).content))
    assert image.size == (640, 512)


def test_a_repaint_goes_to_the_clouds_tm_redrawing_with_its_mask(fake, client, image_host):
    fake.reset(Script(queued_s=0.1, run_s=0.3))
    body = {
        "prompt": "a sky",
        "init_image": image_host.url("/astronaut.png"),
        "mask_url": image_host.url("/astronaut.png"),
        "params": "r-1",
        "seed": 3,
    }
    created = httpx.post(
        f"{client.base}/v1/open/capacity/application/tm_redrawing", json=body, headers=client.headers
    ).json()
    assert created["code"] == 0, created
    data = client.wait_final(created["data"]["task_id"])
    assert data["status"] == 3 and data["route"] == "cloud" and data["params"] == "r-1"
    [sent] = fake.creates
    assert sent["prompt"] == "a sky" and sent["init_image"] and sent["mask_url"]
    assert "seed" not in sent and "params" not in sent  # our extensions and delivery fields stay here
    (cloud_task,) = fake.tasks.values()
    assert cloud_task.task_id.startswith("tm_redrawing-") and set(cloud_task.inputs) == {"init_image", "mask_url"}
    [url] = json.loads(data["result"])["images_path"]
    assert url.startswith(client.base) and Image.open(io.BytesIO(httpx.get(url).content)).size == (512, 512)


def test_a_cloud_only_server_refuses_controls_saying_why(fake, client, image_host):
    answer = client.create(
        img2img_body(image_host.url("/astronaut.png"), control_type="2", controls=[{"type": "pose"}, {"type": "depth"}])
    ).json()
    assert answer["code"] == 680006 and "controls" in answer["msg"] and "local engine" in answer["msg"]
    assert fake.creates == [] or all("controls" not in body for body in fake.creates)
    steps = client.create(img2img_body(image_host.url("/astronaut.png"), steps=10)).json()
    assert steps["code"] == 680006 and steps["msg"].startswith("engine unavailable: steps needs a local engine")


def test_an_upload_reaches_the_cloud_as_a_signed_url_of_ours(fake, client, astronaut):
    fake.reset(Script(queued_s=0.1, run_s=0.3))
    auth = {k: v for k, v in client.headers.items() if k != "Content-Type"}
    upload = httpx.post(
        f"{client.base}/v1/files", files={"file": ("ref.png", png_bytes(astronaut), "image/png")}, headers=auth
    ).json()
    assert upload["code"] == 0, upload
    data = client.wait_final(client.create_id(img2img_body(upload["data"]["url"])), timeout_s=30)
    assert data["status"] == 3, data
    sent = fake.creates[0]["reference_image"]
    assert sent.startswith(client.base) and sent != upload["data"]["url"]  # signed anew, for the cloud
    (cloud_task,) = fake.tasks.values()
    assert cloud_task.inputs["reference_image"] == png_bytes(astronaut)  # the very bytes uploaded


@pytest.mark.parametrize(
    ("cloud_status", "ours", "words"),
    [
        (4, 4, "the Tomoviee cloud failed the task: insufficient balance"),
        # The everyday run keeps one mapping; CI checks all three (each about 1.2 s).
        pytest.param(5, 4, "the Tomoviee cloud closed the task: insufficient balance", marks=pytest.mark.slow),
        pytest.param(6, 6, "the Tomoviee cloud timed the task out: insufficient balance", marks=pytest.mark.slow),
    ],
)
def test_each_cloud_failure_status_maps_to_ours_with_the_clouds_reason(
    fake, client, image_host, cloud_status, ours, words
):
    fake.reset(Script(queued_s=0.1, run_s=0.3, status=cloud_status, reason="insufficient balance"))
    task_id = client.create_id(img2img_body(image_host.url("/astronaut.png")))
    data = client.wait_final(task_id, timeout_s=30)
    assert (data["status"], data["reason"]) == (ours, words)
    # A public URL goes to the cloud as it is: nothing to sign.
    assert fake.creates[0]["reference_image"] == image_host.url("/astronaut.png")


def test_a_5xx_on_create_fails_the_task_without_a_second_create(fake, client, image_host):
    fake.reset(Script(create_http_status=503))
    task_id = client.create_id(img2img_body(image_host.url("/astronaut.png")))
    data = client.wait_final(task_id, timeout_s=30)
    assert data["status"] == 4 and "HTTP 503" in data["reason"], data
    assert len(fake.creates) == 1  # a create that reached the cloud is never resent: it might have run


def test_a_connection_dropped_mid_poll_loses_nothing(fake, client, image_host):
    fake.reset(Script(queued_s=0.2, run_s=1.0, drop_queries={1, 2, 3}))
    task_id = client.create_id(img2img_body(image_host.url("/astronaut.png")))
    data = client.wait_final(task_id, timeout_s=60)
    assert data["status"] == 3, data
    (cloud_task,) = fake.tasks.values()
    assert cloud_task.queries > 3 and len(fake.creates) == 1


@pytest.mark.slow  # watches the follower for 4 s after the cancel
def test_a_cancel_while_in_the_cloud_answers_5_at_once_and_abandons_the_cloud_task(fake, client, image_host):
    fake.reset(Script(queued_s=0.2, run_s=60))
    task_id = client.create_id(img2img_body(image_host.url("/astronaut.png")))
    wait_for(lambda: fake.tasks and client.query(task_id)["data"]["status"] == 2, what="the cloud task")
    started = time.monotonic()
    answer = client.cancel(task_id)
    assert answer["data"]["status"] == 5 and time.monotonic() - started < 2
    assert client.query(task_id)["data"]["status"] == 5
    time.sleep(1.0)  # the follower sees the cancel within a quarter second and stops polling
    polls = len(fake.query_ids)
    time.sleep(3.0)
    assert len(fake.query_ids) == polls


@pytest.mark.slow  # a server of its own: about 2.7 s
def test_without_a_public_url_uploads_and_data_uris_are_refused_but_public_urls_work(
    fake, tmp_path, data_uri, image_host
):
    server = cloud_server(tmp_path / "data", fake, public=False).start()
    try:
        client = Cloud(server.url, *server.new_key())
        answer = client.create(img2img_body(data_uri)).json()
        assert answer["code"] == 680001 and answer["msg"].startswith("reference_image:")
        assert "--public-url" in answer["msg"]
        fake.reset(Script(queued_s=0.1, run_s=0.2))
        data = client.wait_final(client.create_id(img2img_body(image_host.url("/astronaut.png"))), timeout_s=30)
        assert data["status"] == 3
        recognition = httpx.post(
            f"{server.url}/v1/open/capacity/application/tm_reference_img2mask",
            json={"control_type": "0", "init_image": image_host.url("/astronaut.png")},
            headers=client.headers,
        ).json()
        assert recognition["code"] == 680006 and "local engine" in recognition["msg"]
    finally:
        server.stop()


def test_without_cloud_credentials_the_engine_is_unavailable_with_the_reason(fake, tmp_path, image_host):
    server = cloud_server(tmp_path / "data", fake, env={"REF2IMG_CLOUD_APP_KEY": ""}).start()
    try:
        client = Cloud(server.url, *server.new_key())
        server.wait_engine()
        answer = client.create(img2img_body(image_host.url("/astronaut.png"))).json()
        assert answer["code"] == 680006 and "REF2IMG_CLOUD_APP_KEY" in answer["msg"], answer
    finally:
        server.stop()


@pytest.mark.slow  # over 5 s on the 2-core machine
def test_a_restarted_server_follows_the_same_cloud_task(fake, tmp_path, image_host):
    # The credentials come from a file this time (an EnvironmentFile), not the environment.
    secrets_file = tmp_path / "cloud.env"
    secrets_file.write_text("REF2IMG_CLOUD_APP_KEY=cloud_key\nREF2IMG_CLOUD_APP_SECRET='cloud_secret'\n")
    server = cloud_server(
        tmp_path / "data",
        fake,
        "--cloud-credentials",
        str(secrets_file),
        "--lease",
        "2",
        env={"REF2IMG_CLOUD_APP_KEY": "", "REF2IMG_CLOUD_APP_SECRET": ""},
    ).start()
    try:
        client = Cloud(server.url, *server.new_key())
        fake.reset(Script(queued_s=0.5, run_s=6.0))
        task_id = client.create_id(img2img_body(image_host.url("/astronaut.png")))
        wait_for(lambda: fake.tasks, what="the cloud task")
        (remote_id,) = fake.tasks
        wait_for(lambda: fake.query_ids, what="a first poll")
        server.kill()
        polls_before = len(fake.query_ids)
        server.start()
        data = client.wait_final(task_id, timeout_s=60)
        assert data["status"] == 3, data
        assert len(fake.creates) == 1  # no second cloud task
        assert len(fake.query_ids) > polls_before and set(fake.query_ids) == {remote_id}
    finally:
        server.stop()


def test_a_cloud_only_server_never_loads_torch(server, client, fake, image_host):
    fake.reset(Script(queued_s=0.1, run_s=0.2))
    assert client.wait_final(client.create_id(img2img_body(image_host.url("/astronaut.png"))))["status"] == 3
    maps = open(f"/proc/{server.process.pid}/maps").read()  # the shared libraries the process has loaded
    assert "libtorch" not in maps  # importing torch maps libtorch_cpu.so (or _cuda)
