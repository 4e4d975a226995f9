"""Several presets on one server: what switching costs (issue 29).

    python bench/presets.py --arches sd15,sdxl --device cuda --json out/presets.json   # the GPU figures
    python bench/presets.py --smoke                                                    # CPU plumbing, tiny models

Two presets in the server's own EnginePool with `--max-loaded 1`, each task the bench's edge job: the
first task on a cold preset (its load and its run), a second on it (steady), a switch to the other
(the first set aside, the other loaded, run), and a switch back. Set aside is parked on the CPU on a
GPU (`--max-parked`, default 2, as the server's): the switch back moves its weights up rather than
loading them from disk; `--max-parked 0` measures the unload-and-reload path instead (the OS's page
cache warm). On the CPU nothing is parked. Prints a table; `--json FILE` adds the figures to FILE's list
of runs. Not a test: it passes or fails nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import ARCHES, device_name, engine_job, ensure_models, fit, photo

from ref2img.engines.local.presets import resolve_preset
from ref2img.settings import ServerSettings
from ref2img.tasks.execution.engine_pool import EnginePool
from ref2img.tasks.execution.engine_provider import EngineProvider, local_engine_factory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arches", default="sd15,sdxl", help=f"two of {', '.join(ARCHES)}")
    parser.add_argument("--device", default=None)
    parser.add_argument("--steps", type=int, default=None, help="default: each preset's")
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/ref2img-bench-models"))
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU, 2 steps")
    parser.add_argument("--max-parked", type=int, default=2, help="0: unload, never park (the disk path)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    arches = ["tiny", "tiny-sdxl"] if args.smoke else args.arches.split(",")
    device = args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    steps = 2 if args.smoke else args.steps
    folders = {arch: ensure_models(args.models_dir, ARCHES[arch][0], ARCHES[arch][1], device) for arch in arches}
    settings = ServerSettings(data_dir=args.models_dir, device=device)
    providers = {
        resolve_preset(str(folder)).name: EngineProvider(local_engine_factory(settings, str(folder)))
        for folder in folders.values()
    }
    first, other = list(providers)
    pool = EnginePool(providers, first, max_loaded=1, max_parked=args.max_parked)
    sizes = {arch: ARCHES[arch][2] for arch in arches}
    names = dict(zip(arches, providers, strict=True))

    def task(arch: str) -> float:
        started = time.perf_counter()
        spec = {
            "size": sizes[arch],
            "batch": 1,
            "steps": steps or resolve_preset(str(folders[arch])).steps,
            "intensity": 0.5,
            "lever": "exact",
        }
        with pool.using(names[arch]) as engine:
            engine.generate(engine_job(fit(photo(), sizes[arch], sizes[arch]), spec))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return round(time.perf_counter() - started, 3)

    a, b = arches
    figures = {
        "cold_first_task_s": task(a),
        "steady_task_s": task(a),
        "switch_to_other_s": task(b),
        "other_steady_s": task(b),
        "switch_back_s": task(a),
        "back_steady_s": task(a),
    }
    parked = pool.states()[names[b]] == "parked on the CPU"  # b was set aside by the switch back
    report = {
        "setup": {
            "arches": arches,
            "presets": [first, other],
            "device": device_name(device),
            "torch": torch.__version__,
            "max_loaded": 1,
            "max_parked": args.max_parked,
            "parked": parked,
            "run_id": f"{time.time():.6f}",
        },
        "figures": figures,
        "switch_back_over_steady": round(figures["switch_back_s"] / figures["back_steady_s"], 2),
    }
    for name, seconds in figures.items():
        print(f"{name:22} {seconds:8.3f} s")
    back = "from the CPU" if parked else "from disk"
    print(
        f"a switch back {back} costs {report['switch_back_over_steady']}× a steady task "
        f"({a} on {report['setup']['device']})"
    )
    if args.json:
        runs = json.loads(args.json.read_text())["runs"] if args.json.exists() else []
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": [*runs, report]}, indent=1) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
