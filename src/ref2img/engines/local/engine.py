"""The local engine: a job in, exactly `width`×`height` images out, on diffusers."""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

import torch
from PIL import Image

from ref2img.engines.base import (
    EngineOutOfMemory,
    ImageInvalidError,
    Job,
    JobCancelled,
    PreviewCallback,
    ProgressCallback,
)
from ref2img.engines.local.annotators import Annotators
from ref2img.engines.local.chatter import quiet_libraries
from ref2img.engines.local.compile_cache import use_compile_cache
from ref2img.engines.local.device import Placement, choose_placement
from ref2img.engines.local.intensity import Knobs, knobs_for
from ref2img.engines.local.offload import parse_offload
from ref2img.engines.local.pipelines import PipelineSet, module_dtype
from ref2img.engines.local.presets import UNION_CONTROL_MODE, Preset, resolve_preset
from ref2img.engines.local.preview import latent_preview
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
    ):
        quiet_libraries()
        self.preset = model if isinstance(model, Preset) else resolve_preset(model, overrides)
        self.placement: Placement = choose_placement(device, dtype)
        self.offload_requested = parse_offload(offload, self.placement)
        self.speedups = speedups or Speedups()
        if self.speedups.compiles:
            use_compile_cache(compile_cache)
        self.annotators = Annotators(self.preset, self.placement)
        self._pipelines: PipelineSet | None = None
        self._lock = threading.Lock()

    @property
    def pipelines(self) -> PipelineSet:
        if self._pipelines is None:
            self._pipelines = PipelineSet(self.preset, self.placement, self.speedups, self.offload_requested)
        return self._pipelines

    def component_dtypes(self) -> dict[str, str]:
        """Every loaded model (and annotator) → the dtype its weights are in, read from the modules."""
        dtypes = self.pipelines.component_dtypes() if self._pipelines is not None else {}
        dtypes.update({name: module_dtype(module) for name, module in self.annotators.modules().items()})
        return dtypes

    def load(self) -> LocalEngine:
        """Load the base model now rather than on the first job (servers call this at start)."""
        _ = self.pipelines
        return self

    # -- Engine interface ------------------------------------------------------------------
    def recognize(self, image: Image.Image, control_type: ControlType) -> Image.Image:
        _check_image(image, "image")
        return self.annotators.control_map(image.convert("RGB"), control_type)

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
        preset = self.preset
        gen_w, gen_h = generation_size(job.width, job.height, preset.max_pixels, preset.size_multiple)
        knobs = knobs_for(
            job.control_type, job.control_intensity, job.init_image is not None, preset.controlnet_scale_max
        )
        with self._lock:
            pipe, kwargs = self._prepare(job, knobs, gen_w, gen_h)
            steps = kwargs["num_inference_steps"]

            def on_step_end(pipeline, step: int, timestep, tensors: dict) -> dict:
                total = getattr(pipeline, "_num_timesteps", None) or steps
                on_progress(min(step + 1, total), total)
                if on_preview is not None and "latents" in tensors:
                    latents = tensors["latents"]
                    on_preview(min(step + 1, total), total, lambda: latent_preview(latents, preset.family))
                if should_cancel():
                    raise JobCancelled(f"cancelled after step {step + 1} of {total}")
                return tensors

            if should_cancel():
                raise JobCancelled("cancelled before the first step")
            log.info(
                "generate mode=%s size=%dx%d (model %dx%d) batch=%d steps=%d seed=%d",
                job.control_type.name.lower(),
                job.width,
                job.height,
                gen_w,
                gen_h,
                job.batch_size,
                steps,
                job.seed,
            )
            try:
                with torch.inference_mode():
                    images = pipe(**kwargs, callback_on_step_end=on_step_end).images
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                self._release_memory()
                raise EngineOutOfMemory(
                    f"out of memory on {self.placement.device.type} generating {job.batch_size} image(s) at "
                    f"{gen_w}x{gen_h}; try a smaller width/height or batch_size"
                ) from None
        return [fit(image, job.width, job.height) for image in images]

    def control_map_for(self, job: Job) -> Image.Image | None:
        """The control map `generate` conditions `job` on, at the size the model runs at (None in subject
        mode). Handing it back as `job.control_map` gives the same images without annotating twice."""
        if job.control_type is ControlType.SUBJECT:
            return None
        gen_w, gen_h = generation_size(job.width, job.height, self.preset.max_pixels, self.preset.size_multiple)
        if job.control_map is not None:
            return fit(job.control_map, gen_w, gen_h)
        return self.annotators.control_map(fit(job.reference, gen_w, gen_h), job.control_type)

    def _release_memory(self) -> None:
        """After an out-of-memory error: hand cached blocks back so the next job starts clean."""
        if self.placement.device.type == "cuda":
            torch.cuda.empty_cache()

    # -- building the call -------------------------------------------------------------------
    def _prepare(self, job: Job, knobs: Knobs, gen_w: int, gen_h: int) -> tuple[Any, dict[str, Any]]:
        preset, pipelines = self.preset, self.pipelines
        img2img = job.init_image is not None
        reference = fit(job.reference, gen_w, gen_h)
        steps = job.steps or preset.steps
        if knobs.strength is not None and int(steps * knobs.strength) < 1:
            steps = math.ceil(1 / knobs.strength)  # img2img runs steps×strength steps: keep at least one
        kwargs: dict[str, Any] = {
            "prompt": job.prompt,
            "negative_prompt": job.negative_prompt,
            "num_inference_steps": steps,
            "guidance_scale": preset.guidance_scale if job.guidance_scale is None else job.guidance_scale,
            "num_images_per_prompt": job.batch_size,
            # Image i of a batch uses seed + i, so any one image can be reproduced alone.
            "generator": [torch.Generator("cpu").manual_seed(job.seed + i) for i in range(job.batch_size)],
        }
        if job.control_type is ControlType.SUBJECT:
            pipelines.ensure_ip_adapter()
        if pipelines.has_ip_adapter:
            # Once loaded, the UNet wants image embeds on every call; scale 0 skips the adapter.
            pipelines.base.set_ip_adapter_scale(knobs.ip_adapter_scale)
            kwargs["ip_adapter_image"] = reference
        pipe = pipelines.pipeline_for(job.control_type, img2img)

        if job.init_image is not None:
            kwargs["image"] = fit(job.init_image, gen_w, gen_h)
            kwargs["strength"] = knobs.strength
        else:
            kwargs.update(width=gen_w, height=gen_h)
        if job.control_type is not ControlType.SUBJECT:
            control = self.control_map_for(job)
            if preset.uses_union_controlnet:
                kwargs["control_image"] = [control]
                kwargs["control_mode"] = [UNION_CONTROL_MODE[job.control_type]]
            else:
                kwargs["control_image" if img2img else "image"] = control
            kwargs["controlnet_conditioning_scale"] = knobs.controlnet_scale
            kwargs["control_guidance_end"] = knobs.control_guidance_end
        self._set_memory_savers(pipe, gen_w * gen_h, job.batch_size)
        return pipe, kwargs

    def _set_memory_savers(self, pipe, pixels: int, batch_size: int) -> None:
        vae = pipe.vae
        if pixels > 1024 * 1024:
            vae.enable_tiling()
        else:
            vae.disable_tiling()
        if self.placement.is_cpu or batch_size > 1:
            vae.enable_slicing()
        else:
            vae.disable_slicing()


def _check_image(image: Image.Image, field: str) -> None:
    if image.width < 1 or image.height < 1:
        raise ImageInvalidError(f"{field}: the image is empty")
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise ImageInvalidError(
            f"{field}: {image.width}x{image.height} is over {MAX_IMAGE_PIXELS // (1024 * 1024)} megapixels"
        )
