"""What the studio adds to the server, over real HTTP: the sign-in link and session cookie (CSRF-safe),
`GET /v1/tasks`, `GET /v1/tasks/{id}/events` (Server-Sent Events) and step previews in the query."""

from __future__ import annotations

import io
import json
import re
import time

import httpx
import pytest
from PIL import Image

from .conftest import Cloud, Server, data_uri, img2img_body


@pytest.fixture(scope="module")
def studio_server(tiny_sd15, tmp_path_factory, astronaut):
    # --key-queue-limit 0: a test queues 50 tasks of one key at once (a page of the task list, not fairness)
    server = Server(
        tmp_path_factory.mktemp("studio") / "data", tiny_sd15, "--part", "steps=60", "--key-queue-limit", "0"
    ).start()
    server.wait_engine()
    yield server
    server.stop()


def sign_in_link(server: Server) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"ref2img studio: (\S+)", server.log())
        if found:
            return found.group(1)
        time.sleep(0.1)
    raise AssertionError(f"no sign-in link in the log: {server.log()}")


def signed_in(server: Server) -> tuple[httpx.Client, str]:
    """A browser-like client signed in through a fresh link: the session cookie and its CSRF token."""
    token = server.studio_link().split("#token=", 1)[1]
    client = httpx.Client(base_url=server.url)
    answer = client.post("/studio/session", json={"token": token}).json()
    assert answer["code"] == 0 and answer["data"]["signed_in"], answer
    return client, answer["data"]["csrf"]


def test_the_sign_in_link_keeps_its_token_out_of_requests_and_logs(studio_server):
    link = sign_in_link(studio_server)
    assert link.startswith(f"{studio_server.url}/#token=")  # a fragment: browsers never send it
    token = link.split("#token=", 1)[1]
    client = httpx.Client(base_url=studio_server.url)
    csrf = client.post("/studio/session", json={"token": token}).json()["data"]["csrf"]
    cookie = next(c for c in client.cookies.jar if c.name == "ref2img_session")
    assert cookie.has_nonstandard_attr("HttpOnly") and token not in cookie.value and csrf not in cookie.value
    assert client.get("/studio/session").json()["data"]["signed_in"]

    again = httpx.post(f"{studio_server.url}/studio/session", json={"token": token})  # the link works once
    wrong = httpx.post(f"{studio_server.url}/studio/session", json={"token": "nope"})
    for refused in (again, wrong):
        assert refused.status_code == 401 and "studio-link" in refused.json()["msg"], refused.json()
    assert studio_server.log().count(token) == 1  # printed once, at start; never logged again


