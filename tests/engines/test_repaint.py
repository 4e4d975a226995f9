"""Image Repaint on the local engine: the masked area redrawn, every other pixel exactly as it was."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ref2img.engines.base import ImageInvalidError, RepaintJob
from ref2img.engines.local.repaint import compose, redraw_area, soft_mask


def box_mask(size=(512, 512), box=(128, 160, 384, 352)) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def test_the_soft_mask_feathers_inside_the_area_only():
    area = redraw_area(box_mask(), (512, 512))
    soft = soft_mask(area)
    assert (soft[~area] == 0).all()  # outside: the original, untouched
    assert soft[256, 256] == pytest.approx(1.0, abs=1e-3)  # deep inside: the new image
    assert 0 < soft[160, 256] < 0.5  # the edge row: feathered


def test_compose_keeps_every_pixel_outside_the_mask():
    rng = np.random.default_rng(0)
    original = Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    generated = Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))  # the model's size
    area = redraw_area(box_mask(), (512, 512))
    out = np.asarray(compose(original, generated, area))
    assert (out[~area] == np.asarray(original)[~area]).all()
    assert (out[area] != np.asarray(original)[area]).mean() > 0.9


def test_repaint_on_the_tiny_model_redraws_only_the_masked_area(engine, astronaut):
    image = astronaut.resize((512, 512))
    mask = box_mask()
    job = RepaintJob.for_images(image, mask, steps=2, prompt="a golden helmet", seed=3)
    steps = []
    [out] = engine.repaint(job, on_progress=lambda done, total: steps.append((done, total)))
    assert out.size == (512, 512) and steps and steps[-1][0] == steps[-1][1]
    area = np.asarray(mask) > 127
    before, after = np.asarray(image), np.asarray(out)
    assert (after[~area] == before[~area]).all()  # identical outside the mask
    assert np.abs(after[area].astype(int) - before[area]).mean() > 10  # redrawn inside
    [again] = engine.repaint(job)
    assert (np.asarray(again) == after).all()  # the same seed, the same image


def test_no_mask_redraws_the_whole_image_and_a_black_mask_nothing(engine, astronaut):
    image = astronaut.resize((512, 512))
    [whole] = engine.repaint(RepaintJob.for_images(image, None, steps=2, prompt="a red barn", seed=1))
    assert whole.size == image.size and np.abs(np.asarray(whole, dtype=int) - np.asarray(image)).mean() > 10
    black = Image.new("L", image.size, 0)
    [same] = engine.repaint(RepaintJob.for_images(image, black, steps=2, prompt="a red barn", seed=1))
    assert (np.asarray(same) == np.asarray(image)).all()


def test_the_pages_image_limits_are_checked_naming_the_field(astronaut):
    from ref2img.protocol import RepaintRequest

    request = RepaintRequest(prompt="p", init_image="memory:a", mask_url="memory:b")
    images = {"memory:a": astronaut.resize((600, 512)), "memory:b": Image.new("L", (512, 512))}
    with pytest.raises(ImageInvalidError, match=r"mask_url: 512x512 must be the image's resolution, 600x512"):
        RepaintJob.from_request(request, lambda source, field: images[source])
    images["memory:a"] = astronaut.resize((1600, 512))
    with pytest.raises(ImageInvalidError, match=r"init_image: 1600x512: the long side must be under 3 times"):
        RepaintJob.from_request(request, lambda source, field: images[source])
    images["memory:a"] = astronaut.resize((400, 512))
    with pytest.raises(ImageInvalidError, match=r"init_image: 400x512: each side must be from 512 to 2048"):
        RepaintJob.from_request(request, lambda source, field: images[source])


@pytest.mark.parametrize("family", ["sdxl", "zimage"])
def test_every_family_repaints(family, request, astronaut):
    from ref2img.engines.local import LocalEngine

    tiny = request.getfixturevalue(f"tiny_{family}")
    engine = LocalEngine(str(tiny), device="cpu")
    image, mask = astronaut.resize((512, 512)), box_mask()
    [out] = engine.repaint(RepaintJob.for_images(image, mask, steps=2, prompt="a helmet", seed=2))
    area = np.asarray(mask) > 127
    assert out.size == (512, 512) and (np.asarray(out)[~area] == np.asarray(image)[~area]).all()
