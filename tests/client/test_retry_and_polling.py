"""Retries and polling against small real HTTP servers scripted by each test."""

import json
import time

import pytest

from ref2img import Client
from ref2img.client import APIConnectionError, APIError, RateLimitError
from ref2img.client._policy import PollPlan

from .conftest import CloudTask, Scripted, ok

QUERY = "/v1/open/pub/task"
CREATE = "/v1/open/capacity/application/tm_reference_img2img"
DONE = {"task_id": "t1", "status": 3, "progress": 100, "result": '{"images_path": ["u"]}'}


@pytest.fixture
def scripted():
    servers = []

    def make(handler) -> Scripted:
        servers.append(Scripted(handler))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def sdk(fake: Scripted, **kwargs) -> Client:
    return Client("ak", "sk", base_url=fake.url, **kwargs)


def test_500s_are_retried_then_succeed(scripted):
    answers = iter([(500, {"code": 680009, "msg": "boom"}, {}), (502, {}, {}), ok(DONE)])
    server = scripted(lambda path, body, headers: next(answers))
    with sdk(server) as client:
        assert client.get("t1").succeeded
    assert server.count(QUERY) == 3


def test_retries_run_out(scripted):
    server = scripted(lambda path, body, headers: (503, {"code": 680009, "msg": "down"}, {}))
    with sdk(server, max_retries=1) as client, pytest.raises(APIError) as caught:
        client.get("t1")
    assert caught.value.http_status == 503 and server.count(QUERY) == 2


def test_retry_after_is_honoured(scripted):
    answers = iter([(429, {"code": 680005, "msg": "busy"}, {"Retry-After": "1"}), ok(DONE)])
    server = scripted(lambda path, body, headers: next(answers))
    with sdk(server) as client:
        client.get("t1")
    first, second = server.requests[0][3], server.requests[1][3]
    assert 0.95 <= second - first < 2.0


def test_rate_limit_error_when_retries_are_off(scripted):
    server = scripted(lambda path, body, headers: (429, {"code": 680005, "msg": "busy"}, {"Retry-After": "7"}))
    with sdk(server, max_retries=0) as client, pytest.raises(RateLimitError) as caught:
        client.get("t1")
    assert caught.value.retry_after == 7


def test_dropped_connection_is_retried(scripted):
    answers = iter([None, ok(DONE)])
    server = scripted(lambda path, body, headers: next(answers))
    with sdk(server) as client:
        assert client.get("t1").succeeded
    assert server.count(QUERY) == 2


def test_create_on_our_server_retries_with_one_idempotency_key(scripted):
    answers = iter([(500, {}, {}), ok({"task_id": "t9"})])
    server = scripted(lambda path, body, headers: next(answers))
    with sdk(server) as client:
        assert client.create("p", "https://x/y.png", "edge") == "t9"
    keys = {headers["Idempotency-Key"] for path, _, headers, _ in server.requests}
    assert server.count(CREATE) == 2 and len(keys) == 1


def test_create_on_the_cloud_is_not_resent_once_it_left(scripted):
    server = scripted(lambda path, body, headers: (500, {"code": 680009, "msg": "boom"}, {}))
    with sdk(server, server="cloud") as client, pytest.raises(APIError):
        client.create("p", "https://x/y.png", "edge")
    assert server.count(CREATE) == 1  # it may have been created: never a duplicate


def test_create_on_the_cloud_is_resent_when_it_never_left():
    with Client("ak", "sk", base_url="http://127.0.0.1:9", server="cloud", max_retries=2) as client:
        started = time.monotonic()
        with pytest.raises(APIConnectionError):
            client.create("p", "https://x/y.png", "edge")
        assert time.monotonic() - started >= 0.5  # two backoffs: it was retried


def test_wire_body_is_what_the_cloud_documents(scripted):
    server = scripted(lambda path, body, headers: ok({"task_id": "t1"}))
    with sdk(server, server="cloud") as client:
        client.create("a cat", "https://x/y.png", 2, width=768, height=512, batch_size=2, control_intensity=0.3)
    _path, body, headers, _ = server.requests[0]
    assert body == {
        "prompt": "a cat",
        "reference_image": "https://x/y.png",
        "control_type": "2",
        "control_intensity": 0.3,
        "width": 768,
        "height": 512,
        "batch_size": 2,
    }
    assert headers["X-App-Key"] == "ak" and headers["Authorization"].startswith("Basic ")
    assert "Idempotency-Key" not in headers