def test_keys_studio_link_prints_a_fresh_link_for_a_running_server(studio_server):
    import subprocess
    import sys

    printed = subprocess.run(
        [
            sys.executable,
            "-m",
            "ref2img.cli",
            "keys",
            "studio-link",
            "--data-dir",
            str(studio_server.data_dir),
            "--url",
            studio_server.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert printed.returncode == 0, printed.stderr
    link = printed.stdout.strip()
    assert link.startswith(f"{studio_server.url}/#token=") and "10 minutes" in printed.stderr
    client = httpx.Client(base_url=studio_server.url)
    assert client.post("/studio/session", json={"token": link.split("#token=")[1]}).json()["code"] == 0
    assert client.get("/v1/tasks").json()["code"] == 0


def test_a_session_changes_nothing_without_its_csrf_token(studio_server, astronaut):
    client, csrf = signed_in(studio_server)
    body = img2img_body(data_uri(astronaut.resize((64, 64))))
    refused = client.post("/v1/open/capacity/application/tm_reference_img2img", json=body)
    assert refused.status_code == 401 and "X-CSRF-Token" in refused.json()["msg"]
    forged = client.post(
        "/v1/open/capacity/application/tm_reference_img2img", json=body, headers={"X-CSRF-Token": "guess"}
    )
    assert forged.status_code == 401
    accepted = client.post(
        "/v1/open/capacity/application/tm_reference_img2img", json=body, headers={"X-CSRF-Token": csrf}
    ).json()
    assert accepted["code"] == 0
    assert client.get("/v1/tasks").json()["data"]["total"] >= 1  # reads need the cookie alone

    # Signing in from another site, or by a form, is refused (login CSRF).
    evil = httpx.post(
        f"{studio_server.url}/studio/session", json={"token": "x"}, headers={"Origin": "http://evil.example"}
    )
    assert evil.status_code == 403
    form = httpx.post(f"{studio_server.url}/studio/session", data={"token": "x"})
    assert form.json()["code"] == 680001 and "JSON" in form.json()["msg"]

    assert client.delete("/studio/session").status_code == 401  # signing out needs the token too
    captured = httpx.Client(base_url=studio_server.url, cookies=dict(client.cookies))  # a copy taken before
    assert captured.get("/v1/tasks").json()["code"] == 0
    assert client.delete("/studio/session", headers={"X-CSRF-Token": csrf}).json()["data"] == {"signed_in": False}
    assert not client.get("/studio/session").json()["data"]["signed_in"]
    assert client.get("/v1/tasks").status_code == 401
    # Signing out ended the session itself: the copied cookie lists and creates nothing any more.
    assert captured.get("/v1/tasks").status_code == 401
    assert (
        captured.post(
            "/v1/open/capacity/application/tm_reference_img2img", json=body, headers={"X-CSRF-Token": csrf}
        ).status_code
        == 401
    )
    assert not captured.get("/studio/session").json()["data"]["signed_in"]


@pytest.mark.slow  # waits out the verifier's 30 s cache
def test_signing_in_with_a_key_and_revoking_it(studio_server):
    from ref2img.tasks.store import Store

    app_key, secret = studio_server.new_key()
    client = httpx.Client(base_url=studio_server.url)
    assert client.post("/studio/session", json={"app_key": app_key, "app_secret": "sk_wrong"}).status_code == 401
    answer = client.post("/studio/session", json={"app_key": app_key, "app_secret": secret}).json()
    assert answer["data"]["app_key"] == app_key and secret not in json.dumps(answer)
    assert client.get("/v1/tasks").json()["code"] == 0
    store = Store(f"sqlite:///{studio_server.data_dir / 'ref2img.db'}")
    store.keys.revoke(app_key)
    store.close()
    time.sleep(0.1)  # the server's live-key cache may still hold it: up to 30 s, as for Basic credentials
    fresh = httpx.Client(base_url=studio_server.url, cookies=client.cookies)
    deadline = time.monotonic() + 40
    while fresh.get("/v1/tasks").status_code != 401 and time.monotonic() < deadline:
        time.sleep(1)
    assert fresh.get("/v1/tasks").status_code == 401


def test_the_task_list_is_the_keys_own_newest_first_and_paged(studio_server, astronaut):
    mine = Cloud(studio_server.url, *studio_server.new_key())
    other = Cloud(studio_server.url, *studio_server.new_key())
    ids = []
    for seed in range(3):
        ids.append(mine.create_id(img2img_body(data_uri(astronaut.resize((64, 64))), seed=seed, prompt=f"p{seed}")))
        time.sleep(0.01)
    other.create_id(img2img_body(data_uri(astronaut.resize((64, 64)))))

    first = httpx.get(f"{studio_server.url}/v1/tasks", params={"page_size": 2}, headers=mine.headers).json()["data"]
    second = httpx.get(
        f"{studio_server.url}/v1/tasks", params={"page": 2, "page_size": 2}, headers=mine.headers
    ).json()["data"]
    assert first["total"] == 3 and [t["task_id"] for t in first["tasks"] + second["tasks"]] == ids[::-1]
    newest = first["tasks"][0]
    assert newest["settings"]["prompt"] == "p2" and newest["settings"]["seed"] == 2
    assert newest["settings"]["reference_image"] is None  # a data: URI is not sent back
    assert newest["kind"] == "img2img" and newest["created_at"] > 0
    theirs = httpx.get(f"{studio_server.url}/v1/tasks", headers=other.headers).json()["data"]
    assert theirs["total"] == 1

    too_big = httpx.get(f"{studio_server.url}/v1/tasks", params={"page_size": 1000}, headers=mine.headers).json()
    assert first["next_offset"] == 2
    assert too_big["code"] == 680001 and "page_size" in too_big["msg"]
    assert httpx.get(f"{studio_server.url}/v1/tasks").status_code == 401


@pytest.mark.slow  # over 5 s on the 2-core machine
def test_events_stream_progress_and_step_previews_until_the_end(studio_server, astronaut):
    cloud = Cloud(studio_server.url, *studio_server.new_key())
    task_id = cloud.create_id(img2img_body(data_uri(astronaut.resize((64, 64)))))
    events = []
    with httpx.stream(
        "GET", f"{studio_server.url}/v1/tasks/{task_id}/events", headers=cloud.headers, timeout=60
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    statuses = [event["status"] for event in events]
    assert statuses[-1] == 3 and statuses == sorted(statuses)
    progress = [event["progress"] for event in events]
    assert progress == sorted(progress) and progress[-1] == 100
    previews = [event["preview"] for event in events if "preview" in event]
    assert previews and all(event["status"] == 2 for event in events if "preview" in event)
    preview = httpx.get(previews[-1])
    assert preview.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(preview.content)).width > 0
    assert "preview" not in cloud.query(task_id)["data"]  # only while it runs

    missing = httpx.get(f"{studio_server.url}/v1/tasks/t_missing/events", headers=cloud.headers)
    assert missing.status_code == 404 and missing.json()["code"] == 680004


def test_the_page_and_its_files_are_served_offline(studio_server):
    page = httpx.get(f"{studio_server.url}/")
    assert page.status_code == 200 and "ref2img studio" in page.text
    for asset in re.findall(r'(?:src|href)="(/studio/static/[^"]+)"', page.text):
        assert httpx.get(f"{studio_server.url}{asset}").status_code == 200
    assert not re.search(r'(?:src|href)="https?://', page.text)  # no CDN, no external font


@pytest.mark.slow  # 50 creates with the largest texts
def test_a_task_list_page_is_bounded_in_bytes_and_pages_on_without_a_gap(studio_server, astronaut):
    cloud = Cloud(studio_server.url, *studio_server.new_key())
    reference = data_uri(astronaut.resize((64, 64)))
    emoji = "\U0001f600"  # 4 bytes of UTF-8: the largest texts allowed make 48 KB in every summary
    big = {"params": emoji * 8192, "prompt": emoji * 2000, "negative_prompt": emoji * 2000}
    ids = [cloud.create_id(img2img_body(reference, seed=i, **big)) for i in range(50)]
    for task_id in ids:
        cloud.cancel(task_id)
    pages, offset = [], 0
    while offset < len(ids):
        answer = httpx.get(
            f"{studio_server.url}/v1/tasks", params={"page_size": 100, "offset": offset}, headers=cloud.headers
        )
        assert len(answer.content) <= 2 * 1024 * 1024
        data = answer.json()["data"]
        pages.append([task["task_id"] for task in data["tasks"]])
        offset = data["next_offset"]
    assert len(pages) == 2 and len(pages[0]) < 50  # the first page stopped at the byte bound
    assert [task_id for page in pages for task_id in page] == ids[::-1]  # every task once, in order


def test_a_cookie_of_the_earlier_format_signs_in_again(tmp_path):
    """Cookies made before sessions were rows (no session id) are read as no session, not as a crash
    or a session that can never be ended."""
    from itsdangerous import URLSafeTimedSerializer
    from starlette.requests import Request

    from ref2img.server.sessions import COOKIE, Sessions
    from ref2img.tasks.store import Store

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    sessions = Sessions(b"k" * 32, secure_cookie=False, store=store.studio)

    def read(value: str):
        return sessions.read(Request({"type": "http", "headers": [(b"cookie", f"{COOKIE}={value}".encode())]}))

    old = URLSafeTimedSerializer(b"k" * 32, salt="ref2img-studio-session").dumps({"k": "ak_a", "c": "csrf"})
    assert read(old) is None
    current = sessions.new("ak_a")
    cookie = URLSafeTimedSerializer(b"k" * 32, salt="ref2img-studio-session").dumps(
        {"s": current.id, "k": "ak_a", "c": current.csrf}
    )
    assert read(cookie) == current and sessions.is_live(current)
    store.close()
