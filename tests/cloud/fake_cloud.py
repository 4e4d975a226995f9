"""A fake Tomoviee cloud over real HTTP on 127.0.0.1, written from ../shared/research/tomoviee-api.md.

What it does as the docs say the cloud does:
- create `POST /v1/open/capacity/application/tm_reference_img2img` (§2.1): `X-App-Key` and
  `Authorization: Basic base64(key:secret)` (§1.3), else 140013 (§3.3); the body's fields and ranges,
  else 680001; answers `{"task_id": "tm_reference_img2img-0-<time><hex>"}` (§3.2);
- query `POST /v1/open/pub/task` (§4): status 1 while queued, 2 with `progress` while running, then the
  scripted end; `wait_time`, `position`, `params`, and on success `result` as a JSON *string* with
  `images_path` (§4.3), URLs of PNGs this fake serves;
- Image Repaint `POST /v1/open/capacity/application/tm_redrawing` (S8/S9): `prompt` and `init_image`
  required, `mask_url` optional, both URLs; one result image at the init image's size;
- like the cloud, it fetches the input images by URL itself (so a URL it cannot reach fails the task).

What a test scripts (`FakeCloud.script`, taken by each create): how long the task queues and runs, how
it ends (3, or 4 / 5 / 6 with a reason), and faults: the create answered with an HTTP status, queries
answered by dropping the connection.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import secrets
import threading
import time
from dataclasses import dataclass, field

import httpx
from PIL import Image

CREATE_PATH = "/v1/open/capacity/application/tm_reference_img2img"
REPAINT_PATH = "/v1/open/capacity/application/tm_redrawing"
QUERY_PATH = "/v1/open/pub/task"
RANGES = {"control_intensity": (0, 1), "width": (512, 2048), "height": (512, 2048), "batch_size": (1, 4)}  # §2.1


@dataclass
class Script:
    queued_s: float = 0.3
    run_s: float = 1.0
    status: int = 3  # how it ends: 3 success, 4 failed, 5 closed, 6 timed out
    reason: str = ""
    create_http_status: int | None = None  # answer the create with this HTTP status (a 5xx) and no task
    drop_queries: set[int] = field(default_factory=set)  # drop the connection on these queries (1 = first)


@dataclass
class CloudTask:
    task_id: str
    body: dict
    script: Script
    created: float = field(default_factory=time.monotonic)
    inputs: dict[str, bytes | str] = field(default_factory=dict)  # field -> fetched bytes, or why it failed
    queries: int = 0

    def data(self, base_url: str) -> dict:
        elapsed = time.monotonic() - self.created
        script = self.script
        ends_at = script.queued_s + script.run_s
        if elapsed < script.queued_s:
            status, progress = 1, 0
        elif elapsed < ends_at:
            status, progress = 2, int(100 * (elapsed - script.queued_s) / script.run_s)
        else:
            status, progress = script.status, 100 if script.status == 3 else 0
        failed_input = next((why for why in self.inputs.values() if isinstance(why, str)), None)
        reason = script.reason if status == script.status and status != 3 else ("success" if status == 3 else "")
        if status >= 3 and failed_input is not None:
            status, reason = 4, failed_input
        result = ""
        if status == 3:
            count = int(self.body.get("batch_size", 1))  # a repaint makes one image
            urls = [f"{base_url}/results/{self.task_id}/{n + 1}.png" for n in range(count)]
            result = json.dumps({"images_path": urls, "model_version": "fake"})
        return {
            "task_id": self.task_id,
            "wsid": 123,
            "priority": 0,
            "status": status,
            "reason": reason,
            "progress": progress,
            "position": 0 if status == 1 else -1,
            "wait_time": max(0, round(ends_at - elapsed)),
            "delay": False,
            "params": self.body.get("params", ""),
            "result": result,
        }


class FakeCloud:
    def __init__(self, app_key: str = "cloud_key", app_secret: str = "cloud_secret"):
        self.app_key, self.app_secret = app_key, app_secret
        self.script = Script()
        self.tasks: dict[str, CloudTask] = {}
        self.creates: list[dict] = []  # every create body that reached it, accepted or not
        self.query_ids: list[str] = []
        self._lock = threading.Lock()
        cloud = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    body = None
                answer = cloud.handle(self.path, body, self.headers)
                if answer is None:  # a dropped connection
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                status, payload = answer
                self._send(status, json.dumps(payload).encode(), "application/json")

            def do_GET(self):
                png = cloud.result_png(self.path)
                if png is None:
                    self._send(404, b"404 page not found", "text/plain")  # as the cloud answers (§1.2)
                else:
                    self._send(200, png, "image/png")

            def _send(self, status: int, data: bytes, content_type: str):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self, script: Script | None = None) -> None:
        with self._lock:
            self.script = script or Script()
            self.tasks.clear()
            self.creates.clear()
            self.query_ids.clear()

    # -- the API ---------------------------------------------------------------------------------
    def handle(self, path: str, body: dict | None, headers) -> tuple[int, dict] | None:
        if not self._authorized(headers):
            return 200, {"code": 140013, "msg": "unauthorized: Unauthorized", "data": None}
        if not isinstance(body, dict):
            return 200, _error(680001, "body: must be a JSON object")
        if path == CREATE_PATH:
            return self._create(body)
        if path == REPAINT_PATH:
            return self._create(body, repaint=True)
        if path == QUERY_PATH:
            return self._query(body)
        return 404, _error(404, "404 page not found")

    def _authorized(self, headers) -> bool:
        token = base64.b64encode(f"{self.app_key}:{self.app_secret}".encode()).decode()
        return headers.get("X-App-Key") == self.app_key and headers.get("Authorization") == f"Basic {token}"

    def _create(self, body: dict, repaint: bool = False) -> tuple[int, dict]:
        with self._lock:
            self.creates.append(body)
            script = self.script
        if script.create_http_status is not None:
            return script.create_http_status, _error(script.create_http_status, "upstream unavailable")
        problem = _invalid_repaint(body) if repaint else _invalid(body)
        if problem:
            return 200, _error(680001, problem)
        capability = "tm_redrawing" if repaint else "tm_reference_img2img"
        task = CloudTask(f"{capability}-0-{time.strftime('%Y%m%d%H')}{secrets.token_hex(6)}", body, script)
        for name in ("reference_image", "init_image", "mask_url"):
            if body.get(name):
                task.inputs[name] = _fetch(body[name], name)
        with self._lock:
            self.tasks[task.task_id] = task
        return 200, {"code": 0, "msg": "", "data": {"task_id": task.task_id}}

    def _query(self, body: dict) -> tuple[int, dict] | None:
        with self._lock:
            task = self.tasks.get(str(body.get("task_id")))
            if task is None:
                return 200, _error(680004, f"task_id: no task {body.get('task_id')!r}")
            self.query_ids.append(task.task_id)
            task.queries += 1
            drop = task.queries in task.script.drop_queries
        if drop:
            return None
        return 200, {"code": 0, "msg": "", "data": task.data(self.url)}

    def result_png(self, path: str) -> bytes | None:
        parts = path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "results" or parts[1] not in self.tasks:
            return None
        task = self.tasks[parts[1]]
        if "width" in task.body:
            size = (int(task.body["width"]), int(task.body["height"]))
        else:  # a repaint: the init image's size
            size = Image.open(io.BytesIO(task.inputs["init_image"])).size  # type: ignore[arg-type]
        image = Image.new("RGB", size, (40, 90, 200))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()


def _error(code: int, msg: str) -> dict:
    return {"code": code, "msg": msg, "data": None}


def _invalid(body: dict) -> str | None:
    """The create body's rules (§2.1); the message names the field, as ours do."""
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        return "prompt: required"
    if not isinstance(body.get("reference_image"), str) or not body["reference_image"].startswith("http"):
        return "reference_image: must be an http(s) URL"
    if body.get("control_type") not in ("0", "1", "2", "3"):
        return "control_type: must be the string '0', '1', '2' or '3'"
    for name, (low, high) in RANGES.items():
        value = body.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            return f"{name}: must be from {low} to {high}"
    return None


def _invalid_repaint(body: dict) -> str | None:
    """Image Repaint's body rules (S8)."""
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        return "prompt: required"
    for name in ("init_image", "mask_url"):
        value = body.get(name)
        if (name == "init_image" or value is not None) and not (isinstance(value, str) and value.startswith("http")):
            return f"{name}: must be an http(s) URL"
    return None


def _fetch(url: str, name: str) -> bytes | str:
    try:
        response = httpx.get(url, timeout=10)
        response.raise_for_status()
        Image.open(io.BytesIO(response.content)).verify()
        return response.content
    except Exception as exc:  # noqa: BLE001 - recorded as the task's failure reason
        return f"{name} could not be downloaded: {exc}"
