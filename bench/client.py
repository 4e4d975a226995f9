"""How soon `wait()` sees a task end, and how many requests it spends, for tasks of 5, 30 and 120 s:

  (a) ref2img server, long-poll      — the SDK against `ref2img serve` (engine double that sleeps)
  (b) cloud-like server, SDK plan    — no long-poll; the server reports progress and wait_time
  (c) cloud-like server, fixed 10 s  — the published skill's poll_until_complete (query, sleep 10 s)

All tasks of all rows run at once (three of each), so the whole run takes about two minutes. Task i
of a row lasts `duration + (i + 0.5)·10/tasks` s, the same in every row: real tasks do not end on a
multiple of the fixed poller's 10 s, and spreading the phase is what makes its delay average ~5 s.

    python bench/client.py [--durations 5 30 120] [--tasks 3] [--json]
    python bench/client.py --durations 0.5 --tasks 1 --json      # smoke run (tests/test_bench.py), ~12 s
"""

from __future__ import annotations

import argparse
import base64
import http.server
import io
import itertools
import json
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import httpx

QUERY = "/v1/open/pub/task"
CREATE = "/v1/open/capacity/application/tm_reference_img2img"


# -- (a) our server, with an engine double that takes `prompt` seconds --------------------------------
class SleepEngine:
    ended: ClassVar[dict[str, float]] = {}  # shared by every instance: the bench reads it

    def generate(self, job, on_progress=lambda d, t: None, should_cancel=lambda: False, on_preview=None):
        from PIL import Image

        seconds = float(job.prompt.split()[0])
        steps = max(1, int(seconds))
        for step in range(steps):
            time.sleep(seconds / steps)
            on_progress(step + 1, steps)
        SleepEngine.ended[job.prompt] = time.monotonic()
        return [Image.new("RGB", (64, 64))]

    def recognize(self, image, control_type):
        return image


def start_ref2img(workers: int) -> tuple[str, str, str]:
    import uvicorn

    from ref2img.server import ServerSettings, create_app
    from ref2img.auth.keys import create_key
    from ref2img.tasks.store import Store

    data_dir = Path(tempfile.mkdtemp(prefix="ref2img-bench-client-"))
    key = create_key(Store(f"sqlite:///{data_dir / 'ref2img.db'}"))
    settings = ServerSettings(data_dir=data_dir, engine_factory=SleepEngine, workers=workers)
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", key.app_key, key.app_secret


