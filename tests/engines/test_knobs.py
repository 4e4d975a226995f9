import pytest

from ref2img.engines.local.intensity import INIT_STRENGTH_WITH_CONTROL, knobs_for
from ref2img.engines.local.sizing import fit, generation_size
from ref2img.protocol import ControlType


@pytest.mark.parametrize(
    ("request_size", "max_pixels", "multiple", "expected"),
    [
        ((1024, 1024), 1024 * 1024, 64, (1024, 1024)),
        ((1000, 600), 1024 * 1024, 64, (1024, 576)),
        ((2048, 2048), 1024 * 1024, 64, (1024, 1024)),
        ((512, 2048), 768 * 768, 64, (384, 1536)),
        ((512, 768), 64 * 64, 8, (56, 80)),
    ],
)
def test_generation_size(request_size, max_pixels, multiple, expected):
    width, height = generation_size(*request_size, max_pixels, multiple)
    assert (width, height) == expected
    assert width % multiple == 0 and height % multiple == 0


def test_fit_is_exact_and_undistorted(astronaut):
    out = fit(astronaut, 300, 100)
    assert out.size == (300, 100)


def test_controlnet_knobs_grow_with_intensity():
    low, high = (knobs_for(ControlType.POSE, i, False, 0.9) for i in (0.0, 1.0))
    assert (low.controlnet_scale, high.controlnet_scale) == (0.0, 0.9)
    assert low.control_guidance_end < high.control_guidance_end == 1.0
    assert low.ip_adapter_scale == 0.0 and low.strength is None
    assert knobs_for(ControlType.DEPTH, 0.5, True, 1.0).strength == INIT_STRENGTH_WITH_CONTROL


def test_subject_knobs():
    low, high = (knobs_for(ControlType.SUBJECT, i, True, 1.0) for i in (0.0, 1.0))
    assert low.ip_adapter_scale < high.ip_adapter_scale
    assert low.strength == pytest.approx(1.0) and high.strength == pytest.approx(0.4)
    assert knobs_for(ControlType.SUBJECT, 0.5, False, 1.0).strength is None
    with pytest.raises(ValueError):
        knobs_for(ControlType.SUBJECT, 1.5, False, 1.0)
