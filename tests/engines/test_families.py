"""Model families are plug-ins: a module, its line in FAMILY_MODULES and a preset, nothing else."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from ref2img.engines.base import EngineOptionError, Job
from ref2img.engines.local import LocalEngine, resolve_preset
from ref2img.engines.local.presets import PRESET_FILE_NAME
from ref2img.engines.local.families import FAMILY_MODULES, family_named
from ref2img.engines.local.families.preview import latent_preview
from ref2img.protocol import ControlType

from . import plugin_family


def test_every_registered_family_names_itself():
    for name, module in FAMILY_MODULES.items():
        assert importlib.import_module(module).FAMILY.name == name
    with pytest.raises(ValueError, match="unknown model family 'flux9'; one of sd15, sdxl"):
        family_named("flux9")


def test_a_preset_of_an_unknown_family_is_refused_with_the_known_ones(tmp_path):
    (tmp_path / "preset.json").write_text(json.dumps({"extends": "sd15", "family": "flux9"}))
    with pytest.raises(EngineOptionError, match=r"preset family: 'flux9' is not a model family; one of sd15, sdxl"):
        resolve_preset(str(tmp_path / "preset.json"))


def test_a_new_family_plugs_in_with_its_module_and_a_preset(monkeypatch, tiny_sd15, astronaut):
    monkeypatch.setitem(FAMILY_MODULES, "plugin-test", plugin_family.__name__)
    plugin_family.LOADS.clear()
    spec = json.loads((tiny_sd15 / PRESET_FILE_NAME).read_text())
    spec.update(name="plugin", family="plugin-test")
    (tiny_sd15 / "plugin.json").write_text(json.dumps(spec))  # beside the parts it names by relative path
    preset = resolve_preset(str(tiny_sd15 / "plugin.json"))
    engine = LocalEngine(preset, device="cpu")
    previews = []
    job = Job.for_images(
        astronaut, prompt="a plug-in", control_type=ControlType.EDGE, seed=1, width=512, height=512, steps=2
    )
    images = engine.generate(job, on_preview=lambda done, total, render: previews.append(render()))
    assert plugin_family.LOADS == ["plugin"] and [image.size for image in images] == [(512, 512)]
    assert previews and previews[0].mode == "RGB"  # rendered through the plug-in's pipelines


def test_preview_factors_must_match_the_latent_channels():
    latents = torch.zeros(1, 16, 8, 8)
    with pytest.raises(ValueError, match="for 4 latent channels, not 16"):
        latent_preview(latents, family_named("sdxl").latent_rgb)
    image = latent_preview(torch.ones(1, 4, 8, 6), family_named("sd15").latent_rgb)
    assert image.size == (6, 8)