@pytest.mark.slow
@pytest.mark.parametrize("run_s", [4.0, 12.0])
def test_cloud_polling_notices_the_end_quickly_with_few_requests(scripted, run_s):
    """The cloud's way: no long-poll, status 1 -> 2 -> 3 over time with progress and wait_time."""
    task = CloudTask(queued_s=1.0, run_s=run_s)
    server = scripted(lambda path, body, headers: ok(task.data()))
    with sdk(server, server="cloud") as client:
        result = client.wait("tm-1", timeout=60)
        noticed = time.monotonic()
    assert result.succeeded
    assert noticed - task.ends_at < 1.5  # a fixed 10 s poller is 5 s late on average
    assert server.count(QUERY) <= 5


@pytest.mark.slow
def test_long_poll_against_a_server_that_ignores_wait_is_paced(scripted):
    task = CloudTask(queued_s=0.5, run_s=2.0)
    server = scripted(lambda path, body, headers: ok(task.data() | {"progress": 0}))  # no visible change
    with sdk(server, server="ref2img") as client:
        client.wait("tm-1", timeout=30)
    assert server.count(QUERY) <= 6  # about one a second, not a busy loop


def test_poll_plan_predicts_from_progress():
    from ref2img import Task, TaskStatus

    plan = PollPlan()
    assert [plan.next_delay(Task("t", TaskStatus.QUEUED)) for _ in range(5)] == [1.0, 1.5, 2.25, 3.375, 5.0]
    assert plan.next_delay(Task("t", TaskStatus.QUEUED, wait_time=10)) == pytest.approx(8.0)
    plan.next_delay(Task("t", TaskStatus.PROCESSING, progress=10), now=10)
    assert plan.next_delay(Task("t", TaskStatus.PROCESSING, progress=30), now=30) == 20.0  # 70 s left: capped
    assert plan.next_delay(Task("t", TaskStatus.PROCESSING, progress=95), now=95) == pytest.approx(5.2)


@pytest.mark.parametrize(
    ("status", "error"), [(4, "TaskFailedError"), (5, "TaskCancelledError"), (6, "TaskTimedOutError")]
)
def test_final_statuses_raise_their_error_with_the_task(scripted, status, error):
    import ref2img.client as sdk_errors

    data = {"task_id": "t1", "status": status, "progress": 40, "reason": "why it ended", "result": ""}
    server = scripted(lambda path, body, headers: ok(data))
    with sdk(server) as client, pytest.raises(getattr(sdk_errors, error)) as caught:
        client.wait("t1")
    assert caught.value.reason == "why it ended" and caught.value.task.progress == 40
    assert isinstance(caught.value, sdk_errors.TaskError)


def test_download_names_never_leave_the_folder_whatever_task_id_a_server_sends(tmp_path):
    import anyio

    from ref2img import AsyncClient
    from ref2img.client import Task

    server = Scripted(lambda path, body, headers: (200, {"image": "bytes"}, {}))
    out = tmp_path / "out"
    try:
        for hostile in ("../../escaped", "/tmp/absolute", "..", "a/../../b", "nul\x00byte"):
            task = Task.from_data(
                {"task_id": hostile, "status": 3, "result": json.dumps({"images_path": [f"{server.url}/x.png"]})}
            )
            with Client("ak", "sk", base_url=server.url) as client:
                [saved] = client.download(task, out)

            async def download_async(task=task):
                async with AsyncClient("ak", "sk", base_url=server.url) as client:
                    return await client.download(task, out)

            [saved_async] = anyio.run(download_async)
            for path in (saved, saved_async):
                assert path.resolve().parent == out.resolve() and path.exists(), (hostile, path)
    finally:
        server.server.shutdown()
    assert not (tmp_path / "escaped-1.png").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
