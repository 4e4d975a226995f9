"""App secrets stay secret (logs, store, metrics, messages) and failed authentication is rate limited."""

import base64

import httpx
import pytest

from ref2img.server.throttle import FailureWindow

from .conftest import Cloud, Receiver, Server, data_uri, img2img_body, png_bytes

LIMIT = 5
TRUSTED_PROXY = "127.0.5.1"


@pytest.fixture(scope="module")
def chatty(tiny_sd15, tmp_path_factory):
    """Debug logging (the most a log ever says) and a low failed-auth limit."""
    server = Server(
        tmp_path_factory.mktemp("secrets") / "data",
        tiny_sd15,
        "--allow-private-urls",
        "--auth-failure-limit",
        str(LIMIT),
        "--log-level",
        "debug",
        "--trusted-proxy",
        TRUSTED_PROXY,
    )
    server.start()
    yield server
    server.stop()


def from_address(address: str) -> httpx.Client:
    """A client whose connections come from another loopback address (all of 127/8 is local)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


@pytest.mark.slow
def test_secret_never_reaches_logs_store_metrics_or_messages(chatty, astronaut):
    cloud = Cloud(chatty.url, *chatty.new_key())
    token = base64.b64encode(f"{cloud.app_key}:{cloud.app_secret}".encode()).decode()
    receiver = Receiver()
    answers = []
    try:
        task_id = cloud.create_id(img2img_body(data_uri(astronaut), callback=receiver.url))
        answers.append(cloud.wait_final(task_id))
        receiver.wait_calls(1)
        issued = httpx.get(
            f"{chatty.url}/v1/open/capacity/get/token", params={"access_key": cloud.app_key, "secret": cloud.app_secret}
        ).json()
        assert issued["data"]["access_token"] == f"Basic {token}"  # the one answer meant to hold it
        # A failure that shows part of the secret would be as bad as a log line holding it.
        answers.append(cloud.create({"prompt": cloud.app_secret, "reference_image": "x", "control_type": "9"}).json())
        answers.append(
            httpx.get(
                f"{chatty.url}/v1/open/capacity/get/token",
                params={"access_key": cloud.app_key, "secret": cloud.app_secret + "x"},
            ).json()
        )
        metrics = httpx.get(f"{chatty.url}/metrics").text
    finally:
        receiver.close()
    chatty.stop()  # flush everything the server buffers to its log and database files
    chatty.start()

    texts = {
        "log": chatty.log(),
        "metrics": metrics,
        "answers": repr(answers),
        "callback": repr([body for _, body in receiver.calls]),
    }
    for path in chatty.data_dir.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("latin-1")
    assert any("ref2img.db" in name for name in texts) and texts["log"]
    for name, text in texts.items():
        for secret in (cloud.app_secret, token, cloud.app_secret[3:20]):
            assert secret not in text, f"the secret shows in {name}"


def test_failed_auth_is_limited_per_key_and_address_and_a_good_secret_always_works(chatty):
    victim = Cloud(chatty.url, *chatty.new_key())
    wrong = Cloud(chatty.url, victim.app_key, "sk_guess").headers
    query = f"{chatty.url}/v1/open/pub/task"
    with from_address("127.0.1.1") as attacker:
        for _ in range(LIMIT):
            assert attacker.post(query, json={"task_id": "t"}, headers=wrong).status_code == 401
        refused = attacker.post(query, json={"task_id": "t"}, headers=wrong)
        assert refused.status_code == 429 and refused.json()["code"] == 680005
        assert 0 < int(refused.headers["Retry-After"]) <= 60 and "authentication" in refused.json()["msg"]
        token = attacker.get(
            f"{chatty.url}/v1/open/capacity/get/token", params={"access_key": victim.app_key, "secret": "sk_guess"}
        )
        assert token.status_code == 429  # the token route shares the count
        # Even from the throttled address, the right secret is served: it is checked, never refused.
        assert attacker.post(query, json={"task_id": "t"}, headers=victim.headers).json()["code"] == 680004
    # Knowing the key is not enough to lock its owner out: from elsewhere it works, and so do guesses'
    # counts start afresh (each (key, address) pair has its own).
    with from_address("127.0.1.2") as owner:
        assert owner.post(query, json={"task_id": "t"}, headers=victim.headers).json()["code"] == 680004
        assert owner.post(query, json={"task_id": "t"}, headers=wrong).status_code == 401


@pytest.mark.slow
def test_failed_auth_is_limited_per_address(chatty):
    honest = Cloud(chatty.url, *chatty.new_key())
    query = f"{chatty.url}/v1/open/pub/task"
    with from_address("127.0.2.1") as client:
        for i in range(LIMIT):  # a different made-up key each time: only the address's count can stop them
            made_up = Cloud(chatty.url, f"ak_made_up_{i}", "sk_x").headers
            assert client.post(query, json={"task_id": "t"}, headers=made_up).status_code == 401
        another = Cloud(chatty.url, "ak_made_up_next", "sk_x").headers
        assert client.post(query, json={"task_id": "t"}, headers=another).status_code == 429
        assert client.post(query, json={"task_id": "t"}, headers=honest.headers).json()["code"] == 680004
    with from_address("127.0.2.2") as client:
        assert client.post(query, json={"task_id": "t"}, headers=another).status_code == 401


def test_x_forwarded_for_is_not_believed_without_a_trusted_proxy(chatty):
    query = f"{chatty.url}/v1/open/pub/task"
    with from_address("127.0.3.1") as client:
        for i in range(LIMIT):  # a local client rotating the header it would be counted by
            made_up = Cloud(chatty.url, f"ak_rotating_{i}", "sk_x").headers
            answer = client.post(query, json={"task_id": "t"}, headers={**made_up, "X-Forwarded-For": f"203.0.113.{i}"})
            assert answer.status_code == 401
        last = Cloud(chatty.url, "ak_rotating_last", "sk_x").headers
        answer = client.post(query, json={"task_id": "t"}, headers={**last, "X-Forwarded-For": "203.0.113.99"})
        assert answer.status_code == 429  # counted by the connection's own address all along


def test_x_forwarded_for_from_a_trusted_proxy_names_the_client(chatty):
    query = f"{chatty.url}/v1/open/pub/task"
    with from_address(TRUSTED_PROXY) as proxy:

        def attempt(client_ip: str, i: int) -> int:
            made_up = Cloud(chatty.url, f"ak_proxied_{client_ip}_{i}", "sk_x").headers
            return proxy.post(
                query, json={"task_id": "t"}, headers={**made_up, "X-Forwarded-For": client_ip}
            ).status_code

        assert [attempt("203.0.113.7", i) for i in range(LIMIT)] == [401] * LIMIT
        assert attempt("203.0.113.7", LIMIT) == 429  # that client is throttled...
        assert attempt("203.0.113.8", 0) == 401  # ...not the proxy's other clients


@pytest.mark.slow
def test_failure_window_forgets_old_failures_and_bounds_memory():
    window = FailureWindow(limit=3, window_s=60, max_names=100)
    for second in (0, 10, 20):
        window.add("k", second)
    assert window.retry_after("k", 20) == 40  # the oldest of the last three leaves the window at 60
    assert window.retry_after("k", 60) == 0
    assert window.retry_after("other", 20) == 0
    for i in range(1000):
        window.add(f"made-up-{i}", 30)
    assert len(window._failures) == 100


def test_a_flood_of_throttled_sign_ins_holds_no_thread_and_never_slows_another_client(chatty, astronaut):
    """250 bad sign-ins held open at once from one address: each waits its turn on the event loop, not in
    the shared thread pool, so another client's health check, create and /v1/info stay fast."""
    import asyncio
    import time

    honest = Cloud(chatty.url, *chatty.new_key())
    wrong = Cloud(chatty.url, "ak_flooded", "sk_guess").headers
    query = f"{chatty.url}/v1/open/pub/task"
    body = img2img_body(data_uri(astronaut.resize((64, 64))))

    async def flood_and_measure() -> dict[str, float]:
        limits = httpx.Limits(max_connections=300)
        attacker = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(local_address="127.0.6.1", limits=limits), timeout=60
        )
        other = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address="127.0.6.2"), timeout=30)
        async with attacker, other:
            for _ in range(LIMIT + 1):  # past the limit: every attempt from now on is throttled
                await attacker.post(query, json={"task_id": "t"}, headers=wrong)
            flood = [
                asyncio.create_task(attacker.post(query, json={"task_id": "t"}, headers=wrong)) for _ in range(250)
            ]
            await asyncio.sleep(1.0)  # the flood is in, waiting for the lane
            assert sum(task.done() for task in flood) < 250 - 50, "the flood ended before it was measured"
            took = {}
            for name, call in [
                ("healthz", lambda: other.get(f"{chatty.url}/healthz")),
                (
                    "create",
                    lambda: other.post(
                        f"{chatty.url}/v1/open/capacity/application/tm_reference_img2img",
                        json=body,
                        headers=honest.headers,
                    ),
                ),
                ("info", lambda: other.get(f"{chatty.url}/v1/info", headers=honest.headers)),
            ]:
                started = time.monotonic()
                answer = await call()
                took[name] = time.monotonic() - started
                assert answer.status_code == 200 and answer.json()["code"] == 0, (name, answer.text)
            answers = await asyncio.gather(*flood)
        assert {answer.status_code for answer in answers} == {429}
        return took

    took = asyncio.run(flood_and_measure())
    assert max(took.values()) < 0.5, took


