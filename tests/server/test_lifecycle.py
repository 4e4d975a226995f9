"""Queue behaviour over time: cancel, bounded queue, positions, SIGKILL + restart, engine unavailable."""

import time

import httpx
import pytest

from .conftest import Cloud, Server, data_uri, img2img_body


@pytest.fixture(scope="module")
def slow(tiny_sd15, tmp_path_factory):
    """Tasks of several seconds (many tiny steps), one worker, two queue slots; private URLs refused."""
    server = Server(
        tmp_path_factory.mktemp("slow") / "data",
        tiny_sd15,
        "--part",
        "steps=400",
        "--queue-limit",
        "2",
        "--key-queue-limit",
        "0",
        "--workers",
        "1",
    ).start()
    server.wait_engine()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_cloud(slow) -> Cloud:
    return Cloud(slow.url, *slow.new_key())


def wait_running(cloud: Cloud, task_id: str, timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        data = cloud.query(task_id, wait=2)["data"]
        if data["status"] == 2 and data["progress"] > 0:
            return data
        assert data["status"] < 3, data
    raise AssertionError("task never started")


@pytest.mark.slow
def test_cancel_queued_and_running_positions_and_a_full_queue(slow_cloud, astronaut):
    body = img2img_body(data_uri(astronaut))
    running = slow_cloud.create_id(body)
    wait_running(slow_cloud, running)
    queued = [slow_cloud.create_id(body), slow_cloud.create_id(body)]

    first, second = (slow_cloud.query(task_id)["data"] for task_id in queued)
    assert (first["status"], first["position"]) == (1, 0)
    assert (second["status"], second["position"]) == (1, 1)
    assert second["wait_time"] > first["wait_time"] > 0

    full = slow_cloud.create(body)  # two already wait: the bounded queue says busy
    assert full.status_code == 429 and full.json()["code"] == 680005
    assert int(full.headers["Retry-After"]) > 0

    cancelled = slow_cloud.cancel(queued[1])
    assert cancelled["code"] == 0 and cancelled["data"]["status"] == 5  # queued: at once
    assert slow_cloud.query(queued[0])["data"]["status"] == 1  # nothing accepted was dropped

    asked = slow_cloud.cancel(running)["data"]
    assert asked["status"] in (2, 5)
    started = time.monotonic()
    final = slow_cloud.wait_final(running, timeout_s=10)
    assert final["status"] == 5 and time.monotonic() - started < 3  # stopped between steps, not at the end
    assert slow_cloud.cancel(queued[0])["data"]["status"] in (2, 5)
    assert slow_cloud.wait_final(queued[0], timeout_s=10)["status"] == 5


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "http://localhost/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://2130706433/x.png",
        "http://0177.0.0.1/x.png",
        "http://10.0.0.8/x.png",
        "file:///etc/passwd",
        "ftp://example.com/x.png",
        "http://user:pass@example.com/x.png",
    ],
)
def test_ssrf_image_urls_are_refused_at_create(slow_cloud, url):
    answer = slow_cloud.create(img2img_body(url)).json()
    assert answer["code"] == 680002, answer
    assert answer["msg"].startswith("reference_image: ")


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/cb", "http://169.254.169.254/cb", "file:///tmp/cb"])
def test_ssrf_callback_urls_are_refused(slow_cloud, astronaut, url):
    answer = slow_cloud.create(img2img_body(data_uri(astronaut), callback=url)).json()
    assert answer["code"] == 680001 and answer["msg"].startswith("callback: ")


@pytest.mark.slow
def test_sigkill_mid_task_then_restart_loses_nothing(tiny_sd15, tmp_path, astronaut):
    server = Server(tmp_path / "data", tiny_sd15, "--part", "steps=120", "--workers", "1").start()
    try:
        cloud = Cloud(server.url, *server.new_key())
        tasks = [cloud.create_id(img2img_body(data_uri(astronaut), seed=i)) for i in range(3)]
        wait_running(cloud, tasks[0])
        server.kill()
        server.start()
        finals = [cloud.wait_final(task_id, timeout_s=120) for task_id in tasks]
        assert [data["status"] for data in finals] == [3, 3, 3], finals
    finally:
        server.stop()


@pytest.mark.slow
def test_missing_model_is_680006(tmp_path, astronaut):
    server = Server(tmp_path / "data", "sd15").start()
    try:
        server.wait_engine()
        cloud = Cloud(server.url, *server.new_key())
        answer = cloud.create(img2img_body(data_uri(astronaut))).json()
        assert answer["code"] == 680006
        assert "ref2img models pull sd15" in answer["msg"]
        assert httpx.get(f"{server.url}/healthz").json()["data"]["engine"].startswith("error")
    finally:
        server.stop()


