"""Subject mode on FLUX.2 [klein] 4B (Black Forest Labs, Apache-2.0): a 4B flow transformer that takes
reference images natively (multi-reference editing), so a subject is kept without IP-Adapter. A
family whose own model has no reference input (zimage) names it as the preset part
`extra.subject_base` and hands it its subject jobs.

| mode | knob | at 0 | at 1 |
|---|---|---|---|
| subject | none: the model takes the reference as it is; `control_intensity` is ignored (logged) | – | – |
| subject + a distinct init image | both go in as reference images, the reference first | – | – |

Its text encoder is Qwen3-4B, as Z-Image's: where the two checkpoints hold the same weights (the
real ones do) the family hands it the one it loaded, and klein reads that (families/sharing.py).

Its previews use ComfyUI's FLUX.2 factors (comfy/latent_formats.py, class Flux2: 32 VAE channels,
each token 2×2 of them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import diffusers
import torch

from ref2img.engines.base import Job, ModelMissingError
from ref2img.engines.local.device import Placement
from ref2img.engines.local.families.calls import image_generators, torch_modules
from ref2img.engines.local.families.loading import load_part
from ref2img.engines.local.families.preview import latent_preview
from ref2img.engines.local.families.sharing import holds_same_weights
from ref2img.engines.local.hub import folder_of
from ref2img.engines.local.presets import ModelRef, Preset

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger("ref2img.engine")

TRANSFORMER_BLOCKS = ("Flux2TransformerBlock", "Flux2SingleTransformerBlock")  # regional compile, fp8
MIN_REFERENCE_PX = 64  # Flux2ImageProcessor.check_image_input's floor
STEPS = 4  # the distilled 4B's steps (its model card; diffusers' integration test runs 4 at guidance 1.0)
GUIDANCE = 1.0
PART = "extra.subject_base"
LATENT_RGB = (
    (0.0058, 0.0113, 0.0073),
    (0.0495, 0.0443, 0.0836),
    (-0.0099, 0.0096, 0.0644),
    (0.2144, 0.3009, 0.3652),
    (0.0166, -0.0039, -0.0054),
    (0.0157, 0.0103, -0.0160),
    (-0.0398, 0.0902, -0.0235),
    (-0.0052, 0.0095, 0.0109),
    (-0.3527, -0.2712, -0.1666),
    (-0.0301, -0.0356, -0.0180),
    (-0.0107, 0.0078, 0.0013),
    (0.0746, 0.0090, -0.0941),
    (0.0156, 0.0169, 0.0070),
    (-0.0034, -0.0040, -0.0114),
    (0.0032, 0.0181, 0.0080),
    (-0.0939, -0.0008, 0.0186),
    (0.0018, 0.0043, 0.0104),
    (0.0284, 0.0056, -0.0127),
    (-0.0024, -0.0022, -0.0030),
    (0.1207, -0.0026, 0.0065),
    (0.0128, 0.0101, 0.0142),
    (0.0137, -0.0072, -0.0007),
    (0.0095, 0.0092, -0.0059),
    (0.0000, -0.0077, -0.0049),
    (-0.0465, -0.0204, -0.0312),
    (0.0095, 0.0012, -0.0066),
    (0.0290, -0.0034, 0.0025),
    (0.0220, 0.0169, -0.0048),
    (-0.0332, -0.0457, -0.0468),
    (-0.0085, 0.0389, 0.0609),
    (-0.0076, 0.0003, -0.0043),
    (-0.0111, -0.0460, -0.0614),
)


class KleinSubject:
    """FLUX.2 [klein] loaded on first use, as another family's subject model. With an offload mode the
    caller installs the offload hooks before each call (the modules it shares follow the last pipeline
    that installed them); without, it goes to the device at load."""

    def __init__(
        self,
        ref: ModelRef,
        preset: Preset,
        placement: Placement,
        offload_mode: str,
        text_encoder: torch.nn.Module | None = None,
        speed_up: Callable[[torch.nn.Module, tuple[str, ...]], None] | None = None,
    ):
        self.ref = ref
        self.preset = preset
        self.placement = placement
        self.offload = offload_mode
        self._offered_text_encoder = text_encoder  # the caller's, used if klein's checkpoint holds the same
        self._speed_up = speed_up  # the caller's speed levers, applied to klein's transformer at load
        self._pipe: Any = None
        self.ignored: list[str] = []
        self._latent_hw = (0, 0)  # the packed latent grid of the current call, for its previews

    @property
    def shares_text_encoder(self) -> bool:
        return self._pipe is not None and self._pipe.text_encoder is self._offered_text_encoder

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    @property
    def pipe(self):
        if self._pipe is None:
            dtype = self.placement.dtype

            def load(path: Path):
                shared = self._shareable(path / "text_encoder")
                parts = {"text_encoder": shared} if shared is not None else {}
                return diffusers.Flux2KleinPipeline.from_pretrained(path, dtype=dtype, local_files_only=True, **parts)

            pipe = load_part(self.preset, PART, self.ref, load, self.placement.dtype_name)
            pipe.set_progress_bar_config(disable=True)
            if self.offload == "none":
                pipe.to(self.placement.device)
            if self._speed_up is not None:
                self._speed_up(pipe.transformer, TRANSFORMER_BLOCKS)
            self._pipe = pipe
        return self._pipe

    def _shareable(self, folder: Path) -> torch.nn.Module | None:
        offered = self._offered_text_encoder
        # Sequential offload streams the weights from a map of its own: nothing to share there.
        if offered is None or self.offload == "sequential" or not holds_same_weights(offered, folder):
            return None
        log.info("FLUX.2 klein reads the text encoder already loaded (%s holds the same weights)", folder)
        return offered

    def prepare(self, job: Job, gen_w: int, gen_h: int) -> tuple[Any, dict[str, Any]]:
        pipe = self.pipe
        # As given: the pipeline sizes its references itself (and refuses any side under 64 px).
        references = [at_least(job.reference, MIN_REFERENCE_PX)]
        if job.init_image is not None and job.init_image is not job.reference:
            references.append(at_least(job.init_image, MIN_REFERENCE_PX))
        guidance = GUIDANCE if job.guidance_scale is None else job.guidance_scale
        self.ignored = ["control_intensity (FLUX.2 klein takes the reference as it is)"]
        if job.negative_prompt:
            self.ignored.append("negative_prompt (FLUX.2 klein [distilled] has no negative prompt)")
        log.info("subject mode (FLUX.2 klein) ignores %s", ", ".join(self.ignored))
        scale = pipe.vae_scale_factor * 2  # the transformer's tokens are 2×2 VAE latents
        self._latent_hw = (gen_h // scale, gen_w // scale)
        kwargs = {
            "image": references,
            "prompt": job.prompt,
            "num_inference_steps": job.steps or STEPS,
            "guidance_scale": guidance,
            "num_images_per_prompt": job.batch_size,
            "generator": image_generators(job),
            "width": gen_w,
            "height": gen_h,
            "text_encoder_out_layers": text_encoder_layers(pipe),
        }
        return pipe, kwargs

    def preview(self, latents: torch.Tensor) -> Image.Image:
        """Packed tokens (batch, h·w, 4·C) back to C channels at 2h × 2w, then ComfyUI's projection."""
        height, width = self._latent_hw
        batch, _tokens, packed = latents.shape
        grid = latents.reshape(batch, height, width, packed).permute(0, 3, 1, 2)  # (batch, 4C, h, w)
        channels = packed // 4
        unpacked = grid.reshape(batch, channels, 2, 2, height, width).permute(0, 1, 4, 2, 5, 3)
        return latent_preview(unpacked.reshape(batch, channels, height * 2, width * 2), LATENT_RGB)

    def modules(self) -> dict[str, torch.nn.Module]:
        """Its own modules: a shared text encoder is the caller's to name."""
        if self._pipe is None:
            return {}
        return {
            f"subject.{name}": module
            for name, module in torch_modules(self._pipe).items()
            if module is not self._offered_text_encoder
        }


