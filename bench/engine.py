"""Engine speed: seconds per image and per step, peak memory — ref2img's engine against a plain
diffusers pipeline in the same run, on the same random-weight models (speed does not depend on
weight values, so no download is needed).

    python bench/engine.py --arch tiny                               # CPU smoke run, seconds
    python bench/engine.py --arch sd15 --size 512 --steps 25         # real SD1.5 shapes
    python bench/engine.py --arch sdxl --size 1024 --steps 30 --batch 2 --compile   # on a GPU

Baseline = what the diffusers docs show: `from_pretrained(..., dtype=float16)` on CUDA (float32 on CPU),
`.to(device)`, one call with `num_images_per_prompt`. Ours = `LocalEngine` (bf16 on CUDA, channels-last,
optional `torch.compile`). Edge mode (Canny ControlNet, union ControlNet for SDXL), no init image.
Prints a table and, with --json, one JSON object. Not a test: it passes or fails nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from ref2img.engines.base import Job
from ref2img.engines.local import LocalEngine
from ref2img.engines.local.annotators import canny_map
from ref2img.engines.local.presets import resolve_preset
from ref2img.engines.local.random_models import build_random
from ref2img.engines.local.sizing import fit, generation_size
from ref2img.protocol import ControlType

PROMPT = "an astronaut riding a horse on mars, detailed, film photo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["tiny", "sd15", "sdxl"], default="tiny")
    parser.add_argument("--size", type=int, default=None, help="square output side (default: 512 sd15/tiny, 1024 sdxl)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (ours only)")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/ref2img-bench-models"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import diffusers

    diffusers.utils.logging.set_verbosity_error()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    family, scale = ("sd15", "tiny") if args.arch == "tiny" else (args.arch, "full")
    size = args.size or (1024 if args.arch == "sdxl" else 512)
    folder = args.models_dir / f"{family}-{scale}"
    if not (folder / "ref2img-preset.json").exists():
        started = time.perf_counter()
        build_random(folder, family, scale, dtype=torch.float16 if device.type == "cuda" else torch.float32)
        print(f"built random {family} ({scale}) models in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    preset = resolve_preset(str(folder))
    steps = args.steps or preset.steps
    reference = fit(_photo(), size, size)
    # The baseline runs at the size our engine generates at (the same as `size` for the real shapes;
    # the tiny preset generates small, then resizes).
    model_size = generation_size(size, size, preset.max_pixels, preset.size_multiple)

    results = {}
    if not args.no_baseline:
        results["diffusers"] = _bench_baseline(preset, device, fit(reference, *model_size), steps, args)
    results["ref2img"] = _bench_engine(str(folder), device, reference, size, steps, args)
    if "diffusers" in results:
        results["speedup"] = round(results["ref2img"]["images_per_s"] / results["diffusers"]["images_per_s"], 3)
    results["setup"] = {"arch": args.arch, "size": size, "model_size": model_size, "steps": steps, "batch": args.batch, "runs": args.runs,
                        "compile": args.compile, "device": _device_name(device), "torch": torch.__version__}
    _report(results, args.json)


def _photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def _timed_runs(call, runs: int, device: torch.device) -> tuple[list[float], float]:
    call()  # warm-up: kernels, allocator, compilation
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return times, peak / 2**30


def _figures(times: list[float], peak_gib: float, batch: int, steps: int) -> dict:
    median = statistics.median(times)
    return {"s_per_call": round(median, 4), "s_per_image": round(median / batch, 4),
            "s_per_step": round(median / steps, 4), "images_per_s": round(batch / median, 4),
            "peak_memory_gib": round(peak_gib, 2)}


def _bench_baseline(preset, device, reference, steps, args) -> dict:
    import diffusers

    from ref2img.engines.local.hub import folder_of

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    key, ref = preset.controlnet_for(ControlType.EDGE)
    union = key == "union"
    net_cls = diffusers.ControlNetUnionModel if union else diffusers.ControlNetModel
    controlnet = net_cls.from_pretrained(folder_of(ref, "controlnet", preset), dtype=dtype)
    pipe_cls = {("sd15", False): diffusers.StableDiffusionControlNetPipeline,
                ("sdxl", False): diffusers.StableDiffusionXLControlNetPipeline,
                ("sdxl", True): diffusers.StableDiffusionXLControlNetUnionPipeline}[(preset.family, union)]
    extra = {"safety_checker": None, "requires_safety_checker": False} if preset.family == "sd15" else {}
    pipe = pipe_cls.from_pretrained(folder_of(preset.base, "base", preset), controlnet=controlnet, dtype=dtype,
                                    **extra).to(device)
    pipe.set_progress_bar_config(disable=True)
    control = canny_map(reference)
    kwargs = {"control_image": [control], "control_mode": [3]} if union else {"image": control}

    def call():
        pipe(PROMPT, num_inference_steps=steps, num_images_per_prompt=args.batch,
             width=reference.width, height=reference.height,
             generator=torch.Generator("cpu").manual_seed(0), **kwargs)

    times, peak = _timed_runs(call, args.runs, device)
    del pipe, controlnet
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return _figures(times, peak, args.batch, steps) | {"dtype": str(dtype).removeprefix("torch.")}


def _bench_engine(model, device, reference, size, steps, args) -> dict:
    engine = LocalEngine(model, device=str(device), compile_unet=args.compile).load()
    job = Job(prompt=PROMPT, control_type=ControlType.EDGE, reference=reference, seed=0, width=size, height=size,
              batch_size=args.batch, steps=steps)
    times, peak = _timed_runs(lambda: engine.generate(job), args.runs, device)
    return _figures(times, peak, args.batch, steps) | {"dtype": str(engine.placement.dtype).removeprefix("torch.")}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _report(results: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(results))
        return
    setup = results["setup"]
    print(f"{setup['arch']} {setup['size']}² steps={setup['steps']} batch={setup['batch']} "
          f"compile={setup['compile']} on {setup['device']}, torch {setup['torch']}")
    print(f"{'':10} {'dtype':8} {'s/image':>9} {'s/step':>9} {'images/s':>9} {'peak GiB':>9}")
    for name in ("diffusers", "ref2img"):
        if name in results:
            r = results[name]
            print(f"{name:10} {r['dtype']:8} {r['s_per_image']:>9} {r['s_per_step']:>9} "
                  f"{r['images_per_s']:>9} {r['peak_memory_gib']:>9}")
    if "speedup" in results:
        print(f"ref2img / diffusers images/s: {results['speedup']}x")


if __name__ == "__main__":
    main()