def test_startup_does_not_import_torch():
    """Nor numpy: an API node that marks results (both marks on, as `serve` has them) starts light; the
    engine and the watermark bring them in where a task runs."""
    import subprocess
    import sys

    code = (
        "import sys; from ref2img.server import create_app, ServerSettings; import tempfile; "
        "from ref2img.provenance.options import ProvenanceOptions; "
        "create_app(ServerSettings(data_dir=tempfile.mkdtemp(), "
        "provenance=ProvenanceOptions(c2pa=True, watermark=True))); "
        "print('torch' in sys.modules, 'numpy' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False False", result.stderr


@pytest.mark.slow
def test_deadline_ends_a_running_task_at_6(tiny_sd15, tmp_path, astronaut):
    # The deadline passes mid-run: 500 tiny steps at 128² (4x the tiny preset's area) take about 30 s on an
    # idle 2-core machine, and 8 s leave room for the first step on a loaded one (at 3 s and 64², a
    # parallel run once saw the deadline pass before the first step).
    server = Server(
        tmp_path / "data", tiny_sd15, "--part", "steps=500", "--part", "max_pixels=16384", "--task-timeout", "8"
    ).start()
    try:
        server.wait_engine()
        cloud = Cloud(server.url, *server.new_key())
        task_id = cloud.create_id(img2img_body(data_uri(astronaut)))
        wait_running(cloud, task_id)
        data = cloud.wait_final(task_id, timeout_s=60)
        assert data["status"] == 6 and "timed out" in data["reason"]
    finally:
        server.stop()


def test_revoked_key_is_refused(slow, astronaut):
    from ref2img.tasks.store import Store

    app_key, secret = slow.new_key()
    Store(f"sqlite:///{slow.data_dir / 'ref2img.db'}").keys.revoke(app_key)
    answer = Cloud(slow.url, app_key, secret).create(img2img_body(data_uri(astronaut)))
    assert answer.status_code == 401 and answer.json()["code"] == 140013


@pytest.mark.slow
def test_the_server_log_names_each_part_it_loads_and_nothing_else(tmp_path, tiny_sdxl, astronaut):
    """Operators read one line per model part; library chatter (casting notes, fallback notices,
    progress bars) stays at debug level."""
    server = Server(tmp_path / "data", tiny_sdxl, "--log-level", "info").start()
    try:
        cloud = Cloud(server.url, *server.new_key())
        for mode in ("3", "2"):  # depth: base, ControlNet, depth annotator; subject: image encoder, IP-Adapter
            task_id = cloud.create_id(img2img_body(data_uri(astronaut), control_type=mode))
            assert cloud.wait_final(task_id)["status"] == 3
    finally:
        server.stop()
    lines = server.log().splitlines()
    for part in ("base", "controlnet.union", "depth_estimator", "image_encoder", "ip_adapter"):
        assert sum(f"loaded {part} from" in line for line in lines) == 1, part
    for chatter in (
        "should be kept in float32",
        "torchvision",
        "Loading pipeline components",
        "Loading weights",
        "it/s]",
    ):
        assert not [line for line in lines if chatter in line], chatter


@pytest.mark.slow  # a server of its own
def test_past_the_retention_period_a_task_and_its_files_are_gone(tiny_sd15, tmp_path, astronaut):
    """--retention-days (here about 9 s): the housekeeping deletes the finished task's row, its images and
    its inline reference (kept as an upload); a query then finds no such task, as for any unknown id."""
    # The inline reference is kept as an upload, which goes once no task could need it (--task-timeout).
    server = Server(tmp_path / "data", tiny_sd15, "--retention-days", "0.0001", "--task-timeout", "15").start()
    try:
        cloud = Cloud(server.url, *server.new_key())
        task_id = cloud.create_id(img2img_body(data_uri(astronaut.resize((64, 64)))))
        assert cloud.wait_final(task_id)["status"] == 3
        results = server.data_dir / "files" / "results" / task_id
        assert any(results.iterdir())
        deadline = time.monotonic() + 60
        while cloud.query(task_id)["code"] == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert cloud.query(task_id)["code"] == 680004
        assert not results.exists()
        uploads = server.data_dir / "files" / "uploads"
        while any(uploads.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(uploads.iterdir())  # its inline reference, kept as a file
    finally:
        server.stop()
