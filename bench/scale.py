"""Scale-out throughput: tasks/s and enqueue→start latency with 1, 2 and 4 `ref2img worker`
processes on Redis + PostgreSQL, beside embedded mode (SQLite, one worker) in the same run. Each task
holds its worker for `--task-ms` (an engine double that sleeps: it lives in this script only).

    python bench/scale.py                  # 100 tasks per row, 200 ms each: about a minute
    python bench/scale.py --tasks 200 --json
    python bench/scale.py --tasks 4 --task-ms 20 --workers 1 2 --json     # smoke run (tests/test_bench.py)

Starts a `redis-server` of its own on a free port (or uses --redis URL, which it never flushes) and
works in a schema of its own, dropped afterwards, in the PostgreSQL database at --postgres.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASK_DEADLINE_S = 120  # a task still not done after this is a broken run, not a slow one


class SleepEngine:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def generate(self, job, on_progress=lambda d, t: None, should_cancel=lambda: False, on_preview=None):
        from PIL import Image

        time.sleep(self.seconds)
        on_progress(1, 1)
        return [Image.new("RGB", (8, 8))]

    def recognize(self, image, control_type):
        return image


def settings(db: str | None, queue: str, storage: str, task_ms: float):
    from ref2img.settings import ServerSettings

    return ServerSettings(
        data_dir=Path(storage),
        db_url=db,
        queue_url=queue,
        storage=storage,
        engine_factory=lambda: SleepEngine(task_ms / 1000),
        lease_s=10,
        queue_limit=10**6,
    )


def run_worker(db: str, redis_url: str, storage: str, task_ms: float) -> None:
    from ref2img.tasks.execution.worker_process import run_worker_process

    run_worker_process(settings(db, redis_url, storage, task_ms))


def small_png_uri() -> str:
    """A reference the server accepts (sides of at least 16 px)."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 90, 200)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


BODY = {"prompt": "bench", "reference_image": small_png_uri(), "control_type": "0"}


def submit(services, count: int, gap_s: float = 0.0) -> list:
    """Create tasks as an API node does (store, then queue message), `gap_s` apart; wait for them all."""
    from ref2img.protocol import CreateRequest, TaskStatus

    request = CreateRequest.model_validate(BODY).model_dump(mode="json")
    ids = []
    for _ in range(count):
        task, _ = services.store.tasks.create(
            app_key="bench",
            kind="img2img",
            request=request,
            params=None,
            callback=None,
            idempotency_key=None,
            timeout_s=3600,
            queue_limit=10**6,
        )
        services.queue.send(task.id)
        ids.append(task.id)
        time.sleep(gap_s)
    deadline = time.monotonic() + TASK_DEADLINE_S
    while True:
        rows = [services.store.tasks.get(task_id) for task_id in ids]
        if all(row.status == TaskStatus.SUCCEEDED for row in rows):
            return rows
        failed = [row for row in rows if row.status in (TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT)]
        if failed:
            raise RuntimeError(f"task {failed[0].id} ended at status {int(failed[0].status)}: {failed[0].reason}")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{sum(row.status != TaskStatus.SUCCEEDED for row in rows)} tasks not done after {TASK_DEADLINE_S} s"
            )
        time.sleep(0.05)


def measure(services, tasks: int, workers: int, task_ms: float) -> dict:
    """Throughput with a backlog (all tasks at once), then enqueue→start latency with the workers
    idle (one task at a time, spaced so that none waits for a busy worker)."""
    began = time.time()
    rows = submit(services, tasks)
    throughput = tasks / (max(row.finished_at for row in rows) - began)
    paced = submit(services, 30, gap_s=task_ms / 1000 * 1.5 / workers)
    latencies = sorted(row.started_at - row.created_at for row in paced)
    return {
        "tasks_per_s": round(throughput, 2),
        "enqueue_to_start_p50_ms": round(1000 * statistics.median(latencies), 1),
        "enqueue_to_start_p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
    }


def fleet_row(workers: int, tasks: int, task_ms: float, postgres: str, redis_url: str) -> dict:
    from sqlalchemy import create_engine, text

    from ref2img.server.services import Services

    schema = f"bench_{secrets.token_hex(4)}"
    with create_engine(postgres).begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    db = f"{postgres}?options=-csearch_path%3D{schema}"
    storage = tempfile.mkdtemp(prefix="ref2img-scale-")
    api = Services(settings(db, redis_url, storage, task_ms))  # the API node's side, in this process
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", db, redis_url, storage, str(task_ms)], stderr=subprocess.DEVNULL
        )
        for _ in range(workers)
    ]
    try:
        deadline = time.monotonic() + 60
        while len(api.store.fleet.alive(within_s=30)) < workers and time.monotonic() < deadline:
            time.sleep(0.1)
        return measure(api, tasks, workers, task_ms)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(15)
        api.backend.close()
        with create_engine(postgres).begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))


def embedded_row(tasks: int, task_ms: float) -> dict:
    from ref2img.server.services import Services

    storage = tempfile.mkdtemp(prefix="ref2img-scale-embedded-")
    services = Services(settings(None, "embedded", storage, task_ms))
    services.start()
    try:
        return measure(services, tasks, 1, task_ms)
    finally:
        services.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--task-ms", type=float, default=200.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument(
        "--postgres",
        default="postgresql+psycopg://root@127.0.0.1:5432/test",
        help="a PostgreSQL database to make a temporary schema in",
    )
    parser.add_argument("--redis", default=None, help="a Redis to use (default: start one of our own)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import redis

    results = {"embedded (SQLite, 1 worker)": embedded_row(args.tasks, args.task_ms)}
    own_redis = None if args.redis else start_redis()
    redis_url = args.redis or own_redis[1]
    try:
        for count in args.workers:
            if own_redis:  # ours alone: each row starts from an empty broker
                redis.Redis.from_url(redis_url).flushdb()
            results[f"Redis + PostgreSQL, {count} worker{'s' if count > 1 else ''}"] = fleet_row(
                count, args.tasks, args.task_ms, args.postgres, redis_url
            )
    finally:
        if own_redis:
            own_redis[0].kill()
    if args.json:
        print(json.dumps(results))
        return
    base = results[f"Redis + PostgreSQL, {args.workers[0]} worker"]["tasks_per_s"] if args.workers[0] == 1 else None
    print(f"{args.tasks} tasks of {args.task_ms:.0f} ms at once (tasks/s), then 30 spaced ones (enqueue→start)")
    print(f"{'setup':32} {'tasks/s':>8} {'vs 1 worker':>12} {'p50 ms':>8} {'p99 ms':>8}")
    for name, figures in results.items():
        ratio = f"{figures['tasks_per_s'] / base:.2f}x" if base and "PostgreSQL" in name else ""
        print(
            f"{name:32} {figures['tasks_per_s']:>8} {ratio:>12} {figures['enqueue_to_start_p50_ms']:>8} "
            f"{figures['enqueue_to_start_p99_ms']:>8}"
        )


def start_redis() -> tuple[subprocess.Popen, str]:
    """A `redis-server` of this run's own on a free port, keeping nothing on disk."""
    import socket

    import redis

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tempfile.mkdtemp(prefix="ref2img-scale-redis-"),
        ],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            redis.Redis(port=port).ping()
            return process, f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not start")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        run_worker(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]))
    else:
        main()
