"""Presets: which base model and which per-mode parts the local engine loads.

A preset names each part by a Hugging Face repo id or a local path. Any part can be overridden from
a preset file (JSON or TOML, `{"extends": "sd15", "base": "/models/my-sd15"}`) or from flags
(`part=value`). Relative paths in a file are resolved against the file's folder. `ref2img models tiny`
writes such a file (`ref2img-preset.json`) next to the tiny models it builds.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ref2img.engines.base import EngineError, EngineOptionError
from ref2img.engines.local.families import FAMILY_MODULES
from ref2img.protocol import ControlType

PRESET_FILE_NAME = "ref2img-preset.json"

# Mode ids of the union ControlNet (xinsir/controlnet-union-sdxl-1.0 model card).
UNION_CONTROL_MODE = {ControlType.POSE: 0, ControlType.DEPTH: 1, ControlType.EDGE: 3}
CONTROL_MODE_NAMES = {ControlType.EDGE: "edge", ControlType.POSE: "pose", ControlType.DEPTH: "depth"}


@dataclass(frozen=True)
class ModelRef:
    """Where one model part lives: a hub repo id or a local path, plus what inside it to use."""

    source: str
    subfolder: str | None = None
    weight_name: str | None = None  # one file inside (IP-Adapter, LoRA, ONNX)
    variant: str | None = None  # e.g. "fp16": load `*.fp16.safetensors`
    files: tuple[str, ...] | None = None  # what `models pull` downloads (hub allow-patterns)

    @property
    def is_local(self) -> bool:
        return self.source.startswith(("/", ".", "~")) or Path(self.source).exists()


@dataclass(frozen=True)
class Preset:
    name: str
    family: str  # a family plug-in (engines/local/families/FAMILY_MODULES)
    description: str
    base: ModelRef
    # Either {"union": ref} (one net for edge/pose/depth) or {"edge": ref, "pose": ref, "depth": ref}.
    controlnets: dict[str, ModelRef]
    depth_estimator: ModelRef
    pose_detector: ModelRef
    pose_estimator: ModelRef
    subject_segmenter: ModelRef | None = None  # recognition's subject mask; GrabCut without one
    ip_adapter: ModelRef | None = None  # the UNet families' subject mode
    image_encoder: ModelRef | None = None
    vae: ModelRef | None = None
    lora: ModelRef | None = None
    scheduler: str | None = None  # "euler-trailing" for distilled few-step LoRAs
    steps: int = 30
    guidance_scale: float = 5.0
    max_pixels: int = 1024 * 1024  # larger requests are generated at this area, then resized
    size_multiple: int = 64
    controlnet_scale_max: float = 1.0
    # Parts only a family knows (`extra.<name>` in overrides and `ref2img models list`), e.g. the diffusers
    # config of a ControlNet shipped as one file.
    extra: dict[str, ModelRef] = field(default_factory=dict)
    source_file: str | None = field(default=None, compare=False)

    @property
    def uses_union_controlnet(self) -> bool:
        return "union" in self.controlnets

    def controlnet_for(self, mode: ControlType) -> tuple[str, ModelRef]:
        key = "union" if self.uses_union_controlnet else CONTROL_MODE_NAMES[mode]
        if key not in self.controlnets:
            raise EngineError(f"preset {self.name!r} has no ControlNet for {CONTROL_MODE_NAMES[mode]} mode")
        return key, self.controlnets[key]

    def parts(self) -> dict[str, ModelRef]:
        """Every model part by its override name (`controlnet.edge`, `ip_adapter`, ...)."""
        named = {
            "base": self.base,
            "vae": self.vae,
            "lora": self.lora,
            "ip_adapter": self.ip_adapter,
            "image_encoder": self.image_encoder,
            "depth_estimator": self.depth_estimator,
            "pose_detector": self.pose_detector,
            "pose_estimator": self.pose_estimator,
            "subject_segmenter": self.subject_segmenter,
        }
        named.update({f"controlnet.{key}": ref for key, ref in self.controlnets.items()})
        named.update({f"extra.{key}": ref for key, ref in self.extra.items()})
        return {key: ref for key, ref in named.items() if ref is not None}

    @property
    def pull_target(self) -> str:
        return self.source_file or self.name


def _hub(repo: str, *files: str, subfolder: str | None = None, weight: str | None = None, variant=None) -> ModelRef:
    return ModelRef(repo, subfolder=subfolder, weight_name=weight, variant=variant, files=files or None)


# What each part's loader reads, file by file (docs/models.md has the repos' real layouts and sources).
# Hub allow-patterns match "*" across "/", so they name folders: a broad "*/*.fp16.safetensors" also
# fetched SD 1.5's safety checker (608 MB) that the loader never loads.
_FP16_WEIGHTS = "diffusion_pytorch_model.fp16.safetensors"  # half the download of the fp32 file
_SD15_BASE_FILES = (
    "model_index.json",
    "feature_extractor/preprocessor_config.json",
    "scheduler/scheduler_config.json",
    "tokenizer/*",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.fp16.safetensors",
)
_SDXL_BASE_FILES = (  # its own VAE is replaced by madebyollin/sdxl-vae-fp16-fix: config only
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/*",
    "tokenizer_2/*",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.fp16.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json",
)
_DEPTH = _hub(
    "depth-anything/Depth-Anything-V2-Small-hf", "config.json", "preprocessor_config.json", "model.safetensors"
)
_POSE_DETECTOR = _hub("yzd-v/DWPose", "yolox_l.onnx", weight="yolox_l.onnx")
_POSE_ESTIMATOR = _hub("yzd-v/DWPose", "dw-ll_ucoco_384.onnx", weight="dw-ll_ucoco_384.onnx")
# BiRefNet-lite (MIT; ZhengPeng7/BiRefNet_lite), the ONNX export its model card points transformers.js at.
_SEGMENTER = _hub("onnx-community/BiRefNet_lite-ONNX", "onnx/model.onnx", subfolder="onnx", weight="model.onnx")
_VIT_H_ENCODER = _hub(  # not its pytorch_model.bin: the same 2.5 GB again, as a pickle
    "h94/IP-Adapter",
    "models/image_encoder/config.json",
    "models/image_encoder/model.safetensors",
    subfolder="models/image_encoder",
)

_SDXL = Preset(
    name="sdxl",
    family="sdxl",
    description="SDXL base 1.0 + union ControlNet (edge/pose/depth) + IP-Adapter plus; best quality, ~10 GB GPU",
    base=_hub("stabilityai/stable-diffusion-xl-base-1.0", *_SDXL_BASE_FILES, variant="fp16"),
    vae=_hub("madebyollin/sdxl-vae-fp16-fix", "config.json", "diffusion_pytorch_model.safetensors"),
    controlnets={
        "union": _hub("xinsir/controlnet-union-sdxl-1.0", "config.json", "diffusion_pytorch_model.safetensors")
    },
    ip_adapter=_hub(
        "h94/IP-Adapter",
        "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
        subfolder="sdxl_models",
        weight="ip-adapter-plus_sdxl_vit-h.safetensors",
    ),
    image_encoder=_VIT_H_ENCODER,
    depth_estimator=_DEPTH,
    pose_detector=_POSE_DETECTOR,
    pose_estimator=_POSE_ESTIMATOR,
    subject_segmenter=_SEGMENTER,
    steps=30,
    guidance_scale=5.0,
    max_pixels=1536 * 1536,
    controlnet_scale_max=0.9,
)

# Tongyi-MAI/Z-Image-Turbo's layout (its model page, "Files and versions"); the text encoder and the
# transformer are three shards each, named by their index files.
_ZIMAGE_BASE_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/*",
    "text_encoder/config.json",
    "text_encoder/model.safetensors.index.json",
    "text_encoder/model-*-of-*.safetensors",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors.index.json",
    "transformer/diffusion_pytorch_model-*-of-*.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)
# black-forest-labs/FLUX.2-klein-4B in diffusers' layout (its text_encoder page; the rest by the same
# pattern): not the root's one-file checkpoint (flux-2-klein-4b.safetensors, 7.75 GB), which no loader here reads.
_KLEIN_4B_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "tokenizer/*",
    "text_encoder/config.json",
    "text_encoder/model.safetensors.index.json",
    "text_encoder/model-*-of-*.safetensors",
    "transformer/*.json",
    "transformer/diffusion_pytorch_model*.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)
_ZIMAGE_TURBO = Preset(
    name="zimage-turbo",
    family="zimage",
    description="Z-Image-Turbo 6B + Fun ControlNet Union (edge/pose/depth, 8 steps, no CFG), FLUX.2 klein 4B (subject)",
    base=_hub("Tongyi-MAI/Z-Image-Turbo", *_ZIMAGE_BASE_FILES),
    controlnets={
        "union": _hub(
            "alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union",
            "Z-Image-Turbo-Fun-Controlnet-Union.safetensors",
            weight="Z-Image-Turbo-Fun-Controlnet-Union.safetensors",
        )
    },
    # The ControlNet is one file in the original layout; its diffusers config is the one diffusers'
    # single-file loader itself points at.
    extra={
        "controlnet_config": _hub("hlky/Z-Image-Turbo-Fun-Controlnet-Union", "config.json"),
        "subject_base": _hub("black-forest-labs/FLUX.2-klein-4B", *_KLEIN_4B_FILES),
    },
    depth_estimator=_DEPTH,
    pose_detector=_POSE_DETECTOR,
    pose_estimator=_POSE_ESTIMATOR,
    subject_segmenter=_SEGMENTER,
    steps=8,
    guidance_scale=0.0,
    max_pixels=1536 * 1536,
    size_multiple=16,
    controlnet_scale_max=0.8,
)

PRESETS: dict[str, Preset] = {
    "sdxl": _SDXL,
    "sdxl-fast": dataclasses.replace(
        _SDXL,
        name="sdxl-fast",
        description="sdxl with the SDXL-Lightning 8-step LoRA: ~4x faster, prompts need no negative",
        lora=_hub(
            "ByteDance/SDXL-Lightning",
            "sdxl_lightning_8step_lora.safetensors",
            weight="sdxl_lightning_8step_lora.safetensors",
        ),
        scheduler="euler-trailing",
        steps=8,
        guidance_scale=1.0,
    ),
    "sd15": Preset(
        name="sd15",
        family="sd15",
        description="SD 1.5 + ControlNet v1.1 canny/openpose/depth + IP-Adapter plus; for small GPUs and CPUs",
        base=_hub("stable-diffusion-v1-5/stable-diffusion-v1-5", *_SD15_BASE_FILES, variant="fp16"),
        controlnets={
            "edge": _hub("lllyasviel/control_v11p_sd15_canny", "config.json", _FP16_WEIGHTS, variant="fp16"),
            "pose": _hub("lllyasviel/control_v11p_sd15_openpose", "config.json", _FP16_WEIGHTS, variant="fp16"),
            "depth": _hub("lllyasviel/control_v11f1p_sd15_depth", "config.json", _FP16_WEIGHTS, variant="fp16"),
        },
        ip_adapter=_hub(
            "h94/IP-Adapter",
            "models/ip-adapter-plus_sd15.safetensors",
            subfolder="models",
            weight="ip-adapter-plus_sd15.safetensors",
        ),
        image_encoder=_VIT_H_ENCODER,
        depth_estimator=_DEPTH,
        pose_detector=_POSE_DETECTOR,
        pose_estimator=_POSE_ESTIMATOR,
        subject_segmenter=_SEGMENTER,
        steps=25,
        guidance_scale=7.5,
        max_pixels=768 * 768,
    ),
    "zimage-turbo": _ZIMAGE_TURBO,
}

_SCALAR_FIELDS = {
    "steps": int,
    "guidance_scale": float,
    "max_pixels": int,
    "size_multiple": int,
    "controlnet_scale_max": float,
    "scheduler": str,
    "family": str,
    "description": str,
}
# The preset every command and the server run when none is named (`serve`, `worker`, `generate`,
# `models pull`, the studio, MCP, the OpenAI route's plain model names). Issue 39 makes it zimage-turbo
# once that preset's figures under a 24 GiB cap are measured on a GPU.
DEFAULT_PRESET = "sdxl"


def preset_names() -> str:
    """The built-in presets, as CLI help lists them."""
    return ", ".join(PRESETS)


def resolve_preset(model: str | Path | None, overrides: dict[str, str] | None = None) -> Preset:
    """A preset name, a folder holding `ref2img-preset.json`, or a preset file; then flag overrides."""
    model = str(model or DEFAULT_PRESET)
    if model in PRESETS:
        preset = PRESETS[model]
    else:
        path = Path(model).expanduser()
        if path.is_dir() and (path / PRESET_FILE_NAME).is_file():
            path = path / PRESET_FILE_NAME
        if not path.is_file():
            raise EngineOptionError(
                f"unknown model {model!r}: give a preset ({', '.join(PRESETS)}), a folder with "
                f"{PRESET_FILE_NAME} (e.g. from `ref2img models tiny DIR`), or a preset file"
            )
        preset = load_preset_file(path)
    return apply_overrides(preset, overrides or {}, base_dir=Path.cwd()) if overrides else preset


def load_preset_file(path: Path) -> Preset:
    try:
        text = path.read_text()
        spec = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise EngineOptionError(f"cannot read preset file {path}: {exc}") from None
    parent = PRESETS.get(spec.pop("extends", None) or "")
    if parent is None:
        required = {
            "family",
            "base",
            "controlnets",
            "depth_estimator",
            "pose_detector",
            "pose_estimator",
        }
        missing = sorted(required - spec.keys())
        if missing:
            raise EngineOptionError(f"preset file {path} lacks {', '.join(missing)} (or an `extends` preset)")
        # No optional part is inherited from a preset the file does not name: only the scalar defaults.
        parent = dataclasses.replace(
            _SDXL, vae=None, lora=None, scheduler=None, ip_adapter=None, image_encoder=None, subject_segmenter=None
        )
    name = spec.pop("name", str(path.parent.name if path.name == PRESET_FILE_NAME else path.stem))
    preset = dataclasses.replace(
        parent, name=name, source_file=str(path), controlnets=dict(parent.controlnets), extra=dict(parent.extra)
    )
    if "controlnets" in spec:
        preset = dataclasses.replace(preset, controlnets={})
        for key, value in spec.pop("controlnets").items():
            spec[f"controlnet.{key}"] = value
    for key, value in spec.pop("extra", {}).items():
        spec[f"extra.{key}"] = value
    return apply_overrides(preset, spec, base_dir=path.parent)


def apply_overrides(preset: Preset, overrides: dict[str, Any], base_dir: Path) -> Preset:
    changes: dict[str, Any] = {}
    controlnets = dict(preset.controlnets)
    extra = dict(preset.extra)
    for key, value in overrides.items():
        if key in _SCALAR_FIELDS:
            if value is None:
                changes[key] = None
                continue
            try:
                changes[key] = _SCALAR_FIELDS[key](value)
            except ValueError:
                raise EngineOptionError(
                    f"preset override {key}: {value!r} is not a {_SCALAR_FIELDS[key].__name__}"
                ) from None
            if key == "family" and changes[key] not in FAMILY_MODULES:
                raise EngineOptionError(
                    f"preset family: {changes[key]!r} is not a model family; one of {', '.join(FAMILY_MODULES)}"
                )
            if key == "steps" and not 1 <= changes[key] <= 500:  # schedulers know 1000 training steps
                raise EngineOptionError(f"preset override steps: must be from 1 to 500 (got {changes[key]})")
        elif key.startswith("controlnet."):
            controlnets[key.removeprefix("controlnet.")] = _model_ref(value, base_dir)
        elif key.startswith("extra."):
            if value in (None, "", "none"):
                extra.pop(key.removeprefix("extra."), None)
            else:
                extra[key.removeprefix("extra.")] = _model_ref(value, base_dir)
        elif key in {
            "base",
            "vae",
            "lora",
            "ip_adapter",
            "image_encoder",
            "depth_estimator",
            "pose_detector",
            "pose_estimator",
            "subject_segmenter",
        }:
            changes[key] = None if value in (None, "", "none") else _model_ref(value, base_dir)
        else:
            raise EngineOptionError(f"unknown preset part {key!r}")
    if "union" in controlnets and len(controlnets) > 1:
        # A union net given explicitly replaces per-mode nets, and the other way round.
        explicit = {k.removeprefix("controlnet.") for k in overrides if k.startswith("controlnet.")}
        controlnets = {k: v for k, v in controlnets.items() if k in explicit} or controlnets
    return dataclasses.replace(preset, controlnets=controlnets, extra=extra, **changes)


def _model_ref(value: Any, base_dir: Path) -> ModelRef:
    spec = {"source": value} if isinstance(value, str) else dict(value)
    source = spec["source"]
    if not source.startswith(("/", "~")) and (source.startswith(".") or (base_dir / source).exists()):
        spec["source"] = str((base_dir / source).resolve())
    if "files" in spec and spec["files"] is not None:
        spec["files"] = tuple(spec["files"])
    return ModelRef(**spec)
