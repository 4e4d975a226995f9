import numpy as np
import pytest
from PIL import Image, ImageDraw

from ref2img.engines.base import EngineError
from ref2img.engines.local.annotators import canny_map
from ref2img.engines.local.pose import draw_bodies
from ref2img.protocol import ControlType


def test_canny_finds_the_edges_of_a_square():
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((16, 16, 47, 47), fill="white")
    edges = np.asarray(canny_map(image))[..., 0]
    assert edges[16, 30] == 255 or edges[15, 30] == 255  # the top side
    assert edges[32, 32] == 0 and edges[2, 2] == 0  # inside and outside are flat


def test_pose_drawing_joins_keypoints():
    person = np.zeros((18, 3))
    person[:, 2] = 1.0
    person[1, :2] = (50, 20)  # neck
    person[2, :2] = (30, 20)  # right shoulder
    canvas = draw_bodies(100, 100, [person])
    assert canvas[20, 40].any()  # on the neck–shoulder limb
    assert not canvas[90, 90].any()


def test_low_score_keypoints_are_not_drawn():
    person = np.zeros((18, 3))
    person[:, :2] = 50
    assert not draw_bodies(100, 100, [person]).any()


def test_depth_map_is_near_bright_normalised(engine, astronaut):
    depth = np.asarray(engine.recognize(astronaut, ControlType.DEPTH))
    assert depth.shape == (512, 512, 3)
    assert depth.min() == 0 and depth.max() == 255


def test_pose_runs_detector_and_estimator(engine, astronaut):
    pose = np.asarray(engine.recognize(astronaut, ControlType.POSE))
    assert pose.shape == (512, 512, 3) and pose.any()


def test_subject_mode_gives_the_presets_segmenter_mask_at_the_inputs_size(engine, astronaut):
    """Recognition's type 2 runs the tiny preset's segmenter (the real ONNX loading code), not a control map."""
    picture = astronaut.resize((96, 72))
    mask = np.asarray(engine.recognize(picture, ControlType.SUBJECT))
    assert mask.shape == (72, 96, 3)
    assert (mask[..., 0] == mask[..., 1]).all() and (mask[..., 1] == mask[..., 2]).all()
    assert engine.annotators._segmenter is not None  # loaded from the preset, not the GrabCut fallback
    with pytest.raises(EngineError, match="no control map"):
        engine.annotators.control_map(picture, ControlType.SUBJECT)
