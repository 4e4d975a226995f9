"""The server's memory under rounds of large inline creates (issue 40: 8 parallel 25 MB `data:` creates,
three rounds, grew a server from 1.56 to 2.79 GB with no plateau).

    python bench/inline_memory.py                       # 3 rounds of 8 creates of about 25 MB each
    python bench/inline_memory.py --rounds 1 --parallel 2 --mb 2 --settle 0   # the smoke the suite runs

A real `ref2img serve` on the tiny model (built here), its RSS read after start, then after each round
once every task of the round has ended and `--settle` seconds have passed. Prints a table and, last, JSON.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def big_data_uri(megabytes: float, seed: int) -> str:
    """A PNG of noise of about `megabytes` as a data URI (noise does not compress)."""
    side = int((megabytes * 2**20 * 3 / 4 / 3) ** 0.5)
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--mb", type=float, default=25.0, help="each create's data URI, in MB")
    parser.add_argument(
        "--settle", type=float, default=12.0, help="seconds after a round's last task before RSS is read"
    )
    args = parser.parse_args()

    from ref2img.auth.keys import create_key
    from ref2img.engines.local.random_models import build_tiny
    from ref2img.tasks.store import Store

    root = Path(tempfile.mkdtemp(prefix="ref2img-inline-memory-"))
    model = build_tiny(root / "tiny", "sd15")
    data_dir, port = root / "data", free_port()
    body_mb = str(int(args.mb * 1.2) + 2)
    command = [
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
        "1",
        "--max-body-mb",
        body_mb,
        "--max-image-mb",
        body_mb,
        "--log-level",
        "warning",
    ]
    with open(root / "server.log", "ab") as log:
        server = subprocess.Popen(command, stdout=log, stderr=log, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).json()["data"]["engine"] == "loaded":
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                time.sleep(0.2)
        store = Store(f"sqlite:///{data_dir / 'ref2img.db'}")
        key = create_key(store)
        store.close()
        token = base64.b64encode(f"{key.app_key}:{key.app_secret}".encode()).decode()
        headers = {"X-App-Key": key.app_key, "Authorization": f"Basic {token}"}
        rss = [psutil.Process(server.pid).memory_info().rss / 2**20]
        done: list[int] = []
        print(f"{'after start':>14}: {rss[0]:8.0f} MB", flush=True)
        for round_index in range(args.rounds):
            task_ids: list[str] = []

            def create(seed: int, task_ids: list[str] = task_ids) -> None:
                body = {
                    "prompt": "noise",
                    "reference_image": big_data_uri(args.mb * 3 / 4, seed),
                    "control_type": "0",
                    "width": 512,
                    "height": 512,
                    "batch_size": 1,
                }
                answer = httpx.post(
                    f"{url}/v1/open/capacity/application/tm_reference_img2img", json=body, headers=headers, timeout=300
                ).json()
                if answer["code"] == 0:
                    task_ids.append(answer["data"]["task_id"])
                else:
                    print(f"refused: {answer['msg'][:120]}", file=sys.stderr)

            threads = [threading.Thread(target=create, args=(round_index * 100 + i,)) for i in range(args.parallel)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for task_id in task_ids:
                while (
                    httpx.post(
                        f"{url}/v1/open/pub/task", json={"task_id": task_id, "wait": 10}, headers=headers, timeout=60
                    ).json()["data"]["status"]
                    < 3
                ):
                    pass
            time.sleep(args.settle)  # a housekeeping round (every 10 s) hands freed pages back
            rss.append(psutil.Process(server.pid).memory_info().rss / 2**20)
            done.append(len(task_ids))
            print(f"{f'after round {round_index + 1}':>14}: {rss[-1]:8.0f} MB ({len(task_ids)} tasks)", flush=True)
    finally:
        server.terminate()
        server.wait(30)
    figures = {
        "rounds": args.rounds,
        "parallel": args.parallel,
        "mb": args.mb,
        "tasks": done,
        "rss_mb": [round(v) for v in rss],
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
