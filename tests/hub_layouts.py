"""The real layouts of the Hub repos the presets name: every file, each repo with the public page
its file list was read from. Sizes are those pages' (rounded as they show them), except the small
text files and the h94/IP-Adapter adapters' own weights, which are estimates; the byte counts this
gives are for planning, to within a few percent.
The fixture hub (tests/test_models_mirror.py) serves these paths with tiny stand-in bytes, so that
`ref2img models pull` is checked against what it would meet for real: what it fetches, what it leaves.

MB = 10**6 bytes, as the Hub's pages count.
"""

from __future__ import annotations

KB, MB, GB = 10**3, 10**6, 10**9

LAYOUTS: dict[str, dict[str, int]] = {
    # https://huggingface.co/pcuenq/stable-diffusion-v1-5/commit/63641623774da2998a288384bd73dffe1a02f004
    # ("Duplicate from stable-diffusion-v1-5/stable-diffusion-v1-5": the file list); sizes from
    # https://huggingface.co/runwayml/stable-diffusion-v1-5/discussions/106/files (LFS pointers).
    "stable-diffusion-v1-5/stable-diffusion-v1-5": {
        ".gitattributes": 1_520,
        "README.md": 14_460,
        "feature_extractor/preprocessor_config.json": 342,
        "model_index.json": 541,
        "safety_checker/config.json": 4_720,
        "safety_checker/model.fp16.safetensors": 608_018_440,
        "safety_checker/model.safetensors": int(1.22 * GB),
        "safety_checker/pytorch_model.bin": int(1.22 * GB),
        "safety_checker/pytorch_model.fp16.bin": 608_103_564,
        "scheduler/scheduler_config.json": 308,
        "text_encoder/config.json": 617,
        "text_encoder/model.fp16.safetensors": 246 * MB,
        "text_encoder/model.safetensors": 492 * MB,
        "text_encoder/pytorch_model.bin": 492 * MB,
        "text_encoder/pytorch_model.fp16.bin": 246 * MB,
        "tokenizer/merges.txt": 525 * KB,
        "tokenizer/special_tokens_map.json": 472,
        "tokenizer/tokenizer_config.json": 806,
        "tokenizer/vocab.json": int(1.06 * MB),
        "unet/config.json": 743,
        "unet/diffusion_pytorch_model.bin": int(3.44 * GB),
        "unet/diffusion_pytorch_model.fp16.bin": int(1.72 * GB),
        "unet/diffusion_pytorch_model.fp16.safetensors": int(1.72 * GB),
        "unet/diffusion_pytorch_model.non_ema.bin": int(3.44 * GB),
        "unet/diffusion_pytorch_model.non_ema.safetensors": int(3.44 * GB),
        "unet/diffusion_pytorch_model.safetensors": int(3.44 * GB),
        "v1-5-pruned-emaonly.ckpt": int(4.27 * GB),
        "v1-5-pruned-emaonly.safetensors": int(4.27 * GB),
        "v1-5-pruned.ckpt": int(7.7 * GB),
        "v1-5-pruned.safetensors": int(7.7 * GB),
        "v1-inference.yaml": 1_870,
        "vae/config.json": 547,
        "vae/diffusion_pytorch_model.bin": 335 * MB,
        "vae/diffusion_pytorch_model.fp16.bin": 167 * MB,
        "vae/diffusion_pytorch_model.fp16.safetensors": 167 * MB,
        "vae/diffusion_pytorch_model.safetensors": 335 * MB,
    },
    # https://huggingface.co/lllyasviel/control_v11p_sd15_canny/tree/main
    "lllyasviel/control_v11p_sd15_canny": {
        ".gitattributes": 1_580,
        "README.md": 16_600,
        "config.json": 996,
        "control_net_canny.py": 1_380,
        "diffusion_pytorch_model.bin": int(1.45 * GB),
        "diffusion_pytorch_model.fp16.bin": 723 * MB,
        "diffusion_pytorch_model.fp16.safetensors": 723 * MB,
        "diffusion_pytorch_model.safetensors": int(1.45 * GB),
        "images/control.png": 15 * KB,
        "images/image_out.png": 800 * KB,
        "images/input.png": 800 * KB,
    },
    # https://huggingface.co/lllyasviel/control_v11p_sd15_openpose/tree/main
    "lllyasviel/control_v11p_sd15_openpose": {
        ".gitattributes": 1_480,
        "README.md": 15_700,
        "config.json": 999,
        "control_net_open_pose.py": 1_890,
        "diffusion_pytorch_model.bin": int(1.45 * GB),
        "diffusion_pytorch_model.fp16.bin": 723 * MB,
        "diffusion_pytorch_model.fp16.safetensors": 723 * MB,
        "diffusion_pytorch_model.safetensors": int(1.45 * GB),
        "images/control.png": 20 * KB,
        "images/input.png": 800 * KB,
    },
    # https://huggingface.co/lllyasviel/control_v11f1p_sd15_depth/tree/main
    "lllyasviel/control_v11f1p_sd15_depth": {
        ".gitattributes": 1_480,
        "README.md": 17_000,
        "config.json": 945,
        "control_net_depth.py": 1_560,
        "diffusion_pytorch_model.bin": int(1.45 * GB),
        "diffusion_pytorch_model.fp16.bin": 723 * MB,
        "diffusion_pytorch_model.fp16.safetensors": 723 * MB,
        "diffusion_pytorch_model.safetensors": int(1.45 * GB),
        "images/control.png": 145 * KB,
        "images/image_out.png": 865 * KB,
        "images/input.png": 890 * KB,
    },
    # https://huggingface.co/h94/IP-Adapter/tree/55964dca626aad0a3c7770d902c782a98806d795 (models/,
    # sdxl_models/); models/image_encoder as copied from h94 at 0859e80 by
    # https://huggingface.co/RyanJDick/ip_adapter_sd_image_encoder/tree/main; the sdxl_models list from
    # https://huggingface.co/Charles-Elena/InstantStyle-SDXL-Lightning/blob/main/.gitignore
    "h94/IP-Adapter": {
        ".gitattributes": 1_520,
        "README.md": 216,
        "models/image_encoder/config.json": 560,
        "models/image_encoder/model.safetensors": int(2.53 * GB),
        "models/image_encoder/pytorch_model.bin": int(2.53 * GB),
        "models/ip-adapter-plus_sd15.bin": 158 * MB,
        "models/ip-adapter-plus_sd15.safetensors": 98 * MB,
        "models/ip-adapter_sd15.bin": 44 * MB,
        "models/ip-adapter_sd15.safetensors": 44 * MB,
        "sdxl_models/image_encoder/config.json": 560,
        "sdxl_models/image_encoder/model.safetensors": int(3.69 * GB),
        "sdxl_models/image_encoder/pytorch_model.bin": int(3.69 * GB),
        "sdxl_models/ip-adapter-plus_sdxl_vit-h.bin": 1_010 * MB,
        "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors": 848 * MB,
        "sdxl_models/ip-adapter_sdxl.safetensors": 703 * MB,
        "sdxl_models/ip-adapter_sdxl_vit-h.safetensors": 698 * MB,
    },
    # https://huggingface.co/depth-anything/Depth-Anything-V2-Small-hf/tree/main
    "depth-anything/Depth-Anything-V2-Small-hf": {
        ".gitattributes": 1_520,
        "README.md": 4_400,
        "config.json": 950,
        "model.safetensors": int(99.2 * MB),
        "preprocessor_config.json": 775,
    },
    # https://huggingface.co/yzd-v/DWPose/commit/f7c16a3d45ad3783db41471848c80fbc281cabac (LFS pointers)
    "yzd-v/DWPose": {
        ".gitattributes": 1_520,
        "dw-ll_ucoco.pth": 404_734_742,
        "dw-ll_ucoco_384.onnx": 134_399_116,
        "dw-ll_ucoco_384.pth": 406_878_486,
        "dw-mm_ucoco.pth": 216_812_378,
        "dw-ss_ucoco.pth": 102_933_707,
        "dw-tt_ucoco.pth": 6_847_510,
        "yolox_l.onnx": 217 * MB,
    },
    # https://huggingface.co/onnx-community/BiRefNet_lite-ONNX/tree/main and
    # https://huggingface.co/onnx-community/BiRefNet_lite/tree/main/onnx
    "onnx-community/BiRefNet_lite-ONNX": {
        ".gitattributes": 1_520,
        "README.md": 4_290,
        "config.json": 81,
        "preprocessor_config.json": 391,
        "onnx/model.onnx": 224 * MB,
        "onnx/model_fp16.onnx": 115 * MB,
    },
    # Root: https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/tree/cd44addac4063479f4c3db4b80cb6006290b2b0e
    # and /tree/7e9ccea7f3e23e85aef3a0e878c39f0a41bf9bdb (folders: flax weights added by #95, OpenVINO by
    # #19, vae_1_0 by #30); unet, vae, text_encoder(_2): the folders' own tree pages at c468d0c, eef8a74,
    # 43d0fa6, e13090c. The flax and OpenVINO file names inside the folders follow those commits' titles
    # (the pages list them below what was read): stand-ins for "files no loader here reads".
    "stabilityai/stable-diffusion-xl-base-1.0": {
        ".gitattributes": 1_560,
        "01.png": int(4.61 * MB),
        "LICENSE.md": 14_100,
        "README.md": 8_650,
        "comparison.png": 130 * KB,
        "model_index.json": 609,
        "pipeline.png": 80_200,
        "sd_xl_base_1.0.safetensors": int(6.94 * GB),
        "sd_xl_base_1.0_0.9vae.safetensors": int(6.94 * GB),
        "sd_xl_offset_example-lora_1.0.safetensors": int(49.6 * MB),
        "scheduler/scheduler_config.json": 479,
        "text_encoder/config.json": 565,
        "text_encoder/model.fp16.safetensors": 246 * MB,
        "text_encoder/model.safetensors": 492 * MB,
        "text_encoder/flax_model.msgpack": 492 * MB,
        "text_encoder/openvino_model.bin": 492 * MB,
        "text_encoder/openvino_model.xml": 1 * MB,
        "text_encoder_2/config.json": 575,
        "text_encoder_2/model.fp16.safetensors": int(1.39 * GB),
        "text_encoder_2/model.safetensors": int(2.78 * GB),
        "text_encoder_2/flax_model.msgpack": int(2.78 * GB),
        "text_encoder_2/openvino_model.bin": int(2.78 * GB),
        "text_encoder_2/openvino_model.xml": 2 * MB,
        "tokenizer/merges.txt": 525 * KB,
        "tokenizer/special_tokens_map.json": 472,
        "tokenizer/tokenizer_config.json": 737,
        "tokenizer/vocab.json": int(1.06 * MB),
        "tokenizer_2/merges.txt": 525 * KB,
        "tokenizer_2/special_tokens_map.json": 460,
        "tokenizer_2/tokenizer_config.json": 725,
        "tokenizer_2/vocab.json": int(1.06 * MB),
        "unet/config.json": 1_680,
        "unet/diffusion_pytorch_model.fp16.safetensors": int(5.14 * GB),
        "unet/diffusion_pytorch_model.safetensors": int(10.3 * GB),
        "unet/diffusion_flax_model.msgpack": int(10.3 * GB),
        "unet/openvino_model.bin": int(10.3 * GB),
        "unet/openvino_model.xml": 5 * MB,
        "vae/config.json": 607,
        "vae/diffusion_pytorch_model.fp16.safetensors": 167 * MB,
        "vae/diffusion_pytorch_model.safetensors": 335 * MB,
        "vae/diffusion_flax_model.msgpack": 335 * MB,
        "vae_1_0/config.json": 607,
        "vae_1_0/diffusion_pytorch_model.fp16.safetensors": 167 * MB,
        "vae_1_0/diffusion_pytorch_model.safetensors": 335 * MB,
        "vae_decoder/config.json": 607,
        "vae_decoder/openvino_model.bin": 99 * MB,
        "vae_decoder/openvino_model.xml": 1 * MB,
        "vae_encoder/config.json": 607,
        "vae_encoder/openvino_model.bin": 68 * MB,
        "vae_encoder/openvino_model.xml": 1 * MB,
    },
    # https://huggingface.co/madebyollin/sdxl-vae-fp16-fix (commit pages of config.json,
    # diffusion_pytorch_model.bin and sdxl_vae.safetensors; the diffusers safetensors weights beside them)
    "madebyollin/sdxl-vae-fp16-fix": {
        ".gitattributes": 1_520,
        "README.md": 3_500,
        "config.json": 631,
        "diffusion_pytorch_model.bin": 335 * MB,
        "diffusion_pytorch_model.safetensors": 335 * MB,
        "sdxl_vae.safetensors": 335 * MB,
        "images/orig-fp16.png": 3_130,
    },
    # https://huggingface.co/xinsir/controlnet-union-sdxl-1.0/tree/801a4a3fa3d4c936f4feea95b98607bc6726f80c
    "xinsir/controlnet-union-sdxl-1.0": {
        ".gitattributes": 1_640,
        "README.md": 9_860,
        "config.json": 1_240,
        "config_promax.json": 1_260,
        "diffusion_pytorch_model.safetensors": int(2.51 * GB),
        "diffusion_pytorch_model_promax.safetensors": int(2.51 * GB),
        "images/000000_canny_concat.webp": 300 * KB,
    },
    # https://huggingface.co/ByteDance/SDXL-Lightning/tree/dd8c2216059e9d3096313bfcb53bdfff80f70c77
    "ByteDance/SDXL-Lightning": {
        ".gitattributes": 1_580,
        "LICENSE.md": 14_100,
        "README.md": 6_380,
        "comfyui/sdxl_lightning_workflow_full.json": 10 * KB,
        "sdxl_lightning_1step_unet_x0.safetensors": int(5.14 * GB),
        "sdxl_lightning_1step_x0.safetensors": int(6.94 * GB),
        "sdxl_lightning_2step.safetensors": int(6.94 * GB),
        "sdxl_lightning_2step_lora.safetensors": 394 * MB,
        "sdxl_lightning_2step_unet.safetensors": int(5.14 * GB),
        "sdxl_lightning_4step.safetensors": int(6.94 * GB),
        "sdxl_lightning_4step_lora.safetensors": 394 * MB,
        "sdxl_lightning_4step_unet.safetensors": int(5.14 * GB),
        "sdxl_lightning_8step.safetensors": int(6.94 * GB),
        "sdxl_lightning_8step_lora.safetensors": 394 * MB,
        "sdxl_lightning_8step_unet.safetensors": int(5.14 * GB),
    },
    # https://huggingface.co/Tongyi-MAI/Z-Image-Turbo/tree/main/text_encoder and .../tree/main/tokenizer (file
    # names and sizes); the rest of the file list from a conversion's commit that lists every file
    # (https://huggingface.co/andrevp/Z-Image-Turbo-MLX-4bit/commit/ae92f5fd135443d55c8ea044b0d8b8d3cd325aba).
    # Estimates: the transformer's three shards (12.3 GB in all, as Comfy-Org's one bf16 file of it) and
    # the VAE (168 MB, as Tongyi-MAI/Z-Image's vae folder).
    "Tongyi-MAI/Z-Image-Turbo": {
        ".gitattributes": 1_600,
        "README.md": 9_000,
        "model_index.json": 467,
        "scheduler/scheduler_config.json": 180,
        "text_encoder/config.json": 726,
        "text_encoder/generation_config.json": 239,
        "text_encoder/model-00001-of-00003.safetensors": int(3.96 * GB),
        "text_encoder/model-00002-of-00003.safetensors": int(3.99 * GB),
        "text_encoder/model-00003-of-00003.safetensors": int(99.6 * MB),
        "text_encoder/model.safetensors.index.json": int(32.8 * KB),
        "tokenizer/merges.txt": int(1.67 * MB),
        "tokenizer/tokenizer.json": int(11.4 * MB),
        "tokenizer/tokenizer_config.json": int(9.73 * KB),
        "tokenizer/vocab.json": int(2.78 * MB),
        "transformer/config.json": 500,
        "transformer/diffusion_pytorch_model-00001-of-00003.safetensors": int(4.99 * GB),
        "transformer/diffusion_pytorch_model-00002-of-00003.safetensors": int(4.99 * GB),
        "transformer/diffusion_pytorch_model-00003-of-00003.safetensors": int(2.32 * GB),
        "transformer/diffusion_pytorch_model.safetensors.index.json": 60 * KB,
        "vae/config.json": 800,
        "vae/diffusion_pytorch_model.safetensors": 168 * MB,
    },
    # https://huggingface.co/alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union (its card names the one file and
    # the asset/ images). Estimate: the file's size (6 control blocks and 2 refiner blocks of dim 3840, bf16).
    "alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union": {
        ".gitattributes": 1_600,
        "README.md": 6_000,
        "Z-Image-Turbo-Fun-Controlnet-Union.safetensors": int(3.1 * GB),
        "asset/pose.jpg": 200 * KB,
        "asset/canny.jpg": 200 * KB,
        "asset/depth.jpg": 200 * KB,
    },
    # https://huggingface.co/hlky/Z-Image-Turbo-Fun-Controlnet-Union/blob/main/config.json: the diffusers config
    # that diffusers' single-file loader reads for that file.
    "hlky/Z-Image-Turbo-Fun-Controlnet-Union": {
        ".gitattributes": 1_500,
        "config.json": 420,
    },
    # https://huggingface.co/black-forest-labs/FLUX.2-klein-4B/tree/main/text_encoder (names and sizes), its
    # model_index.json page, and .../blob/main/flux-2-klein-4b.safetensors (the one-file checkpoint at the
    # root, 7.75 GB: not read here). Estimates: the transformer (as one file of the same size), the VAE,
    # the tokenizer's files other than vocab.json (2.78 MB on a mirror's page) and the small configs.
    "black-forest-labs/FLUX.2-klein-4B": {
        ".gitattributes": 1_600,
        "README.md": 9_000,
        "LICENSE.md": 11_000,
        "flux-2-klein-4b.safetensors": int(7.75 * GB),
        "model_index.json": 480,
        "scheduler/scheduler_config.json": 500,
        "text_encoder/config.json": int(1.54 * KB),
        "text_encoder/generation_config.json": 214,
        "text_encoder/model-00001-of-00002.safetensors": int(4.97 * GB),
        "text_encoder/model-00002-of-00002.safetensors": int(3.08 * GB),
        "text_encoder/model.safetensors.index.json": int(32.9 * KB),
        "tokenizer/merges.txt": int(1.67 * MB),
        "tokenizer/tokenizer.json": int(11.4 * MB),
        "tokenizer/tokenizer_config.json": int(9.7 * KB),
        "tokenizer/vocab.json": int(2.78 * MB),
        "transformer/config.json": 600,
        "transformer/diffusion_pytorch_model.safetensors": int(7.75 * GB),
        "vae/config.json": 900,
        "vae/diffusion_pytorch_model.safetensors": 168 * MB,
    },
}

