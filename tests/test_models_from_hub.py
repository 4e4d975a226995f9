"""The last step of a real deployment, without the internet: `ref2img models pull PRESET` through the
mirror from a fixture hub whose repos have the real layouts (file names, folders, fp16 variants) and
tiny random weights, then `ref2img generate` in every mode from that cache alone (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ref2img.engines.local.presets import DEFAULT_PRESET

from .hub_fixture import write_repo
from .test_models_mirror import Mirror

pytestmark = pytest.mark.slow  # four generations a preset, each loading it: about a minute each


def _annotators(read) -> dict[str, dict[str, bytes]]:
    return {
        "depth-anything/Depth-Anything-V2-Small-hf": {
            name: read(f"depth/{name}") for name in ("config.json", "preprocessor_config.json", "model.safetensors")
        },
        "yzd-v/DWPose": {
            "yolox_l.onnx": read("pose/detector.onnx"),
            "dw-ll_ucoco_384.onnx": read("pose/estimator.onnx"),
        },
        "onnx-community/BiRefNet_lite-ONNX": {"onnx/model.onnx": read("segmenter/model.onnx")},
    }


def _encoder(read) -> dict[str, bytes]:  # as the real repo: no preprocessor_config.json beside the encoder
    return {
        "models/image_encoder/config.json": read("image-encoder/config.json"),
        "models/image_encoder/model.safetensors": read("image-encoder/model.safetensors"),
    }


def real_layout_of_tiny_sdxl(tiny: Path) -> dict[str, dict[str, bytes]]:
    """The tiny sdxl models under the sdxl and sdxl-fast presets' real repo paths (tests/hub_layouts.py)."""
    read = lambda path: (tiny / path).read_bytes()  # noqa: E731
    base = {
        "model_index.json": read("base/model_index.json"),
        "scheduler/scheduler_config.json": read("base/scheduler/scheduler_config.json"),
        "vae/config.json": read("base/vae/config.json"),
        "unet/config.json": read("base/unet/config.json"),
        "unet/diffusion_pytorch_model.fp16.safetensors": read("base/unet/diffusion_pytorch_model.safetensors"),
    }
    for encoder in ("text_encoder", "text_encoder_2"):
        base[f"{encoder}/config.json"] = read(f"base/{encoder}/config.json")
        base[f"{encoder}/model.fp16.safetensors"] = read(f"base/{encoder}/model.safetensors")
    for tokenizer in ("tokenizer", "tokenizer_2"):
        base.update({f"{tokenizer}/{p.name}": p.read_bytes() for p in (tiny / "base" / tokenizer).iterdir()})
    return {
        "stabilityai/stable-diffusion-xl-base-1.0": base,
        "madebyollin/sdxl-vae-fp16-fix": {
            "config.json": read("base/vae/config.json"),
            "diffusion_pytorch_model.safetensors": read("base/vae/diffusion_pytorch_model.safetensors"),
        },
        "xinsir/controlnet-union-sdxl-1.0": {
            "config.json": read("controlnet-union/config.json"),
            "diffusion_pytorch_model.safetensors": read("controlnet-union/diffusion_pytorch_model.safetensors"),
        },
        "h94/IP-Adapter": {
            "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors": read("ip-adapter/ip-adapter.safetensors"),
            **_encoder(read),
        },
        "ByteDance/SDXL-Lightning": {
            "sdxl_lightning_8step_lora.safetensors": read("lora/pytorch_lora_weights.safetensors")
        },
        **_annotators(read),
    }