# -- (b, c) a cloud-like server: timelines per task, no long-poll -----------------------------------
class CloudLike:
    def __init__(self) -> None:
        self.tasks: dict[str, tuple[float, float]] = {}  # id -> (created, duration)
        self.requests: dict[str, int] = {}
        self._ids = itertools.count(1)
        cloud = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == CREATE:
                    task_id = f"tm-{next(cloud._ids)}"
                    cloud.tasks[task_id] = (time.monotonic(), float(body["prompt"].split()[0]))
                    data = {"task_id": task_id}
                else:
                    data = cloud.state(body["task_id"])
                payload = json.dumps({"code": 0, "msg": "", "data": data}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def ends_at(self, task_id: str) -> float:
        created, duration = self.tasks[task_id]
        return created + duration

    def state(self, task_id: str) -> dict:
        self.requests[task_id] = self.requests.get(task_id, 0) + 1
        created, duration = self.tasks[task_id]
        elapsed = time.monotonic() - created
        done = elapsed >= duration
        return {
            "task_id": task_id,
            "status": 3 if done else 2,
            "progress": 100 if done else int(100 * elapsed / duration),
            "wait_time": max(0, round(duration - elapsed)),
            "position": -1,
            "reason": "",
            "params": "",
            "result": json.dumps({"images_path": ["https://cdn.example/1.png"]}) if done else "",
        }


def fixed_poller(base: str, headers: dict, task_id: str, interval: float = 10.0) -> None:
    """The published skill's loop: query, and if not finished sleep a fixed interval."""
    while True:
        data = httpx.post(base + QUERY, json={"task_id": task_id}, headers=headers, timeout=60).json()["data"]
        if data["status"] in (3, 4, 5, 6):
            return
        time.sleep(interval)


def small_png_uri() -> str:
    """A reference the server accepts (sides of at least 16 px), small enough to cost nothing."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--durations", type=float, nargs="+", default=[5, 30, 120])
    parser.add_argument("--tasks", type=int, default=3, help="tasks per row")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from ref2img import Client

    base, app_key, app_secret = start_ref2img(workers=len(args.durations) * args.tasks)
    cloud = CloudLike()
    reference = small_png_uri()
    results: dict[str, dict[float, list[tuple[float, int]]]] = {
        "ref2img long-poll": {},
        "cloud, SDK plan": {},
        "cloud, fixed 10 s": {},
    }
    lock = threading.Lock()

    def record(row: str, duration: float, delay: float, requests: int) -> None:
        with lock:
            results[row].setdefault(duration, []).append((delay, requests))

    def seconds(duration: float, index: int) -> float:
        return duration + (index + 0.5) * 10 / args.tasks

    def ours_long_poll(duration: float, index: int) -> None:
        prompt = f"{seconds(duration, index)} #{index}"
        with Client(app_key, app_secret, base_url=base, server="ref2img") as client:
            counted = _CountingTransport()
            client._http = httpx.Client(transport=counted, timeout=60)
            task_id = client.create(prompt, reference, "edge")
            client.wait(task_id, timeout=duration + 70)
            returned = time.monotonic()
        record("ref2img long-poll", duration, returned - SleepEngine.ended[prompt], counted.queries)

    def cloud_sdk(duration: float, index: int) -> None:
        with Client("ak", "sk", base_url=cloud.url, server="cloud") as client:
            task_id = client.create(f"{seconds(duration, index)} #{index}", "https://x/y.png", "edge")
            client.wait(task_id, timeout=duration + 70)
            returned = time.monotonic()
        record("cloud, SDK plan", duration, returned - cloud.ends_at(task_id), cloud.requests[task_id])

    def cloud_fixed(duration: float, index: int) -> None:
        body = {"prompt": f"{seconds(duration, index)} #{index}"}
        task_id = httpx.post(cloud.url + CREATE, json=body).json()["data"]["task_id"]
        fixed_poller(cloud.url, {}, task_id)
        record("cloud, fixed 10 s", duration, time.monotonic() - cloud.ends_at(task_id), cloud.requests[task_id])

    jobs = [
        (runner, duration, index)
        for runner in (ours_long_poll, cloud_sdk, cloud_fixed)
        for duration in args.durations
        for index in range(args.tasks)
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        for future in [pool.submit(*job) for job in jobs]:
            future.result()
    report(results, args.json)


class _CountingTransport(httpx.HTTPTransport):
    """Counts the SDK's queries (its long-polls) on our server."""

    def __init__(self) -> None:
        super().__init__()
        self.queries = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == QUERY:
            self.queries += 1
        return super().handle_request(request)


def report(results: dict, as_json: bool) -> None:
    summary = {
        row: {
            str(duration): {
                "median_delay_s": round(statistics.median(d for d, _ in samples), 3),
                "requests_per_task": round(statistics.mean(r for _, r in samples), 1),
            }
            for duration, samples in sorted(rows.items())
        }
        for row, rows in results.items()
    }
    if as_json:
        print(json.dumps(summary))
        return
    print(f"{'strategy':20} {'task s':>7} {'median delay s':>15} {'requests/task':>14}")
    for row, rows in summary.items():
        for duration, figures in rows.items():
            print(f"{row:20} {duration:>7} {figures['median_delay_s']:>15} {figures['requests_per_task']:>14}")


if __name__ == "__main__":
    main()
