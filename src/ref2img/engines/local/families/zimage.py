"""Z-Image (Tongyi-MAI, Apache-2.0): a 6B single-stream diffusion transformer with a Qwen3 text
encoder and the FLUX.1 VAE (16 latent channels). Edge, pose and depth through the Fun ControlNet
Union (alibaba-pai), which takes any of those maps as its control image.

How `control_intensity` maps onto its knobs (README's table has the row):

| mode | knob | at 0 | at 1 |
|---|---|---|---|
| edge/pose/depth | `controlnet_conditioning_scale` = max·i | 0 | preset max (0.8: the card's 0.65–0.80) |
| edge/pose/depth + init image | img2img strength (the init's latents noised to that point of the schedule) | 0.75 | 0.75 |

Subject mode is FLUX.2 [klein] 4B, which takes the reference as a reference image (families/klein.py),
named by the preset as `extra.subject_base`; a preset without it refuses subject jobs by name. An init
image with a control map is img2img done by hand, as diffusers' Z-Image img2img pipeline does it (which
has no ControlNet): the init image's latents are noised to the schedule's sigma at `strength` and the
ControlNet pipeline runs the rest of the schedule from there. The turbo preset runs without CFG
(guidance 0), so a negative prompt has no effect there; the run record says so.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import diffusers
import torch

from ref2img.engines.base import EngineOptionError, Job, RepaintJob
from ref2img.engines.local import offload
from ref2img.engines.local.device import Placement
from ref2img.engines.local.caches import cache_text_encoders
from ref2img.engines.local.families.calls import (
    unapplied_approximations,
    ignored_without_cfg,
    image_generators,
    torch_modules,
)
from ref2img.engines.local.families import controls_problem
from ref2img.engines.local.families.klein import KleinSubject, weight_bytes
from ref2img.engines.local.families.loading import load_part
from ref2img.engines.local.families.preview import latent_preview
from ref2img.engines.local.hub import folder_of
from ref2img.engines.local.intensity import INIT_STRENGTH_WITH_CONTROL
from ref2img.engines.local.preprocess import call_pixels
from ref2img.engines.local.presets import ModelRef, Preset
from ref2img.engines.local.sizing import fit
from ref2img.engines.local.step_cache import FirstBlockCache
from ref2img.engines.local.speed import (
    Speedups,
    compile_blocks,
    compile_whole,
    prepare_decoder,
    quantize_fp8,
    skip_idle_controlnet,
)
from ref2img.protocol import ControlType

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger("ref2img.engine")

# ComfyUI's factors for the FLUX.1 VAE's 16 channels (comfy/latent_formats.py, class Flux).
LATENT_RGB = (
    (-0.0346, 0.0244, 0.0681),
    (0.0034, 0.0210, 0.0687),
    (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329),
    (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915),
    (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421),
    (-0.0515, 0.0201, 0.0011),
    (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749),
    (-0.1264, -0.0522, -0.1103),
    (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
)
TRANSFORMER_BLOCKS = ("ZImageTransformerBlock", "ZImageControlTransformerBlock")  # regional compile
CONTROLNET_CONFIG = "controlnet_config"  # the preset's `extra` part: the diffusers config of a one-file ControlNet
SUBJECT_BASE = "subject_base"  # the preset's `extra` part: the subject model (FLUX.2 klein)


class ZImageFamily:
    name = "zimage"
    description = (
        "Z-Image (diffusion transformer): the Fun ControlNet Union for edge, pose and depth, FLUX.2 klein for subjects"
    )

    def load(self, preset: Preset, placement: Placement, speedups: Speedups, offload_mode: str) -> ZImagePipelines:
        return ZImagePipelines(preset, placement, speedups, offload_mode)

    def build_random(self, directory: Path, scale: str, dtype: torch.dtype) -> Path:
        from ref2img.engines.local.families.zimage_models import build_random

        return build_random(directory, scale, dtype)


FAMILY = ZImageFamily()


class ZImagePipelines:
    def __init__(self, preset: Preset, placement: Placement, speedups: Speedups, offload_mode: str):
        self.preset = preset
        self.placement = placement
        self.speedups = speedups
        self.ignored: list[str] = []
        self.step_hooks: list[Any] = []  # no approximation applies to Z-Image: it runs without CFG
        self._controlnet: Any = None
        self._pipeline: Any = None
        self._preview = self._control_preview  # the current call's: the ControlNet's or the subject model's
        self._offloaded_pipe: Any = None  # the pipeline whose offload hooks are installed
        self._inpaint: Any = None
        self._lock = threading.Lock()
        self.base = self._load(
            "base",
            preset.base,
            lambda p: diffusers.ZImagePipeline.from_pretrained(
                p, dtype=placement.dtype, local_files_only=True, variant=preset.base.variant
            ),
        )
        self.base.set_progress_bar_config(disable=True)
        if speedups.cache_prompts:
            cache_text_encoders(self.base)
        self.offload = self._choose_offload(offload_mode)
        if self.offload == "none":
            self.base.to(placement.device)
        self._speed_up(self.base.transformer)
        prepare_decoder(self.base.vae, speedups)  # compile_convs: the VAE decoder compiles whole
        # After the compile: the cache decides each step outside the compiled blocks (step_cache.py).
        self.step_cache = (
            FirstBlockCache(self.base.transformer.layers) if "step-cache" in speedups.approximate else None
        )
        self.applied_approximations = frozenset({"step-cache"}) if self.step_cache else frozenset()
        subject = preset.extra.get(SUBJECT_BASE)
        self._subject = (
            KleinSubject(
                subject, preset, placement, self.offload, text_encoder=self.base.text_encoder, speed_up=self._speed_up
            )
            if subject is not None
            else None
        )

    # -- loading --------------------------------------------------------------------------------
    def _load(self, part: str, ref: ModelRef, loader):
        return load_part(self.preset, part, ref, loader, self.placement.dtype_name)

    def _speed_up(self, module: torch.nn.Module, blocks: tuple[str, ...] = TRANSFORMER_BLOCKS) -> None:
        """The levers that apply to a diffusion transformer (this family's, the ControlNet, the subject
        model's): fp8 Linear layers, regional compile of its `blocks`, or the whole model compiled
        (channels_last and fused q/k/v are the UNet's: no convolutions, its own attention)."""
        if self.speedups.fp8:
            quantize_fp8(module, blocks)
        if self.speedups.compile == "regional":
            compile_blocks(module, self.speedups.compile_mode, blocks)
        elif self.speedups.compile == "full":
            compile_whole(module, self.speedups.compile_mode)

    def _choose_offload(self, requested: str) -> str:
        transformer = offload.module_bytes(self.base.transformer)
        # The Fun ControlNet Union adds 6 control blocks beside the 30 of the transformer: a fifth.
        controlnet = transformer // 5
        everything = offload.module_bytes(*torch_modules(self.base).values()) + controlnet
        subject = self.preset.extra.get(SUBJECT_BASE)
        if subject is not None and requested == "auto":  # loaded on the first subject job, beside the rest
            everything += weight_bytes(subject, self.preset, self.base.text_encoder)
        return offload.choose_offload(requested, self.placement, everything, transformer + controlnet)

    def _union_controlnet(self):
        if self._controlnet is None:
            _, ref = self.preset.controlnet_for(ControlType.EDGE)  # the union net: every mode's
            config_ref = self.preset.extra.get(CONTROLNET_CONFIG)
            dtype = self.placement.dtype
            if ref.weight_name:  # one file, as alibaba-pai ships it: its diffusers config is another part
                if config_ref is None:
                    raise EngineOptionError(
                        f"preset {self.preset.name!r}: a one-file ControlNet needs `extra.{CONTROLNET_CONFIG}`"
                    )
                config = str(folder_of(config_ref, f"extra.{CONTROLNET_CONFIG}", self.preset))
                net = self._load(
                    "controlnet.union",
                    ref,
                    lambda p: diffusers.ZImageControlNetModel.from_single_file(
                        str(p), config=config, dtype=dtype, local_files_only=True
                    ),
                )
            else:
                net = self._load(
                    "controlnet.union",
                    ref,
                    lambda p: diffusers.ZImageControlNetModel.from_pretrained(p, dtype=dtype, local_files_only=True),
                )
            if self.offload == "none":
                net.to(self.placement.device)
            self._speed_up(net)
            if self.speedups.skip_idle_controlnet:  # intensity 0: the transformer runs with no hints at all
                skip_idle_controlnet(net, idle=None, tuple_calls_only=False)
            self._controlnet = net
        return self._controlnet

    def controlnet_pipeline(self):
        """The ControlNet pipeline on the loaded base: one for edge, pose and depth (the union net)."""
        with self._lock:
            if self._pipeline is None:
                pipe = diffusers.ZImageControlNetPipeline.from_pipe(
                    self.base, controlnet=self._union_controlnet(), dtype=self.placement.dtype
                )
                pipe.set_progress_bar_config(disable=True)
                self._pipeline = pipe
            return self._offloaded_as(self._pipeline)

    def inpaint_pipeline(self):
        """Image Repaint's pipeline on the loaded base (diffusers' ZImageInpaintPipeline)."""
        with self._lock:
            if self._inpaint is None:
                self._inpaint = diffusers.ZImageInpaintPipeline.from_pipe(self.base, dtype=self.placement.dtype)
                self._inpaint.set_progress_bar_config(disable=True)
            return self._offloaded_as(self._inpaint)

    def _offloaded_as(self, pipe):
        if self.offload != "none" and self._offloaded_pipe is not pipe:
            offload.enable(pipe, self.offload, self.placement.device)
            self._offloaded_pipe = pipe
        return pipe

    def prepare_controls(
        self, job: Job, gen_w: int, gen_h: int, control_maps: list[Image.Image]
    ) -> tuple[Any, dict[str, Any]]:
        """One control, as a plain request of its type (the Fun ControlNet takes one map; klein's subject
        runs apart from it): more is refused, naming the family (FAMILY_CONTROLS)."""
        problem = controls_problem("zimage", len(job.controls), job.request.keeps_subject)
        if problem is not None:
            raise EngineOptionError(f"{problem[0]}: {problem[1]}")
        [control] = job.controls
        single = job.request.model_copy(
            update={"control_type": control.type, "control_intensity": control.intensity, "controls": None}
        )
        pipe, kwargs = self.prepare(
            dataclasses.replace(job, request=single, control_inputs=()), gen_w, gen_h, control_maps[0]
        )
        if control.start or control.end is not None:
            self.ignored.append("controls[0].start/end (the Z-Image ControlNet pipeline acts on every step)")
        return pipe, kwargs

    def prepare_repaint(self, job: RepaintJob, gen_w: int, gen_h: int, mask: Image.Image) -> tuple[Any, dict[str, Any]]:
        preset = self.preset
        guidance = preset.guidance_scale
        self.ignored = ["negative_prompt (guidance 0: no CFG)"] if job.request.negative_prompt and guidance <= 1 else []
        self.ignored += unapplied_approximations(self.speedups, self.applied_approximations)
        self._forget_last_call()
        pipe = self.inpaint_pipeline()
        self._preview = self._control_preview
        self._set_tiling(pipe, gen_w * gen_h)
        return pipe, {
            "prompt": job.request.prompt,
            "negative_prompt": job.request.negative_prompt,
            "image": fit(job.image, gen_w, gen_h),
            "mask_image": mask,
            "width": gen_w,
            "height": gen_h,
            "strength": 1.0,
            "num_inference_steps": job.steps or preset.steps,
            "guidance_scale": guidance,
            "num_images_per_prompt": 1,
            "generator": [torch.Generator("cpu").manual_seed(job.seed)],
        }

    # -- one call -----------------------------------------------------------------------------------
    def prepare(self, job: Job, gen_w: int, gen_h: int, control_map: Image.Image | None) -> tuple[Any, dict[str, Any]]:
        preset = self.preset
        if job.control_type is ControlType.SUBJECT:
            if self._subject is None:
                raise EngineOptionError(
                    f"subject mode: preset {preset.name!r} (Z-Image) names no subject model (`extra.{SUBJECT_BASE}`); "
                    "use zimage-turbo, or an sdxl or sd15 preset"
                )
            subject_pipe, subject_kwargs = self._subject.prepare(job, gen_w, gen_h)
            self._offloaded_as(subject_pipe)  # it may share the text encoder: the hooks must be its own now
            self.ignored = self._subject.ignored + unapplied_approximations(self.speedups)
            self._preview = self._subject.preview
            self._set_tiling(subject_pipe, gen_w * gen_h)
            return subject_pipe, subject_kwargs
        guidance = preset.guidance_scale if job.guidance_scale is None else job.guidance_scale
        self.ignored = ignored_without_cfg(job, guidance) + unapplied_approximations(
            self.speedups, self.applied_approximations
        )
        self._forget_last_call()
        if self.ignored:
            log.info("preset %s ignores %s", preset.name, ", ".join(self.ignored))
        kwargs: dict[str, Any] = {
            "prompt": job.prompt,
            "negative_prompt": job.negative_prompt,
            "num_inference_steps": job.steps or preset.steps,
            "guidance_scale": guidance,
            "num_images_per_prompt": job.batch_size,
            "generator": image_generators(job),
            "width": gen_w,
            "height": gen_h,
            "control_image": control_map,
            "controlnet_conditioning_scale": preset.controlnet_scale_max * job.control_intensity,
        }
        pipe = self.controlnet_pipeline()
        pixels = call_pixels(control_map, (gen_w, gen_h), self.speedups, self.placement.device)
        if isinstance(pixels, torch.Tensor):  # this pipeline takes a tensor as already pre-processed: do it here
            kwargs["control_image"] = pipe.image_processor.preprocess(pixels, height=gen_h, width=gen_w)
        if job.init_image is not None:
            latents, sigmas = self._from_init_image(pipe, job, gen_w, gen_h, kwargs["num_inference_steps"])
            kwargs.update(latents=latents, sigmas=sigmas, num_inference_steps=len(sigmas))
        self._preview = self._control_preview
        self._set_tiling(pipe, gen_w * gen_h)
        return pipe, kwargs

    def _forget_last_call(self) -> None:
        """A new call of the transformer: the step cache reuses nothing of the last one."""
        if self.step_cache is not None:
            self.step_cache.reset()

    def _from_init_image(self, pipe, job: Job, gen_w: int, gen_h: int, steps: int) -> tuple[torch.Tensor, list[float]]:
        """img2img for a flow-matching schedule: the init image's latents x0 and noise e at the sigma s where
        `strength` of the schedule is left, x = s·e + (1 − s)·x0 (the scheduler's `scale_noise`), and the
        sigmas from there on. The pipeline shifts those sigmas as it shifts the whole schedule, so the
        point matches the one computed here."""
        from diffusers.pipelines.z_image.pipeline_z_image_controlnet import (
            calculate_shift,
            get_default_z_image_sigmas,
        )

        keep = max(1, int(steps * INIT_STRENGTH_WITH_CONTROL))  # at least one step runs
        full = get_default_z_image_sigmas(steps)
        scale = pipe.vae_scale_factor * 2
        config = pipe.scheduler.config
        mu = calculate_shift(
            (gen_h // scale) * (gen_w // scale),
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15),
        )
        scheduler = copy.deepcopy(pipe.scheduler)  # the pipeline's own sets its schedule again in the call
        scheduler.set_timesteps(sigmas=full, mu=mu)
        sigma = float(scheduler.sigmas[steps - keep])
        vae = pipe.vae
        assert job.init_image is not None
        init = call_pixels(fit(job.init_image, gen_w, gen_h), (gen_w, gen_h), self.speedups, self.placement.device)
        pixels = pipe.image_processor.preprocess(init, height=gen_h, width=gen_w)
        with torch.inference_mode():
            encoded = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.mode()
        x0 = ((encoded - vae.config.shift_factor) * vae.config.scaling_factor).float()
        noise = torch.cat([torch.randn(x0.shape, generator=generator) for generator in image_generators(job)])
        noise = noise.to(x0.device)
        latents = sigma * noise + (1.0 - sigma) * x0.expand_as(noise)
        return latents, full[steps - keep :]

    @staticmethod
    def _set_tiling(pipe, pixels: int) -> None:
        if pixels > 1024 * 1024:
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()

    def preview(self, latents: torch.Tensor) -> Image.Image:
        return self._preview(latents)

    @staticmethod
    def _control_preview(latents: torch.Tensor) -> Image.Image:
        return latent_preview(latents, LATENT_RGB)

    # -- what is loaded -----------------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        named = torch_modules(self.base)
        if self._controlnet is not None:
            named["controlnet.union"] = self._controlnet
        if self._subject is not None:
            named.update(self._subject.modules())
        return named

    def cached_pipelines(self) -> list[Any]:
        extra = [self._pipeline] if self._pipeline is not None else []
        if self._subject is not None and self._subject.loaded:
            extra.append(self._subject.pipe)
        return [self.base, *extra]
