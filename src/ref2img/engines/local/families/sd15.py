"""Stable Diffusion 1.5: a ControlNet per mode, IP-Adapter for subjects (families/unet.py)."""

from ref2img.engines.local.families.unet import UNetFamily

FAMILY = UNetFamily(
    name="sd15",
    description="Stable Diffusion 1.5 (UNet): a ControlNet per mode, IP-Adapter for subjects",
    base_class="StableDiffusionPipeline",
    pipeline_classes={
        ("controlnet", False): "StableDiffusionControlNetPipeline",
        ("controlnet", True): "StableDiffusionControlNetImg2ImgPipeline",
        ("plain", False): "StableDiffusionPipeline",
        ("plain", True): "StableDiffusionImg2ImgPipeline",
    },
    inpaint_class="StableDiffusionInpaintPipeline",
    # ComfyUI's SD1.5 factors (comfy/latent_formats.py)
    latent_rgb=(
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    ),
    base_extra={"safety_checker": None, "requires_safety_checker": False},
)
