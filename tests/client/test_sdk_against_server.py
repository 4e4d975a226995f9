"""Every SDK call, sync and async, against a real `ref2img serve` with the tiny model."""

import asyncio
import json
import warnings

import httpx
import pytest
from PIL import Image

from ref2img import AsyncClient, AuthenticationError, Client, ImageFetchError, InvalidRequestError, TaskStatus
from ref2img.client import APIConnectionError, TaskFailedError, TaskNotFoundError, UnsupportedError, WaitTimeoutError

from ..server.conftest import Cloud, data_uri
import itertools


@pytest.mark.slow
def test_generate_download_and_progress(client, astronaut, tmp_path):
    seen = []
    task = client.generate(
        "an astronaut", astronaut, "pose", width=640, height=512, batch_size=2, seed=5, on_progress=seen.append
    )
    assert task.status is TaskStatus.SUCCEEDED and task.succeeded and len(task.images) == 2
    assert seen[-1].progress == 100 and all(a.progress <= b.progress for a, b in itertools.pairwise(seen))
    paths = client.download(task, tmp_path)
    assert [Image.open(path).size for path in paths] == [(640, 512)] * 2


@pytest.mark.slow
def test_create_get_wait_with_files_and_urls(client, astronaut, coffee, tmp_path):
    path = tmp_path / "ref.png"
    astronaut.save(path)
    task_id = client.create("p", str(path), 2, init_image=coffee, params="job-9")
    assert client.get(task_id).task_id == task_id
    task = client.wait(task_id, timeout=60)
    assert task.params == "job-9" and task.images
    url = client.upload(path)
    assert client.generate("p", url, "depth").succeeded


@pytest.mark.slow  # over 5 s on the 2-core machine
def test_recognize_and_token(client, astronaut, credentials):
    task = client.recognize(astronaut, "edge")
    assert len(task.masks) == 1 and httpx.get(task.masks[0]).status_code == 200
    subject = client.recognize(astronaut, "subject")  # type 2: the subject's mask
    assert len(subject.masks) == 1 and httpx.get(subject.masks[0]).status_code == 200
    assert client.token() == Cloud("", *credentials).headers["Authorization"]


@pytest.mark.slow
def test_cancel_returns_the_task(client, astronaut):
    busy = [client.create("p", astronaut, "edge", batch_size=4) for _ in range(4)]
    cancelled = client.cancel(busy[-1])
    assert cancelled.task_id == busy[-1]
    assert cancelled.status in (TaskStatus.PROCESSING, TaskStatus.CANCELLED, TaskStatus.SUCCEEDED)
    for task_id in busy[:-1]:
        assert client.wait(task_id, timeout=60).succeeded


def test_failed_task_raises_with_reason(client, server):
    with pytest.raises(TaskFailedError) as caught:
        client.generate("p", "http://127.0.0.1:9/missing.png", "edge")
    assert "could not fetch" in caught.value.reason and caught.value.task.status is TaskStatus.FAILED


def test_wait_timeout(client, astronaut):
    task_id = client.create("p", astronaut, "edge", batch_size=4)
    with pytest.raises(WaitTimeoutError) as caught:
        client.wait(task_id, timeout=0.01)
    assert caught.value.task.task_id == task_id


def test_errors_map_to_classes(server, credentials, astronaut):
    with Client(credentials[0], "sk_wrong", base_url=server.url) as wrong:
        with pytest.raises(AuthenticationError) as caught:
            wrong.get("t1")
        assert caught.value.code == 140013 and caught.value.http_status == 401
    with Client(*credentials, base_url=server.url) as client:
        with pytest.raises(TaskNotFoundError):
            client.get("t_nope")
        with pytest.raises(ImageFetchError) as caught:
            client.create("p", "ftp://example.com/x.png")  # refused by the server: 680002
        assert caught.value.code == 680002


def test_client_side_validation_sends_nothing(astronaut):
    # Port 9 has no server: a request would be an APIConnectionError, validation comes first.
    with Client("ak", "sk", base_url="http://127.0.0.1:9", max_retries=0) as client:
        for kwargs, field in (
            ({"width": 4000}, "width"),
            ({"batch_size": 0}, "batch_size"),
            ({"control_intensity": 2}, "control_intensity"),
        ):
            with pytest.raises(InvalidRequestError) as caught:
                client.create("p", "https://x/y.png", "edge", **kwargs)
            assert caught.value.field == field and "from" in str(caught.value)
        with pytest.raises(InvalidRequestError, match="control_type"):
            client.create("p", "https://x/y.png", "sideways")
        with pytest.raises(InvalidRequestError, match="no such file"):
            client.create("p", "/no/such/file.png")
        for unknown in ("sideways", 9, "9"):  # not a recognition type: refused before anything is sent
            with pytest.raises(InvalidRequestError, match=r'"2" \(the subject\'s mask\)') as caught:
                client.recognize(astronaut, unknown)
            assert caught.value.field == "control_type"
        with pytest.raises(APIConnectionError):
            client.get("t1")


