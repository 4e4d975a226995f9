"""Random-weight models with the presets' architectures, built offline and saved like real ones.

`ref2img models tiny DIR` builds the `tiny` scale: every part in seconds, for tests and for trying the
plumbing without the real weights (images come out as coloured noise, by design). `bench/engine.py`
builds the `full` scale: the real SD1.5 / SDXL shapes, since speed does not depend on weight values.
Both load through the engine's own code (`save_pretrained`, then `from_pretrained(local_files_only=True)`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import torch

from ref2img.engines.local.presets import PRESET_FILE_NAME

TINY_SIZE = 64  # pixels; the tiny preset generates at about this size, then resizes


@dataclass(frozen=True)
class Architecture:
    unet: dict
    vae: dict
    text: dict  # CLIPTextConfig of text_encoder (and text_encoder_2 for SDXL, with `text_2` changes)
    encoder: dict  # CLIPVisionConfig of the IP-Adapter image encoder
    controlnet: dict | None  # None: derived from the UNet with `from_unet`, as real ControlNets are
    preset: dict  # steps, guidance, sizes written into ref2img-preset.json
    text_2: dict | None = None


_DOWN_UP = dict(
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")
)
_TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
_TINY_ENCODER = dict(
    hidden_size=32,
    image_size=32,
    projection_dim=32,
    intermediate_size=37,
    num_attention_heads=4,
    num_hidden_layers=2,
    patch_size=8,
)
_TINY_PRESET = dict(steps=4, guidance_scale=5.0, max_pixels=TINY_SIZE * TINY_SIZE, size_multiple=8)
_SDXL_TINY_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=2,
    sample_size=32,
    **_DOWN_UP,
    attention_head_dim=(2, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    transformer_layers_per_block=(1, 2),
    projection_class_embeddings_input_dim=80,
    cross_attention_dim=64,  # 80 = 6·8 + 32 (pooled text)
)
_FULL_VAE = dict(
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
)
_CLIP_L = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    hidden_act="quick_gelu",
    vocab_size=49408,
)
_VIT_H = dict(
    hidden_size=1280,
    image_size=224,
    projection_dim=1024,
    intermediate_size=5120,
    num_attention_heads=16,
    num_hidden_layers=32,
    patch_size=14,
)

ARCHITECTURES: dict[tuple[str, str], Architecture] = {
    ("sd15", "tiny"): Architecture(
        unet=dict(
            block_out_channels=(4, 8),
            layers_per_block=2,
            sample_size=32,
            **_DOWN_UP,
            cross_attention_dim=32,
            norm_num_groups=1,
        ),
        vae=dict(
            block_out_channels=[4, 8],
            norm_num_groups=2,
            sample_size=TINY_SIZE,
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
        ),
        text=_TINY_TEXT,
        encoder=_TINY_ENCODER,
        preset=_TINY_PRESET,
        controlnet=dict(
            block_out_channels=(4, 8),
            layers_per_block=2,
            cross_attention_dim=32,
            down_block_types=_DOWN_UP["down_block_types"],
            norm_num_groups=1,
            conditioning_embedding_out_channels=(16, 32),
        ),
    ),
    ("sdxl", "tiny"): Architecture(
        unet=_SDXL_TINY_UNET,
        vae=dict(
            block_out_channels=[32, 64],
            sample_size=TINY_SIZE,
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
        ),
        text=dict(_TINY_TEXT, hidden_act="gelu", projection_dim=32),
        text_2={},
        encoder=_TINY_ENCODER,
        preset=_TINY_PRESET,
        controlnet=dict(
            {k: v for k, v in _SDXL_TINY_UNET.items() if k not in ("up_block_types", "sample_size")},
            conditioning_embedding_out_channels=(16, 32),
            num_trans_channel=32,
            num_trans_head=2,
            num_proj_channel=32,
        ),
    ),
    ("sd15", "full"): Architecture(
        unet=dict(sample_size=64, cross_attention_dim=768),  # the rest are diffusers' (SD1.5) defaults
        vae=dict(_FULL_VAE, sample_size=512),
        text=_CLIP_L,
        encoder=_VIT_H,
        controlnet=None,
        preset=dict(steps=25, guidance_scale=7.5, max_pixels=768 * 768, size_multiple=64),
    ),
    ("sdxl", "full"): Architecture(
        unet=dict(
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
            cross_attention_dim=2048,
        ),  # 2816 = 6·256 + 1280
        vae=dict(_FULL_VAE, sample_size=1024, scaling_factor=0.13025),
        text=_CLIP_L,
        encoder=_VIT_H,
        controlnet=None,
        text_2=dict(
            hidden_size=1280,
            intermediate_size=5120,
            num_attention_heads=20,
            num_hidden_layers=32,
            hidden_act="gelu",
            projection_dim=1280,
        ),
        preset=dict(steps=30, guidance_scale=5.0, max_pixels=1536 * 1536, size_multiple=64, controlnet_scale_max=0.9),
    ),
}


def build_tiny(directory: Path, family: str = "sd15") -> Path:
    """The `tiny` preset in `directory` (sd15: per-mode ControlNets; sdxl: union ControlNet)."""
    return build_random(directory, family, "tiny")


def build_random(
    directory: Path, family: str = "sd15", scale: str = "tiny", dtype: torch.dtype = torch.float32
) -> Path:
    if (family, scale) not in ARCHITECTURES:
        raise ValueError(f"family must be sd15 or sdxl and scale tiny or full (got {family!r}, {scale!r})")
    arch = ARCHITECTURES[(family, scale)]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tokenizer = _tokenizer()
    unet = _unet(arch)
    _save_pipeline(directory / "base", family, arch, unet, tokenizer, dtype)
    modes = ("union",) if family == "sdxl" else ("edge", "pose", "depth")
    # Full scale is for speed only: one net, shared by every mode, saves minutes and gigabytes.
    folder_of_mode = {mode: f"controlnet-{mode if scale == 'tiny' else modes[0]}" for mode in modes}
    for folder in sorted(set(folder_of_mode.values())):
        net = _controlnet(family, arch, unet)
        _wake_zero_layers(net)
        net.to(dtype).save_pretrained(directory / folder)
        del net
    _save_ip_adapter(directory / "ip-adapter", unet, arch.encoder["projection_dim"])
    _save_image_encoder(directory / "image-encoder", arch.encoder, dtype)
    save_depth_estimator(directory / "depth")
    save_pose_models(directory / "pose")
    save_subject_segmenter(directory / "segmenter")
    if scale == "tiny":
        _save_lora(directory / "lora", family, unet)  # not in the preset; tests switch it on like sdxl-fast's
    name = ("tiny" if family == "sd15" else "tiny-sdxl") if scale == "tiny" else f"random-{family}"
    preset = {
        "name": name,
        "family": family,
        "description": f"random-weight {family} ({scale} scale) built by ref2img (tests, plumbing, benchmarks)",
        "base": "base",
        "vae": None,
        "lora": None,
        "scheduler": None,
        "controlnets": folder_of_mode,
        "ip_adapter": {"source": "ip-adapter", "weight_name": "ip-adapter.safetensors"},
        "image_encoder": "image-encoder",
        "depth_estimator": "depth",
        "pose_detector": {"source": "pose", "weight_name": "detector.onnx"},
        "pose_estimator": {"source": "pose", "weight_name": "estimator.onnx"},
        "subject_segmenter": {"source": "segmenter", "weight_name": SEGMENTER_FILE},
        "controlnet_scale_max": 1.0,
        **arch.preset,
    }
    (directory / PRESET_FILE_NAME).write_text(json.dumps(preset, indent=2) + "\n")
    return directory


# -- text side ---------------------------------------------------------------------------------
def _tokenizer():
    """A CLIP tokenizer with a byte-level vocabulary and no merges: no hub download needed."""
    from transformers import CLIPTokenizer

    chars = byte_level_chars()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def byte_level_chars() -> list[str]:
    """GPT-2/CLIP's byte-to-unicode table: printable bytes stand for themselves, the rest shift past 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _text_model(arch: Architecture, vocab_size: int, second: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    fields = dict(arch.text, **(arch.text_2 or {})) if second else dict(arch.text)
    fields.setdefault("vocab_size", vocab_size)
    config = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, layer_norm_eps=1e-5, **fields)
    return (CLIPTextModelWithProjection if second else CLIPTextModel)(config)


