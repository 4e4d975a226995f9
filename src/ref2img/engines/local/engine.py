"""The local engine: a job in, exactly `width`×`height` images out, on diffusers."""

from __future__ import annotations

import contextlib
import logging
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ref2img.engines.base import (
    EngineOptionError,
    EngineOutOfMemory,
    ImageInvalidError,
    Job,
    JobCancelled,
    PreviewCallback,
    ProgressCallback,
    RepaintJob,
)
from ref2img.engines.local.annotators import Annotators
from ref2img.engines.local.caches import end_call
from ref2img.engines.local.chatter import quiet_libraries
from ref2img.engines.local.compile_cache import use_compile_cache
from ref2img.engines.local.compile_policy import CompilePolicy
from ref2img.engines.local.decode import output_kwargs, to_pil
from ref2img.engines.local.device import Placement, choose_placement
from ref2img.engines.local.families import FamilyPipelines
from ref2img.engines.local.loras import find_loras, resolve_loras
from ref2img.engines.local.offload import parse_offload
from ref2img.engines.local.pipelines import component_dtypes, load_pipelines, module_dtype
from ref2img.engines.local.presets import Preset, resolve_preset
from ref2img.engines.local.repaint import compose, model_mask, redraw_area
from ref2img.engines.local.sizing import fit, generation_size
from ref2img.engines.local.speed import Speedups
from ref2img.images import MAX_IMAGE_PIXELS  # the same cap as the decoder's, for images handed over in-process
from ref2img.protocol import ControlType

log = logging.getLogger("ref2img.engine")

# How each allocator words it: CUDA raises torch.OutOfMemoryError; the CPU allocator and MPS raise a
# plain RuntimeError.
_OUT_OF_MEMORY_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return any(words in str(exc).lower() for words in _OUT_OF_MEMORY_WORDS)