# What `ref2img models pull sd15` must fetch, and nothing else: the files its loaders read, written out
# by hand (not derived from the preset's patterns, which are what is under test).
SD15_NEEDS: dict[str, set[str]] = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": {
        "model_index.json",
        "feature_extractor/preprocessor_config.json",
        "scheduler/scheduler_config.json",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    },
    "lllyasviel/control_v11p_sd15_canny": {"config.json", "diffusion_pytorch_model.fp16.safetensors"},
    "lllyasviel/control_v11p_sd15_openpose": {"config.json", "diffusion_pytorch_model.fp16.safetensors"},
    "lllyasviel/control_v11f1p_sd15_depth": {"config.json", "diffusion_pytorch_model.fp16.safetensors"},
    "h94/IP-Adapter": {
        "models/image_encoder/config.json",
        "models/image_encoder/model.safetensors",
        "models/ip-adapter-plus_sd15.safetensors",
    },
    "depth-anything/Depth-Anything-V2-Small-hf": {"config.json", "preprocessor_config.json", "model.safetensors"},
    "yzd-v/DWPose": {"yolox_l.onnx", "dw-ll_ucoco_384.onnx"},
    "onnx-community/BiRefNet_lite-ONNX": {"onnx/model.onnx"},
}


def real_bytes(needs: dict[str, set[str]]) -> int:
    """What a pull of these files downloads from the real Hub."""
    return sum(LAYOUTS[repo][path] for repo, paths in needs.items() for path in paths)


