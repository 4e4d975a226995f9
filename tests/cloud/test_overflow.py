"""`--overflow tomoviee --overflow-after S`: local GPUs first, the cloud for what would wait too long."""

from __future__ import annotations

import httpx
import pytest

from ..server.conftest import Cloud, Server, img2img_body
from .fake_cloud import FakeCloud, Script
from .test_cloud_engine import CLOUD_ENV

pytestmark = (
    pytest.mark.slow
)  # a local server and a fake cloud of its own (about 12 s): CI runs it; the everyday run leaves the cloud routes out


@pytest.fixture(scope="module")
def fake():
    cloud = FakeCloud()
    yield cloud
    cloud.close()


@pytest.fixture(scope="module")
def hybrid(fake, tiny_sd15, tmp_path_factory):
    # One local worker, and overflow as soon as anything is ahead: the second of two tasks goes out.
    server = Server(
        tmp_path_factory.mktemp("hybrid") / "data",
        tiny_sd15,
        "--workers",
        "1",
        "--overflow",
        "tomoviee",
        "--overflow-after",
        "0",
        "--cloud-url",
        fake.url,
        "--allow-private-urls",
        env=CLOUD_ENV,
    )
    server.extra += ["--public-url", server.url]
    server.start()
    server.wait_engine()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(hybrid) -> Cloud:
    return Cloud(hybrid.url, *hybrid.new_key())


def metric(server: Server, line_start: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    (line,) = [line for line in text.splitlines() if line.startswith(line_start)]
    return float(line.split()[-1])


def two_tasks(client: Cloud, reference: str) -> tuple[str, str]:
    # The first keeps the only local worker busy (large, so it is still running when the second arrives).
    first = client.create_id(img2img_body(reference, width=1024, height=1024, batch_size=4))
    second = client.create_id(img2img_body(reference, params="second"))
    return first, second


def test_a_task_that_would_wait_goes_to_the_cloud_and_the_query_says_so(fake, hybrid, client, image_host):
    fake.reset(Script(queued_s=0.1, run_s=0.5))
    first, second = two_tasks(client, image_host.url("/astronaut.png"))
    assert client.query(first)["data"]["route"] == "local"
    done = client.wait_final(second, timeout_s=60)
    assert (done["status"], done["route"], done["params"]) == (3, "cloud", "second")
    assert client.wait_final(first, timeout_s=120)["status"] == 3
    assert len(fake.creates) == 1
    assert metric(hybrid, 'ref2img_tasks_by_route{route="cloud"}') >= 1
    assert metric(hybrid, 'ref2img_tasks_by_route{route="local"}') >= 1


def test_a_cloud_that_fails_transiently_sends_the_task_back_to_the_local_queue(fake, hybrid, client, image_host):
    fallbacks = metric(hybrid, "ref2img_cloud_fallbacks_total")
    fake.reset(Script(create_http_status=503))
    first, second = two_tasks(client, image_host.url("/astronaut.png"))
    done = client.wait_final(second, timeout_s=120)
    assert (done["status"], done["route"]) == (3, "local"), done  # run here instead, once
    assert len(fake.creates) == 1 and not fake.tasks  # the cloud never took it: it ran nowhere else
    assert metric(hybrid, "ref2img_cloud_fallbacks_total") == fallbacks + 1
    assert client.wait_final(first, timeout_s=120)["status"] == 3