def _unet(arch: Architecture):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(in_channels=4, out_channels=4, **arch.unet)


def _save_pipeline(folder: Path, family: str, arch: Architecture, unet, tokenizer, dtype: torch.dtype) -> None:
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **arch.vae)
    text = {"text_encoder": _text_model(arch, len(tokenizer)), "tokenizer": tokenizer}
    scheduler: Any  # diffusers' lazy imports hide the classes' bases from type checkers
    pipe: Any
    if family == "sd15":
        scheduler = DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        )
        pipe = StableDiffusionPipeline(
            unet=unet,
            vae=vae,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
            requires_safety_checker=False,
            **text,
        )
    else:
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            steps_offset=1,
            beta_schedule="scaled_linear",
            timestep_spacing="leading",
        )
        text.update(text_encoder_2=_text_model(arch, len(tokenizer), second=True), tokenizer_2=tokenizer)
        pipe = StableDiffusionXLPipeline(unet=unet, vae=vae, scheduler=scheduler, **text)
    pipe.to(dtype).save_pretrained(folder)


# -- control side ------------------------------------------------------------------------------
def _controlnet(family: str, arch: Architecture, unet):
    from diffusers import ControlNetModel, ControlNetUnionModel

    cls = ControlNetUnionModel if family == "sdxl" else ControlNetModel
    if arch.controlnet is None:
        return cls.from_unet(unet)
    return cls(in_channels=4, **arch.controlnet)


