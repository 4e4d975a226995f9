"""Server throughput on loopback: create and query requests/s and p50/p99 latency at 1, 16 and 64
concurrent clients, against a bare Starlette JSON endpoint in the same run (the framework's ceiling),
plus end-to-end tasks/s through store + queue + runner, and `/healthz` latency with and without
`--streams` Server-Sent-Event streams open (the studio's; each reads the store once a second). The
engine is a no-op double that lives in this script only, so the figures are the server's, not a model's.

    python bench/server.py                 # about 2 minutes on a 2-core machine
    python bench/server.py --seconds 3 --json

Each server runs in its own process (uvicorn, one worker process); the load comes from this process
(asyncio + httpx), so on a small machine client and server share the cores — the same for both
targets, which is why the ratio is the figure to read.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


HOLD = "hold"  # a prompt the engine double holds until the task is cancelled


# -- the two servers under test (run as subprocesses of this script) --------------------------------
class NoopEngine:
    """The benchmark's engine double: answers at once with blank images."""

    def generate(self, job, on_progress=lambda d, t: None, should_cancel=lambda: False, on_preview=None):
        from PIL import Image

        while job.prompt == HOLD and not should_cancel():  # held until cancelled: keeps the others queued
            time.sleep(0.05)
        on_progress(1, 1)
        return [Image.new("RGB", (8, 8)) for _ in range(job.batch_size)]

    def recognize(self, image, control_type):
        return image


