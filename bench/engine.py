"""Engine speed: each speed lever on its own against a plain diffusers pipeline, in the same run.

    python bench/engine.py --arch tiny --levers off,skip-idle-controlnet --runs 1     # CPU smoke, seconds
    python bench/engine.py --arch sdxl --batches 1,4                                 # the GPU table
    python bench/engine.py --arch sd15 --levers off,all
    python bench/engine.py --arch sdxl --levers off,controls-1,controls-2,controls-3 --no-baseline   # 1, 2, 3 controls
    python bench/engine.py --arch sdxl --offload model --memory-cap-gib 8 --levers off --no-baseline
    python bench/engine.py --arch zimage --mode subject --levers off,compile-regional    # FLUX.2 klein's subject mode

Models: random weights with the real architectures, built once into --models-dir (speed does not
depend on weight values, so nothing is downloaded). Job: edge mode, intensity 0.5, no init image;
`--mode subject` times the subject model instead (zimage: FLUX.2 klein, 4 steps, against plain
`Flux2KleinPipeline` with the reference as its reference image).

- `diffusers`: what its docs show: `from_pretrained(..., dtype=float16)` on CUDA (float32 on CPU),
  `.to(device)`, one call with `num_images_per_prompt` and the same ControlNet knobs as ours.
- `off`: `LocalEngine` with every lever off (placement dtype, bf16 on CUDA).
- one row per lever (`LEVERS`), each alone on top of `off`; `all` is the engine's default set plus
  the compile and fusion levers.

Each row runs in its own process (global inductor settings, compile caches and peak memory stay
apart). The drift of a row is the max and mean absolute pixel difference from `off`'s images on the
same seeds. The first `--batches` entry runs every lever; later ones run `diffusers`, `off`, `all`.
Prints a table; `--json FILE` adds every figure to FILE's list of runs. Not a test: it passes or
fails nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ref2img.engines.base import IN_MEMORY, Job
from ref2img.engines.local import LocalEngine, Speedups
from ref2img.engines.local.annotators import canny_map
from ref2img.engines.local.intensity import knobs_for
from ref2img.engines.local.offload import cap_process_memory
from ref2img.engines.local.presets import resolve_preset
from ref2img.engines.local.families import family_named
from ref2img.engines.local.families.klein import STEPS as KLEIN_STEPS
from ref2img.engines.local.sizing import fit, generation_size
from ref2img.protocol import ControlType

PROMPT = "an astronaut riding a horse on mars, detailed, film photo"
# Mean absolute difference from `off`, in 8-bit levels, under which a numerics-only lever passes.
DRIFT_TOLERANCE_MEAN = 2.0

# arch → (family, scale, default size, preset overrides)
ARCHES = {
    "tiny": ("sd15", "tiny", 512, {}),
    "tiny-sdxl": ("sdxl", "tiny", 512, {}),
    "sd15": ("sd15", "full", 512, {}),
    "sdxl": ("sdxl", "full", 1024, {}),
    # sdxl-fast's shape: 8 steps of trailing Euler, no classifier-free guidance (its LoRA is fused at load).
    "sdxl-fast": ("sdxl", "full", 1024, {"steps": "8", "guidance_scale": "1.0", "scheduler": "euler-trailing"}),
    # Z-Image-Turbo's shape (8 steps, no CFG) with the Fun ControlNet Union: the diffusion transformer family.
    "tiny-zimage": ("zimage", "tiny", 512, {}),
    "zimage": ("zimage", "full", 1024, {}),
}

MODES = ("edge", "subject")
# Every lever off, the exact ones too: the reference the others' drift is measured from.
OFF = Speedups(
    skip_idle_controlnet=False,
    channels_last=False,
    cache_condition=False,
    cache_prompts=False,
    decode_on_device=False,
    preprocess_on_device=False,
)
ALL = Speedups(fuse_qkv=True, compile="regional", compile_convs=True)  # the engine's defaults + compile + fusion
LEVERS: dict[str, Speedups] = {
    "off": OFF,
    "skip-idle-controlnet": replace(OFF, skip_idle_controlnet=True),
    "cache-condition": replace(OFF, cache_condition=True),
    "cache-prompts": replace(OFF, cache_prompts=True),
    "decode-on-device": replace(OFF, decode_on_device=True),
    "preprocess-on-device": replace(OFF, preprocess_on_device=True),
    "exact": Speedups(channels_last=False),  # every exact lever together (the engine's defaults less channels-last)
    "channels-last": replace(OFF, channels_last=True),
    "fuse-qkv": replace(OFF, fuse_qkv=True),
    "compile-regional": replace(OFF, compile="regional"),
    "compile-convs": replace(OFF, compile="regional", compile_convs=True),
    "compile-full": replace(OFF, compile="full"),  # the whole UNet and the whole ControlNet
    "cuda-graphs": replace(OFF, compile="full", compile_mode="reduce-overhead"),
    "inductor-tuning": replace(OFF, compile="regional", inductor_tuning=True),
    "fp8": replace(OFF, compile="regional", fp8=True),
    "all": ALL,
    "all-fp8": replace(ALL, fp8=True),
    "all-graphs": replace(ALL, compile="full", compile_mode="reduce-overhead", compile_convs=False),
    # The output-changing levers (--approximate), each alone on top of the exact ones they need.
    "controlnet-cond-only": replace(OFF, approximate=frozenset({"controlnet-cond-only"})),
    "cfg-cut": replace(OFF, skip_idle_controlnet=True, approximate=frozenset({"cfg-cut"})),
    # First Block Cache on the diffusion transformer (zimage): alone, and on top of `all`.
    "step-cache": replace(OFF, approximate=frozenset({"step-cache"})),
    "all-step-cache": replace(ALL, approximate=frozenset({"step-cache"})),
    # `off` plus a step preview rendered after every step: the upper bound of what the studio's previews
    # cost (the runner renders at most two a second).
    "previews": OFF,
    # The cost of several controls at once (`controls`): the engine's defaults, with 1, 2 and 3 ready maps
    # (edge, depth, pose) in one union ControlNet pass (SD1.5: one net each), against the same job's
    # single control in the same run.
    "controls-1": Speedups(),
    "controls-2": Speedups(),
    "controls-3": Speedups(),
    # A request's LoRA (`loras`): the engine's defaults with a random rank-16 attention LoRA active, against
    # `exact` in the same run (its step cost: PEFT adapters, not fused).
    "lora": Speedups(),
}
CONTROL_ROWS = {"controls-1": 1, "controls-2": 2, "controls-3": 3}
LORA_NAME = "bench"
DEFAULT_LEVERS = (
    "off",
    "skip-idle-controlnet",
    "cache-condition",
    "cache-prompts",
    "decode-on-device",
    "preprocess-on-device",
    "exact",
    "channels-last",
    "fuse-qkv",
    "compile-regional",
    "compile-convs",
    "cuda-graphs",
    "inductor-tuning",
    "fp8",
    "all",
    "all-fp8",
    "controlnet-cond-only",
    "cfg-cut",
)
# What a lever may do to the images (issue 24's three classes): "exact" must give 0/0; "numerics" (other
# kernels, other rounding) mean ≤ 2 levels and PSNR ≥ 38 dB; "output-changing" is reported, never a default.
EXACT = (
    "off",
    "skip-idle-controlnet",
    "cache-condition",
    "cache-prompts",
    "decode-on-device",
    "preprocess-on-device",
    "exact",
    "previews",
)
OUTPUT_CHANGING = (
    "controlnet-cond-only",
    "cfg-cut",
    "step-cache",
    "all-step-cache",
    "controls-2",
    "controls-3",
    "lora",
)  # another image on purpose
NUMERICS_PSNR_MIN = 38.0
# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOPS), for each row's share of the peak;
# --peak-tflops names another device's.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 80GB HBM3": 989.4, "H100 SXM": 989.4, "H100 PCIe": 756.0}


def drift_class(lever: str) -> str:
    if lever in EXACT:
        return "exact"
    return "output-changing" if lever in OUTPUT_CHANGING else "numerics"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=list(ARCHES), default="tiny")
    parser.add_argument("--size", type=int, default=None, help="square output side (default: 512 sd15/tiny, 1024 sdxl)")
    parser.add_argument("--steps", type=int, default=None, help="default: the preset's (30 sdxl, 25 sd15, 8 sdxl-fast)")
    parser.add_argument("--batches", default="1", help="comma-separated batch sizes, e.g. 1,4")
    parser.add_argument("--levers", default=",".join(DEFAULT_LEVERS), help=f"from {', '.join(LEVERS)}")
    parser.add_argument("--intensity", type=float, default=0.5)
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="edge",
        help="edge (the ControlNet path; pose and depth run the same), or subject (zimage only)",
    )
    parser.add_argument("--runs", type=int, default=3, help="timed calls per row, after one warm-up call")
    parser.add_argument("--device", default=None)
    parser.add_argument("--offload", default="none", help="none|model|sequential|auto (our rows)")
    parser.add_argument(
        "--memory-cap-gib",
        type=float,
        default=None,
        help="cap this process's GPU memory (set_per_process_memory_fraction), as on a small GPU",
    )
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--row-timeout", type=float, default=900, help="seconds before a row is given up")
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/ref2img-bench-models"))
    parser.add_argument(
        "--json", type=Path, default=None, help="add this run's figures to FILE (a list of runs, one per invocation)"
    )
    parser.add_argument(
        "--profile",
        default="",
        help="comma-separated rows to trace with torch.profiler (one timed call each), e.g. all",
    )
    parser.add_argument(
        "--profile-dir",
        type=Path,
        default=None,
        help="where the traces go (default: beside --json; summaries are always in the JSON)",
    )
    parser.add_argument("--no-flops", action="store_true", help="skip counting the job's FLOPs")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (default: known for H100/H200)"
    )
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one row in this process
    args = parser.parse_args()
    if args.row:
        print(json.dumps(run_row(json.loads(args.row))))
        return

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    family, scale, default_size, overrides = ARCHES[args.arch]
    folder = ensure_models(args.models_dir, family, scale, device)
    preset = resolve_preset(str(folder), overrides)
    if args.mode == "subject" and family != "zimage":
        parser.error(
            "--mode subject: only the zimage arches (FLUX.2 klein); the UNet families' subject mode is "
            "IP-Adapter, which plain diffusers has no one-call pipeline to compare with"
        )
    size = args.size or default_size
    steps = args.steps or (KLEIN_STEPS if args.mode == "subject" else preset.steps)
    setup = {
        "arch": args.arch,
        "mode": args.mode,
        "size": size,
        "model_size": generation_size(size, size, preset.max_pixels, preset.size_multiple),
        "steps": steps,
        "intensity": args.intensity,
        "runs": args.runs,
        "offload": args.offload,
        "memory_cap_gib": args.memory_cap_gib,
        "device": device_name(device),
        "torch": torch.__version__,
        "drift_tolerance_mean": DRIFT_TOLERANCE_MEAN,
        "numerics_psnr_min": NUMERICS_PSNR_MIN,
        "peak_tflops": args.peak_tflops or peak_tflops(device),
        "batches": args.batches,
        "run_id": f"{time.time():.6f}",
    }
    batches = [int(b) for b in args.batches.split(",")]
    levers = [name.strip() for name in args.levers.split(",") if name.strip()]
    unknown = set(levers) - set(LEVERS)
    if unknown:
        parser.error(f"--levers: unknown {sorted(unknown)}; choose from {', '.join(LEVERS)}")

    profiled = {name.strip() for name in args.profile.split(",") if name.strip()}
    profile_dir = args.profile_dir or (args.json.parent / "traces" if args.json else None)
    report = {"setup": setup, "rows": [], "flops": {}}
    with tempfile.TemporaryDirectory(prefix="ref2img-bench-") as scratch:
        for index, batch in enumerate(batches):
            names = levers if index == 0 else [name for name in ("off", "all") if name in levers] or levers
            rows = [] if args.no_flops else [("flops", "flops")]
            rows += [] if args.no_baseline else [("diffusers", "diffusers")]
            rows += [("ref2img", name) for name in names]
            for kind, name in rows:
                spec = {
                    "kind": kind,
                    "lever": name,
                    "batch": batch,
                    "folder": str(folder),
                    "overrides": overrides,
                    "mode": args.mode,
                    "size": size,
                    "steps": setup["steps"],
                    "intensity": args.intensity,
                    "runs": args.runs,
                    "device": device,
                    "offload": args.offload,
                    "memory_cap_gib": args.memory_cap_gib,
                    "images": str(Path(scratch) / f"b{batch}-{name}"),
                    "compile_cache": str(Path(scratch) / f"cache-{batch}-{name}"),
                    "profile": str(profile_dir / f"b{batch}-{name}") if name in profiled and profile_dir else None,
                }
                row = run_in_subprocess(spec, args.row_timeout)
                if kind == "flops":
                    report["flops"][str(batch)] = row
                    print(
                        f"  b{batch} flops: {row.get('tflop_engine', row.get('error'))} TFLOP (engine), "
                        f"{row.get('tflop_plain', '')} TFLOP (every ControlNet step)",
                        file=sys.stderr,
                        flush=True,
                    )
                    continue
                report["rows"].append(row)
                print(f"  {row_line(row)}", file=sys.stderr, flush=True)
                add_ratios(report)  # drift reads the images, which live as long as `scratch`
                if args.json:  # after every row: a run cut short still leaves its figures
                    write_json(report, args.json)
    print_table(report)


def write_json(report: dict, path: Path) -> None:
    """Write this run into `path` as one entry of its "runs": several invocations share one file
    (the device tool brings back 8 files at most)."""
    public = {**report, "rows": [{k: v for k, v in row.items() if k != "images"} for row in report["rows"]]}
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(path.read_text())["runs"] if path.exists() else []
    runs = [run for run in runs if run["setup"]["run_id"] != report["setup"]["run_id"]] + [public]
    path.write_text(json.dumps({"runs": runs}, indent=1) + "\n")


# -- one row -------------------------------------------------------------------------------------
def run_in_subprocess(spec: dict, timeout: float) -> dict:
    command = [sys.executable, __file__, "--row", json.dumps(spec)]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**_row_name(spec), "error": f"did not finish in {timeout:.0f} s"}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
        return {**_row_name(spec), "error": tail, "wall_s": round(time.perf_counter() - started, 1)}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _row_name(spec: dict) -> dict:
    return {"kind": spec["kind"], "lever": spec["lever"], "batch": spec["batch"], "images": spec["images"]}


def run_row(spec: dict) -> dict:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    device = torch.device(spec["device"])
    if spec.get("memory_cap_gib") and device.type == "cuda":
        cap_process_memory(device, spec["memory_cap_gib"])
    started = time.perf_counter()
    preset = resolve_preset(spec["folder"], spec["overrides"])
    size = spec["size"]
    reference = fit(photo(), size, size)
    if spec["kind"] == "flops":
        return count_flops(preset, reference, spec)
    if spec["kind"] == "diffusers":
        call, dtype = baseline_call(preset, device, reference, spec)
        extra = {}
    else:
        lora_dirs = (str(ensure_lora(Path(spec["folder"]))),) if spec["lever"] == "lora" else ()
        engine = LocalEngine(
            preset,
            device=spec["device"],
            offload=spec["offload"],
            speedups=LEVERS[spec["lever"]],
            compile_cache=spec["compile_cache"],
            lora_dirs=lora_dirs,
        ).load()
        job = engine_job(reference, spec)
        on_preview = (lambda done, total, render: render()) if spec["lever"] == "previews" else None
        call, dtype = (lambda: engine.generate(job, on_preview=on_preview)), engine.placement.dtype_name
        extra = {"dtypes": None, "offload": engine.pipelines.offload}
    loaded = time.perf_counter()
    first_images = call()
    first_call = time.perf_counter()
    times, peak = timed_runs(call, spec["runs"], device)
    if spec["kind"] == "ref2img":
        extra["dtypes"] = engine.component_dtypes()
        extra["ignored"] = engine.last_ignored
    if spec.get("profile"):
        extra["profile"] = profile_call(call, device, Path(spec["profile"]), spec["steps"])
    save_images(first_images, Path(spec["images"]))
    median = statistics.median(times)
    return {
        **_row_name(spec),
        "dtype": dtype,
        "load_s": round(loaded - started, 2),
        "first_call_s": round(first_call - loaded, 2),
        "s_per_call": round(median, 4),
        "s_per_image": round(median / spec["batch"], 4),
        "s_per_step": round(median / spec["steps"], 4),
        "images_per_s": round(spec["batch"] / median, 4),
        "peak_memory_gib": round(peak, 2),
        **extra,
    }


def baseline_call(preset, device: torch.device, reference: Image.Image, spec: dict):
    """The plain diffusers pipeline for the same job: what a user writes from the docs."""
    import diffusers

    from ref2img.engines.local.hub import folder_of

    if spec.get("mode") == "subject":
        return klein_baseline_call(preset, device, reference, spec)
    if preset.family == "zimage":
        return zimage_baseline_call(preset, device, reference, spec)

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    key, ref = preset.controlnet_for(ControlType.EDGE)
    union = key == "union"
    net_cls = diffusers.ControlNetUnionModel if union else diffusers.ControlNetModel
    controlnet = net_cls.from_pretrained(folder_of(ref, "controlnet", preset), dtype=dtype)
    pipe_cls = (
        diffusers.StableDiffusionXLControlNetUnionPipeline
        if union
        else (
            diffusers.StableDiffusionXLControlNetPipeline
            if preset.family == "sdxl"
            else diffusers.StableDiffusionControlNetPipeline
        )
    )
    # sd15: no safety checker; sdxl: no diffusers watermark (the engine marks its results itself, after it)
    extra = (
        {"safety_checker": None, "requires_safety_checker": False}
        if preset.family == "sd15"
        else {"add_watermarker": False}
    )
    pipe = pipe_cls.from_pretrained(
        folder_of(preset.base, "base", preset), controlnet=controlnet, dtype=dtype, **extra
    ).to(device)
    if preset.scheduler == "euler-trailing":
        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(
            pipe.scheduler.config, timestep_spacing="trailing"
        )
    pipe.set_progress_bar_config(disable=True)
    width, height = generation_size(spec["size"], spec["size"], preset.max_pixels, preset.size_multiple)
    control = canny_map(fit(reference, width, height))
    knobs = knobs_for(ControlType.EDGE, spec["intensity"], False, preset.controlnet_scale_max)
    control_kwargs = {"control_image": [control], "control_mode": [3]} if union else {"image": control}
    batch = spec["batch"]

    def call():
        return pipe(
            PROMPT,
            num_inference_steps=spec["steps"],
            num_images_per_prompt=batch,
            width=width,
            height=height,
            guidance_scale=preset.guidance_scale,
            controlnet_conditioning_scale=knobs.controlnet_scale,
            control_guidance_end=knobs.control_guidance_end,
            generator=[torch.Generator("cpu").manual_seed(i) for i in range(batch)],
            **control_kwargs,
        ).images

    return call, str(dtype).removeprefix("torch.")


def zimage_baseline_call(preset, device: torch.device, reference: Image.Image, spec: dict):
    """ZImageControlNetPipeline as diffusers' own example writes it: the one-file ControlNet through
    `from_single_file`, bf16 on a GPU, 8 steps without CFG."""
    import diffusers

    from ref2img.engines.local.hub import folder_of, locate

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    _, ref = preset.controlnet_for(ControlType.EDGE)
    config = str(folder_of(preset.extra["controlnet_config"], "extra.controlnet_config", preset))
    controlnet = diffusers.ZImageControlNetModel.from_single_file(
        str(locate(ref, "controlnet", preset)), config=config, dtype=dtype
    )
    pipe = diffusers.ZImageControlNetPipeline.from_pretrained(
        folder_of(preset.base, "base", preset), controlnet=controlnet, dtype=dtype
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    width, height = generation_size(spec["size"], spec["size"], preset.max_pixels, preset.size_multiple)
    control = canny_map(fit(reference, width, height))
    batch = spec["batch"]

    def call():
        return pipe(
            PROMPT,
            control_image=control,
            num_inference_steps=spec["steps"],
            num_images_per_prompt=batch,
            width=width,
            height=height,
            guidance_scale=preset.guidance_scale,
            controlnet_conditioning_scale=preset.controlnet_scale_max * spec["intensity"],
            generator=[torch.Generator("cpu").manual_seed(i) for i in range(batch)],
        ).images

    return call, str(dtype).removeprefix("torch.")


def klein_baseline_call(preset, device: torch.device, reference: Image.Image, spec: dict):
    """Flux2KleinPipeline as its model card writes it: bf16 on a GPU, 4 steps at guidance 1.0, the
    reference as its reference image (the preset's `extra.subject_base`)."""
    import diffusers

    from ref2img.engines.local.families.klein import GUIDANCE, text_encoder_layers
    from ref2img.engines.local.hub import folder_of

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    folder = folder_of(preset.extra["subject_base"], "extra.subject_base", preset)
    pipe = diffusers.Flux2KleinPipeline.from_pretrained(folder, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    width, height = generation_size(spec["size"], spec["size"], preset.max_pixels, preset.size_multiple)
    batch = spec["batch"]

    def call():
        return pipe(
            prompt=PROMPT,
            image=[reference],
            num_inference_steps=spec["steps"],
            num_images_per_prompt=batch,
            width=width,
            height=height,
            guidance_scale=GUIDANCE,
            text_encoder_out_layers=text_encoder_layers(pipe),  # (9, 18, 27), its default, at full scale
            generator=[torch.Generator("cpu").manual_seed(i) for i in range(batch)],
        ).images

    return call, str(dtype).removeprefix("torch.")


def engine_job(reference: Image.Image, spec: dict) -> Job:
    mode = ControlType.SUBJECT if spec.get("mode") == "subject" else ControlType.EDGE
    wire = {
        "prompt": PROMPT,
        "control_type": mode,
        "seed": 0,
        "width": spec["size"],
        "height": spec["size"],
        "batch_size": spec["batch"],
        "control_intensity": spec["intensity"],
    }
    count = CONTROL_ROWS.get(spec["lever"], 0)
    if spec["lever"] == "lora":
        return Job.for_images(reference=reference, steps=spec["steps"], loras=[{"name": LORA_NAME}], **wire)
    if not count:
        return Job.for_images(reference=reference, steps=spec["steps"], **wire)
    # Ready maps (the reference's edges under each mode), so the row times the ControlNet, not the annotators.
    edges = canny_map(reference)
    controls = [
        {"type": kind, "intensity": spec["intensity"], "image": IN_MEMORY, "map": True}
        for kind in ("edge", "depth", "pose")[:count]
    ]
    return Job.for_images(
        reference=reference, steps=spec["steps"], controls=controls, control_inputs=[edges] * count, **wire
    )


def count_flops(preset, reference: Image.Image, spec: dict) -> dict:
    """The job's FLOPs, counted by torch's FlopCounterMode over one real call (2 per multiply-add):
    `engine` as the engine runs it (the idle ControlNet skipped), `plain` with the ControlNet on every
    step as diffusers runs it; per top-level model too."""
    from torch.utils.flop_counter import FlopCounterMode

    counted = {}
    for name, speedups in (("engine", Speedups(channels_last=False)), ("plain", OFF)):
        engine = LocalEngine(preset, device=spec["device"], offload=spec["offload"], speedups=speedups).load()
        counter = FlopCounterMode(display=False)
        with counter:
            engine.generate(engine_job(reference, spec))
        models = {
            module: sum(ops.values())
            for module, ops in counter.get_flop_counts().items()
            if "." not in module and module != "Global"
        }
        counted[f"tflop_{name}"] = round(counter.get_total_flops() / 1e12, 4)
        counted[f"tflop_{name}_by_model"] = {module: round(flops / 1e12, 4) for module, flops in models.items()}
        del engine
    return {"kind": "flops", "lever": "flops", "batch": spec["batch"], **counted}


def profile_call(call, device: torch.device, folder: Path, steps: int) -> dict:
    """One call under torch.profiler: its trace (gzipped Chrome JSON) in `folder`, and a summary: the
    top kernels by device time, the device's idle share of the call, and host (CPU) time per step."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    folder.mkdir(parents=True, exist_ok=True)
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - started
    trace = folder / "trace.json"
    prof.export_chrome_trace(str(trace))
    subprocess.run(["gzip", "-f", str(trace)], check=False)
    events = prof.key_averages()
    kernels = [e for e in events if getattr(e, "self_device_time_total", 0) > 0]
    busy_us = sum(e.self_device_time_total for e in kernels)
    host_us = sum(e.self_cpu_time_total for e in events)
    top = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:15]
    return {
        "wall_s": round(wall, 4),
        "device_busy_s": round(busy_us / 1e6, 4),
        "device_idle_share": round(max(0.0, 1 - busy_us / 1e6 / wall), 3) if kernels else None,
        "host_s_per_step": round(host_us / 1e6 / steps, 4),
        "top_kernels": [
            {
                "name": e.key[:120],
                "calls": e.count,
                "device_ms": round(e.self_device_time_total / 1e3, 2),
                "share": round(e.self_device_time_total / busy_us, 3),
            }
            for e in top
        ],
        "trace": str(trace) + ".gz",
    }


def timed_runs(call, runs: int, device: torch.device) -> tuple[list[float], float]:
    """`runs` timed calls after the caller's warm-up; peak memory over them (GPU) or of the process."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(max(1, runs)):
        started = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    peak = (
        torch.cuda.max_memory_allocated(device)
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return times, peak / 2**30


# -- models, images, figures -----------------------------------------------------------------------
def ensure_models(models_dir: Path, family: str, scale: str, device: str) -> Path:
    folder = models_dir / f"{family}-{scale}"
    if not (folder / "ref2img-preset.json").exists():
        started = time.perf_counter()
        dtype = (
            (torch.bfloat16 if family == "zimage" else torch.float16) if device.startswith("cuda") else torch.float32
        )
        family_named(family).build_random(folder, scale, dtype)
        print(f"built random {family} ({scale}) models in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return folder


def ensure_lora(folder: Path) -> Path:
    """The folder of the bench's random rank-16 LoRA for the models in `folder`, made once beside them."""
    from ref2img.engines.local.random_models import save_random_lora

    loras = folder.parent / f"{folder.name}-loras"
    if not (loras / f"{LORA_NAME}.safetensors").exists():
        save_random_lora(folder, loras / f"{LORA_NAME}.safetensors", rank=16)
    return loras


def photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def save_images(images: list[Image.Image], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        image.save(folder / f"{index}.png")


def drift(row: dict, reference_row: dict) -> dict | None:
    """Max and mean absolute pixel difference (8-bit levels) from the reference row's images, and
    scikit-image's PSNR (dB; None where identical) and SSIM, the worst image of the batch."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ours, theirs = sorted(Path(row["images"]).glob("*.png")), sorted(Path(reference_row["images"]).glob("*.png"))
    if not ours or len(ours) != len(theirs):
        return None
    pairs = [
        (np.asarray(Image.open(a).convert("RGB")), np.asarray(Image.open(b).convert("RGB")))
        for a, b in zip(ours, theirs, strict=True)
    ]
    diffs = [np.abs(a.astype(np.int16) - b.astype(np.int16)) for a, b in pairs]
    same = all(not d.any() for d in diffs)
    psnr = (
        None
        if same
        else min(float(peak_signal_noise_ratio(b, a, data_range=255)) for a, b in pairs if not np.array_equal(a, b))
    )
    ssim = min(float(structural_similarity(b, a, channel_axis=2, data_range=255)) for a, b in pairs)
    return {
        "max": int(max(d.max() for d in diffs)),
        "mean": round(float(np.mean([d.mean() for d in diffs])), 3),
        "psnr_db": None if psnr is None else round(psnr, 2),
        "ssim": round(ssim, 4),
    }


def drift_passes(lever: str, measured: dict) -> bool | None:
    """Whether a row's drift is within its class's promise; None for output-changing levers (reported)."""
    kind = drift_class(lever)
    if kind == "exact":
        return measured["max"] == 0
    if kind == "numerics":
        return measured["mean"] <= DRIFT_TOLERANCE_MEAN and (
            measured["psnr_db"] is None or measured["psnr_db"] >= NUMERICS_PSNR_MIN
        )
    return None


def add_ratios(report: dict) -> dict:
    """Speed-up over `diffusers` and over `off`, drift from `off` with its class's verdict, and the
    share of the device's peak, for every row of the same batch."""
    by_batch: dict[int, dict[str, dict]] = {}
    for row in report["rows"]:
        by_batch.setdefault(row["batch"], {})[row["lever"]] = row
    for batch, rows in by_batch.items():
        baseline, off = rows.get("diffusers"), rows.get("off")
        flops = report.get("flops", {}).get(str(batch), {})
        for row in rows.values():
            if "error" in row:
                continue
            share = peak_share(row, flops, report["setup"].get("peak_tflops"))
            if share is not None:
                row["peak_share"] = share
            if baseline and "error" not in baseline:
                row["vs_diffusers"] = round(row["images_per_s"] / baseline["images_per_s"], 3)
            if off and "error" not in off and row["kind"] == "ref2img":
                row["vs_off"] = round(row["images_per_s"] / off["images_per_s"], 3)
                row["drift"] = drift(row, off)
                row["drift_class"] = drift_class(row["lever"])
                if row["drift"] is not None:
                    row["drift_within_tolerance"] = drift_passes(row["lever"], row["drift"])
            one = rows.get("controls-1")
            if row["lever"] in CONTROL_ROWS and one and "error" not in one:
                row["s_per_image_vs_one_control"] = round(row["s_per_image"] / one["s_per_image"], 3)
            exact = rows.get("exact")
            if row["lever"] == "lora" and exact and "error" not in exact:
                row["s_per_step_vs_exact"] = round(row["s_per_step"] / exact["s_per_step"], 3)
    return report


def peak_share(row: dict, flops: dict, peak: float | None) -> float | None:
    """The row's useful work per second over the device's peak: the plain job's FLOPs for the rows that
    run the ControlNet on every step (`diffusers`, levers without the skip), the engine's for the rest."""
    if not peak or "error" in flops or not flops:
        return None
    plain = row["kind"] == "diffusers" or not LEVERS[row["lever"]].skip_idle_controlnet
    tflop = flops["tflop_plain" if plain else "tflop_engine"]
    return round(tflop / row["s_per_call"] / peak, 3)


def peak_tflops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def row_line(row: dict) -> str:
    if "error" in row:
        return f"b{row['batch']} {row['lever']:22} error: {row['error']}"
    return (
        f"b{row['batch']} {row['lever']:22} {row['dtype']:9} {row['s_per_image']:>8} s/img "
        f"{row['images_per_s']:>8} img/s {row['peak_memory_gib']:>7} GiB  first call {row['first_call_s']} s"
    )


def print_table(report: dict) -> None:
    setup = report["setup"]
    print(
        f"{setup['arch']} {setup['size']}² (model {setup['model_size'][0]}x{setup['model_size'][1]}) "
        f"steps={setup['steps']} intensity={setup['intensity']} on {setup['device']}, torch {setup['torch']}"
    )
    for batch, flops in report.get("flops", {}).items():
        if "error" not in flops:
            print(
                f"batch {batch}: {flops['tflop_engine']} TFLOP a call as the engine runs it, "
                f"{flops['tflop_plain']} with the ControlNet on every step; by model {flops['tflop_engine_by_model']}"
            )
    print(
        f"{'batch':>5} {'row':22} {'dtype':9} {'s/image':>8} {'img/s':>8} {'×diffusers':>10} {'×off':>6} "
        f"{'peak%':>6} {'peak GiB':>8} {'first s':>8} {'drift max/mean':>15} {'PSNR':>6} {'SSIM':>6} {'class ok':>16}"
    )
    for row in report["rows"]:
        if "error" in row:
            print(f"{row['batch']:>5} {row['lever']:22} error: {row['error']}")
            continue
        drifted = row.get("drift")
        drift_text = f"{drifted['max']}/{drifted['mean']}" if drifted else ""
        psnr = "" if not drifted else ("same" if drifted["psnr_db"] is None else drifted["psnr_db"])
        ssim = drifted["ssim"] if drifted else ""
        verdict = "" if "drift_class" not in row else f"{row['drift_class']} {row.get('drift_within_tolerance')}"
        share = f"{row['peak_share'] * 100:.0f}%" if "peak_share" in row else ""
        print(
            f"{row['batch']:>5} {row['lever']:22} {row['dtype']:9} {row['s_per_image']:>8} {row['images_per_s']:>8} "
            f"{row.get('vs_diffusers', ''):>10} {row.get('vs_off', ''):>6} {share:>6} {row['peak_memory_gib']:>8} "
            f"{row['first_call_s']:>8} {drift_text:>15} {psnr:>6} {ssim:>6} {verdict:>16}"
        )
    for row in report["rows"]:
        if "s_per_step_vs_exact" in row:
            print(f"a LoRA at b{row['batch']}: {row['s_per_step']} s/step, ×{row['s_per_step_vs_exact']} of exact's")
    several = [row for row in report["rows"] if "s_per_image_vs_one_control" in row]
    if several:
        print(
            "several controls (s/image, × one control): "
            + ", ".join(
                f"b{row['batch']} {CONTROL_ROWS[row['lever']]}: {row['s_per_image']} (×{row['s_per_image_vs_one_control']})"
                for row in several
            )
        )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