_SHARED = {  # what sd15 and sdxl both read from these repos
    "depth-anything/Depth-Anything-V2-Small-hf": {"config.json", "preprocessor_config.json", "model.safetensors"},
    "yzd-v/DWPose": {"yolox_l.onnx", "dw-ll_ucoco_384.onnx"},
    "onnx-community/BiRefNet_lite-ONNX": {"onnx/model.onnx"},
}

SDXL_NEEDS: dict[str, set[str]] = {
    "stabilityai/stable-diffusion-xl-base-1.0": {
        "model_index.json",
        "scheduler/scheduler_config.json",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "tokenizer_2/merges.txt",
        "tokenizer_2/special_tokens_map.json",
        "tokenizer_2/tokenizer_config.json",
        "tokenizer_2/vocab.json",
        "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors",
        "text_encoder_2/config.json",
        "text_encoder_2/model.fp16.safetensors",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json",
    },
    "madebyollin/sdxl-vae-fp16-fix": {"config.json", "diffusion_pytorch_model.safetensors"},
    "xinsir/controlnet-union-sdxl-1.0": {"config.json", "diffusion_pytorch_model.safetensors"},
    "h94/IP-Adapter": {
        "models/image_encoder/config.json",
        "models/image_encoder/model.safetensors",
        "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
    },
    **_SHARED,
}

