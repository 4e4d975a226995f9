"""The UNet families (SD1.5, SDXL): one loaded base model, and the per-mode diffusers pipelines built on
it without reloading.

The base (UNet, VAE, text encoders) loads once. Each (mode family, img2img?) pair gets its pipeline
class through `from_pipe`, which re-wraps the same modules; ControlNets and the IP-Adapter load on
first use and stay. Switching modes therefore never reads the base from disk again. Subject mode is
IP-Adapter; edge, pose and depth are ControlNets (one per mode, or one union model). How
`control_intensity` maps onto these knobs is `intensity.py`'s table.

Every module stays in the placement's dtype: `from_pipe` casts all shared modules to float32 unless it
is told the dtype, which once made the GPU engine 0.57× a plain pipeline with 1.6× its memory.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import diffusers
import torch

from ref2img.engines.base import EngineOptionError, Job, RepaintJob
from ref2img.engines.local import offload
from ref2img.engines.local.device import Placement
from ref2img.engines.local.approximations import CfgCut, controlnet_on_cond_half
from ref2img.engines.local.caches import cache_condition_embedding, cache_text_encoders
from ref2img.engines.local.families.calls import (
    ignored_without_cfg,
    image_generators,
    torch_modules,
    unapplied_approximations,
)
from ref2img.engines.local.loras import UnetLoras
from ref2img.engines.local.families.loading import load_part
from ref2img.engines.local.families.preview import LatentFactors, latent_preview
from ref2img.engines.local.hub import folder_of, locate
from ref2img.engines.local.intensity import knobs_for
from ref2img.engines.local.preprocess import call_pixels
from ref2img.engines.local.presets import UNION_CONTROL_MODE, ModelRef, Preset
from ref2img.engines.local.sizing import fit
from ref2img.engines.local.speed import (
    UNET_APPROXIMATIONS,
    Speedups,
    apply_inductor_tuning,
    fuse_attention_projections,
    prepare_decoder,
    prepare_denoiser,
    skip_idle_controlnet,
)
from ref2img.protocol import ControlType

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger("ref2img.engine")


@dataclass(frozen=True)
class UNetFamily:
    """A UNet family: its diffusers classes and what differs between SD1.5 and SDXL."""

    name: str
    description: str
    base_class: str  # the text-to-image pipeline the base loads as
    # (conditioning, img2img) -> pipeline class name; conditioning: "plain", "controlnet", "union"
    pipeline_classes: Mapping[tuple[str, bool], str]
    latent_rgb: LatentFactors  # step previews (families/preview.py)
    inpaint_class: str  # Image Repaint's pipeline, on the same base
    base_extra: Mapping[str, Any] = field(default_factory=dict)  # more from_pretrained arguments of the base
    pipe_extra: Mapping[str, Any] = field(default_factory=dict)  # constructor arguments of every pipeline
    builder: Callable[[Path, str, torch.dtype], Path] | None = None  # its random-weight models

    def load(self, preset: Preset, placement: Placement, speedups: Speedups, offload_mode: str) -> UNetPipelines:
        return UNetPipelines(self, preset, placement, speedups, offload_mode)

    def build_random(self, directory: Path, scale: str, dtype: torch.dtype) -> Path:
        from ref2img.engines.local.random_models import build_random

        return build_random(directory, self.name, scale, dtype)


class UNetPipelines:
    def __init__(
        self,
        family: UNetFamily,
        preset: Preset,
        placement: Placement,
        speedups: Speedups | None = None,
        offload_mode: str = "none",
    ):
        self.family = family
        self.ignored: list[str] = []
        self.step_hooks: list[Any] = []
        self.preset = preset
        self.placement = placement
        self.speedups = speedups or Speedups()
        self._controlnets: dict[str, Any] = {}
        self._pipelines: dict[tuple[str, str, bool], Any] = {}
        self._ip_adapter_loaded = False
        self._offloaded_pipe: Any = None  # the pipeline whose offload hooks are installed
        self._lock = threading.Lock()
        if self.speedups.inductor_tuning:
            apply_inductor_tuning()
        self.base = self._load_base()
        self.offload = self._choose_offload(offload_mode)
        if self.offload == "none":
            self.base.to(self.placement.device)  # before the levers: fp8 quantizes on the device
        prepare_denoiser(self.base.unet, self.speedups, on_gpu=not self.placement.is_cpu)
        prepare_decoder(self.base.vae, self.speedups)
        if self.speedups.cache_prompts:
            cache_text_encoders(self.base)
        # A request's LoRAs (--lora-dir), in the UNet every pipeline shares; hot-swapped when it compiles.
        self.loras = UnetLoras(self.base, hotswap=self.speedups.compiles)

    # -- loading --------------------------------------------------------------------------
    def _load(self, part: str, ref: ModelRef, loader):
        return load_part(self.preset, part, ref, loader, self.placement.dtype_name)

    def _load_base(self):
        preset, dtype = self.preset, self.placement.dtype
        extra: dict[str, Any] = {}
        if preset.vae is not None:
            extra["vae"] = self._load(
                "vae",
                preset.vae,
                lambda p: diffusers.AutoencoderKL.from_pretrained(
                    p, dtype=dtype, local_files_only=True, variant=preset.vae.variant
                ),
            )
        extra.update(self.family.base_extra)
        extra.update(self.family.pipe_extra)
        cls = getattr(diffusers, self.family.base_class)
        pipe = self._load(
            "base",
            preset.base,
            lambda p: cls.from_pretrained(p, dtype=dtype, local_files_only=True, variant=preset.base.variant, **extra),
        )
        if preset.lora is not None:
            lora_dir = folder_of(preset.lora, "lora", preset)
            pipe.load_lora_weights(str(lora_dir), weight_name=preset.lora.weight_name)
            pipe.fuse_lora()  # fused: no per-step LoRA cost
            pipe.unload_lora_weights()
            log.info("fused lora %s into the UNet", preset.lora.source)
        if preset.scheduler == "euler-trailing":
            pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(
                pipe.scheduler.config, timestep_spacing="trailing"
            )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _choose_offload(self, requested: str) -> str:
        unet = offload.module_bytes(self.base.unet)
        # The ControlNets load on first use; each is about half a UNet (SD1.5 0.7 of 1.7 GB, SDXL union
        # 2.5 of 5.1 GB in fp16).
        controlnet = unet // 2
        everything = offload.module_bytes(*self._base_modules().values()) + controlnet
        return offload.choose_offload(requested, self.placement, everything, unet + controlnet)

    def _base_modules(self) -> dict[str, torch.nn.Module]:
        return torch_modules(self.base)

    def _controlnet(self, key: str, ref: ModelRef):
        if key not in self._controlnets:
            cls = diffusers.ControlNetUnionModel if key == "union" else diffusers.ControlNetModel
            net = self._load(
                f"controlnet.{key}",
                ref,
                lambda p: cls.from_pretrained(
                    p, dtype=self.placement.dtype, local_files_only=True, variant=ref.variant
                ),
            )
            if self.offload == "none":
                net.to(self.placement.device)
            prepare_denoiser(net, self.speedups, on_gpu=not self.placement.is_cpu)
            if self.speedups.cache_condition:
                cache_condition_embedding(net)
            if "controlnet-cond-only" in self.speedups.approximate:
                controlnet_on_cond_half(net)
            if self.speedups.skip_idle_controlnet:  # outermost: an idle step runs none of the above
                skip_idle_controlnet(net)
            self._controlnets[key] = net
        return self._controlnets[key]

    def ensure_ip_adapter(self) -> None:
        """Load the IP-Adapter and its image encoder into the shared UNet (once)."""
        if self._ip_adapter_loaded:
            return
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        preset = self.preset
        if preset.ip_adapter is None or preset.image_encoder is None:
            raise EngineOptionError(f"subject mode: preset {preset.name!r} names no ip_adapter and image_encoder")
        encoder_dir = folder_of(preset.image_encoder, "image_encoder", preset)
        encoder = self._load(
            "image_encoder",
            preset.image_encoder,
            lambda p: CLIPVisionModelWithProjection.from_pretrained(
                p, dtype=self.placement.dtype, local_files_only=True
            ),
        )
        if (encoder_dir / "preprocessor_config.json").exists():
            processor = CLIPImageProcessor.from_pretrained(encoder_dir)
        else:  # h94/IP-Adapter's encoders ship none: CLIP's defaults, at the size the encoder was built for
            side = encoder.config.image_size
            processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
        if self.offload == "none":
            encoder.to(self.placement.device)
        self.base.register_modules(image_encoder=encoder, feature_extractor=processor)
        weights = locate(preset.ip_adapter, "ip_adapter", preset)
        self._load(
            "ip_adapter",
            preset.ip_adapter,
            lambda p: self.base.load_ip_adapter(
                str(weights.parent),
                subfolder="",
                weight_name=weights.name,
                image_encoder_folder=None,
                local_files_only=True,
            ),
        )
        if self.speedups.fuse_qkv:
            # The adapter put its own processors on the cross-attentions and plain ones back on the rest.
            fuse_attention_projections(self.base.unet)
        self._pipelines.clear()  # re-wrap so every pipeline sees the image encoder
        self._offloaded_pipe = None
        self._ip_adapter_loaded = True

    @property
    def has_ip_adapter(self) -> bool:
        return self._ip_adapter_loaded

    # -- per-mode pipelines ----------------------------------------------------------------
    def pipeline_for(self, mode: ControlType, img2img: bool):
        """The pipeline for a mode, built from the loaded base (cached)."""
        with self._lock:
            if mode is ControlType.SUBJECT:
                conditioning, net_key, components = "plain", "", {}
            else:
                net_key, ref = self.preset.controlnet_for(mode)
                conditioning = "union" if net_key == "union" else "controlnet"
                components = {"controlnet": self._controlnet(net_key, ref)}
            cache_key = (conditioning, net_key, img2img)
            if cache_key not in self._pipelines:
                cls = getattr(diffusers, self.family.pipeline_classes[(conditioning, img2img)])
                pipe = cls.from_pipe(self.base, dtype=self.placement.dtype, **self.family.pipe_extra, **components)
                pipe.set_progress_bar_config(disable=True)
                self._pipelines[cache_key] = pipe
            pipe = self._pipelines[cache_key]
            if self.offload != "none" and self._offloaded_pipe is not pipe:
                offload.enable(pipe, self.offload, self.placement.device)
                self._offloaded_pipe = pipe
            return pipe

    # -- one call ------------------------------------------------------------------------------
    def _pixels_at(self, gen_w: int, gen_h: int) -> Callable[[Any], Any]:
        """How this call's control maps and init image are handed over (`preprocess.py`)."""
        return lambda images: call_pixels(images, (gen_w, gen_h), self.speedups, self.placement.device)

    def prepare(self, job: Job, gen_w: int, gen_h: int, control_map: Image.Image | None) -> tuple[Any, dict[str, Any]]:
        preset = self.preset
        img2img = job.init_image is not None
        guidance = preset.guidance_scale if job.guidance_scale is None else job.guidance_scale
        self.ignored = ignored_without_cfg(job, guidance) + unapplied_approximations(self.speedups, UNET_APPROXIMATIONS)
        knobs = knobs_for(job.control_type, job.control_intensity, img2img, preset.controlnet_scale_max)
        reference = fit(job.reference, gen_w, gen_h)
        steps = job.steps or preset.steps
        if knobs.strength is not None and int(steps * knobs.strength) < 1:
            steps = math.ceil(1 / knobs.strength)  # img2img runs steps×strength steps: keep at least one
        kwargs: dict[str, Any] = {
            "prompt": job.prompt,
            "negative_prompt": job.negative_prompt,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "num_images_per_prompt": job.batch_size,
            # Image i of a batch uses seed + i, so any one image can be reproduced alone.
            "generator": image_generators(job),
        }
        if job.control_type is ControlType.SUBJECT:
            self.ensure_ip_adapter()
        if self.has_ip_adapter:
            # Once loaded, the UNet wants image embeds on every call; scale 0 skips the adapter.
            self.base.set_ip_adapter_scale(knobs.ip_adapter_scale)
            kwargs["ip_adapter_image"] = reference
        pipe = self.pipeline_for(job.control_type, img2img)

        pixels = self._pixels_at(gen_w, gen_h)
        if job.init_image is not None:
            kwargs["image"] = pixels(fit(job.init_image, gen_w, gen_h))
            kwargs["strength"] = knobs.strength
        else:
            kwargs.update(width=gen_w, height=gen_h)
        if control_map is not None:
            if preset.uses_union_controlnet:
                kwargs["control_image"] = pixels([control_map])
                kwargs["control_mode"] = [UNION_CONTROL_MODE[job.control_type]]
            else:
                kwargs["control_image" if img2img else "image"] = pixels(control_map)
            kwargs["controlnet_conditioning_scale"] = knobs.controlnet_scale
            kwargs["control_guidance_end"] = knobs.control_guidance_end
        self._approximate(pipe, kwargs, guidance, job.batch_size)
        self._set_memory_savers(pipe, gen_w * gen_h, job.batch_size)
        return pipe, kwargs

    def multi_pipeline(self, keys: tuple[str, ...], img2img: bool):
        """SD1.5-style presets (a net per mode): one pipeline over the nets of `keys`, in that order."""
        from ref2img.engines.local.multicontrol import SkippingMultiControlNet

        with self._lock:
            nets = [self._controlnet(key, self.preset.controlnets[key]) for key in keys]
            cache_key = ("multi", ",".join(keys), img2img)
            if cache_key not in self._pipelines:
                cls = getattr(diffusers, self.family.pipeline_classes[("controlnet", img2img)])
                pipe = cls.from_pipe(
                    self.base,
                    dtype=self.placement.dtype,
                    **self.family.pipe_extra,
                    controlnet=SkippingMultiControlNet(nets),
                )
                pipe.set_progress_bar_config(disable=True)
                self._pipelines[cache_key] = pipe
            pipe = self._pipelines[cache_key]
            if self.offload != "none" and self._offloaded_pipe is not pipe:
                offload.enable(pipe, self.offload, self.placement.device)
                self._offloaded_pipe = pipe
            return pipe

    def prepare_controls(
        self, job: Job, gen_w: int, gen_h: int, control_maps: list[Image.Image]
    ) -> tuple[Any, dict[str, Any]]:
        """Several controls in one pass: the union ControlNet's conditions (one net, a mode each), or one
        net per control through a MultiControlNet; the subject through the IP-Adapter beside them."""
        preset, request = self.preset, job.request
        img2img = job.init_image is not None
        guidance = preset.guidance_scale if job.guidance_scale is None else job.guidance_scale
        self.ignored = ignored_without_cfg(job, guidance) + unapplied_approximations(self.speedups, UNET_APPROXIMATIONS)
        self.step_hooks = []
        knobs = [knobs_for(c.type, c.intensity, img2img, preset.controlnet_scale_max) for c in job.controls]
        steps = job.steps or preset.steps
        kwargs: dict[str, Any] = {
            "prompt": job.prompt,
            "negative_prompt": job.negative_prompt,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "num_images_per_prompt": job.batch_size,
            "generator": image_generators(job),
            "controlnet_conditioning_scale": [k.controlnet_scale for k in knobs],
            "control_guidance_start": [c.start for c in job.controls],
            "control_guidance_end": [
                c.end if c.end is not None else k.control_guidance_end for c, k in zip(job.controls, knobs, strict=True)
            ],
        }
        if request.keeps_subject:
            self.ensure_ip_adapter()
        if self.has_ip_adapter:
            subject = knobs_for(ControlType.SUBJECT, request.control_intensity, False, preset.controlnet_scale_max)
            self.base.set_ip_adapter_scale(subject.ip_adapter_scale if request.keeps_subject else 0.0)
            kwargs["ip_adapter_image"] = fit(job.reference, gen_w, gen_h)
        pixels = self._pixels_at(gen_w, gen_h)
        if preset.uses_union_controlnet:
            pipe = self.pipeline_for(job.controls[0].type, img2img)
            kwargs["control_image"] = pixels(control_maps)
            kwargs["control_mode"] = [UNION_CONTROL_MODE[c.type] for c in job.controls]
        else:
            keys = tuple(self.preset.controlnet_for(c.type)[0] for c in job.controls)
            pipe = self.multi_pipeline(keys, img2img)
            kwargs["control_image" if img2img else "image"] = pixels(control_maps)
        if job.init_image is not None:
            kwargs["image"] = pixels(fit(job.init_image, gen_w, gen_h))
            kwargs["strength"] = knobs[0].strength
        else:
            kwargs.update(width=gen_w, height=gen_h)
        controlnet = getattr(pipe, "controlnet", None)
        for net in getattr(controlnet, "nets", [controlnet]):
            if net is not None and hasattr(net, "ref2img_cfg_batch"):
                net.ref2img_cfg_batch = 2 * job.batch_size if guidance > 1 else None
        if "cfg-cut" in self.speedups.approximate:
            self.ignored.append("cfg-cut (not with several controls)")
        self._set_memory_savers(pipe, gen_w * gen_h, job.batch_size)
        return pipe, kwargs

    def inpaint_pipeline(self):
        """The inpainting pipeline on the loaded base (cached); a preset's own inpainting checkpoint would
        be its base, loaded the same way."""
        with self._lock:
            key = ("inpaint", "", False)
            if key not in self._pipelines:
                cls = getattr(diffusers, self.family.inpaint_class)
                pipe = cls.from_pipe(self.base, dtype=self.placement.dtype, **self.family.pipe_extra)
                pipe.set_progress_bar_config(disable=True)
                self._pipelines[key] = pipe
            pipe = self._pipelines[key]
            if self.offload != "none" and self._offloaded_pipe is not pipe:
                offload.enable(pipe, self.offload, self.placement.device)
                self._offloaded_pipe = pipe
            return pipe

    def prepare_repaint(self, job: RepaintJob, gen_w: int, gen_h: int, mask: Image.Image) -> tuple[Any, dict[str, Any]]:
        preset = self.preset
        guidance = preset.guidance_scale
        self.ignored = ["negative_prompt (guidance 1: no CFG)"] if job.request.negative_prompt and guidance <= 1 else []
        self.step_hooks = []
        kwargs: dict[str, Any] = {
            "prompt": job.request.prompt,
            "negative_prompt": job.request.negative_prompt,
            "image": fit(job.image, gen_w, gen_h),
            "mask_image": mask,
            "width": gen_w,
            "height": gen_h,
            "strength": 1.0,  # the masked area is drawn anew from the prompt; the rest is kept by the compose
            "num_inference_steps": job.steps or preset.steps,
            "guidance_scale": guidance,
            "num_images_per_prompt": 1,
            "generator": [torch.Generator("cpu").manual_seed(job.seed)],
        }
        if self.has_ip_adapter:  # once loaded, the UNet wants image embeds on every call; scale 0 skips it
            self.base.set_ip_adapter_scale(0.0)
            kwargs["ip_adapter_image"] = kwargs["image"]
        pipe = self.inpaint_pipeline()
        self._set_memory_savers(pipe, gen_w * gen_h, 1)
        return pipe, kwargs

    def _approximate(self, pipe, kwargs: dict[str, Any], guidance: float, batch_size: int) -> None:
        """The opt-in output-changing levers for this call (approximations.py); where one cannot apply,
        the run record says why."""
        chosen = self.speedups.approximate
        self.step_hooks = []
        controlnet = getattr(pipe, "controlnet", None)
        if controlnet is not None and hasattr(controlnet, "ref2img_cfg_batch"):
            controlnet.ref2img_cfg_batch = 2 * batch_size if guidance > 1 else None
        if "cfg-cut" not in chosen:
            return
        if guidance <= 1:
            self.ignored.append(f"cfg-cut (guidance {guidance:g}: no CFG)")
        elif "control_guidance_end" not in kwargs:
            self.ignored.append("cfg-cut (no ControlNet in this mode)")
        elif self.has_ip_adapter:  # its image embeds are a CFG pair no step callback can reach
            self.ignored.append("cfg-cut (the IP-Adapter is loaded)")
        else:
            self.step_hooks.append(CfgCut(kwargs["control_guidance_end"]))

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

    def preview(self, latents: torch.Tensor) -> Image.Image:
        return latent_preview(latents, self.family.latent_rgb)

    # -- what is loaded ---------------------------------------------------------------------
    def modules(self) -> dict[str, torch.nn.Module]:
        """Every loaded model by name: the base's components, `controlnet.<key>` for each ControlNet."""
        named = self._base_modules()
        named.update({f"controlnet.{key}": net for key, net in self._controlnets.items()})
        return named

    def cached_pipelines(self) -> list[Any]:
        return [self.base, *self._pipelines.values()]
