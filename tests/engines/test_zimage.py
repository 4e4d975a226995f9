"""The Z-Image family on its tiny random-weight models: every mode (subject through FLUX.2 klein), exact
sizes, batches with one seed per image, progress, previews, cancel, the dtype guard, and what it refuses."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ref2img.engines.base import EngineOptionError, Job, JobCancelled
from ref2img.engines.local import LocalEngine, resolve_preset
from ref2img.engines.local.families.klein import TRANSFORMER_BLOCKS as KLEIN_BLOCKS
from ref2img.engines.local.families.klein import KleinSubject
from ref2img.engines.local.presets import PRESET_FILE_NAME, PRESETS
from ref2img.protocol import ControlType

from .test_dtypes import off_dtype_tensors

CONTROL_MODES = [ControlType.EDGE, ControlType.POSE, ControlType.DEPTH]
EVERY_MODE = [ControlType.SUBJECT, *CONTROL_MODES]


@pytest.fixture(scope="module")
def zimage(tiny_zimage):
    return LocalEngine(str(tiny_zimage), device="cpu").load()


def job(reference, **fields):
    values = dict(prompt="a lighthouse", control_type=ControlType.EDGE, seed=7, width=640, height=512)
    values.update(fields)
    return Job.for_images(reference, **values)


@pytest.mark.parametrize("mode", EVERY_MODE, ids=lambda mode: mode.name.lower())
def test_every_mode_makes_images_of_the_exact_size(zimage, astronaut, mode):
    progress = []
    images = zimage.generate(
        job(astronaut, control_type=mode, batch_size=2, width=600, height=520, steps=2),
        on_progress=lambda done, total: progress.append((done, total)),
    )
    assert [image.size for image in images] == [(600, 520), (600, 520)]
    assert progress == [(1, 2), (2, 2)]


def test_subject_mode_keeps_the_reference_and_takes_a_distinct_init_image(zimage, astronaut, coffee):
    def subject(reference, **fields):
        return np.asarray(zimage.generate(job(reference, control_type=ControlType.SUBJECT, steps=2, **fields))[0])

    assert not np.array_equal(subject(astronaut), subject(coffee)), "the reference reaches the subject model"
    assert not np.array_equal(subject(astronaut), subject(astronaut, init_image=coffee)), "so does an init image"
    previews = []
    zimage.generate(
        job(astronaut, control_type=ControlType.SUBJECT, steps=2),
        on_preview=lambda done, total, render: previews.append(render()),
    )
    assert len(previews) == 2 and all(image.mode == "RGB" for image in previews)  # FLUX.2's 32-channel factors


def test_image_k_of_a_batch_is_the_single_image_of_seed_plus_k(zimage, astronaut):
    batch = zimage.generate(job(astronaut, batch_size=2, seed=20))
    alone = zimage.generate(job(astronaut, batch_size=1, seed=21))
    again = zimage.generate(job(astronaut, batch_size=1, seed=21))
    assert np.array_equal(np.asarray(alone[0]), np.asarray(again[0]))
    assert np.abs(np.asarray(batch[1], dtype=np.int16) - np.asarray(alone[0], dtype=np.int16)).max() <= 2
    assert not np.array_equal(np.asarray(batch[0]), np.asarray(batch[1]))


def test_the_control_map_reaches_the_model(zimage, astronaut, coffee):
    a = zimage.generate(job(astronaut, control_intensity=1.0))[0]
    b = zimage.generate(job(coffee, control_intensity=1.0))[0]
    none = [zimage.generate(job(reference, control_intensity=0.0))[0] for reference in (astronaut, coffee)]
    assert not np.array_equal(np.asarray(a), np.asarray(b)), "a different map changes the image at intensity 1"
    assert np.array_equal(np.asarray(none[0]), np.asarray(none[1])), "at intensity 0 the map has no weight"


def test_previews_and_cancel_between_steps(zimage, astronaut):
    previews = []
    zimage.generate(job(astronaut), on_preview=lambda done, total, render: previews.append(render()))
    assert previews and all(image.mode == "RGB" and image.size == (8, 8) for image in previews)  # 1/8 of 64²
    checks: list[int] = []

    def cancel_after_the_first_step() -> bool:  # asked once before the first step, then after each
        checks.append(1)
        return len(checks) > 1

    with pytest.raises(JobCancelled, match="after step 1 of 2"):
        zimage.generate(job(astronaut), should_cancel=cancel_after_the_first_step)


def test_an_init_image_with_a_control_map_is_img2img(zimage, astronaut, coffee):
    progress = []
    from_coffee = zimage.generate(
        job(astronaut, init_image=coffee, batch_size=2, steps=8),
        on_progress=lambda done, total: progress.append((done, total)),
    )
    assert [image.size for image in from_coffee] == [(640, 512), (640, 512)]
    assert progress[-1] == (6, 6)  # strength 0.75: the last 6 of 8 steps run
    from_other = zimage.generate(job(astronaut, init_image=astronaut.rotate(90), batch_size=1, steps=8))[0]
    without = zimage.generate(job(astronaut, batch_size=1, steps=8))[0]
    assert not np.array_equal(np.asarray(from_coffee[0]), np.asarray(from_other))
    assert not np.array_equal(np.asarray(from_coffee[0]), np.asarray(without))
    second_alone = zimage.generate(job(astronaut, init_image=coffee, batch_size=1, steps=8, seed=8))[0]
    assert np.abs(np.asarray(from_coffee[1], dtype=np.int16) - np.asarray(second_alone, dtype=np.int16)).max() <= 2


def test_a_preset_without_a_subject_model_refuses_subject_jobs_by_name(tiny_zimage, astronaut):
    without = LocalEngine(resolve_preset(str(tiny_zimage), {"extra.subject_base": "none"}), device="cpu")
    with pytest.raises(
        EngineOptionError, match=r"subject mode: preset 'tiny-zimage' \(Z-Image\) names no subject model"
    ):
        without.generate(job(astronaut, control_type=ControlType.SUBJECT))


def test_every_module_stays_in_bfloat16(tiny_zimage, astronaut):
    engine = LocalEngine(str(tiny_zimage), device="cpu", dtype="bfloat16")
    for mode in EVERY_MODE:
        assert [image.size for image in engine.generate(job(astronaut, control_type=mode, steps=2))] == [(640, 512)]
    assert len(engine.pipelines.cached_pipelines()) == 3  # the base, the ControlNet pipeline, the subject model
    assert off_dtype_tensors(engine, torch.bfloat16) == []


def test_the_tiny_preset_has_the_real_layout(tiny_zimage):
    spec = json.loads((tiny_zimage / PRESET_FILE_NAME).read_text())
    real = PRESETS["zimage-turbo"]
    assert spec["family"] == real.family == "zimage"
    assert spec["controlnets"]["union"]["weight_name"] == real.controlnets["union"].weight_name
    assert set(spec["extra"]) == set(real.extra)
    index = json.loads((tiny_zimage / "base" / "model_index.json").read_text())
    assert {name: value[1] for name, value in index.items() if isinstance(value, list)} == {
        "scheduler": "FlowMatchEulerDiscreteScheduler",
        "text_encoder": "Qwen3Model",
        "tokenizer": "Qwen2Tokenizer",
        "transformer": "ZImageTransformer2DModel",
        "vae": "AutoencoderKL",
    }  # as Tongyi-MAI/Z-Image-Turbo's
    preset = resolve_preset(str(tiny_zimage))
    assert set(preset.parts()) == set(real.parts())


def test_what_a_model_has_no_knob_for_is_named(zimage, astronaut):
    zimage.generate(job(astronaut, negative_prompt="blurry"))
    assert zimage.last_ignored == ["negative_prompt (guidance 0: no CFG)"]
    zimage.generate(job(astronaut))
    assert zimage.last_ignored == []
    zimage.generate(job(astronaut, control_type=ControlType.SUBJECT, steps=2))
    assert zimage.last_ignored == ["control_intensity (FLUX.2 klein takes the reference as it is)"]


def subject_image(subject, reference, seed=5):
    pipe, kwargs = subject.prepare(job(reference, control_type=ControlType.SUBJECT, steps=2, seed=seed), 64, 64)
    return np.asarray(pipe(**kwargs, output_type="np").images[0])


def test_klein_reads_the_text_encoder_zimage_loaded_when_its_weights_are_the_same(zimage, astronaut):
    zimage.generate(job(astronaut, control_type=ControlType.SUBJECT, steps=2))
    pipelines = zimage.pipelines
    subject = pipelines._subject
    assert subject.shares_text_encoder and subject.pipe.text_encoder is pipelines.base.text_encoder
    assert "subject.text_encoder" not in pipelines.modules(), "one module, named once (park, dtype guard)"
    # klein's own Qwen3ForCausalLM, loaded apart, makes the very same image through the shared Qwen3Model
    apart = KleinSubject(subject.ref, subject.preset, subject.placement, "none")
    assert not apart.shares_text_encoder
    assert type(apart.pipe.text_encoder).__name__ == "Qwen3ForCausalLM"
    assert np.array_equal(subject_image(subject, astronaut), subject_image(apart, astronaut))


def test_a_klein_checkpoint_with_other_text_weights_loads_its_own(tiny_zimage, tmp_path, astronaut):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "zimage"
    shutil.copytree(tiny_zimage, copy)
    weights = copy / "subject" / "text_encoder" / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["model.norm.weight"] = tensors["model.norm.weight"] + 0.5  # a fine-tune: one sampled tensor moved
    save_file(tensors, str(weights), metadata={"format": "pt"})
    engine = LocalEngine(str(copy), device="cpu")
    engine.generate(job(astronaut, control_type=ControlType.SUBJECT, steps=2))
    subject = engine.pipelines._subject
    assert not subject.shares_text_encoder
    assert subject.pipe.text_encoder is not engine.pipelines.base.text_encoder
    assert "subject.text_encoder" in engine.pipelines.modules()


def test_the_speed_levers_reach_the_subject_model(tiny_zimage):
    from ref2img.engines.local import Speedups

    engine = LocalEngine(str(tiny_zimage), device="cpu", speedups=Speedups(compile="regional")).load()
    transformer = engine.pipelines._subject.pipe.transformer  # loads klein; nothing runs, so nothing compiles yet
    blocks = [block for block in transformer.modules() if type(block).__name__ in KLEIN_BLOCKS]
    assert blocks and all(block._compiled_call_impl is not None for block in blocks)


def test_the_idle_controlnet_is_skipped_at_intensity_0_and_changes_no_pixel(zimage, tiny_zimage, astronaut):
    """At intensity 0 the Fun ControlNet's hints are multiplied by 0 on every step: the engine runs the
    transformer without them (exact), and runs the ControlNet on every step otherwise."""
    from ref2img.engines.local import Speedups

    plain = LocalEngine(str(tiny_zimage), device="cpu", speedups=Speedups(skip_idle_controlnet=False)).load()
    for intensity in (0.0, 0.6):
        ours, theirs = (
            engine.generate(job(astronaut, control_intensity=intensity, steps=3))[0] for engine in (zimage, plain)
        )
        assert np.array_equal(np.asarray(ours), np.asarray(theirs)), intensity
    net = zimage.pipelines.modules()["controlnet.union"]
    net.run_steps = net.skipped_steps = 0
    zimage.generate(job(astronaut, control_intensity=0.0, steps=3))
    assert (net.run_steps, net.skipped_steps) == (0, 3)
    zimage.generate(job(astronaut, control_intensity=0.6, steps=3))
    assert (net.run_steps, net.skipped_steps) == (3, 3)


def test_offload_auto_weighs_the_subject_model_before_it_loads(zimage, tiny_zimage):
    """klein loads on the first subject job, beside what is loaded: `--offload auto` counts its files
    (its text encoder only when it is not the one already loaded)."""
    from ref2img.engines.local.families.klein import weight_bytes

    preset = zimage.preset
    ref = preset.extra["subject_base"]
    folder = tiny_zimage / "subject"
    size = {
        part: sum(f.stat().st_size for f in (folder / part).glob("*.safetensors"))
        for part in ("transformer", "vae", "text_encoder")
    }
    shared = weight_bytes(ref, preset, zimage.pipelines.base.text_encoder)
    assert shared == size["transformer"] + size["vae"] > 0
    assert weight_bytes(ref, preset, None) == shared + size["text_encoder"]
    missing = resolve_preset(str(tiny_zimage), {"extra.subject_base": str(tiny_zimage / "nowhere")})
    assert weight_bytes(missing.extra["subject_base"], missing, None) == 0


@pytest.mark.slow  # seconds of module construction, even on the meta device
def test_the_full_scale_shapes_weigh_what_the_published_checkpoints_weigh():
    """The GPU check's random models (built on the meta device here: no memory): bf16 bytes against the
    real files' sizes (FLUX.2-klein-4B's one-file transformer 7.75 GB and VAE 168 MB; Z-Image-Turbo's
    6.15B-parameter transformer)."""
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel, ZImageTransformer2DModel

    from ref2img.engines.local.families import zimage_models

    with torch.device("meta"):
        klein = Flux2Transformer2DModel(**zimage_models._FULL_KLEIN_TRANSFORMER)
        vae = AutoencoderKLFlux2()
        transformer = ZImageTransformer2DModel(**zimage_models._FULL_TRANSFORMER)

    def bf16_gb(module):
        return sum(p.numel() for p in module.parameters()) * 2 / 1e9

    assert bf16_gb(klein) == pytest.approx(7.75, rel=0.01)
    assert bf16_gb(vae) == pytest.approx(0.168, rel=0.01)
    assert bf16_gb(transformer) == pytest.approx(2 * 6.15, rel=0.01)
