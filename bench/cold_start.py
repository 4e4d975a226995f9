"""Cold start: seconds from `ref2img serve` starting to its first finished image, then again after a restart.

    python bench/cold_start.py --model DIR --compile regional --json out.json        # GPU
    python bench/cold_start.py --model DIR --compile none --steps 2 --size 512       # CPU smoke

The first life starts with an empty compile cache (its own temp folder, as on a new machine); the
restart reuses it, as a restarted server or worker does ($REF2IMG_COMPILE_CACHE). Each life: start the
server process, wait for /healthz, create one edge-mode task through the SDK, wait for it to end; then
three tasks at another size (--new-size), timed each: what a request of a size never seen before waits
(a compile, or none under --compile-after) against that size's steady time; stop the server. Prints a
table; --json FILE writes the figures. Not a test: it passes or fails nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="preset, model folder or preset file")
    parser.add_argument("--compile", default="regional", choices=["none", "regional", "full"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=None, help="default: the preset's")
    parser.add_argument("--compile-after", type=int, default=1, help="the server's --compile-after")
    parser.add_argument("--new-size", default="768x1344", help="WxH of the later tasks (a shape not seen yet)")
    parser.add_argument("--lives", type=int, default=2, help="server starts: the first cold, the rest warm")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a life may take")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    report = {
        "setup": {
            "model": args.model,
            "compile": args.compile,
            "compile_after": args.compile_after,
            "size": args.size,
            "new_size": args.new_size,
            "steps": args.steps,
            "device": args.device or "default",
        },
        "lives": [],
    }
    with tempfile.TemporaryDirectory(prefix="ref2img-cold-") as scratch:
        data_dir, cache = Path(scratch) / "data", Path(scratch) / "compile-cache"
        app_key, app_secret = create_key(data_dir)
        for life in range(args.lives):
            figures = one_life(args, data_dir, cache, app_key, app_secret)
            figures["life"] = "first start" if life == 0 else "restart"
            report["lives"].append(figures)
            print(f"  {figures['life']}: {figures}", file=sys.stderr, flush=True)
            if args.json:
                args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(
        f"cold start of `ref2img serve --compile {args.compile} --compile-after {args.compile_after}` "
        f"({args.model}, {args.size}², then {args.new_size}; steps {args.steps or 'preset'})"
    )
    for figures in report["lives"]:
        print(
            f"{figures['life']:12} up {figures.get('server_up_s')} s, first image "
            f"{figures.get('first_image_s', figures.get('error'))} s, {args.new_size}: "
            f"{figures.get('new_size_s')} s (worst {figures.get('worst_vs_steady')}× steady), compile cache "
            f"{figures.get('cache_mib_after')} MiB"
        )


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ref2img.cli", *args]


def create_key(data_dir: Path) -> tuple[str, str]:
    made = subprocess.run(
        cli("keys", "create", "--data-dir", str(data_dir), "--json"),
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    key = json.loads(made.stdout)
    return key["app_key"], key["app_secret"]


def one_life(args, data_dir: Path, cache: Path, app_key: str, app_secret: str) -> dict:
    from PIL import Image
    from skimage import data

    from ref2img import Client

    port = free_port()
    command = cli(
        "serve",
        "--model",
        args.model,
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--compile",
        args.compile,
        "--compile-after",
        str(args.compile_after),
        "--log-level",
        "warning",
    )
    if args.device:
        command += ["--device", args.device]
    if args.steps:
        command += ["--part", f"steps={args.steps}"]
    env = {**os.environ, "REF2IMG_COMPILE_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # the server's own cache folder is what is measured
    started = time.perf_counter()
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base_url = f"http://127.0.0.1:{port}"
    figures: dict = {}
    try:
        figures["server_up_s"] = round(wait_for_health(base_url, server, args.timeout) - started, 2)
        reference = Image.fromarray(data.astronaut())
        with Client(app_key, app_secret, base_url=base_url) as client:
            task = client.generate(
                "an astronaut on mars",
                reference,
                "edge",
                width=args.size,
                height=args.size,
                seed=1,
                timeout=args.timeout,
            )
            figures["first_image_s"] = round(time.perf_counter() - started, 2)
            figures["images"] = len(task.images)
            width, height = (int(side) for side in args.new_size.lower().split("x"))
            figures["new_size_s"] = []
            for _ in range(3):  # unseen, seen once, steady
                began = time.perf_counter()
                client.generate(
                    "an astronaut on mars", reference, "edge", width=width, height=height, seed=2, timeout=args.timeout
                )
                figures["new_size_s"].append(round(time.perf_counter() - began, 2))
            figures["worst_vs_steady"] = round(max(figures["new_size_s"][:2]) / figures["new_size_s"][2], 2)
    except Exception as exc:  # noqa: BLE001 - a failed life is a figure too
        figures["error"] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            _, stderr = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            _, stderr = server.communicate()
        if "error" in figures:
            figures["server_log_tail"] = stderr[-1500:]
    figures["cache_mib_after"] = (
        round(sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20, 1) if cache.exists() else 0.0
    )
    return figures


def wait_for_health(base_url: str, server: subprocess.Popen, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return time.perf_counter()
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError("the server did not answer /healthz")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    main()