def test_a_wrong_secret_for_a_key_in_use_costs_a_full_check(tmp_path, monkeypatch):
    """The verified-pair memory only ever says yes: a wrong secret for a key used a moment ago is hashed
    like any other, so the answer's time does not tell which keys are in use."""
    from ref2img.auth import keys
    from ref2img.tasks.store import Store

    store = Store(f"sqlite:///{tmp_path / 'keys.db'}")
    try:
        key = keys.create_key(store)
        verifier = keys.KeyVerifier(store)
        assert verifier.verify(key.app_key, key.app_secret)  # now remembered
        hashed = []
        real_hash = keys._hash
        monkeypatch.setattr(keys, "_hash", lambda secret, salt: hashed.append(1) or real_hash(secret, salt))
        assert verifier.verify(key.app_key, key.app_secret) and hashed == []  # memory vouches: no scrypt
        assert not verifier.verify_cached(key.app_key, "sk_wrong")
        assert not verifier.verify(key.app_key, "sk_wrong") and hashed == [1]
    finally:
        store.close()


def test_the_data_dir_is_private_whatever_the_umask(tiny_sd15, tmp_path, astronaut, caplog):
    """Under umask 022 a data dir left 755 by an older version is narrowed to 700 with a warning, and every
    file the server writes (database, uploads, results) is 600: another local user reads nothing."""
    import logging
    import os

    from ref2img.tasks.private_files import private_dir

    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    previous = os.umask(0o022)
    try:
        with caplog.at_level(logging.WARNING, "ref2img.data"):
            private_dir(data_dir)
        assert "narrowed to 700" in caplog.text
        os.chmod(data_dir, 0o755)  # as it was: the server narrows it too
        server = Server(data_dir, tiny_sd15).start()
    finally:
        os.umask(previous)
    try:
        cloud = Cloud(server.url, *server.new_key())
        upload = httpx.post(
            f"{server.url}/v1/files",
            files={"file": ("a.png", png_bytes(astronaut.resize((64, 64))))},
            headers={k: v for k, v in cloud.headers.items() if k != "Content-Type"},
        ).json()
        assert upload["code"] == 0, upload
        task = cloud.wait_final(cloud.create_id(img2img_body(upload["data"]["url"])))
        assert task["status"] == 3, task
    finally:
        server.stop()
    assert data_dir.stat().st_mode & 0o777 == 0o700
    files = [path for path in data_dir.rglob("*") if path.is_file()]
    assert any(path.name == "ref2img.db" for path in files) and any(path.suffix == ".png" for path in files)
    wide = {
        str(path.relative_to(data_dir)): oct(path.stat().st_mode & 0o777)
        for path in files
        if path.stat().st_mode & 0o077
    }
    assert wide == {}, wide
    folders = {
        str(path.relative_to(data_dir)): oct(path.stat().st_mode & 0o777)
        for path in data_dir.rglob("*")
        if path.is_dir() and path.stat().st_mode & 0o077
    }
    assert folders == {}, folders