@pytest.mark.slow  # over 5 s on the 2-core machine
def test_repaint_uploads_the_image_and_mask_and_returns_one_image(client, astronaut):
    image = astronaut.resize((512, 512))
    mask = Image.new("L", (512, 512), 0)
    mask.paste(255, (128, 128, 384, 384))
    task = client.repaint("a golden visor", image, mask, seed=4, params="p-1")
    assert task.succeeded and len(task.images) == 1 and task.params == "p-1"
    with pytest.raises(InvalidRequestError) as caught:  # checked before anything is sent
        client.create_repaint("   ", image)
    assert caught.value.field == "prompt"


def test_cloud_refuses_local_files_and_cancel(astronaut):
    with Client("ak", "sk", base_url="https://open-api.wondershare.cc") as cloud:
        with pytest.raises(UnsupportedError, match="public image URL"):
            cloud.create("p", astronaut, "subject")
        with pytest.raises(UnsupportedError, match="no cancel"):
            cloud.cancel("t1")


def test_credentials_from_env_and_secret_hidden(monkeypatch, server, credentials):
    monkeypatch.setenv("REF2IMG_APP_KEY", credentials[0])
    monkeypatch.setenv("REF2IMG_APP_SECRET", credentials[1])
    monkeypatch.setenv("REF2IMG_BASE_URL", server.url)
    with Client() as client:
        assert client.base_url == server.url
        assert credentials[1] not in repr(client) and "***" in repr(client)
        with pytest.raises(TaskNotFoundError):
            client.get("t_none")


def test_async_parity(server, credentials, astronaut, tmp_path):
    async def scenario():
        async with AsyncClient(*credentials, base_url=server.url) as client:
            tasks = await asyncio.gather(*(client.generate("p", astronaut, mode) for mode in ("edge", "depth")))
            assert all(task.succeeded for task in tasks)
            paths = await client.download(tasks[0], tmp_path)
            mask = await client.recognize(astronaut, "pose")
            repainted = await client.repaint("a visor", astronaut.resize((512, 512)), Image.new("L", (512, 512), 255))
            assert repainted.succeeded and len(repainted.images) == 1
            task_id = await client.create("p", data_uri(astronaut), 0)
            cancelled = await client.cancel(task_id)
            with pytest.raises(TaskNotFoundError):
                await client.get("t_none")
            url = await client.upload(astronaut)
            return paths, mask, cancelled, url, await client.token()

    paths, mask, cancelled, url, token = asyncio.run(scenario())
    assert paths and Image.open(paths[0]).size == (1024, 1024)
    assert mask.masks and url.startswith(server.url) and token.startswith("Basic ")
    assert cancelled.task_id


def test_task_from_cloud_shaped_data():
    from ref2img import Task

    task = Task.from_data({"task_id": "x", "status": 3, "process": 100, "result": json.dumps({"image_path": ["u"]})})
    assert task.progress == 100 and task.images == ["u"]
    assert Task.from_data({"task_id": "x", "status": 1, "result": ""}).images == []


def test_async_on_progress_awaits_coroutines_and_calls_functions(server, credentials, astronaut):
    async def scenario():
        awaited, called = [], []

        async def async_callback(task):
            await asyncio.sleep(0)
            awaited.append(task.progress)

        async with AsyncClient(*credentials, base_url=server.url) as client:
            await client.generate("p", astronaut, "edge", on_progress=async_callback)
            await client.generate("p", astronaut, "edge", on_progress=lambda task: called.append(task.progress))
        return awaited, called

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "coroutine ... was never awaited" fails the test
        awaited, called = asyncio.run(scenario())
    assert awaited and awaited[-1] == 100 and called and called[-1] == 100


def test_webhooks_come_with_a_plain_import():
    import ref2img

    assert callable(ref2img.webhooks.verify)


def test_sync_and_async_clients_offer_the_same_calls():
    """The two clients are kept by hand: this fails the moment their public calls or parameters part."""
    import inspect

    def public(cls) -> dict:
        return {
            name: inspect.signature(member)
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_")
        }

    sync, asynchronous = public(Client), public(AsyncClient)
    assert set(sync) == set(asynchronous)
    for name, signature in sync.items():
        other = asynchronous[name]
        assert list(signature.parameters) == list(other.parameters), name
        defaults = [p.default for p in signature.parameters.values()]
        assert defaults == [p.default for p in other.parameters.values()], name
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name