def _wake_zero_layers(model) -> None:
    """ControlNets start with zero convolutions, so an untrained one has no effect at all.
    Random values instead make the control image (and its scale) change the output, as trained ones do."""
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1 and not param.any():
                param.normal_(std=0.5)


def _save_ip_adapter(folder: Path, unet, clip_embed_dim: int) -> None:
    """IP-Adapter weights in the h94 single-file layout: `image_proj.*` and `ip_adapter.{n}.to_{k,v}_ip`."""
    from safetensors.torch import save_file

    cross_dim = unet.config.cross_attention_dim
    state = {
        "image_proj.proj.weight": torch.randn(cross_dim * 4, clip_embed_dim) * 0.2,
        "image_proj.proj.bias": torch.zeros(cross_dim * 4),
        "image_proj.norm.weight": torch.ones(cross_dim),
        "image_proj.norm.bias": torch.zeros(cross_dim),
    }
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        hidden = _hidden_size(unet, name)
        state[f"ip_adapter.{key_id}.to_k_ip.weight"] = torch.randn(hidden, cross_dim) * 0.5
        state[f"ip_adapter.{key_id}.to_v_ip.weight"] = torch.randn(hidden, cross_dim) * 0.5
        key_id += 2
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "ip-adapter.safetensors"))


def _save_lora(folder: Path, family: str, unet, rank: int = 4, weight_name: str | None = None) -> None:
    """A UNet LoRA in diffusers' format (`pytorch_lora_weights.safetensors`, or `weight_name`), randomly
    initialised on both sides so that it changes the output once fused."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet.add_adapter(
        LoraConfig(
            r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]
        )
    )
    saver = StableDiffusionPipeline if family == "sd15" else StableDiffusionXLPipeline
    extra = {"weight_name": weight_name} if weight_name else {}
    saver.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(unet), **extra)


def save_random_lora(model_dir: Path, out_file: Path, rank: int = 16) -> Path:
    """A random UNet LoRA of rank `rank` for the UNet preset in `model_dir` (any scale), as `out_file`: a
    LoRA of a common size for the benches (a request's `loras`)."""
    import json

    from diffusers import UNet2DConditionModel

    family = json.loads((model_dir / "ref2img-preset.json").read_text())["family"]
    unet = UNet2DConditionModel.from_pretrained(model_dir / "base" / "unet")
    _save_lora(out_file.parent, family, unet, rank=rank, weight_name=out_file.name)
    return out_file


def _hidden_size(unet, processor_name: str) -> int:
    channels = unet.config.block_out_channels
    if processor_name.startswith("mid_block"):
        return channels[-1]
    block = int(processor_name.split(".")[1])
    return list(reversed(channels))[block] if processor_name.startswith("up_blocks") else channels[block]


def _save_image_encoder(folder: Path, config: dict, dtype: torch.dtype) -> None:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    encoder: Any = CLIPVisionModelWithProjection(CLIPVisionConfig(num_channels=3, **config))  # `to` is wrapped untyped
    encoder.to(dtype).save_pretrained(folder)
    size = config["image_size"]
    CLIPImageProcessor(crop_size=size, size=size).save_pretrained(folder)


# -- annotators --------------------------------------------------------------------------------
def save_depth_estimator(folder: Path) -> None:
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    config = DPTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=TINY_SIZE,
        patch_size=16,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[16, 16, 32, 32],
        fusion_hidden_size=16,
        reassemble_factors=[4, 2, 1, 0.5],
    )
    DPTForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": TINY_SIZE, "width": TINY_SIZE}).save_pretrained(folder)


