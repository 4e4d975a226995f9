"""Every module of every cached pipeline stays in the chosen dtype, for every mode of both families.

On a CPU the default is float32, which is also what diffusers' `from_pipe` casts to when it is not told
the dtype: a slip there is invisible unless another dtype is forced. So this runs in bfloat16.
"""

import pytest
import torch

from ref2img.engines.base import EngineError, Job
from ref2img.engines.local import LocalEngine
from ref2img.engines.local.device import choose_placement, parse_dtype
from ref2img.engines.local.pipelines import FLOAT32_BY_DESIGN
from ref2img.protocol import ControlType

# Kept out of the chosen dtype on purpose. Integer buffers (token position ids) are not floating point
# and not checked. The depth annotator is not part of any pipeline: transformers' depth-estimation
# pipeline hands its output to numpy, which has no bfloat16, so it runs in float32 (25M parameters).
EXEMPT_MODULES = {"annotator.depth_estimator": torch.float32}
# transformers keeps a rotary embedding's frequency table in float32 on purpose (pipelines.py says why).
EXEMPT_BUFFERS = FLOAT32_BY_DESIGN

# Subject first: loading the IP-Adapter rebuilds the pipelines, and the check should see them all.
JOBS = [
    (mode, with_init)
    for mode in (ControlType.SUBJECT, ControlType.EDGE, ControlType.POSE, ControlType.DEPTH)
    for with_init in (False, True)
]


def off_dtype_tensors(engine: LocalEngine, dtype: torch.dtype) -> list[str]:
    found = []
    modules = {}
    for pipe in engine.pipelines.cached_pipelines():
        modules.update(
            {
                f"{type(pipe).__name__}.{name}": module
                for name, module in pipe.components.items()
                if isinstance(module, torch.nn.Module)
            }
        )
    modules.update({f"annotator.{name}": module for name, module in engine.annotators.modules().items()})
    for owner, module in modules.items():
        expected = EXEMPT_MODULES.get(owner, dtype)
        for name, tensor in (*module.named_parameters(), *module.named_buffers()):
            if name.endswith(EXEMPT_BUFFERS):
                continue
            if tensor.is_floating_point() and tensor.dtype != expected:
                found.append(f"{owner}: {name} is {tensor.dtype}")
    return found


@pytest.mark.parametrize("family", ["sd15", pytest.param("sdxl", marks=pytest.mark.slow)])  # sdxl: 25 s here
def test_every_module_stays_in_the_forced_dtype(family, tiny_sd15, tiny_sdxl, astronaut, coffee):
    engine = LocalEngine(str(tiny_sd15 if family == "sd15" else tiny_sdxl), device="cpu", dtype="bfloat16")
    for mode, with_init in JOBS:
        job = Job.for_images(
            prompt="an astronaut",
            control_type=mode,
            reference=astronaut,
            seed=3,
            width=512,
            height=512,
            init_image=coffee if with_init else None,
            steps=2,
        )
        images = engine.generate(job)
        assert [image.size for image in images] == [(512, 512)]
        assert off_dtype_tensors(engine, torch.bfloat16) == [], f"after {mode.name} (init={with_init})"
    # Every pipeline the jobs needed was built and checked: the base, subject with and without an init
    # image, and the ControlNet ones (one union net for SDXL, one net per mode for SD1.5).
    assert len(engine.pipelines.cached_pipelines()) == (1 + 2 + (2 if family == "sdxl" else 6))
    dtypes = engine.component_dtypes()
    assert {"unet", "vae", "text_encoder", "image_encoder", "depth_estimator"} <= set(dtypes)
    assert any(name.startswith("controlnet.") for name in dtypes)
    assert dtypes.pop("depth_estimator") == "float32"
    assert set(dtypes.values()) == {"bfloat16"}


def test_the_guard_sees_a_cast(tiny_sd15, astronaut):
    """The check above can fail: one stray module in float32 is reported by name."""
    engine = LocalEngine(str(tiny_sd15), device="cpu", dtype="bfloat16")
    engine.generate(
        Job.for_images(
            prompt="x", control_type=ControlType.EDGE, reference=astronaut, seed=1, width=512, height=512, steps=1
        )
    )
    engine.pipelines.base.vae.to(torch.float32)
    found = off_dtype_tensors(engine, torch.bfloat16)
    assert found and all(".vae: " in line for line in found)
    assert engine.component_dtypes()["vae"] == "float32"


def test_dtype_names_and_defaults():
    assert parse_dtype("bfloat16") is torch.bfloat16 and parse_dtype("float16") is torch.float16
    assert parse_dtype(None) is None
    assert choose_placement("cpu").dtype is torch.float32
    assert choose_placement("cpu", "float16").dtype is torch.float16
    with pytest.raises(EngineError, match=r"--dtype: must be one of float32, float16, bfloat16 \(got 'half'\)"):
        parse_dtype("half")
