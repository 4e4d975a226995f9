"""Several controls and a subject in one request: each control's map reaches its ControlNet, with its
own mode and scale; the IP-Adapter runs beside them; what a family cannot run is refused by name."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ref2img.engines.base import EngineOptionError, Job
from ref2img.engines.local.families import controls_problem
from ref2img.protocol import ParameterError


def recorded_calls(net) -> list[dict]:
    """The keyword arguments of every call of a real ControlNet (a forward pre-hook only observes)."""
    calls: list[dict] = []
    net.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True)
    return calls


def a_map(fill: str) -> Image.Image:
    image = Image.new("RGB", (512, 512), "black")
    ImageDraw.Draw(image).rectangle((100, 100, 400, 400), outline=fill, width=20)
    return image


def test_the_union_controlnet_gets_every_condition_with_its_mode_and_scale(engine_xl, astronaut):
    edge_map = a_map("white")
    job = Job.for_images(
        astronaut,
        prompt="an astronaut",
        control_type="2",
        control_intensity=0.7,
        width=512,
        height=512,
        seed=1,
        controls=[
            {"type": "pose", "intensity": 1.0},
            {"type": "edge", "image": "memory:edge", "map": True, "intensity": 0.5, "end": 0.5},
        ],
        control_inputs=[astronaut, edge_map],
        steps=2,
    )
    pipelines = engine_xl.pipelines
    net = pipelines.pipeline_for(job.controls[0].type, False).controlnet
    calls = recorded_calls(net)
    [image] = engine_xl.generate(job)
    assert image.size == (512, 512)
    first = calls[0]
    assert first["control_type_idx"] == [0, 3]  # the union net's pose and canny modes, in the request's order
    assert len(first["controlnet_cond"]) == 2
    preset = engine_xl.preset
    assert first["conditioning_scale"] == pytest.approx(
        [preset.controlnet_scale_max * 1.0, preset.controlnet_scale_max * 0.5]
    )
    pose_cond, edge_cond = (cond.float() for cond in first["controlnet_cond"])
    assert not np.allclose(pose_cond.numpy(), edge_cond.numpy())  # each condition is its own map
    assert pipelines.has_ip_adapter  # the subject ran beside the controls


def test_per_mode_controlnets_run_together_each_on_its_own_map(engine, astronaut):
    pipelines = engine.pipelines
    maps = {"edge": a_map("white"), "depth": Image.new("RGB", (512, 512), (90, 90, 90))}
    job = Job.for_images(
        astronaut,
        prompt="a statue",
        control_type="0",
        width=512,
        height=512,
        seed=2,
        steps=2,
        controls=[
            {"type": "edge", "image": "memory:e", "map": True, "intensity": 0.9},
            {"type": "depth", "image": "memory:d", "map": True, "intensity": 0.0},
        ],
        control_inputs=[maps["edge"], maps["depth"]],
    )
    edge_net = pipelines._controlnet("edge", engine.preset.controlnets["edge"])
    depth_net = pipelines._controlnet("depth", engine.preset.controlnets["depth"])
    edge_calls, depth_calls = recorded_calls(edge_net), recorded_calls(depth_net)
    skipped_before, run_before = depth_net.skipped_steps, depth_net.run_steps
    [image] = engine.generate(job)
    assert image.size == (512, 512)
    assert edge_calls and depth_calls
    edge_cond = edge_calls[0]["controlnet_cond"].float().mean().item()
    depth_cond = depth_calls[0]["controlnet_cond"].float().mean().item()
    assert edge_cond != pytest.approx(depth_cond)  # each net saw its own map
    # the skip-idle lever, per control: the depth net (scale 0) ran no step, the edge net every one
    assert depth_net.run_steps == run_before and depth_net.skipped_steps > skipped_before
    assert edge_net.run_steps > 0


def test_the_same_request_gives_the_same_image(engine, astronaut):
    job = Job.for_images(
        astronaut,
        prompt="p",
        control_type="2",
        width=512,
        height=512,
        seed=3,
        steps=2,
        controls=[{"type": "edge"}, {"type": "pose"}],
    )
    first, second = engine.generate(job)[0], engine.generate(job)[0]
    assert (np.asarray(first) == np.asarray(second)).all()


def test_bad_combinations_are_refused_naming_the_field():
    with pytest.raises(ParameterError, match=r"controls\[1\]\.type: edge is given twice"):
        Job.for_images(
            Image.new("RGB", (64, 64)), prompt="p", control_type="0", controls=[{"type": "edge"}, {"type": "edge"}]
        )
    assert controls_problem("zimage", 2, False) == (
        "controls[1]",
        "the zimage family takes at most 1 control(s) in one request",
    )
    assert controls_problem("zimage", 1, True)[0] == "control_type"
    assert controls_problem("sdxl", 3, True) is None


def test_zimage_runs_one_control_and_refuses_two(tiny_zimage, astronaut):
    from ref2img.engines.local import LocalEngine

    engine = LocalEngine(str(tiny_zimage), device="cpu")
    one = Job.for_images(
        astronaut,
        prompt="p",
        control_type="3",
        width=512,
        height=512,
        seed=1,
        steps=1,
        controls=[{"type": "depth", "intensity": 0.6}],
    )
    assert engine.generate(one)[0].size == (512, 512)
    two = Job.for_images(
        astronaut,
        prompt="p",
        control_type="3",
        width=512,
        height=512,
        seed=1,
        steps=1,
        controls=[{"type": "depth"}, {"type": "edge"}],
    )
    with pytest.raises(EngineOptionError, match=r"controls\[1\]: the zimage family takes at most 1"):
        engine.generate(two)
