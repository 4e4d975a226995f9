"""`ref2img models tiny DIR`: every part of a preset with random weights, built offline in seconds.

Same architectures and the same loading code as the real presets (`save_pretrained`, then the
engine's `from_pretrained(local_files_only=True)`), only tiny: for tests and for trying the plumbing
on a machine without the real weights. Images come out as coloured noise, by design.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ref2img.engines.local.presets import PRESET_FILE_NAME

TINY_SIZE = 64  # pixels; the tiny preset generates at about this size, then resizes
_CLIP_EMBED_DIM = 32


def build_tiny(directory: Path, family: str = "sd15") -> Path:
    """Build a tiny preset in `directory` (sd15: per-mode ControlNets; sdxl: union ControlNet)."""
    if family not in ("sd15", "sdxl"):
        raise ValueError(f"family must be sd15 or sdxl (got {family!r})")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tokenizer = _tokenizer()
    if family == "sd15":
        unet, text_parts, scheduler = _sd15_base(tokenizer)
        controlnets = {mode: _sd15_controlnet() for mode in ("edge", "pose", "depth")}
    else:
        unet, text_parts, scheduler = _sdxl_base(tokenizer)
        controlnets = {"union": _sdxl_union_controlnet()}
    _save_pipeline(directory / "base", family, unet, text_parts, scheduler)
    for key, net in controlnets.items():
        _wake_zero_layers(net)
        net.save_pretrained(directory / f"controlnet-{key}")
    _save_ip_adapter(directory / "ip-adapter", unet)
    _save_image_encoder(directory / "image-encoder")
    _save_depth_estimator(directory / "depth")
    _save_pose_models(directory / "pose")
    preset = {
        "name": f"tiny-{family}" if family != "sd15" else "tiny",
        "family": family,
        "description": f"random-weight {family} stand-in built by `ref2img models tiny` (tests, plumbing)",
        "base": "base",
        "vae": None,
        "lora": None,
        "scheduler": None,
        "controlnets": {key: f"controlnet-{key}" for key in controlnets},
        "ip_adapter": {"source": "ip-adapter", "weight_name": "ip-adapter_tiny.safetensors"},
        "image_encoder": "image-encoder",
        "depth_estimator": "depth",
        "pose_detector": {"source": "pose", "weight_name": "detector.onnx"},
        "pose_estimator": {"source": "pose", "weight_name": "estimator.onnx"},
        "steps": 4,
        "guidance_scale": 5.0,
        "max_pixels": TINY_SIZE * TINY_SIZE,
        "size_multiple": 8,
        "controlnet_scale_max": 1.0,
    }
    (directory / PRESET_FILE_NAME).write_text(json.dumps(preset, indent=2) + "\n")
    return directory


# -- text side ---------------------------------------------------------------------------------
def _tokenizer():
    """A CLIP tokenizer with a byte-level vocabulary and no merges: no hub download needed."""
    from transformers import CLIPTokenizer

    chars = _byte_level_chars()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _byte_level_chars() -> list[str]:
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


def _text_config(vocab_size: int, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
                          layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=2,
                          vocab_size=vocab_size, **extra)


def _sd15_base(tokenizer):
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=1,
    )
    text = {"text_encoder": CLIPTextModel(_text_config(len(tokenizer))), "tokenizer": tokenizer}
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return unet, text, scheduler


def _sdxl_base(tokenizer):
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel(**_SDXL_UNET)
    config = _text_config(len(tokenizer), hidden_act="gelu", projection_dim=32)
    text = {"text_encoder": CLIPTextModel(config), "tokenizer": tokenizer,
            "text_encoder_2": CLIPTextModelWithProjection(config), "tokenizer_2": tokenizer}
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    return unet, text, scheduler


_SDXL_UNET = dict(
    block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
    projection_class_embeddings_input_dim=80, cross_attention_dim=64,  # 80 = 6·8 + 32 (pooled text)
)


def _vae(family: str):
    from diffusers import AutoencoderKL

    channels, groups = ([4, 8], 2) if family == "sd15" else ([32, 64], 32)
    return AutoencoderKL(block_out_channels=channels, in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         norm_num_groups=groups, sample_size=TINY_SIZE)


def _save_pipeline(folder: Path, family: str, unet, text_parts: dict, scheduler) -> None:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if family == "sd15":
        pipe = StableDiffusionPipeline(unet=unet, vae=_vae(family), scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, image_encoder=None, requires_safety_checker=False,
                                       **text_parts)
    else:
        pipe = StableDiffusionXLPipeline(unet=unet, vae=_vae(family), scheduler=scheduler, **text_parts)
    pipe.save_pretrained(folder)


# -- control side ------------------------------------------------------------------------------
def _sd15_controlnet():
    from diffusers import ControlNetModel

    return ControlNetModel(
        block_out_channels=(4, 8), layers_per_block=2, in_channels=4, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), conditioning_embedding_out_channels=(16, 32),
        norm_num_groups=1,
    )


def _sdxl_union_controlnet():
    from diffusers import ControlNetUnionModel

    unet_like = {k: v for k, v in _SDXL_UNET.items() if k not in ("up_block_types", "out_channels", "sample_size")}
    return ControlNetUnionModel(**unet_like, conditioning_embedding_out_channels=(16, 32),
                                num_trans_channel=32, num_trans_head=2, num_proj_channel=32)


def _wake_zero_layers(model) -> None:
    """ControlNets start with zero convolutions, so an untrained one has no effect at all.
    Random values instead make the control image (and its scale) change the output, as trained ones do."""
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1 and not param.any():
                param.normal_(std=0.5)


def _save_ip_adapter(folder: Path, unet) -> None:
    """IP-Adapter weights in the h94 single-file layout: `image_proj.*` and `ip_adapter.{n}.to_{k,v}_ip`."""
    from safetensors.torch import save_file

    cross_dim = unet.config.cross_attention_dim
    state = {
        "image_proj.proj.weight": torch.randn(cross_dim * 4, _CLIP_EMBED_DIM) * 0.2,
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
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "ip-adapter_tiny.safetensors"))


def _hidden_size(unet, processor_name: str) -> int:
    channels = unet.config.block_out_channels
    if processor_name.startswith("mid_block"):
        return channels[-1]
    block = int(processor_name.split(".")[1])
    return list(reversed(channels))[block] if processor_name.startswith("up_blocks") else channels[block]


def _save_image_encoder(folder: Path) -> None:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(hidden_size=32, image_size=32, projection_dim=_CLIP_EMBED_DIM, intermediate_size=37,
                              num_attention_heads=4, num_channels=3, num_hidden_layers=2, patch_size=8)
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    CLIPImageProcessor(crop_size=32, size=32).save_pretrained(folder)


# -- annotators --------------------------------------------------------------------------------
def _save_depth_estimator(folder: Path) -> None:
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37,
                       image_size=TINY_SIZE, patch_size=16, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5])
    DPTForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": TINY_SIZE, "width": TINY_SIZE}).save_pretrained(folder)


def _save_pose_models(folder: Path) -> None:
    """ONNX graphs with DWPose's signatures: YOLOX `images` (1,3,640,640) -> (1,8400,85), and
    RTMPose `input` (1,3,384,288) -> simcc_x (1,133,576), simcc_y (1,133,768)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)

    def linear_head(input_name, input_shape, outputs: dict[str, tuple[int, ...]], path: Path, bias=None, scale=1.0):
        nodes = [helper.make_node("GlobalAveragePool", [input_name], ["pooled"]),
                 helper.make_node("Flatten", ["pooled"], ["features"])]
        inits, graph_outputs = [], []
        for name, shape in outputs.items():
            size = int(np.prod(shape[1:]))
            inits.append(numpy_helper.from_array(rng.normal(0, scale, (3, size)).astype(np.float32), f"{name}_w"))
            b = bias if bias is not None else np.zeros(size, dtype=np.float32)
            inits.append(numpy_helper.from_array(np.resize(b, size).astype(np.float32), f"{name}_b"))
            inits.append(numpy_helper.from_array(np.array(shape, dtype=np.int64), f"{name}_shape"))
            nodes += [helper.make_node("Gemm", ["features", f"{name}_w", f"{name}_b"], [f"{name}_flat"]),
                      helper.make_node("Reshape", [f"{name}_flat", f"{name}_shape"], [name])]
            graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info(
            input_name, TensorProto.FLOAT, list(input_shape))], graph_outputs, inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.save(model, str(path))

    # Detector: objectness pushed negative, so nobody is found and the whole image is the box.
    linear_head("images", (1, 3, 640, 640), {"output": (1, 8400, 85)}, folder / "detector.onnx",
                bias=np.array([0, 0, 0, 0, -5.0] + [0.0] * 80, dtype=np.float32), scale=0.0)
    linear_head("input", (1, 3, 384, 288), {"simcc_x": (1, 133, 576), "simcc_y": (1, 133, 768)},
                folder / "estimator.onnx")