def real_layout_of_tiny(tiny: Path) -> dict[str, dict[str, bytes]]:
    """The tiny sd15 models under the sd15 preset's real repo paths (tests/hub_layouts.py)."""
    read = lambda path: (tiny / path).read_bytes()  # noqa: E731
    base = {
        "model_index.json": read("base/model_index.json"),
        "scheduler/scheduler_config.json": read("base/scheduler/scheduler_config.json"),
        "text_encoder/config.json": read("base/text_encoder/config.json"),
        "text_encoder/model.fp16.safetensors": read("base/text_encoder/model.safetensors"),
        "unet/config.json": read("base/unet/config.json"),
        "unet/diffusion_pytorch_model.fp16.safetensors": read("base/unet/diffusion_pytorch_model.safetensors"),
        "vae/config.json": read("base/vae/config.json"),
        "vae/diffusion_pytorch_model.fp16.safetensors": read("base/vae/diffusion_pytorch_model.safetensors"),
    }
    base.update({f"tokenizer/{p.name}": p.read_bytes() for p in (tiny / "base/tokenizer").iterdir()})
    controlnet = lambda mode: {  # noqa: E731
        "config.json": read(f"controlnet-{mode}/config.json"),
        "diffusion_pytorch_model.fp16.safetensors": read(f"controlnet-{mode}/diffusion_pytorch_model.safetensors"),
    }
    return {
        "stable-diffusion-v1-5/stable-diffusion-v1-5": base,
        "lllyasviel/control_v11p_sd15_canny": controlnet("edge"),
        "lllyasviel/control_v11p_sd15_openpose": controlnet("pose"),
        "lllyasviel/control_v11f1p_sd15_depth": controlnet("depth"),
        "h94/IP-Adapter": {
            "models/ip-adapter-plus_sd15.safetensors": read("ip-adapter/ip-adapter.safetensors"),
            **_encoder(read),
        },
        **_annotators(read),
    }


def _as_one_shard(folder: Path, weights: str, shard: str, index: str) -> dict[str, bytes]:
    """A tiny single weights file as the one shard of a sharded checkpoint, with its index."""
    from safetensors import safe_open

    with safe_open(str(folder / weights), "pt") as handle:
        keys = list(handle.keys())
    size = (folder / weights).stat().st_size
    index_body = {"metadata": {"total_size": size}, "weight_map": dict.fromkeys(keys, shard)}
    return {shard: (folder / weights).read_bytes(), index: json.dumps(index_body).encode()}


def real_layout_of_tiny_zimage(tiny: Path) -> dict[str, dict[str, bytes]]:
    """The tiny zimage models under the zimage-turbo preset's real repo paths (tests/hub_layouts.py): the
    text encoder and transformer as sharded checkpoints with their index files, as the real ones are."""
    read = lambda path: (tiny / path).read_bytes()  # noqa: E731
    base = {
        "model_index.json": read("base/model_index.json"),
        "scheduler/scheduler_config.json": read("base/scheduler/scheduler_config.json"),
        "text_encoder/config.json": read("base/text_encoder/config.json"),
        "transformer/config.json": read("base/transformer/config.json"),
        "vae/config.json": read("base/vae/config.json"),
        "vae/diffusion_pytorch_model.safetensors": read("base/vae/diffusion_pytorch_model.safetensors"),
    }
    base.update({f"tokenizer/{p.name}": p.read_bytes() for p in (tiny / "base/tokenizer").iterdir()})
    for name, shard in _as_one_shard(
        tiny / "base/text_encoder",
        "model.safetensors",
        "model-00001-of-00001.safetensors",
        "model.safetensors.index.json",
    ).items():
        base[f"text_encoder/{name}"] = shard
    for name, shard in _as_one_shard(
        tiny / "base/transformer",
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model-00001-of-00001.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
    ).items():
        base[f"transformer/{name}"] = shard
    net = "Z-Image-Turbo-Fun-Controlnet-Union.safetensors"
    subject = {
        "model_index.json": read("subject/model_index.json"),
        "scheduler/scheduler_config.json": read("subject/scheduler/scheduler_config.json"),
        "text_encoder/config.json": read("subject/text_encoder/config.json"),
        "transformer/config.json": read("subject/transformer/config.json"),
        "transformer/diffusion_pytorch_model.safetensors": read(
            "subject/transformer/diffusion_pytorch_model.safetensors"
        ),
        "vae/config.json": read("subject/vae/config.json"),
        "vae/diffusion_pytorch_model.safetensors": read("subject/vae/diffusion_pytorch_model.safetensors"),
    }
    subject.update({f"tokenizer/{p.name}": p.read_bytes() for p in (tiny / "subject/tokenizer").iterdir()})
    for name, shard in _as_one_shard(
        tiny / "subject/text_encoder",
        "model.safetensors",
        "model-00001-of-00001.safetensors",
        "model.safetensors.index.json",
    ).items():
        subject[f"text_encoder/{name}"] = shard
    return {
        "Tongyi-MAI/Z-Image-Turbo": base,
        "alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union": {net: read(f"controlnet/{net}")},
        "hlky/Z-Image-Turbo-Fun-Controlnet-Union": {"config.json": read("controlnet-config/config.json")},
        "black-forest-labs/FLUX.2-klein-4B": subject,
        **_annotators(read),
    }


