"""Model families as plug-ins. A family is one module here that owns everything the engine must know of
a kind of model: its diffusers classes and how they load, how `control_intensity` maps onto its knobs,
its latent-to-RGB preview factors, which speed levers apply to its denoiser, the sizes `--offload auto`
weighs, and the builder of its tiny random-weight models.

`LocalEngine` and `load_pipelines` know families only through the `Family` protocol. Adding a family
is its module, its line in `FAMILY_MODULES`, and a preset. The registry holds module names, not the
modules: presets and the CLI read it without importing torch or diffusers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ref2img.engines.base import Job, RepaintJob
    from ref2img.engines.local.device import Placement
    from ref2img.engines.local.presets import Preset
    from ref2img.engines.local.speed import Speedups

# family name -> the module that defines it (as its `FAMILY`)
FAMILY_MODULES: dict[str, str] = {
    "sd15": "ref2img.engines.local.families.sd15",
    "sdxl": "ref2img.engines.local.families.sdxl",
    "zimage": "ref2img.engines.local.families.zimage",
}


@dataclass(frozen=True)
class ControlSupport:
    """What a family's `prepare_controls` runs: up to `most` controls, and whether the subject with them."""

    most: int
    with_subject: bool


# family name -> what it supports of `controls`; read at create time, without importing the family
FAMILY_CONTROLS: dict[str, ControlSupport] = {
    "sd15": ControlSupport(most=3, with_subject=True),  # MultiControlNet + IP-Adapter
    "sdxl": ControlSupport(most=3, with_subject=True),  # the union ControlNet's conditions + IP-Adapter
    "zimage": ControlSupport(most=1, with_subject=False),  # one Fun ControlNet map; klein's subject apart
}


def controls_problem(family: str, count: int, with_subject: bool) -> tuple[str, str] | None:
    """(field, message) when `family` cannot run `count` controls (with the subject), else None."""
    support = FAMILY_CONTROLS.get(family, ControlSupport(most=0, with_subject=False))
    if count > support.most:
        return f"controls[{support.most}]", (
            f"the {family} family takes at most {support.most} control(s) in one request"
            if support.most
            else f"the {family} family takes no controls list"
        )
    if with_subject and not support.with_subject:
        return "control_type", f'the {family} family cannot keep the subject ("2") together with controls'
    return None


class FamilyPipelines(Protocol):
    """A family's loaded model(s), serving every mode without reloading."""

    offload: str  # the offload mode in force ("none", "model", "sequential")
    ignored: list[str]  # what of the last job's request this family has no knob for (the run record shows it)
    # Callables (pipeline, step, timestep, tensors) -> tensors the engine runs after each step of the last
    # prepared call, after its own; each may name more `tensor_inputs(pipe)` than the latents.
    step_hooks: list[Any]

    def prepare(self, job: Job, gen_w: int, gen_h: int, control_map: Image.Image | None) -> tuple[Any, dict[str, Any]]:
        """The diffusers pipeline for `job` and the keyword arguments of its call (`num_inference_steps`
        among them; the engine adds `callback_on_step_end`). `control_map`: at the model's size, None in
        subject mode."""

    def prepare_controls(
        self, job: Job, gen_w: int, gen_h: int, control_maps: list[Image.Image]
    ) -> tuple[Any, dict[str, Any]]:
        """A job with several controls (`job.controls`, one map each, at the model's size), and the subject
        too when `job.request.keeps_subject`. EngineOptionError naming the family and the control for a
        combination it cannot run (FAMILY_CONTROLS says which, before a task is queued)."""

    def prepare_repaint(self, job: RepaintJob, gen_w: int, gen_h: int, mask: Image.Image) -> tuple[Any, dict[str, Any]]:
        """Image Repaint: the family's inpainting pipeline and its call; `mask` at the model's size, white
        = redraw. EngineError for a family that has no inpainting pipeline."""

    def preview(self, latents: torch.Tensor) -> Image.Image:
        """The current latents of a step as a small RGB image."""

    def modules(self) -> dict[str, torch.nn.Module]:
        """Every loaded model by name (the dtype guard and the run record read them)."""

    def cached_pipelines(self) -> list[Any]: ...


class Family(Protocol):
    name: str
    description: str

    def load(self, preset: Preset, placement: Placement, speedups: Speedups, offload_mode: str) -> FamilyPipelines:
        """Load the preset's base model (the per-mode parts load on first use)."""

    def build_random(self, directory: Path, scale: str, dtype: torch.dtype) -> Path:
        """Random-weight models with this family's real layout (`tiny` for tests, `full` for the GPU
        benches), and a preset.json naming them; returns the directory."""


def family_names() -> list[str]:
    return list(FAMILY_MODULES)


def family_named(name: str) -> Family:
    """The family plug-in called `name`; ValueError naming the known ones otherwise."""
    module = FAMILY_MODULES.get(name)
    if module is None:
        raise ValueError(f"unknown model family {name!r}; one of {', '.join(FAMILY_MODULES)}")
    return importlib.import_module(module).FAMILY
