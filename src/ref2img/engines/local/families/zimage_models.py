"""Random-weight Z-Image models in the real repos' layouts, built offline in about a second.

- `base/`: a `ZImagePipeline` folder as Tongyi-MAI/Z-Image-Turbo lays it out (model_index.json,
  scheduler, text_encoder = Qwen3Model, tokenizer = a Qwen2 tokenizer, transformer, vae).
- `controlnet/Z-Image-Turbo-Fun-Controlnet-Union.safetensors`: one file, as alibaba-pai ships it (its
  keys are diffusers' own: the single-file loader maps them one to one), and `controlnet-config/`:
  its diffusers config, as hlky/Z-Image-Turbo-Fun-Controlnet-Union holds it.
- `subject/`: a `Flux2KleinPipeline` folder as black-forest-labs/FLUX.2-klein-4B lays it out, the subject
  model (32 VAE latent channels, as the real FLUX.2 VAE has). Its text encoder holds the base's weights:
  the real two ship the same Qwen3-4B (ComfyUI gives both models one file, sha256 6c671498…), so the
  engine loads it once.
- the annotators' models (depth, DWPose-shaped ONNX), as the UNet families' tiny presets have them.

The tokenizer is built in code (a byte-level BPE with no merges and the chat template the pipeline
applies): diffusers' own tests fetch theirs from the hub, which no test here can.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ref2img.engines.local.presets import PRESET_FILE_NAME

CONTROLNET_FILE = "Z-Image-Turbo-Fun-Controlnet-Union.safetensors"
TINY_SIZE = 64  # the tiny preset generates at about this size, then resizes
_TINY_TRANSFORMER = dict(
    all_patch_size=(2,),
    all_f_patch_size=(1,),
    in_channels=16,
    dim=32,
    n_layers=2,
    n_refiner_layers=1,
    n_heads=2,
    n_kv_heads=2,
    norm_eps=1e-5,
    qk_norm=True,
    cap_feat_dim=16,
    rope_theta=256.0,
    t_scale=1000.0,
    axes_dims=[8, 4, 4],
    axes_lens=[256, 32, 32],
)
# The Fun ControlNet Union's shape (its config.json: control blocks at every 5th of 30 layers, no
# noise refiner of its own), scaled to the tiny transformer.
_TINY_CONTROLNET = dict(
    control_layers_places=[0, 1],
    control_refiner_layers_places=None,
    control_in_dim=16,
    add_control_noise_refiner=None,
    all_patch_size=(2,),
    all_f_patch_size=(1,),
    dim=32,
    n_refiner_layers=1,
    n_heads=2,
    n_kv_heads=2,
    norm_eps=1e-5,
    qk_norm=True,
)
# Full scale (GPU benches): the real shapes, each from a public config. The transformer's: Tongyi-MAI's
# transformer/config.json as fal/Z-Image-Turbo-Control-FlashPack quotes it; the ControlNet's:
# hlky/Z-Image-Turbo-Fun-Controlnet-Union/config.json; the text encoder's: Qwen3-4B, the 726-byte
# text_encoder/config.json of a copy of Tongyi-MAI/Z-Image-Turbo; the VAE: FLUX.1's.
_FULL_TRANSFORMER = dict(
    _TINY_TRANSFORMER,
    dim=3840,
    n_layers=30,
    n_refiner_layers=2,
    n_heads=30,
    n_kv_heads=30,
    cap_feat_dim=2560,
    axes_dims=[32, 48, 48],
    axes_lens=[1536, 512, 512],
)
_FULL_CONTROLNET = dict(
    _TINY_CONTROLNET,
    control_layers_places=[0, 5, 10, 15, 20, 25],
    dim=3840,
    n_refiner_layers=2,
    n_heads=30,
    n_kv_heads=30,
)
_FULL_TEXT = dict(
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=151936,
    max_position_embeddings=40960,
    rms_norm_eps=1e-6,
    rope_theta=1_000_000,
    tie_word_embeddings=True,
)
_TINY_TEXT: dict[str, Any] = dict(
    hidden_size=16,
    intermediate_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=1024,
)
# FLUX.2 [klein] 4B's transformer/config.json, as several public ports quote it (DiffSynth-Studio's model
# table, flux2.c, OpenFlowLM): 5 double and 20 single blocks of 24 heads × 128, reading 3 stacked layers
# of Qwen3-4B (3 × 2560). Its VAE is AutoencoderKLFlux2's default shape.
_FULL_KLEIN_TRANSFORMER = dict(
    patch_size=1,
    in_channels=128,
    num_layers=5,
    num_single_layers=20,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=3 * 2560,
    timestep_guidance_channels=256,
    mlp_ratio=3.0,
    axes_dims_rope=(32, 32, 32, 32),
    rope_theta=2000,
    eps=1e-6,
    guidance_embeds=False,
)
# Tiny: it reads one text encoder layer (joint attention width = the tiny encoder's hidden size).
_TINY_KLEIN_TRANSFORMER = dict(
    patch_size=1,
    in_channels=128,  # 32 latent channels, 2×2 to a token
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=16,
    timestep_guidance_channels=256,
    axes_dims_rope=[4, 4, 4, 4],
    guidance_embeds=False,
)
_FULL_VAE = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32, sample_size=1024)
_TINY_VAE = dict(block_out_channels=[8, 16, 32, 32], layers_per_block=1, norm_num_groups=8, sample_size=TINY_SIZE)
_TINY_KLEIN_VAE = dict(_TINY_VAE, use_quant_conv=False, use_post_quant_conv=False)  # the FLUX.2 VAE's, scaled down
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_random(directory: Path, scale: str = "tiny", dtype: torch.dtype = torch.float32) -> Path:
    """`tiny` (CPU tests, about a second) or `full` (the real shapes, 10B parameters: built on the GPU
    when there is one, then written in `dtype`)."""
    if scale not in ("tiny", "full"):
        raise ValueError(f"scale must be tiny or full (got {scale!r})")
    from ref2img.engines.local.random_models import (
        SEGMENTER_FILE,
        save_depth_estimator,
        save_pose_models,
        save_subject_segmenter,
    )

    full = scale == "full"
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    device = "cuda" if full and torch.cuda.is_available() else "cpu"
    with torch.device(device):
        pipe = _pipeline(full)
    if dtype != torch.float32:
        pipe.to(dtype)
    pipe.save_pretrained(directory / "base")
    with torch.device(device):
        _save_subject(directory / "subject", dtype, pipe.text_encoder, full)
        del pipe
        _save_controlnet(directory, dtype, _FULL_CONTROLNET if full else _TINY_CONTROLNET)
    save_depth_estimator(directory / "depth")
    save_pose_models(directory / "pose")
    save_subject_segmenter(directory / "segmenter")
    extra = {"controlnet_config": "controlnet-config", "subject_base": "subject"}
    preset = {
        "name": "tiny-zimage" if not full else "random-zimage",
        "family": "zimage",
        "description": f"random-weight Z-Image ({scale} scale) built by ref2img (tests, plumbing, benchmarks)",
        "base": "base",
        "controlnets": {"union": {"source": "controlnet", "weight_name": CONTROLNET_FILE}},
        "extra": extra,
        "depth_estimator": "depth",
        "pose_detector": {"source": "pose", "weight_name": "detector.onnx"},
        "pose_estimator": {"source": "pose", "weight_name": "estimator.onnx"},
        "subject_segmenter": {"source": "segmenter", "weight_name": SEGMENTER_FILE},
        "steps": 8 if full else 2,
        "guidance_scale": 0.0,
        "max_pixels": 1536 * 1536 if full else TINY_SIZE * TINY_SIZE,
        "size_multiple": 16,
        "controlnet_scale_max": 0.8,
    }
    (directory / PRESET_FILE_NAME).write_text(json.dumps(preset, indent=2) + "\n")
    return directory


def _pipeline(full: bool = False):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    transformer: Any = ZImageTransformer2DModel(**(_FULL_TRANSFORMER if full else _TINY_TRANSFORMER))
    with torch.no_grad():  # created with torch.empty: fixed, so no run starts from NaNs
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    vae = AutoencoderKL(  # the FLUX.1 VAE's shape: 16 latent channels, 8× down, its scale and shift
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=16,
        **(_FULL_VAE if full else _TINY_VAE),
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    tokenizer = _tokenizer()
    text_encoder = Qwen3Model(Qwen3Config(**(_FULL_TEXT if full else {**_TINY_TEXT, "vocab_size": len(tokenizer)})))
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


def _tokenizer():
    """A Qwen2 tokenizer over a byte-level vocabulary with no merges, and the chat markers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    from ref2img.engines.local.random_models import byte_level_chars

    vocab = {char: index for index, char in enumerate(byte_level_chars())}
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[special] = len(vocab)
    model = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    model.decoder = decoders.ByteLevel()
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=model, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=1024
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def _save_controlnet(directory: Path, dtype: torch.dtype, config: dict[str, Any]) -> None:
    from diffusers import ZImageControlNetModel
    from safetensors.torch import save_file

    net: Any = ZImageControlNetModel(**config)  # diffusers' ModelMixin types no torch methods
    with torch.no_grad():  # the real net's zero-initialised output layers would make the control a no-op
        for name, parameter in net.named_parameters():
            if "after_proj" in name or "before_proj" in name:
                parameter.normal_(0.0, 0.02)
    if dtype != torch.float32:
        net.to(dtype)
    (directory / "controlnet").mkdir(parents=True, exist_ok=True)
    save_file(
        {key: value.contiguous() for key, value in net.state_dict().items()},
        str(directory / "controlnet" / CONTROLNET_FILE),
    )
    net.save_config(directory / "controlnet-config")


