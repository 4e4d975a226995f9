"""Every mode on one device: subject, edge, pose and depth, each with and without an init image.

    python bench/modes.py --model DIR [--model DIR2] [--device cuda] [--dtype bfloat16] --json out.json
    python bench/modes.py --model DIR --offload auto --memory-cap-gib 24     # every mode on a 24 GB card

For each model folder (or preset): load the engine, run every job at a size that is not square and not
a multiple of 64, and check what a GPU-only bug would break: the run ends without error, the images
have exactly the requested size, and every module is in the chosen dtype (the depth annotator runs in
float32 by design). On a GPU each job also reports its peak memory. Prints one line per job; --json FILE
writes them. Exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from ref2img.engines.base import EngineOptionError, Job
from ref2img.engines.local import LocalEngine
from ref2img.engines.local.offload import cap_process_memory
from ref2img.protocol import ControlType

WIDTH, HEIGHT = 1000, 600
JOBS = [
    (mode, with_init)
    for mode in (ControlType.SUBJECT, ControlType.EDGE, ControlType.POSE, ControlType.DEPTH)
    for with_init in (False, True)
]
ANNOTATOR_DTYPES = {"depth_estimator": "float32"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="model folder or preset (repeatable)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--offload", default="none", help="none|model|sequential|auto")
    parser.add_argument(
        "--memory-cap-gib", type=float, default=None, help="cap this process's GPU memory, as on a smaller card"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(format="  %(message)s")
    logging.getLogger("ref2img.engine").setLevel(logging.INFO)  # what it loads, shares and offloads
    from PIL import Image
    from skimage import data

    reference, init = Image.fromarray(data.astronaut()), Image.fromarray(data.coffee())
    report = {
        "setup": {
            "device": args.device,
            "dtype": args.dtype,
            "steps": args.steps,
            "size": [WIDTH, HEIGHT],
            "offload": args.offload,
            "memory_cap_gib": args.memory_cap_gib,
        },
        "jobs": [],
    }
    for model in args.model:
        started = time.perf_counter()
        engine = LocalEngine(model, device=args.device, dtype=args.dtype, offload=args.offload)
        if args.memory_cap_gib and engine.placement.device.type == "cuda":  # before the load weighs what is free
            cap_process_memory(engine.placement.device, args.memory_cap_gib)
        engine.load()
        chosen = engine.placement.dtype_name
        print(
            f"{model}: {engine.placement.device} {chosen}, offload {engine.pipelines.offload}, "
            f"loaded in {time.perf_counter() - started:.1f} s"
        )
        for mode, with_init in JOBS:
            report["jobs"].append(run_job(engine, model, chosen, mode, reference, init if with_init else None, args))
            print("  " + json.dumps(report["jobs"][-1]), flush=True)
        del engine
    report["ok"] = all(job["ok"] for job in report["jobs"]) and any("refused" not in job for job in report["jobs"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    print("every mode ran, exact sizes, dtypes as chosen" if report["ok"] else "FAILED: see the lines above")
    sys.exit(0 if report["ok"] else 1)


def run_job(engine: LocalEngine, model: str, chosen: str, mode: ControlType, reference, init, args) -> dict:
    job = Job.for_images(
        prompt="an astronaut on mars",
        control_type=mode,
        reference=reference,
        seed=5,
        width=WIDTH,
        height=HEIGHT,
        batch_size=2,
        init_image=init,
        steps=args.steps,
    )
    entry = {"model": model, "mode": mode.name.lower(), "init_image": init is not None}
    on_gpu = engine.placement.device.type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(engine.placement.device)
    started = time.perf_counter()
    try:
        images = engine.generate(job)
    except EngineOptionError as exc:  # a mode the preset's family does not offer (yet): said, not failed
        return {**entry, "ok": True, "refused": str(exc)[:300]}
    except Exception as exc:  # noqa: BLE001 - the report names it; the other jobs still run
        traceback.print_exc()
        return {**entry, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    entry["seconds"] = round(time.perf_counter() - started, 2)
    if on_gpu:
        entry["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(engine.placement.device) / 2**30, 2)
    entry["sizes"] = sorted({image.size for image in images})
    dtypes = engine.component_dtypes()
    entry["off_dtype"] = {name: dtype for name, dtype in dtypes.items() if dtype != ANNOTATOR_DTYPES.get(name, chosen)}
    entry["ok"] = entry["sizes"] == [(WIDTH, HEIGHT)] and len(images) == 2 and not entry["off_dtype"]
    return entry


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
