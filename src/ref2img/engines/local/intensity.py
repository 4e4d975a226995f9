"""How `control_intensity` (0..1) maps onto the documented diffusers knobs, per mode.

| mode | knob | at 0 | at 1 |
|---|---|---|---|
| edge/pose/depth | `controlnet_conditioning_scale` = max·i | 0 | preset max (1.0 SD1.5, 0.9 SDXL union) |
| edge/pose/depth | `control_guidance_end` = 0.3 + 0.7·i | 0.3 | 1.0 (control on every step) |
| edge/pose/depth + init image | img2img `strength` | 0.75 | 0.75 (intensity drives the control, not the init) |
| subject | `ip_adapter_scale` = 0.3 + 0.6·i | 0.3 | 0.9 (diffusers: 1.0 = image prompt only) |
| subject + init image | img2img `strength` = 1 − 0.6·i | 1.0 | 0.4 (keeps more of the init image) |
"""

from __future__ import annotations

from dataclasses import dataclass

from ref2img.protocol import ControlType

INIT_STRENGTH_WITH_CONTROL = 0.75


@dataclass(frozen=True)
class Knobs:
    controlnet_scale: float | None = None
    control_guidance_end: float | None = None
    ip_adapter_scale: float = 0.0  # 0 makes diffusers skip the IP-Adapter attention entirely
    strength: float | None = None  # None: text-to-image, no init image


def knobs_for(mode: ControlType, intensity: float, has_init: bool, controlnet_scale_max: float) -> Knobs:
    if not 0.0 <= intensity <= 1.0:
        raise ValueError(f"control_intensity must be from 0 to 1 (got {intensity})")
    if mode is ControlType.SUBJECT:
        return Knobs(ip_adapter_scale=0.3 + 0.6 * intensity, strength=(1.0 - 0.6 * intensity) if has_init else None)
    return Knobs(
        controlnet_scale=controlnet_scale_max * intensity,
        control_guidance_end=0.3 + 0.7 * intensity,
        strength=INIT_STRENGTH_WITH_CONTROL if has_init else None,
    )