def serve_ref2img(port: int, data_dir: str, workers: int) -> None:
    import uvicorn

    from ref2img.server import ServerSettings, create_app

    settings = ServerSettings(
        data_dir=Path(data_dir),
        engine_factory=NoopEngine,
        workers=workers,
        queue_limit=1_000_000,
        public_url=f"http://127.0.0.1:{port}",
    )
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_starlette(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def endpoint(request):
        await request.body()
        return JSONResponse({"code": 0, "msg": "success", "data": {"task_id": "t0"}})

    app = Starlette(routes=[Route("/json", endpoint, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# -- load generation ------------------------------------------------------------------------------
async def load(url: str, body: dict, headers: dict, concurrency: int, seconds: float) -> dict:
    """Closed-loop load: `concurrency` clients, each sending its next request when the last answered.
    aiohttp, because the client must cost less than the server for the ceiling to mean anything."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    payload = json.dumps(body).encode()
    headers = {**headers, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                async with session.post(url, data=payload, headers=headers) as response:
                    answer = await response.json(content_type=None)
                latencies.append(time.perf_counter() - started)
                if response.status != 200 or answer.get("code") != 0:
                    errors += 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2),
        "requests": len(latencies),
        "errors": errors,
    }


def start(args: list[str], port: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(process.stderr.read().decode() if process.poll() is not None else "server did not start")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_png_uri() -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "gray").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--tasks", type=int, default=1000, help="tasks for the end-to-end figure")
    parser.add_argument("--workers", type=int, default=4, help="worker threads of the ref2img server")
    parser.add_argument("--streams", type=int, default=50, help="SSE streams open for the /healthz figure")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from ref2img.auth.keys import create_key
    from ref2img.protocol import basic_token
    from ref2img.tasks.store import Store

    data_dir = tempfile.mkdtemp(prefix="ref2img-bench-")
    key = create_key(Store(f"sqlite:///{data_dir}/ref2img.db"))
    headers = {"X-App-Key": key.app_key, "Authorization": basic_token(key.app_key, key.app_secret)}
    create_body = {
        "prompt": "bench",
        "reference_image": tiny_png_uri(),
        "control_type": "0",
        "width": 512,
        "height": 512,
        "batch_size": 1,
    }

    ours_port, bare_port = free_port(), free_port()
    ours = start(["--serve-ref2img", str(ours_port), data_dir, str(args.workers)], ours_port)
    bare = start(["--serve-starlette", str(bare_port)], bare_port)
    results: dict = {"ceiling": {}, "create": {}, "query": {}}
    try:
        base = f"http://127.0.0.1:{ours_port}"
        task_id = httpx.post(
            f"{base}/v1/open/capacity/application/tm_reference_img2img", json=create_body, headers=headers
        ).json()["data"]["task_id"]
        for concurrency in args.concurrency:
            results["ceiling"][concurrency] = asyncio.run(
                load(f"http://127.0.0.1:{bare_port}/json", {"task_id": task_id}, {}, concurrency, args.seconds)
            )
            results["query"][concurrency] = asyncio.run(
                load(f"{base}/v1/open/pub/task", {"task_id": task_id}, headers, concurrency, args.seconds)
            )
            results["create"][concurrency] = asyncio.run(
                load(
                    f"{base}/v1/open/capacity/application/tm_reference_img2img",
                    create_body,
                    headers,
                    concurrency,
                    args.seconds,
                )
            )
            _drain(base)
        results["end_to_end"] = asyncio.run(end_to_end(base, create_body, headers, args.tasks))
        results["healthz"] = asyncio.run(healthz_under_streams(base, create_body, headers, args))
    finally:
        for process in (ours, bare):
            process.terminate()
            process.wait(10)
    results["setup"] = {
        "cpus": os.cpu_count(),
        "seconds": args.seconds,
        "workers": args.workers,
        "python": sys.version.split()[0],
    }
    report(results, args.json)


def _drain(base: str, timeout_s: float = 300) -> None:
    """Let the queue empty between measurements, so one load does not tax the next."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        data = httpx.get(f"{base}/healthz").json()["data"]
        if data["queued"] == 0 and data["processing"] == 0:
            return
        time.sleep(0.2)


async def end_to_end(base: str, body: dict, headers: dict, tasks: int) -> dict:
    """Create `tasks` tasks (16 at a time), then wait until every one has finished."""
    began = time.perf_counter()
    async with httpx.AsyncClient(timeout=30) as client:
        semaphore = asyncio.Semaphore(16)

        async def create() -> None:
            async with semaphore:
                await client.post(
                    f"{base}/v1/open/capacity/application/tm_reference_img2img", json=body, headers=headers
                )

        await asyncio.gather(*(create() for _ in range(tasks)))
        while True:
            data = (await client.get(f"{base}/healthz")).json()["data"]
            if data["queued"] == 0 and data["processing"] == 0:
                break
            await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - began
    return {"tasks": tasks, "seconds": round(elapsed, 2), "tasks_per_s": round(tasks / elapsed, 1)}


async def healthz_under_streams(base: str, body: dict, headers: dict, args) -> dict:
    """`/healthz` latency alone, then with `args.streams` SSE streams open on queued tasks (the workers
    are held by tasks the engine double never ends), in the same run."""
    create = f"{base}/v1/open/capacity/application/tm_reference_img2img"
    async with httpx.AsyncClient(timeout=60) as client:
        alone = await sample(client, f"{base}/healthz", args.seconds)
        held = [
            (await client.post(create, json={**body, "prompt": HOLD}, headers=headers)).json()["data"]["task_id"]
            for _ in range(args.workers + args.streams)
        ]
        streams = [
            asyncio.create_task(follow(client, f"{base}/v1/tasks/{task_id}/events", headers))
            for task_id in held[args.workers :]
        ]
        await asyncio.sleep(1.5)  # every stream open and reading
        crowded = await sample(client, f"{base}/healthz", args.seconds)
        for task_id in held:
            await client.post(f"{base}/v1/open/pub/task/cancel", json={"task_id": task_id}, headers=headers)
        _, still_open = await asyncio.wait(streams, timeout=30)  # each ends with its task's final event
        for stream in still_open:
            stream.cancel()
    return {"streams": args.streams, "alone": alone, "with_streams": crowded, "not_ended": len(still_open)}


async def follow(client: httpx.AsyncClient, url: str, headers: dict) -> None:
    async with client.stream("GET", url, headers=headers) as response:
        async for _ in response.aiter_lines():
            pass


async def sample(client: httpx.AsyncClient, url: str, seconds: float) -> dict:
    latencies = []
    stop_at = time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        await client.get(url)
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(0.02)
    latencies.sort()
    return {
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2),
    }


def report(results: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(results))
        return
    print(f"{'route':8} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'vs ceiling':>10}")
    for route in ("ceiling", "query", "create"):
        for concurrency, figures in results[route].items():
            ceiling = results["ceiling"][concurrency]["requests_per_s"]
            ratio = f"{figures['requests_per_s'] / ceiling:.0%}" if route != "ceiling" else ""
            print(
                f"{route:8} {concurrency:>7} {figures['requests_per_s']:>8} {figures['p50_ms']:>8} "
                f"{figures['p99_ms']:>8} {ratio:>10}"
            )
    e2e = results["end_to_end"]
    print(
        f"end to end: {e2e['tasks']} tasks in {e2e['seconds']} s = {e2e['tasks_per_s']} tasks/s "
        f"({results['setup']['workers']} workers, no-op engine)"
    )
    health = results["healthz"]
    print(
        f"/healthz p50/p99: {health['alone']['p50_ms']}/{health['alone']['p99_ms']} ms alone, "
        f"{health['with_streams']['p50_ms']}/{health['with_streams']['p99_ms']} ms with {health['streams']} "
        f"SSE streams open"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-ref2img":
        serve_ref2img(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--serve-starlette":
        serve_starlette(int(sys.argv[2]))
    else:
        main()
