"""Real `ref2img serve` processes on loopback, a test image host, and plain-HTTP cloud calls."""

from __future__ import annotations

import base64
import http.server
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from ref2img.auth.keys import create_key
from ref2img.tasks.store import Store


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One `ref2img serve` subprocess; stop/kill/start again on the same data dir."""

    def __init__(self, data_dir: Path, model: Path | str, *extra: str, env: dict[str, str] | None = None):
        self.data_dir = Path(data_dir)
        self.model = str(model)
        self.extra = list(extra)
        self.env = env or {}
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        model = ["--model", self.model] if self.model else []  # "": none, as a fleet's API node may be started
        command = [
            sys.executable,
            "-m",
            "ref2img.cli",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *model,
            "--log-level",
            "warning",
            *self.extra,
        ]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=log, env={**os.environ, "HF_HUB_OFFLINE": "1", **self.env}
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.log()}")

    def wait_engine(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = httpx.get(f"{self.url}/healthz").json()["data"]["engine"]
            if state != "loading":
                return
            time.sleep(0.2)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def db_url(self) -> str:
        return (
            self.extra[self.extra.index("--db") + 1]
            if "--db" in self.extra
            else f"sqlite:///{self.data_dir / 'ref2img.db'}"
        )

    def new_key(self) -> tuple[str, str]:
        store = Store(self.db_url)
        try:
            key = create_key(store)
        finally:
            store.close()
        return key.app_key, key.app_secret

    def studio_link(self) -> str:
        """A fresh single-use sign-in link, as `ref2img keys studio-link` prints it."""
        from ref2img.server.studio import sign_in_url

        store = Store(self.db_url)
        try:
            return sign_in_url(store, self.url)
        finally:
            store.close()


@dataclass
class Cloud:
    """A client written from the Tomoviee cloud docs: plain HTTP, no ref2img SDK."""

    base: str
    app_key: str
    app_secret: str

    def headers_pair(self) -> tuple[str, str]:
        return self.app_key, self.app_secret

    @property
    def headers(self) -> dict[str, str]:
        token = base64.b64encode(f"{self.app_key}:{self.app_secret}".encode()).decode()
        return {"Content-Type": "application/json", "X-App-Key": self.app_key, "Authorization": f"Basic {token}"}

    def create(self, body: dict, **headers) -> httpx.Response:
        return httpx.post(
            f"{self.base}/v1/open/capacity/application/tm_reference_img2img",
            json=body,
            headers={**self.headers, **headers},
            timeout=30,
        )

    def create_id(self, body: dict, **headers) -> str:
        answer = self.create(body, **headers).json()
        assert answer["code"] == 0, answer
        return answer["data"]["task_id"]

    def query(self, task_id: str, wait: float | None = None) -> dict:
        body = {"task_id": task_id} | ({"wait": wait} if wait is not None else {})
        return httpx.post(f"{self.base}/v1/open/pub/task", json=body, headers=self.headers, timeout=60).json()

    def cancel(self, task_id: str) -> dict:
        return httpx.post(
            f"{self.base}/v1/open/pub/task/cancel", json={"task_id": task_id}, headers=self.headers, timeout=30
        ).json()

    def wait_final(self, task_id: str, timeout_s: float = 90) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            data = self.query(task_id, wait=5)["data"]
            if data["status"] >= 3:
                return data
        raise AssertionError(f"task {task_id} did not end in {timeout_s} s")


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def data_uri(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def bomb_header(width: int = 30000, height: int = 30000) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


class ImageHost:
    """A loopback HTTP server with good and bad 'images' and a few redirects."""

    def __init__(self, files: dict[str, tuple[bytes, str]]):
        self.files = files
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.split("?")[0]
                if path.startswith("/redirect/"):
                    self.send_response(302)
                    self.send_header("Location", "http://" + path.removeprefix("/redirect/"))
                    self.end_headers()
                    return
                if path not in host.files:
                    self.send_error(404)
                    return
                body, content_type = host.files[path]
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def close(self) -> None:
        self.server.shutdown()


class Receiver:
    """Records every callback; answers with the scripted statuses, then 200."""

    def __init__(self, port: int = 0, statuses=()):
        self.calls: list[tuple[dict, bytes]] = []
        self.statuses = list(statuses)
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((dict(self.headers), body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def wait_calls(self, count: int, timeout_s: float = 60) -> list:
        deadline = time.monotonic() + timeout_s
        while len(self.calls) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.calls) >= count, f"{len(self.calls)} callbacks, wanted {count}"
        return self.calls

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def running(tmp_path_factory, name: str, model: Path | str, *extra: str) -> Iterator[Server]:
    """A server of its own for a test module: `with running(...) as server: yield server`."""
    server = Server(tmp_path_factory.mktemp(name) / "data", model, *extra).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def image_host(astronaut):
    good = png_bytes(astronaut)
    host = ImageHost(
        {
            "/astronaut.png": (good, "image/png"),
            "/astronaut.jpg": (png_bytes(astronaut, "JPEG"), "image/jpeg"),
            "/truncated.png": (good[: len(good) // 3], "image/png"),
            "/empty.png": (b"", "image/png"),
            "/bomb.png": (bomb_header(), "image/png"),
            "/text.png": (b"hello, I am text pretending to be a PNG", "image/png"),
        }
    )
    yield host
    host.close()


@pytest.fixture(scope="session")
def server(tiny_sd15, tmp_path_factory):
    """The main server: tiny model, private URLs allowed (the image host is on loopback), fast retries.
    One for the session (a start and its engine load cost seconds): each module gets its own key
    (`cloud`), so its tasks, history and quotas are its own; a test that must stop or restart a server, or
    change its flags, starts one of its own."""
    instance = Server(
        tmp_path_factory.mktemp("srv") / "data",
        tiny_sd15,
        "--allow-private-urls",
        "--callback-retry-scale",
        "0.002",
        "--workers",
        "2",
    ).start()
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def cloud(server) -> Cloud:
    return Cloud(server.url, *server.new_key())


def img2img_body(reference: str, **changes) -> dict:
    body = {
        "prompt": "an astronaut on mars",
        "reference_image": reference,
        "control_type": "0",
        "control_intensity": 0.5,
        "width": 512,
        "height": 512,
        "batch_size": 1,
    }
    body.update(changes)
    return body
