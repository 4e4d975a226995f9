"""LoRAs per request (`loras`): only files of the operator's folders, by name; a LoRA changes the images,
and the same request without it afterwards gives the same pixels as before any LoRA was loaded."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ref2img.engines.base import EngineOptionError, Job
from ref2img.engines.local import LocalEngine
from ref2img.engines.local.loras import find_loras
from ref2img.protocol import ControlType


@pytest.fixture(scope="module")
def lora_dir(tiny_sd15, tmp_path_factory):
    """The tiny models' random LoRA under a name, beside a file that is no LoRA and a link that leads out."""
    folder = tmp_path_factory.mktemp("loras")
    shutil.copy(tiny_sd15 / "lora" / "pytorch_lora_weights.safetensors", folder / "style.safetensors")
    (folder / "notes.txt").write_text("not a LoRA")
    outside = tmp_path_factory.mktemp("elsewhere") / "secret.safetensors"
    shutil.copy(folder / "style.safetensors", outside)
    (folder / "escape.safetensors").symlink_to(outside)
    return folder


def job(astronaut, **fields) -> Job:
    return Job.for_images(
        astronaut.resize((128, 128)),
        prompt="a statue",
        control_type=ControlType.EDGE,
        seed=3,
        width=512,
        height=512,
        **fields,
    )


def pixels(engine, astronaut, **fields) -> np.ndarray:
    [image] = engine.generate(job(astronaut, **fields))
    return np.asarray(image)


def test_only_the_folders_own_safetensors_are_loras(lora_dir):
    assert list(find_loras([lora_dir])) == ["style"]  # not the text file, not the link that leads out


def test_a_lora_changes_the_images_and_leaves_no_trace(tiny_sd15, lora_dir, astronaut):
    engine = LocalEngine(str(tiny_sd15), device="cpu", lora_dirs=(str(lora_dir),)).load()
    before = pixels(engine, astronaut)
    with_lora = pixels(engine, astronaut, loras=[{"name": "style", "weight": 1.0}])
    assert np.abs(with_lora.astype(int) - before).mean() > 0.1  # the LoRA changed the images (a small random one)
    half = pixels(engine, astronaut, loras=[{"name": "style", "weight": 0.5}])  # the loaded adapter, reweighted
    assert not (half == with_lora).all() and not (half == before).all()
    after = pixels(engine, astronaut)
    assert (after == before).all()  # the same request without it: the same pixels as before any LoRA
    with pytest.raises(EngineOptionError, match=r"loras\[0\].name: 'nope' is not a LoRA of this server; it has style"):
        engine.generate(job(astronaut, loras=[{"name": "nope"}]))


def test_a_family_without_loras_says_so(tiny_zimage, lora_dir, astronaut):
    engine = LocalEngine(str(tiny_zimage), device="cpu", lora_dirs=(str(lora_dir),)).load()
    with pytest.raises(EngineOptionError, match="loras: the zimage family takes no LoRAs"):
        engine.generate(job(astronaut, loras=[{"name": "style"}]))


@pytest.fixture(scope="module")
def two_loras(tiny_sd15, tmp_path_factory):
    """`style` (the tiny models' random LoRA) and `other`: the same layers and rank, other weights."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("two-loras")
    source = tiny_sd15 / "lora" / "pytorch_lora_weights.safetensors"
    shutil.copy(source, folder / "style.safetensors")
    tensors = load_file(str(source))
    save_file(
        {
            key: (-1.5 * value if ("lora_B" in key or "lora_up" in key) else value).contiguous()
            for key, value in tensors.items()
        },
        str(folder / "other.safetensors"),
    )
    return folder


@pytest.mark.slow  # torch.compile on the CPU: about a minute
def test_a_compiled_unet_hot_swaps_loras_and_weights_without_recompiling(tiny_sd15, two_loras, astronaut, tmp_path):
    import torch

    from ref2img.engines.local.speed import Speedups

    eager = LocalEngine(str(tiny_sd15), device="cpu", lora_dirs=(str(two_loras),)).load()
    compiled = LocalEngine(
        str(tiny_sd15),
        device="cpu",
        speedups=Speedups(compile="regional"),
        compile_cache=str(tmp_path / "cache"),
        lora_dirs=(str(two_loras),),
    ).load()
    before = pixels(compiled, astronaut)
    style = pixels(compiled, astronaut, loras=[{"name": "style"}])  # the slot is made: its blocks trace once
    assert np.abs(style.astype(int) - before).mean() > 0.1
    assert (pixels(compiled, astronaut) == before).all()  # the slot off: the pixels of before any LoRA
    torch.compiler.set_stance("fail_on_recompile")  # from here, any recompile is an error
    try:
        other = pixels(compiled, astronaut, loras=[{"name": "other"}])  # hot-swapped into the slot
        half = pixels(compiled, astronaut, loras=[{"name": "style", "weight": 0.5}])  # swapped back, reweighted
        again = pixels(compiled, astronaut)
    finally:
        torch.compiler.set_stance("default")
    assert (again == before).all()
    # Each matches what the eager engine makes with the same LoRA and weight (compiled kernels: rounding).
    for made, loras in ((other, [{"name": "other"}]), (half, [{"name": "style", "weight": 0.5}])):
        reference = pixels(eager, astronaut, loras=loras)
        assert np.abs(made.astype(int) - reference).max() <= 2
    assert np.abs(other.astype(int) - style).mean() > 0.1 and np.abs(half.astype(int) - style).mean() > 0.01
    with pytest.raises(EngineOptionError, match="with --compile, a request takes one LoRA"):
        compiled.generate(job(astronaut, loras=[{"name": "style"}, {"name": "other"}]))
