"""A throw-away family for tests/engines/test_families.py: SD1.5's classes under another name, with its
own preview factors, recording each load. It is what a new family module looks like to the engine."""

from ref2img.engines.local.families.sd15 import FAMILY as SD15
from ref2img.engines.local.families.unet import UNetFamily

LOADS: list[str] = []


class RecordingFamily(UNetFamily):
    def load(self, preset, placement, speedups, offload_mode):
        LOADS.append(preset.name)
        return super().load(preset, placement, speedups, offload_mode)


FAMILY = RecordingFamily(
    name="plugin-test",
    description="SD1.5 under another name (a test plug-in)",
    base_class=SD15.base_class,
    pipeline_classes=SD15.pipeline_classes,
    inpaint_class=SD15.inpaint_class,
    latent_rgb=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.0, 0.0)),
    base_extra=SD15.base_extra,
)