class LocalEngine:
    """Loads a preset once and serves every mode from it. One generation runs at a time.

    `dtype` ("float32", "float16", "bfloat16"; default per device), `offload` ("none", "model",
    "sequential", "auto") and `speedups` (see `speed.Speedups`) are the GPU knobs; with
    `speedups.compile` set, compiled kernels are cached in `compile_cache` (see `compile_cache.py`).
    """

    def __init__(
        self,
        model: str | Preset | None = None,
        device: str | None = None,
        overrides: dict[str, str] | None = None,
        dtype: str | torch.dtype | None = None,
        offload: str = "none",
        speedups: Speedups | None = None,
        compile_cache: str | None = None,
        lora_dirs: tuple[str, ...] = (),
    ):
        quiet_libraries()
        self.lora_dirs = lora_dirs
        self.preset = model if isinstance(model, Preset) else resolve_preset(model, overrides)
        self.placement: Placement = choose_placement(device, dtype)
        self.offload_requested = parse_offload(offload, self.placement)
        self.speedups = speedups or Speedups()
        if self.speedups.compiles:
            use_compile_cache(compile_cache)
        self.compile_policy = CompilePolicy(self.speedups.compile_after)
        self.annotators = Annotators(self.preset, self.placement)
        self._pipelines: FamilyPipelines | None = None
        self._lock = threading.Lock()
        self._placing = threading.Lock()  # park / unpark
        self._parked = False
        self.last_ignored: list[str] = []  # what of the last job the model had no knob for (run records)

    @property
    def pipelines(self) -> Any:  # the family's FamilyPipelines (its own attributes are the family's)
        if self._pipelines is None:
            self._pipelines = load_pipelines(self.preset, self.placement, self.speedups, self.offload_requested)
        return self._pipelines

    def component_dtypes(self) -> dict[str, str]:
        """Every loaded model (and annotator) → the dtype its weights are in, read from the modules."""
        dtypes = component_dtypes(self._pipelines) if self._pipelines is not None else {}
        dtypes.update({name: module_dtype(module) for name, module in self.annotators.modules().items()})
        return dtypes

    def load(self) -> LocalEngine:
        """Load the base model now rather than on the first job (servers call this at start)."""
        _ = self.pipelines
        return self

    # -- set aside by a pool of presets (tasks/execution/engine_pool.py) ----------------------------
    def park(self) -> bool:
        """Move every model to the CPU, freeing the GPU and keeping the weights in host memory; `unpark`
        brings them back. False where there is nothing to gain or it is not safe: a CPU engine, offloaded
        models (their hooks own placement), compiled kernels or captured CUDA graphs (bound to the
        device's memory): such a preset is unloaded instead."""
        with self._placing:
            pipelines = self._pipelines
            movable = pipelines is not None and pipelines.offload == "none" and not self.speedups.compiles
            if self._parked or not movable or self.placement.device.type != "cuda":
                return False
            for module in self._modules():
                module.to("cpu")
            self._parked = True
        torch.cuda.empty_cache()
        return True

    def unpark(self) -> None:
        """Back on the engine's device, if parked (a pool calls it before handing the engine out)."""
        with self._placing:
            if not self._parked:
                return
            for module in self._modules():
                module.to(self.placement.device)
            self._parked = False

    @property
    def parked(self) -> bool:
        return self._parked

    def _modules(self) -> list[torch.nn.Module]:
        found = dict(self._pipelines.modules()) if self._pipelines is not None else {}
        found.update(self.annotators.modules())
        return list(found.values())

    # -- Engine interface ------------------------------------------------------------------
    def recognize(self, image: Image.Image, control_type: ControlType) -> Image.Image:
        _check_image(image, "image")
        return self.annotators.recognize(image.convert("RGB"), control_type)

    def generate(
        self,
        job: Job,
        on_progress: ProgressCallback = lambda done, total: None,
        should_cancel=lambda: False,
        on_preview: PreviewCallback | None = None,
    ) -> list[Image.Image]:
        _check_image(job.reference, "reference_image")
        if job.init_image is not None:
            _check_image(job.init_image, "init_image")
        gen_w, gen_h = self.model_size(job.width, job.height)
        loras = resolve_loras(job.request.loras or (), self.lora_dirs)
        with self._lock, self._loras(loras):
            pipe, kwargs = self._prepare(job, gen_w, gen_h)
            log.info(
                "generate mode=%s size=%dx%d (model %dx%d) batch=%d steps=%d seed=%d",
                job.control_type.name.lower(),
                job.width,
                job.height,
                gen_w,
                gen_h,
                job.batch_size,
                kwargs["num_inference_steps"],
                job.seed,
            )
            # what a compiled graph is specialised on: one count per distinct call shape
            shape = (gen_w, gen_h, job.batch_size, job.control_type, job.init_image is not None, len(job.controls))
            size = f"{job.batch_size} image(s) at {gen_w}x{gen_h}"
            images = self._call(pipe, kwargs, shape, size, on_progress, should_cancel, on_preview)
        return [fit(image, job.width, job.height) for image in images]

    def repaint(
        self,
        job: RepaintJob,
        on_progress: ProgressCallback = lambda done, total: None,
        should_cancel=lambda: False,
        on_preview: PreviewCallback | None = None,
    ) -> list[Image.Image]:
        """Image Repaint: the masked area redrawn from the prompt (the whole image without a mask), at the
        image's size; every pixel outside the mask comes back as it was (repaint.py)."""
        _check_image(job.image, "init_image")
        original = job.image.convert("RGB")
        gen_w, gen_h = self.model_size(*original.size)
        area = redraw_area(job.mask, original.size)
        if not area.any():
            return [original]  # nothing to redraw: the image as it is
        with self._lock:
            pipe, kwargs = self.pipelines.prepare_repaint(job, gen_w, gen_h, model_mask(area, (gen_w, gen_h)))
            log.info(
                "repaint size=%dx%d (model %dx%d) masked=%.0f%% steps=%d seed=%d",
                *original.size,
                gen_w,
                gen_h,
                100 * area.mean(),
                kwargs["num_inference_steps"],
                job.seed,
            )
            shape = (gen_w, gen_h, 1, "repaint")
            [image] = self._call(
                pipe, kwargs, shape, f"1 image at {gen_w}x{gen_h}", on_progress, should_cancel, on_preview
            )
        return [compose(original, image, area)]

    def _loras(self, loras: list[tuple[str, Path, float]]) -> AbstractContextManager[None]:
        """The request's LoRAs active for its call, off after it (loras.py); refused where the family has none."""
        if not loras:
            return contextlib.nullcontext()
        adapters = getattr(self.pipelines, "loras", None)
        if adapters is None:
            raise EngineOptionError(f"loras: the {self.preset.family} family takes no LoRAs (yet)")
        return adapters.active(loras, catalog=list(find_loras(self.lora_dirs).values()))

    def _call(self, pipe, kwargs, shape, size: str, on_progress, should_cancel, on_preview) -> list[Image.Image]:
        """One pipeline call with the engine's step machinery: progress, previews, cancel, the family's
        step hooks, CUDA-graph step marks, the compile policy, and out-of-memory as a clear error."""
        self.last_ignored = list(self.pipelines.ignored)
        steps = kwargs["num_inference_steps"]
        hooks = list(self.pipelines.step_hooks)
        mark_step = self.speedups.marks_steps

        def on_step_end(pipeline, step: int, timestep, tensors: dict) -> dict:
            total = getattr(pipeline, "_num_timesteps", None) or steps
            on_progress(min(step + 1, total), total)
            if on_preview is not None and "latents" in tensors:
                latents = tensors["latents"]
                on_preview(min(step + 1, total), total, lambda: self.pipelines.preview(latents))
            if should_cancel():
                raise JobCancelled(f"cancelled after step {step + 1} of {total}")
            for hook in hooks:
                tensors = hook(pipeline, step, timestep, tensors)
            if mark_step:  # CUDA graphs: the next step may reuse this step's graph memory
                torch.compiler.cudagraph_mark_step_begin()
            return tensors

        tensor_inputs = ["latents", *(name for hook in hooks for name in hook.tensor_inputs(pipe))]
        if should_cancel():
            raise JobCancelled("cancelled before the first step")
        stance = self.compile_policy.applied(shape) if self.speedups.compiles else contextlib.nullcontext()
        try:
            with torch.inference_mode(), stance:
                if mark_step:
                    torch.compiler.cudagraph_mark_step_begin()
                output = pipe(
                    **kwargs,
                    **output_kwargs(self.speedups.decode_on_device),
                    callback_on_step_end=on_step_end,
                    callback_on_step_end_tensor_inputs=tensor_inputs,
                )
                return to_pil(output.images)
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            self._release_memory()
            raise EngineOutOfMemory(
                f"out of memory on {self.placement.device.type} generating {size}; "
                "try a smaller width/height or batch_size"
            ) from None
        finally:
            end_call(self.pipelines.modules())

    def model_size(self, width: int, height: int) -> tuple[int, int]:
        """The size the model runs at for an output of width x height: the preset's area and multiple
        (sizing.py); the images are then fitted to the size asked for."""
        return generation_size(width, height, self.preset.max_pixels, self.preset.size_multiple)

    def control_map_for(self, job: Job) -> Image.Image | None:
        """The control map `generate` conditions `job` on, at the size the model runs at (None in subject
        mode). Handing it back as `job.control_map` gives the same images without annotating twice."""
        if job.control_type is ControlType.SUBJECT:
            return None
        gen_w, gen_h = self.model_size(job.width, job.height)
        if job.control_map is not None:
            return fit(job.control_map, gen_w, gen_h)
        return self.annotators.control_map(fit(job.reference, gen_w, gen_h), job.control_type)

    def control_maps_for(self, job: Job) -> list[Image.Image]:
        """The map of each of `job.controls`, at the model's size: its image as it is when `map` says it is
        one, else what the annotator of its type finds in it."""
        gen_w, gen_h = self.model_size(job.width, job.height)
        return [
            fit(image, gen_w, gen_h)
            if control.map
            else self.annotators.control_map(fit(image, gen_w, gen_h), control.type)
            for control, image in zip(job.controls, job.control_inputs, strict=True)
        ]

    def _release_memory(self) -> None:
        """After an out-of-memory error: hand cached blocks back so the next job starts clean."""
        if self.placement.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- building the call -------------------------------------------------------------------
    def _prepare(self, job: Job, gen_w: int, gen_h: int) -> tuple[Any, dict[str, Any]]:
        """The family's pipeline and call for the job (the control maps made here, family-agnostic)."""
        if job.controls:
            return self.pipelines.prepare_controls(job, gen_w, gen_h, self.control_maps_for(job))
        return self.pipelines.prepare(job, gen_w, gen_h, self.control_map_for(job))


def _check_image(image: Image.Image, field: str) -> None:
    if image.width < 1 or image.height < 1:
        raise ImageInvalidError(f"{field}: the image is empty")
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise ImageInvalidError(
            f"{field}: {image.width}x{image.height} is over {MAX_IMAGE_PIXELS // (1024 * 1024)} megapixels"
        )
