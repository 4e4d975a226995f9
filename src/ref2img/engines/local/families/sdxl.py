"""Stable Diffusion XL: the union ControlNet (or one per mode), IP-Adapter for subjects (families/unet.py)."""

from ref2img.engines.local.families.unet import UNetFamily

FAMILY = UNetFamily(
    name="sdxl",
    description="Stable Diffusion XL (UNet): the union ControlNet, IP-Adapter for subjects",
    base_class="StableDiffusionXLPipeline",
    pipeline_classes={
        ("controlnet", False): "StableDiffusionXLControlNetPipeline",
        ("controlnet", True): "StableDiffusionXLControlNetImg2ImgPipeline",
        ("union", False): "StableDiffusionXLControlNetUnionPipeline",
        ("union", True): "StableDiffusionXLControlNetUnionImg2ImgPipeline",
        ("plain", False): "StableDiffusionXLPipeline",
        ("plain", True): "StableDiffusionXLImg2ImgPipeline",
    },
    inpaint_class="StableDiffusionXLInpaintPipeline",
    # diffusers watermarks SDXL output itself whenever invisible-watermark is installed; ref2img's own
    # marks (provenance/) replace it, carrying the task's id instead of a fixed message.
    pipe_extra={"add_watermarker": False},
    # ComfyUI's SDXL factors (comfy/latent_formats.py)
    latent_rgb=(
        (0.3920, 0.4054, 0.4549),
        (-0.2634, -0.0196, 0.0653),
        (0.0568, 0.1687, -0.0755),
        (-0.3112, -0.2359, -0.2076),
    ),
)