def save_pose_models(folder: Path) -> None:
    """ONNX graphs with DWPose's signatures: YOLOX `images` (1,3,640,640) -> (1,8400,85), and
    RTMPose `input` (1,3,384,288) -> simcc_x (1,133,576), simcc_y (1,133,768)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def linear_head(input_name, input_shape, outputs: dict[str, tuple[int, ...]], path: Path, bias=None, scale=1.0):
        nodes = [
            helper.make_node("GlobalAveragePool", [input_name], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["features"]),
        ]
        inits, graph_outputs = [], []
        for name, shape in outputs.items():
            size = int(np.prod(shape[1:]))
            inits.append(numpy_helper.from_array(rng.normal(0, scale, (3, size)).astype(np.float32), f"{name}_w"))
            b = bias if bias is not None else np.zeros(size, dtype=np.float32)
            inits.append(numpy_helper.from_array(np.resize(b, size).astype(np.float32), f"{name}_b"))
            inits.append(numpy_helper.from_array(np.array(shape, dtype=np.int64), f"{name}_shape"))
            nodes += [
                helper.make_node("Gemm", ["features", f"{name}_w", f"{name}_b"], [f"{name}_flat"]),
                helper.make_node("Reshape", [f"{name}_flat", f"{name}_shape"], [name]),
            ]
            graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        graph = helper.make_graph(
            nodes,
            path.stem,
            [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
            graph_outputs,
            inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.save(model, str(path))

    # Detector: objectness pushed negative, so nobody is found and the whole image is the box.
    linear_head(
        "images",
        (1, 3, 640, 640),
        {"output": (1, 8400, 85)},
        folder / "detector.onnx",
        bias=np.array([0, 0, 0, 0, -5.0] + [0.0] * 80, dtype=np.float32),
        scale=0.0,
    )
    linear_head(
        "input", (1, 3, 384, 288), {"simcc_x": (1, 133, 576), "simcc_y": (1, 133, 768)}, folder / "estimator.onnx"
    )


SEGMENTER_FILE = "model.onnx"


def save_subject_segmenter(folder: Path, side: int = 64) -> None:
    """An ONNX graph with BiRefNet's signature: `input_image` (1,3,side,side) -> `output_image`
    (1,1,side,side) logits, from one random 3x3 convolution."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    weight = np.random.default_rng(0).normal(0, 1, (1, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input_image", "weight"], ["output_image"], pads=[1, 1, 1, 1])],
        "segmenter",
        [helper.make_tensor_value_info("input_image", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("output_image", TensorProto.FLOAT, [1, 1, side, side])],
        [numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(folder / SEGMENTER_FILE))
