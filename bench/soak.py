"""Soak: N clients for M minutes against a real `ref2img serve` (tiny random-weight model), with bad
inputs and cancels mixed in and the server SIGKILLed and restarted half-way. It reports what matters
for "nothing accepted is ever lost":

- tasks accepted, and how each ended (succeeded / failed / cancelled / timed out), and lost (must be 0:
  accepted, then never seen to end, or forgotten by the server);
- bad inputs sent, and any that got a 5xx or an answer outside the envelope (must be 0);
- memory (RSS) of the server process, which runs the workers as threads: at warm-up and at the end of
  each of its two lives, so growth under load shows apart from the restart;
- p50/p99 latency of create requests, of long-poll queries (they answer when the status changes or
  after `wait` s) and of tasks from create to their final status.

    python bench/soak.py                           # 8 clients, 10 minutes
    python bench/soak.py --clients 4 --seconds 80  # the short version the test suite runs
    python bench/soak.py --json                    # figures as JSON on the last line

Each client does what the SDK does: create, long-poll until the task ends (cancelling some half-way),
and in between sends a bad request from a fixed list of hostile inputs.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from PIL import Image

CREATE = "/v1/open/capacity/application/tm_reference_img2img"
QUERY = "/v1/open/pub/task"
CANCEL = "/v1/open/pub/task/cancel"
STATUS_NAMES = {3: "succeeded", 4: "failed", 5: "cancelled", 6: "timed out"}


def data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


REFERENCE = data_uri(Image.new("RGB", (96, 64), (30, 110, 200)))


def good_body(rng: random.Random) -> dict:
    return {
        "prompt": "a lighthouse at dusk",
        "reference_image": REFERENCE,
        "control_type": rng.choice("023"),
        "control_intensity": round(rng.uniform(0, 1), 2),
        "width": rng.choice([512, 768, 1024]),
        "height": rng.choice([512, 768]),
        "batch_size": rng.choice([1, 1, 2]),
    }


def bad_requests() -> list[tuple[str, dict | str, int]]:
    """(what, body, the code the answer must carry)."""
    good = {"prompt": "x", "reference_image": REFERENCE, "control_type": "0"}
    tiny = data_uri(Image.new("RGB", (2, 2)))
    return [
        ("width as a string", {**good, "width": "1024"}, 680001),
        ("batch over the range", {**good, "batch_size": 9}, 680001),
        ("unknown control type", {**good, "control_type": "7"}, 680001),
        (
            "NaN intensity",
            f'{{"prompt": "x", "reference_image": "{REFERENCE}", "control_type": "0", "control_intensity": NaN}}',
            680001,
        ),
        ("NUL in the prompt", {**good, "prompt": "a\u0000b"}, 680001),
        ("10,000-character prompt", {**good, "prompt": "y" * 10_000}, 680001),
        ("deep nesting", "[" * 100_000 + "]" * 100_000, 680001),
        ("not JSON", "{prompt: ", 680001),
        ("private image URL", {**good, "reference_image": "http://169.254.169.254/latest"}, 680002),
        ("a 2x2 image", {**good, "reference_image": tiny}, 680003),
        ("private callback", {**good, "callback": "http://127.0.0.1:22/"}, 680001),
    ]


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    accepted: dict[str, float] = field(default_factory=dict)  # task id -> created at
    finals: dict[str, int] = field(default_factory=dict)
    create_ms: list[float] = field(default_factory=list)
    poll_ms: list[float] = field(default_factory=list)  # long polls: they answer when the status changes
    task_s: list[float] = field(default_factory=list)
    bad_sent: int = 0
    bad_misanswered: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    unreachable: int = 0  # requests that met the restart (connection refused or reset)
    busy: int = 0  # 680005 answers (queue full)
    cancels: int = 0


class ServerProcess:
    def __init__(self, model: Path, data_dir: Path, port: int, workers: int):
        self.command = [
            sys.executable,
            "-m",
            "ref2img.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--model",
            str(model),
            "--workers",
            str(workers),
            "--queue-limit",
            "10000",
            "--auth-failure-limit",
            "1000000",
            "--lease",
            "5",
            "--log-level",
            "warning",
        ]
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(data_dir.parent / "soak-server.log", "ab")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command, stdout=self.log, stderr=self.log, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).json()["data"]["engine"] == "loaded":
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise SystemExit("the server did not become ready; see soak-server.log")

    def rss_mb(self) -> float:
        try:
            return psutil.Process(self.process.pid).memory_info().rss / 2**20
        except psutil.Error:
            return float("nan")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
        self.log.close()


def client_loop(index: int, server: ServerProcess, headers: dict, until: float, tally: Tally) -> None:
    rng = random.Random(index)
    bad = bad_requests()
    http = httpx.Client(base_url=server.url, headers=headers, timeout=60)

    def post(path: str, body, timings: list[float] | None = None) -> dict | None:
        """The answer's JSON, or None when the server was away (the restart)."""
        content = body if isinstance(body, str) else json.dumps(body)
        started = time.perf_counter()
        try:
            response = http.post(path, content=content)
        except httpx.TransportError:
            with tally.lock:
                tally.unreachable += 1
            time.sleep(0.5)
            return None
        if timings is not None:
            timings.append((time.perf_counter() - started) * 1000)
        if response.status_code >= 500:
            with tally.lock:
                tally.server_errors.append(f"{path}: HTTP {response.status_code} {response.text[:200]}")
            return None
        try:
            answer = response.json()
        except ValueError:
            with tally.lock:
                tally.server_errors.append(f"{path}: not JSON: {response.text[:200]}")
            return None
        return answer

    while time.monotonic() < until:
        if rng.random() < 0.3:
            what, body, code = rng.choice(bad)
            answer = post(CREATE, body)
            with tally.lock:
                tally.bad_sent += 1
                if answer is not None and answer.get("code") != code:
                    tally.bad_misanswered.append(f"{what}: {answer}")
            continue
        answer = post(CREATE, good_body(rng), tally.create_ms)
        if answer is None:
            continue
        if answer["code"] == 680005:
            with tally.lock:
                tally.busy += 1
            time.sleep(1)
            continue
        if answer["code"] != 0:
            with tally.lock:
                tally.server_errors.append(f"a good create was refused: {answer}")
            continue
        task_id, created = answer["data"]["task_id"], time.monotonic()
        with tally.lock:
            tally.accepted[task_id] = created
        cancel_at = created + rng.uniform(0, 2) if rng.random() < 0.15 else None
        while True:
            if (
                cancel_at is not None
                and time.monotonic() >= cancel_at
                and post(CANCEL, {"task_id": task_id}) is not None
            ):
                cancel_at = None
                with tally.lock:
                    tally.cancels += 1
            answer = post(QUERY, {"task_id": task_id, "wait": 1 if cancel_at else 5}, tally.poll_ms)
            if answer is None:
                if time.monotonic() > until + 300:
                    break
                continue
            if answer["code"] != 0:  # 680004 here means the server forgot an accepted task
                break
            if answer["data"]["status"] in STATUS_NAMES:
                with tally.lock:
                    tally.finals[task_id] = answer["data"]["status"]
                    tally.task_s.append(time.monotonic() - created)
                break
    http.close()


