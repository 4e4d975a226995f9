"""Issue 24's levers on the CPU: the exact ones change no pixel and skip the work they promise to skip,
the output-changing ones are opt-in and do what they say, and the GPU-only ones are wired where the
GPU will see them (what is compiled, what fp8 would convert)."""

import numpy as np
import pytest

from ref2img.engines.base import EngineOptionError, Job
from ref2img.engines.local import LocalEngine, Speedups
from ref2img.engines.local.compile_policy import CompilePolicy
from ref2img.engines.local.sizing import generation_size
from ref2img.engines.local.speed import APPROXIMATIONS, fp8_targets, parse_approximations
from ref2img.protocol import ControlType

from ..conftest import pixels

EXACT_OFF = Speedups(cache_condition=False, cache_prompts=False, decode_on_device=False, preprocess_on_device=False)


def edge_job(reference, **changes) -> Job:
    fields = dict(
        prompt="an astronaut on a red planet",
        control_type=ControlType.EDGE,
        reference=reference,
        seed=7,
        width=512,
        height=512,
        steps=4,
        control_intensity=0.5,
    )
    fields.update(changes)
    return Job.for_images(**fields)


def same_pixels(a, b) -> bool:
    return all(np.array_equal(pixels(x), pixels(y)) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def exact_off(tiny_sdxl):
    return LocalEngine(str(tiny_sdxl), device="cpu", speedups=EXACT_OFF)


def test_the_exact_levers_change_no_pixel_and_skip_the_repeated_work(tiny_sdxl, exact_off, astronaut):
    engine = LocalEngine(str(tiny_sdxl), device="cpu")  # the defaults: all three on
    job = edge_job(astronaut, control_intensity=1.0)  # the ControlNet runs all 4 steps
    first = engine.generate(job)
    assert same_pixels(first, exact_off.generate(job))
    net = engine.pipelines.modules()["controlnet.union"]
    condition = net.controlnet_cond_embedding.ref2img_memo
    # Once per call, not once per step; and nothing is kept after the call.
    assert (condition.misses, condition.hits, len(condition.entries)) == (1, 3, 0)
    encoders = [engine.pipelines.base.components[name].ref2img_memo for name in ("text_encoder", "text_encoder_2")]
    runs = [memo.misses for memo in encoders]
    again = engine.generate(job)
    assert same_pixels(again, first)
    assert [memo.misses for memo in encoders] == runs, "the same prompt ran the text encoders again"
    other = engine.generate(edge_job(astronaut, prompt="a lighthouse at dusk", steps=2))
    assert [memo.misses for memo in encoders] == [n + 1 for n in runs]
    assert same_pixels(other, exact_off.generate(edge_job(astronaut, prompt="a lighthouse at dusk", steps=2)))


def test_the_exact_levers_on_sd15_and_img2img(tiny_sd15, astronaut, coffee):
    on = LocalEngine(str(tiny_sd15), device="cpu")
    off = LocalEngine(str(tiny_sd15), device="cpu", speedups=EXACT_OFF)
    job = edge_job(astronaut, init_image=coffee, control_type=ControlType.DEPTH, steps=6, control_intensity=1.0)
    assert same_pixels(on.generate(job), off.generate(job))
    memo = on.pipelines.modules()["controlnet.depth"].controlnet_cond_embedding.ref2img_memo
    assert memo.misses == 1 and memo.hits >= 1


def test_control_maps_and_init_images_cross_as_8_bits_and_change_no_pixel(
    tiny_sdxl, tiny_zimage, exact_off, astronaut, coffee
):
    """Pre-processing on the device: the call is handed tensors (here the CPU is the device), and the
    images are the same to the bit as from diffusers' own PIL path, on the UNet and the DiT family."""
    import torch

    def prepared(engine, job):
        preset = engine.preset
        return engine._prepare(job, *generation_size(job.width, job.height, preset.max_pixels, preset.size_multiple))[1]

    on = LocalEngine(str(tiny_sdxl), device="cpu")
    job = edge_job(astronaut, init_image=coffee, steps=6)
    kwargs = prepared(on, job)
    assert isinstance(kwargs["image"], torch.Tensor) and kwargs["image"].dtype == torch.float32
    assert kwargs["image"].min() >= 0 and kwargs["image"].max() <= 1
    assert all(isinstance(image, torch.Tensor) for image in kwargs["control_image"])
    assert not isinstance(prepared(exact_off, job)["image"], torch.Tensor)
    assert same_pixels(on.generate(job), exact_off.generate(job))
    zimage_job = edge_job(astronaut, init_image=coffee, steps=4, control_intensity=1.0)
    zimage = [LocalEngine(str(tiny_zimage), device="cpu", speedups=speedups) for speedups in (Speedups(), EXACT_OFF)]
    assert isinstance(prepared(zimage[0], zimage_job)["control_image"], torch.Tensor)
    assert same_pixels(zimage[0].generate(zimage_job), zimage[1].generate(zimage_job))


def test_approximations_are_opt_in_and_named():
    assert Speedups().approximate == frozenset()
    assert parse_approximations(" cfg-cut, controlnet-cond-only ,") == {"cfg-cut", "controlnet-cond-only"}
    with pytest.raises(
        EngineOptionError, match=r"--approximate: unknown fast; choose from controlnet-cond-only, cfg-cut, step-cache"
    ):
        Speedups(approximate=frozenset({"fast"}))
    with pytest.raises(EngineOptionError, match="needs the idle ControlNet skipped"):
        Speedups(skip_idle_controlnet=False, approximate=frozenset({"cfg-cut"}))
    with pytest.raises(EngineOptionError, match="fp8 needs --compile"):
        Speedups(fp8=True)
    with pytest.raises(EngineOptionError, match="step-cache: not with --compile full"):
        Speedups(compile="full", approximate=frozenset({"step-cache"}))
    assert set(APPROXIMATIONS) == {"controlnet-cond-only", "cfg-cut", "step-cache"}


def test_the_controlnet_on_the_conditional_half_sees_half_the_batch(tiny_sdxl, exact_off, astronaut):
    engine = LocalEngine(
        str(tiny_sdxl), device="cpu", speedups=Speedups(approximate=frozenset({"controlnet-cond-only"}))
    )
    job = edge_job(astronaut, batch_size=2, control_intensity=1.0)
    engine.generate(job)  # loads the ControlNet
    net = engine.pipelines.modules()["controlnet.union"]
    seen: list[int] = []  # the batch that reaches the ControlNet's first layer
    hook = net.conv_in.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    try:
        images = engine.generate(job)
    finally:
        hook.remove()
    # Two images with CFG make a UNet batch of 4; the ControlNet ran on the conditional 2 at each step.
    assert seen == [2] * 4
    assert net.cond_only_steps >= 4
    assert [image.size for image in images] == [(512, 512)] * 2
    assert not same_pixels(images, exact_off.generate(job)), "the approximation changed nothing"


def test_cfg_cut_stops_guidance_where_the_controlnet_stops(tiny_sdxl, exact_off, astronaut):
    engine = LocalEngine(str(tiny_sdxl), device="cpu", speedups=Speedups(approximate=frozenset({"cfg-cut"})))
    # intensity 0.5: control_guidance_end 0.65 of 4 steps, so the ControlNet runs steps 1-2 and idles on 3-4
    job = edge_job(astronaut, control_intensity=0.5)
    engine.generate(job)
    unet = engine.pipelines.base.unet
    batches: list[int] = []
    hook = unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        images = engine.generate(job)
    finally:
        hook.remove()
    assert batches == [2, 2, 1, 1]
    assert engine.pipelines.step_hooks[0].cut_at == 2
    assert images[0].size == (512, 512)
    assert not same_pixels(images, exact_off.generate(job))
    # Where it cannot apply, the run record says so.
    engine.generate(edge_job(astronaut, control_type=ControlType.SUBJECT))
    assert engine.last_ignored == ["cfg-cut (no ControlNet in this mode)"]
    engine.generate(job)
    assert engine.last_ignored == ["cfg-cut (the IP-Adapter is loaded)"]


def test_approximations_a_family_lacks_are_in_the_run_record(tiny_zimage, astronaut):
    engine = LocalEngine(str(tiny_zimage), device="cpu", speedups=Speedups(approximate=frozenset({"cfg-cut"})))
    engine.generate(edge_job(astronaut, steps=2))
    assert "cfg-cut (not for this model family)" in engine.last_ignored


def test_the_step_cache_skips_the_blocks_of_steps_that_change_little_and_is_named(tiny_zimage, tiny_sdxl, astronaut):
    """First Block Cache on Z-Image: with no tolerance no step is skipped and no pixel changes; with any
    change tolerated every step after the first reuses the first's change through the other blocks, and
    the image is another. Each call starts afresh. A UNet family names it as not applied."""
    exact = LocalEngine(str(tiny_zimage), device="cpu")
    cached = LocalEngine(str(tiny_zimage), device="cpu", speedups=Speedups(approximate=frozenset({"step-cache"})))
    job = edge_job(astronaut, steps=4)
    reference = exact.generate(job)
    cache = cached.load().pipelines.step_cache
    cache.threshold = 0.0
    assert same_pixels(cached.generate(job), reference)
    assert (cache.full_steps, cache.skipped_steps) == (4, 0) and "step-cache" not in str(cached.last_ignored)
    cache.threshold = float("inf")
    cache.full_steps = 0
    for _ in range(2):
        skipped = cached.generate(job)
    assert (cache.full_steps, cache.skipped_steps) == (2, 6)  # one full step a call, three reused
    assert not same_pixels(skipped, reference)
    unet = LocalEngine(str(tiny_sdxl), device="cpu", speedups=Speedups(approximate=frozenset({"step-cache"})))
    unet.generate(edge_job(astronaut, steps=2))
    assert "step-cache (not for this model family)" in unet.last_ignored


def test_compile_full_compiles_the_controlnet_too_and_convs_reach_the_vae(tiny_sdxl):
    """Wiring only (nothing runs: compiling on the CPU takes minutes). In-place `.compile()` sets
    `_compiled_call_impl` on the module it compiles."""
    full = LocalEngine(str(tiny_sdxl), device="cpu", speedups=Speedups(compile="full"))
    full.pipelines.pipeline_for(ControlType.EDGE, False)
    modules = full.pipelines.modules()
    assert modules["unet"]._compiled_call_impl is not None
    assert modules["controlnet.union"]._compiled_call_impl is not None

    convs = LocalEngine(str(tiny_sdxl), device="cpu", speedups=Speedups(compile="regional", compile_convs=True))
    convs.pipelines.pipeline_for(ControlType.EDGE, False)
    modules = convs.pipelines.modules()
    compiled = {type(sub).__name__ for sub in modules["unet"].modules() if sub._compiled_call_impl is not None}
    assert {"BasicTransformerBlock", "ResnetBlock2D", "Downsample2D", "Upsample2D"} <= compiled
    assert modules["vae"].decoder._compiled_call_impl is not None
    net = modules["controlnet.union"]
    assert any(type(sub).__name__ == "ResnetBlock2D" and sub._compiled_call_impl is not None for sub in net.modules())


def test_fp8_converts_only_the_linears_inside_the_compiled_blocks(exact_off):
    unet = exact_off.pipelines.base.unet
    targets = fp8_targets(unet, ("BasicTransformerBlock",))
    assert targets, "no Linear found inside the transformer blocks"
    assert all(".transformer_blocks." in name for name in targets)
    assert not any(name.endswith(("attn2.to_k", "attn2.to_v")) for name in targets)
    assert any(name.endswith("attn2.to_q") for name in targets) and any(name.endswith("attn1.to_k") for name in targets)
    assert not any(name.startswith(("time_embedding", "add_embedding")) for name in targets)


def test_the_compile_policy_keeps_a_shape_eager_until_its_nth_call():
    policy = CompilePolicy(compile_after=2)
    assert policy.stance("1024x1024") == "force_eager"  # nothing compiled yet: eager_on_recompile would compile
    assert policy.stance("1024x1024") == "default"  # its second call compiles
    assert policy.stance("768x1344") == "eager_on_recompile"  # new: eager, reusing whatever graphs fit
    assert policy.stance("1024x1024") == "default"
    assert CompilePolicy(compile_after=1).stance("any") == "default"  # torch.compile's own behaviour
    with pytest.raises(EngineOptionError, match="--compile-after: must be at least 1"):
        Speedups(compile="regional", compile_after=0)


def test_a_first_call_under_compile_after_runs_eagerly(tiny_sd15, astronaut, tmp_path):
    from torch._dynamo.utils import counters

    engine = LocalEngine(
        str(tiny_sd15),
        device="cpu",
        compile_cache=str(tmp_path / "cache"),
        speedups=Speedups(compile="regional", compile_after=3),
    )
    before = counters["stats"]["unique_graphs"]
    assert engine.generate(edge_job(astronaut, steps=2))[0].size == (512, 512)
    assert counters["stats"]["unique_graphs"] == before, "a first call compiled"
