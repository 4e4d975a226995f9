"""The speed levers keep the output: exactly where they promise to, within rounding where they cannot."""

import os

import numpy as np
import pytest
import torch

from ref2img.engines.base import EngineOptionError, Job
from ref2img.engines.local import LocalEngine, Speedups
from ref2img.engines.local.device import Placement
from ref2img.engines.local.offload import ACTIVATION_HEADROOM_BYTES, choose_offload, device_index
from ref2img.protocol import ControlType

from ..conftest import pixels

GiB = 2**30


def edge_job(reference, **changes) -> Job:
    fields = dict(
        prompt="an astronaut on a red planet",
        control_type=ControlType.EDGE,
        reference=reference,
        seed=42,
        width=512,
        height=512,
        steps=10,
        control_intensity=0.5,
    )
    fields.update(changes)
    return Job.for_images(**fields)


def max_difference(a, b) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


@pytest.fixture(scope="module")
def plain_engines(tiny_sd15, tiny_sdxl):
    """Every lever off: the reference the optimised engines are compared with."""
    off = Speedups(skip_idle_controlnet=False, channels_last=False)
    return {
        family: LocalEngine(str(path), device="cpu", speedups=off)
        for family, path in (("sd15", tiny_sd15), ("sdxl", tiny_sdxl))
    }


@pytest.mark.slow  # over 5 s on the 2-core machine
@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_skipping_the_idle_controlnet_changes_no_pixel(family, plain_engines, tiny_sd15, tiny_sdxl, astronaut):
    engine = LocalEngine(str(tiny_sd15 if family == "sd15" else tiny_sdxl), device="cpu")
    for intensity, with_init in ((0.5, False), (0.5, True), (0.0, False), (1.0, False)):
        job = edge_job(astronaut, control_intensity=intensity, init_image=astronaut if with_init else None)
        assert max_difference(engine.generate(job)[0], plain_engines[family].generate(job)[0]) == 0, intensity


def test_the_controlnet_runs_only_while_its_scale_is_not_zero(tiny_sd15, astronaut):
    engine = LocalEngine(str(tiny_sd15), device="cpu")
    engine.generate(edge_job(astronaut))  # loads the edge ControlNet
    net = engine.pipelines.modules()["controlnet.edge"]
    net.run_steps = net.skipped_steps = 0
    # Intensity 0.5: control_guidance_end = 0.3 + 0.7 × 0.5 = 0.65, so steps 7..10 of 10 skip it.
    engine.generate(edge_job(astronaut, control_intensity=0.5))
    assert (net.run_steps, net.skipped_steps) == (6, 4)
    net.run_steps = net.skipped_steps = 0
    engine.generate(edge_job(astronaut, control_intensity=0.0))  # scale 0: never runs
    assert (net.run_steps, net.skipped_steps) == (0, 10)
    net.run_steps = net.skipped_steps = 0
    engine.generate(edge_job(astronaut, control_intensity=1.0))
    assert (net.run_steps, net.skipped_steps) == (10, 0)


def test_fused_qkv_stays_within_rounding_and_survives_the_ip_adapter(plain_engines, tiny_sd15, astronaut, coffee):
    from diffusers.models.attention_processor import FusedAttnProcessor2_0, IPAdapterAttnProcessor2_0

    fused = LocalEngine(str(tiny_sd15), device="cpu", speedups=Speedups(fuse_qkv=True))
    plain = plain_engines["sd15"]
    assert max_difference(fused.generate(edge_job(astronaut))[0], plain.generate(edge_job(astronaut))[0]) <= 2
    subject = edge_job(astronaut, control_type=ControlType.SUBJECT, init_image=coffee)
    assert max_difference(fused.generate(subject)[0], plain.generate(subject)[0]) <= 2
    # After the IP-Adapter: its processors on the cross-attentions, fused ones on the self-attentions.
    kinds = {type(p) for name, p in fused.pipelines.base.unet.attn_processors.items() if "attn1" in name}
    assert kinds == {FusedAttnProcessor2_0}
    kinds = {type(p) for name, p in fused.pipelines.base.unet.attn_processors.items() if "attn2" in name}
    assert kinds == {IPAdapterAttnProcessor2_0}
    assert max_difference(fused.generate(edge_job(astronaut))[0], plain.generate(edge_job(astronaut))[0]) <= 2


@pytest.mark.slow
def test_regional_compile_matches_eager(plain_engines, tiny_sd15, astronaut, tmp_path, monkeypatch):
    """torch.compile of the transformer blocks (inductor, on the CPU here): same image within rounding,
    and the kernels land in the compile cache folder."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR", "/tmp/elsewhere"))
    compiled = LocalEngine(
        str(tiny_sd15), device="cpu", speedups=Speedups(compile="regional"), compile_cache=str(tmp_path / "cache")
    )
    for job in (
        edge_job(astronaut, steps=3),
        edge_job(astronaut, steps=3, control_type=ControlType.SUBJECT, init_image=astronaut),
    ):
        # fullgraph=True: a graph break (the IP-Adapter's processors, say) would raise here
        assert max_difference(compiled.generate(job)[0], plain_engines["sd15"].generate(job)[0]) <= 2
    assert any((tmp_path / "cache").rglob("*.py")), "no compiled kernel was cached"


def placement(device: str) -> Placement:
    return Placement(torch.device(device), torch.bfloat16)


@pytest.mark.parametrize(("free_gib", "expected"), [(40, "none"), (12, "model"), (6, "sequential")])
def test_auto_offload_picks_from_the_free_memory(free_gib, expected, caplog):
    # SDXL-like: 9.4 GiB of weights, UNet + ControlNet 7.6 GiB; the headroom decides the edges.
    everything, denoisers = int(9.4 * GiB), int(7.6 * GiB)
    with caplog.at_level("INFO", logger="ref2img.engine"):
        assert choose_offload("auto", placement("cuda"), everything, denoisers, free=free_gib * GiB) == expected
    assert f"offload auto: {expected} ({free_gib:.1f} GiB free on cuda; every model 9.4 GiB, the denoiser 7.6 GiB" in (
        caplog.text
    )
    assert (
        choose_offload(
            "auto", placement("cuda"), everything, denoisers, free=everything + ACTIVATION_HEADROOM_BYTES - 1
        )
        == "model"
    )


def test_offload_on_a_cpu_is_refused_by_name_and_auto_is_none():
    assert choose_offload("auto", placement("cpu"), GiB, GiB) == "none"
    assert choose_offload("none", placement("cpu"), GiB, GiB) == "none"
    with pytest.raises(EngineOptionError, match=r"--offload sequential: .* runs on cpu"):
        choose_offload("sequential", placement("cpu"), GiB, GiB)
    with pytest.raises(EngineOptionError, match=r"--offload: must be one of none, model, sequential, auto \(got 'x'\)"):
        choose_offload("x", placement("cuda"), GiB, GiB)


def test_a_device_keeps_its_own_index():
    # A bare "cuda" asks torch for the current device (GPU only); an explicit index is passed through.
    assert device_index(torch.device("cuda", 3)) == 3
    assert device_index(torch.device("cuda:1")) == 1


def test_unknown_compile_kind_names_the_choices():
    with pytest.raises(EngineOptionError, match=r"--compile: must be one of none, regional, full \(got 'yes'\)"):
        Speedups(compile="yes")