def drain(server: ServerProcess, headers: dict, tally: Tally, timeout_s: float = 300) -> None:
    """After the load: every accepted task the clients did not see end is asked after until it does."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
        for task_id in [t for t in tally.accepted if t not in tally.finals]:
            while time.monotonic() < deadline:
                answer = http.post(QUERY, json={"task_id": task_id, "wait": 10}).json()
                if answer["code"] != 0:
                    break
                if answer["data"]["status"] in STATUS_NAMES:
                    tally.finals[task_id] = answer["data"]["status"]
                    break


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def new_key(data_dir: Path) -> dict[str, str]:
    from ref2img.protocol import basic_token
    from ref2img.auth.keys import create_key
    from ref2img.tasks.store import Store

    store = Store(f"sqlite:///{data_dir / 'ref2img.db'}")
    try:
        key = create_key(store, "soak")
    finally:
        store.close()
    return {
        "X-App-Key": key.app_key,
        "Authorization": basic_token(key.app_key, key.app_secret),
        "Content-Type": "application/json",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--workers", type=int, default=2, help="the server's worker threads")
    parser.add_argument("--model", type=Path, help="a model folder (default: a tiny random-weight one, built here)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on the last line")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="ref2img-soak-"))
    model = args.model
    if model is None:
        from ref2img.engines.local.random_models import build_tiny

        model = build_tiny(root / "tiny", "sd15")
    data_dir = root / "data"
    server = ServerProcess(model, data_dir, free_port(), args.workers)
    server.start()
    headers = new_key(data_dir)
    tally = Tally()
    started = time.monotonic()
    until = started + args.seconds
    clients = [
        threading.Thread(target=client_loop, args=(i, server, headers, until, tally), daemon=True)
        for i in range(args.clients)
    ]
    for client in clients:
        client.start()

    lives: list[dict] = []

    def watch_life(ends_at: float) -> None:
        """RSS after a warm-up (a tenth of the life, 5 s at least, half of it at most), then its peak and
        its last value."""
        life_started = time.monotonic()
        span = ends_at - life_started
        warm_at = life_started + min(max(5.0, span / 10), span / 2)
        samples: list[tuple[float, float]] = []  # (time, RSS MB)
        while True:
            samples.append((time.monotonic(), server.rss_mb()))
            if time.monotonic() >= ends_at:
                break
            time.sleep(0.5)
        warm = next((rss for at, rss in samples if at >= warm_at), samples[-1][1])
        lives.append(
            {
                "seconds": round(span),
                "rss_warm_mb": round(warm),
                "rss_end_mb": round(samples[-1][1]),
                "rss_peak_mb": round(max(rss for _, rss in samples)),
            }
        )

    watch_life(started + args.seconds / 2)
    server.kill()  # SIGKILL mid-run: tasks queued and running at this moment must still end
    killed_at = time.monotonic()
    server.start()
    restart_s = time.monotonic() - killed_at
    watch_life(until)
    for client in clients:
        client.join(timeout=600)
    drain(server, headers, tally)
    server.stop()

    ended = Counter(STATUS_NAMES[status] for status in tally.finals.values())
    lost = [task_id for task_id in tally.accepted if task_id not in tally.finals]
    figures = {
        "clients": args.clients,
        "seconds": args.seconds,
        "workers": args.workers,
        "accepted": len(tally.accepted),
        "ended": dict(ended),
        "lost": len(lost),
        "cancel_requests": tally.cancels,
        "busy_answers": tally.busy,
        "bad_inputs_sent": tally.bad_sent,
        "bad_inputs_misanswered": len(tally.bad_misanswered),
        "server_errors": len(tally.server_errors),
        "unreachable_during_restart": tally.unreachable,
        "restart_s": round(restart_s, 1),
        "lives": lives,
        "create_ms": {
            "p50": round(percentile(tally.create_ms, 50), 1),
            "p99": round(percentile(tally.create_ms, 99), 1),
        },
        "poll_ms": {"p50": round(percentile(tally.poll_ms, 50), 1), "p99": round(percentile(tally.poll_ms, 99), 1)},
        "task_s": {"p50": round(percentile(tally.task_s, 50), 2), "p99": round(percentile(tally.task_s, 99), 2)},
    }
    print(
        f"soak: {args.clients} clients, {args.seconds:.0f} s, server SIGKILLed and restarted at half-time "
        f"(back in {restart_s:.1f} s)"
    )
    print(f"  accepted {figures['accepted']}  ended {dict(ended)}  LOST {len(lost)}")
    print(
        f"  bad inputs {tally.bad_sent} (misanswered {len(tally.bad_misanswered)})  5xx/non-envelope "
        f"{len(tally.server_errors)}  busy {tally.busy}  unreachable during restart {tally.unreachable}"
    )
    for number, life in enumerate(lives, 1):
        print(
            f"  server life {number}: {life['seconds']} s, RSS {life['rss_warm_mb']} MB after warm-up -> "
            f"{life['rss_end_mb']} MB at the end (peak {life['rss_peak_mb']} MB)"
        )
    print(
        f"  create p50 {figures['create_ms']['p50']} ms p99 {figures['create_ms']['p99']} ms; "
        f"long-poll p50 {figures['poll_ms']['p50']} ms p99 {figures['poll_ms']['p99']} ms; "
        f"task p50 {figures['task_s']['p50']} s p99 {figures['task_s']['p99']} s"
    )
    for problem in (tally.server_errors + tally.bad_misanswered)[:10]:
        print(f"  ! {problem}")
    for task_id in lost[:10]:
        print(f"  ! lost {task_id}")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
