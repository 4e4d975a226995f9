"""Subject masks: the salient-object model's pre- and post-processing, and the GrabCut fallback."""

import numpy as np
from PIL import Image, ImageDraw

from ref2img.engines.local.annotators import Annotators
from ref2img.engines.local.device import choose_placement
from ref2img.engines.local.presets import resolve_preset
from ref2img.engines.local.subject_mask import SalientObjectModel, grabcut_mask
from ref2img.protocol import ControlType


def disc_on_flat_ground(size=(160, 120), fill=(220, 40, 30), ground=(128, 128, 128)) -> tuple[Image.Image, np.ndarray]:
    image = Image.new("RGB", size, ground)
    box = (50, 30, 110, 90)
    ImageDraw.Draw(image).ellipse(box, fill=fill)
    truth = Image.new("L", size, 0)
    ImageDraw.Draw(truth).ellipse(box, fill=255)
    return image, np.asarray(truth) > 0


def overlap(mask: np.ndarray, truth: np.ndarray) -> float:
    return (mask & truth).sum() / (mask | truth).sum()


def test_grabcut_finds_a_shape_on_a_plain_ground():
    image, truth = disc_on_flat_ground()
    mask = np.asarray(grabcut_mask(image))
    assert mask.shape == (120, 160, 3)
    assert overlap(mask[..., 0] > 127, truth) > 0.9


def test_grabcut_on_a_flat_image_finds_no_subject():
    mask = np.asarray(grabcut_mask(Image.new("RGB", (64, 64), "white")))
    assert not mask.any()


def red_over_green_model(path, side=64):
    """A 1x1 convolution: logit = 10 × (normalised red − normalised green). Positive on the red disc and
    negative on the grey ground only if the model is fed RGB (not BGR) with ImageNet's normalisation."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.array([10.0, -10.0, 0.0], dtype=np.float32).reshape(1, 3, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input_image", "w"], ["output_image"])],
        "red",
        [helper.make_tensor_value_info("input_image", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("output_image", TensorProto.FLOAT, [1, 1, side, side])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_the_model_sees_normalised_rgb_and_its_matte_comes_back_at_the_inputs_size(tmp_path):
    image, truth = disc_on_flat_ground()
    mask = np.asarray(SalientObjectModel(red_over_green_model(tmp_path / "model.onnx"))(image))
    assert mask.shape == (120, 160, 3)
    assert overlap(mask[..., 0] > 127, truth) > 0.8  # the model ran at 64², its matte scaled back up
    blue, _ = disc_on_flat_ground(fill=(30, 40, 220))  # not red: nothing stands out to this model
    assert (np.asarray(SalientObjectModel(tmp_path / "model.onnx")(blue))[..., 0] > 127).sum() == 0


def test_a_preset_without_a_segmenter_falls_back_to_grabcut(tiny_sd15):
    preset = resolve_preset(str(tiny_sd15), {"subject_segmenter": "none"})
    assert preset.subject_segmenter is None and "subject_segmenter" not in preset.parts()
    annotators = Annotators(preset, choose_placement("cpu", None))
    image, truth = disc_on_flat_ground()
    mask = np.asarray(annotators.recognize(image, ControlType.SUBJECT))
    assert overlap(mask[..., 0] > 127, truth) > 0.9 and annotators._segmenter is None


def test_the_named_presets_pull_an_mit_segmenter():
    for name in ("sdxl", "sd15", "zimage-turbo"):
        segmenter = resolve_preset(name).parts()["subject_segmenter"]
        assert segmenter.source == "onnx-community/BiRefNet_lite-ONNX" and segmenter.files == ("onnx/model.onnx",)
