"""A real `ref2img serve` (tiny model) for the SDK, the CLI and the skill scripts; and a scripted fake."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable

import pytest

from ..server.conftest import Server, image_host  # noqa: F401  (shared fixture)


@pytest.fixture(scope="session")
def server(tiny_sd15, tmp_path_factory):
    """One server for the SDK's and the CLI's tests (each module its own key: `credentials`)."""
    instance = Server(
        tmp_path_factory.mktemp("sdk") / "data", tiny_sd15, "--allow-private-urls", "--workers", "2"
    ).start()
    instance.wait_engine()  # the model's load is the fixture's, not the first test's
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def credentials(server) -> tuple[str, str]:
    return server.new_key()


@pytest.fixture
def client(server, credentials):
    from ref2img import Client

    with Client(*credentials, base_url=server.url) as sdk:
        yield sdk


class Scripted:
    """A small real HTTP server whose answers a test scripts: `handler(path, body, headers)` returns
    (status, json_body, extra_headers), or None to drop the connection without answering."""

    def __init__(self, handler: Callable):
        self.requests: list[tuple[str, dict, dict, float]] = []
        scripted = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else {}
                scripted.requests.append((self.path, body, dict(self.headers), time.monotonic()))
                answer = handler(self.path, body, dict(self.headers))
                if answer is None:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                status, payload, headers = answer
                data = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = _serve
            do_GET = _serve

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def count(self, path_prefix: str) -> int:
        return sum(1 for path, *_ in self.requests if path.startswith(path_prefix))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def ok(data) -> tuple[int, dict, dict]:
    return 200, {"code": 0, "msg": "success", "data": data}, {}


class CloudTask:
    """A task the way the cloud runs it: queued for `queued_s`, then processing with linear progress
    for `run_s`, then done. Reports `progress` and `wait_time`; knows no long-poll."""

    def __init__(self, queued_s: float, run_s: float):
        self.created = time.monotonic()
        self.queued_s = queued_s
        self.run_s = run_s

    @property
    def ends_at(self) -> float:
        return self.created + self.queued_s + self.run_s

    def data(self) -> dict:
        elapsed = time.monotonic() - self.created
        if elapsed < self.queued_s:
            status, progress = 1, 0
        elif elapsed < self.queued_s + self.run_s:
            status, progress = 2, int(100 * (elapsed - self.queued_s) / self.run_s)
        else:
            status, progress = 3, 100
        result = json.dumps({"images_path": ["https://cdn.example/1.png"]}) if status == 3 else ""
        return {
            "task_id": "tm-1",
            "status": status,
            "progress": progress,
            "position": 0 if status == 1 else -1,
            "wait_time": max(0, round(self.ends_at - time.monotonic())),
            "reason": "",
            "params": "",
            "result": result,
        }