SDXL_FAST_NEEDS: dict[str, set[str]] = {
    **SDXL_NEEDS,
    "ByteDance/SDXL-Lightning": {"sdxl_lightning_8step_lora.safetensors"},
}

ZIMAGE_TURBO_NEEDS: dict[str, set[str]] = {
    "Tongyi-MAI/Z-Image-Turbo": {
        "model_index.json",
        "scheduler/scheduler_config.json",
        "tokenizer/merges.txt",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors.index.json",
        "text_encoder/model-00001-of-00003.safetensors",
        "text_encoder/model-00002-of-00003.safetensors",
        "text_encoder/model-00003-of-00003.safetensors",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors.index.json",
        "transformer/diffusion_pytorch_model-00001-of-00003.safetensors",
        "transformer/diffusion_pytorch_model-00002-of-00003.safetensors",
        "transformer/diffusion_pytorch_model-00003-of-00003.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    },  # not the README, nor text_encoder/generation_config.json (text generation only)
    "alibaba-pai/Z-Image-Turbo-Fun-Controlnet-Union": {"Z-Image-Turbo-Fun-Controlnet-Union.safetensors"},
    "hlky/Z-Image-Turbo-Fun-Controlnet-Union": {"config.json"},
    "black-forest-labs/FLUX.2-klein-4B": {
        "model_index.json",
        "scheduler/scheduler_config.json",
        "tokenizer/merges.txt",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors.index.json",
        "text_encoder/model-00001-of-00002.safetensors",
        "text_encoder/model-00002-of-00002.safetensors",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    },  # not the root's one-file checkpoint, nor the licence and readme
    **_SHARED,
}