def weight_bytes(ref: ModelRef, preset: Preset, text_encoder: torch.nn.Module | None) -> int:
    """What loading klein would add, read from its files before it loads (so `--offload auto` can weigh
    it with the family's own models): its transformer and VAE, and its text encoder unless it holds
    `text_encoder`'s weights. 0 while it is not downloaded (its first job says so by name)."""
    try:
        folder = folder_of(ref, PART, preset)
    except ModelMissingError:
        return 0
    parts = ["transformer", "vae"]
    if text_encoder is None or not holds_same_weights(text_encoder, folder / "text_encoder"):
        parts.append("text_encoder")
    return sum(file.stat().st_size for part in parts for file in (folder / part).glob("*.safetensors"))


def at_least(image: Image.Image, side: int) -> Image.Image:
    """The image, enlarged (aspect kept) when a side is under `side` pixels."""
    short = min(image.size)
    if short >= side:
        return image
    scale = side / short
    return image.resize((max(side, round(image.width * scale)), max(side, round(image.height * scale))))


def text_encoder_layers(pipe) -> tuple[int, ...]:
    """The text encoder layers whose states the transformer reads, as many as its joint attention width
    holds, evenly spaced: (9, 18, 27) for the real 36-layer encoder (diffusers' default), (1,) for a tiny one."""
    count = max(1, pipe.transformer.config.joint_attention_dim // pipe.text_encoder.config.hidden_size)
    layers = pipe.text_encoder.config.num_hidden_layers
    return tuple(round((index + 1) * layers / (count + 1)) for index in range(count))