def _save_subject(folder: Path, dtype: torch.dtype, text_encoder, full: bool) -> None:
    """A FLUX.2 [klein] whose text encoder is the Z-Image base's `text_encoder` (a `Qwen3Model`) inside
    the `Qwen3ForCausalLM` klein's layout names, as the real repos ship the same Qwen3-4B weights."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3ForCausalLM

    with torch.device("meta"):  # its own random encoder would only be thrown away
        causal: Any = Qwen3ForCausalLM(text_encoder.config)
    causal.model = text_encoder
    embeddings = text_encoder.embed_tokens.weight
    vocab, hidden = embeddings.shape
    causal.lm_head = torch.nn.Linear(hidden, vocab, bias=False, device=embeddings.device, dtype=embeddings.dtype)
    causal.tie_weights()  # Qwen3-4B ties its output head to the embeddings (the tiny config does not)
    pipe: Any = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=AutoencoderKLFlux2(**({} if full else _TINY_KLEIN_VAE)),
        text_encoder=causal,
        tokenizer=_tokenizer(),
        transformer=Flux2Transformer2DModel(**(_FULL_KLEIN_TRANSFORMER if full else _TINY_KLEIN_TRANSFORMER)),
        is_distilled=True,
    )
    if dtype != torch.float32:
        pipe.to(dtype)
    pipe.save_pretrained(folder)
