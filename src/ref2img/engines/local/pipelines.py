"""One loaded base model, and the per-mode diffusers pipelines built on it without reloading.

The base (UNet, VAE, text encoders) loads once. Each (mode family, img2img?) pair gets its pipeline
class through `from_pipe`, which re-wraps the same modules; ControlNets and the IP-Adapter load on
first use and stay. Switching modes therefore never reads the base from disk again.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import diffusers
import torch

from ref2img.engines.base import ModelMissingError
from ref2img.engines.local.device import Placement
from ref2img.engines.local.hub import folder_of, locate
from ref2img.engines.local.presets import ModelRef, Preset
from ref2img.protocol import ControlType

log = logging.getLogger("ref2img.engine")

# (family, conditioning, img2img) -> diffusers pipeline class name
_PIPELINE_CLASSES = {
    ("sd15", "controlnet", False): "StableDiffusionControlNetPipeline",
    ("sd15", "controlnet", True): "StableDiffusionControlNetImg2ImgPipeline",
    ("sd15", "plain", False): "StableDiffusionPipeline",
    ("sd15", "plain", True): "StableDiffusionImg2ImgPipeline",
    ("sdxl", "controlnet", False): "StableDiffusionXLControlNetPipeline",
    ("sdxl", "controlnet", True): "StableDiffusionXLControlNetImg2ImgPipeline",
    ("sdxl", "union", False): "StableDiffusionXLControlNetUnionPipeline",
    ("sdxl", "union", True): "StableDiffusionXLControlNetUnionImg2ImgPipeline",
    ("sdxl", "plain", False): "StableDiffusionXLPipeline",
    ("sdxl", "plain", True): "StableDiffusionXLImg2ImgPipeline",
}
_BASE_CLASS = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}


# What a missing or half-downloaded model raises from `from_pretrained`.
_LOAD_ERRORS = (OSError, ValueError, KeyError)


class PipelineSet:
    def __init__(self, preset: Preset, placement: Placement, compile_unet: bool = False):
        self.preset = preset
        self.placement = placement
        self._controlnets: dict[str, Any] = {}
        self._pipelines: dict[tuple[str, str, bool], Any] = {}
        self._ip_adapter_loaded = False
        self._lock = threading.Lock()
        self.base = self._load_base(compile_unet)

    # -- loading --------------------------------------------------------------------------
    def _load(self, part: str, ref: ModelRef, loader):
        path = folder_of(ref, part, self.preset)
        try:
            return loader(path)
        except _LOAD_ERRORS as exc:
            raise ModelMissingError(
                f"The {part} model of preset {self.preset.name!r} at {path} could not be loaded "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                f"fetch it again with `ref2img models pull {self.preset.pull_target}`."
            ) from None

    def _load_base(self, compile_unet: bool):
        preset, dtype = self.preset, self.placement.dtype
        extra: dict[str, Any] = {}
        if preset.vae is not None:
            extra["vae"] = self._load("vae", preset.vae, lambda p: diffusers.AutoencoderKL.from_pretrained(
                p, dtype=dtype, local_files_only=True, variant=preset.vae.variant))
        if preset.family == "sd15":
            extra.update(safety_checker=None, requires_safety_checker=False)
        cls = getattr(diffusers, _BASE_CLASS[preset.family])
        pipe = self._load("base", preset.base, lambda p: cls.from_pretrained(
            p, dtype=dtype, local_files_only=True, variant=preset.base.variant, **extra))
        if preset.lora is not None:
            lora_dir = folder_of(preset.lora, "lora", preset)
            pipe.load_lora_weights(str(lora_dir), weight_name=preset.lora.weight_name)
            pipe.fuse_lora()  # fused: no per-step LoRA cost
            pipe.unload_lora_weights()
        if preset.scheduler == "euler-trailing":
            pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(
                pipe.scheduler.config, timestep_spacing="trailing")
        pipe.to(self.placement.device)
        pipe.set_progress_bar_config(disable=True)
        if not self.placement.is_cpu:
            pipe.unet.to(memory_format=torch.channels_last)
        if compile_unet:
            pipe.unet = torch.compile(pipe.unet, mode="max-autotune-no-cudagraphs")
        log.info("loaded base %s (%s) on %s", preset.base.source, preset.family, self.placement.device)
        return pipe

    def _controlnet(self, key: str, ref: ModelRef):
        if key not in self._controlnets:
            cls = diffusers.ControlNetUnionModel if key == "union" else diffusers.ControlNetModel
            net = self._load(f"controlnet.{key}", ref, lambda p: cls.from_pretrained(
                p, dtype=self.placement.dtype, local_files_only=True, variant=ref.variant))
            net.to(self.placement.device)
            if not self.placement.is_cpu:
                net.to(memory_format=torch.channels_last)
            self._controlnets[key] = net
        return self._controlnets[key]

    def ensure_ip_adapter(self) -> None:
        """Load the IP-Adapter and its image encoder into the shared UNet (once)."""
        if self._ip_adapter_loaded:
            return
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        preset = self.preset
        encoder_dir = folder_of(preset.image_encoder, "image_encoder", preset)
        encoder = self._load("image_encoder", preset.image_encoder, lambda p: CLIPVisionModelWithProjection.from_pretrained(
            p, dtype=self.placement.dtype, local_files_only=True))
        processor = (CLIPImageProcessor.from_pretrained(encoder_dir)
                     if (encoder_dir / "preprocessor_config.json").exists() else CLIPImageProcessor())
        self.base.register_modules(image_encoder=encoder.to(self.placement.device), feature_extractor=processor)
        weights = locate(preset.ip_adapter, "ip_adapter", preset)
        self._load("ip_adapter", preset.ip_adapter, lambda p: self.base.load_ip_adapter(
            str(weights.parent), subfolder="", weight_name=weights.name, image_encoder_folder=None,
            local_files_only=True))
        self._pipelines.clear()  # re-wrap so every pipeline sees the image encoder
        self._ip_adapter_loaded = True
        log.info("loaded IP-Adapter %s", weights.name)

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
                cls = getattr(diffusers, _PIPELINE_CLASSES[(self.preset.family, conditioning, img2img)])
                pipe = cls.from_pipe(self.base, **components)
                pipe.set_progress_bar_config(disable=True)
                self._pipelines[cache_key] = pipe
            return self._pipelines[cache_key]