LAYOUT_OF_TINY = {"sd15": real_layout_of_tiny, "sdxl": real_layout_of_tiny_sdxl, "zimage": real_layout_of_tiny_zimage}
MODES_OF = {"sdxl-fast": ("edge",)}
# The real presets generate a 512² request at full size; with the tiny models' 2-block VAEs that is a
# 256² latent, whose attention alone took minutes of the suite. At this area (128²) the request still
# runs every part the pull fetched, then is resized to 512², as a request over any preset's area is.
SMALL_AREA = 128 * 128  # sdxl-fast is sdxl plus its LoRA: one mode shows the LoRA loads and runs


@pytest.mark.parametrize(
    ("preset", "family"), [("sd15", "sd15"), ("sdxl", "sdxl"), ("sdxl-fast", "sdxl"), ("zimage-turbo", "zimage")]
)
def test_pull_from_the_mirror_then_generate_every_mode_offline(preset, family, request, tmp_path, astronaut):
    tiny = request.getfixturevalue(f"tiny_{family}")
    layout = LAYOUT_OF_TINY[family](tiny)
    source = tmp_path / "source-cache"
    for repo, files in layout.items():
        write_repo(source, repo, files)
    home = tmp_path / "hf-home"
    env = {**os.environ, "HF_HOME": str(home)}
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        env.pop(name, None)
    with Mirror(source) as mirror:
        pulled = subprocess.run(
            # The default preset is pulled as `models pull` with no name: what a new user types.
            [sys.executable, "-m", "ref2img.cli", "models", "pull", *([] if preset == DEFAULT_PRESET else [preset])],
            env={**env, "HF_ENDPOINT": mirror.url},
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert pulled.returncode == 0, pulled.stderr
    shutil.rmtree(source)  # from here on, the pulled cache is all there is

    reference = tmp_path / "reference.png"
    astronaut.resize((128, 128)).save(reference)
    offline = {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for mode in MODES_OF.get(preset, ("edge", "pose", "subject", "depth")):
        made = subprocess.run(
            [
                sys.executable,
                "-m",
                "ref2img.cli",
                "generate",
                str(reference),
                "an astronaut",
                "--control",
                mode,
                "--model",
                preset,
                "--part",
                "steps=2",
                "--part",
                f"max_pixels={SMALL_AREA}",
                "--device",
                "cpu",
                "--width",
                "512",
                "--height",
                "512",
                "--out",
                str(tmp_path / "out"),
                "--json",
            ],
            env=offline,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert made.returncode == 0, f"{mode}: {made.stderr[-2000:]}"
        record = json.loads(made.stdout)
        assert record["preset"] == preset and len(record["images"]) == 1 and Path(record["images"][0]).is_file()
        if preset == "zimage-turbo" and mode == "subject":  # the sharded Qwen3 checkpoints hold the same weights
            assert "FLUX.2 klein reads the text encoder already loaded" in made.stderr
    mask = tmp_path / "subject-mask.png"  # recognition's subject mask, from the pulled segmenter
    recognized = subprocess.run(
        [
            sys.executable,
            "-m",
            "ref2img.cli",
            "recognize",
            str(reference),
            "--control",
            "subject",
            "--model",
            preset,
            "--device",
            "cpu",
            "--out",
            str(mask),
        ],
        env=offline,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert recognized.returncode == 0, recognized.stderr[-2000:]
    assert Image.open(mask).size == (128, 128)
