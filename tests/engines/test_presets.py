import json

import pytest

from ref2img.engines.base import EngineError, ModelMissingError
from ref2img.engines.local.hub import locate, part_statuses
from ref2img.engines.local.presets import PRESETS, ModelRef, resolve_preset
from ref2img.protocol import ControlType


def test_builtin_presets_cover_every_mode():
    for preset in PRESETS.values():
        for mode in (ControlType.EDGE, ControlType.POSE, ControlType.DEPTH):
            _key, ref = preset.controlnet_for(mode)
            assert ref.source
        # Subject mode: the UNet families' IP-Adapter, or a model that takes reference images (zimage's).
        if preset.family == "zimage":
            assert preset.extra["subject_base"].source == "black-forest-labs/FLUX.2-klein-4B"
        else:
            assert preset.ip_adapter.weight_name and preset.image_encoder.source
    assert PRESETS["sdxl"].uses_union_controlnet and not PRESETS["sd15"].uses_union_controlnet
    assert PRESETS["sdxl-fast"].steps <= 8 and PRESETS["sdxl-fast"].lora is not None


def test_tiny_folder_resolves_to_local_paths(tiny_sd15):
    preset = resolve_preset(str(tiny_sd15))
    assert preset.name == "tiny" and preset.family == "sd15"
    assert all(ref.is_local for ref in preset.parts().values())
    assert all(status.present and status.size_bytes > 0 for status in part_statuses(preset))


def test_flag_overrides_replace_one_part(tiny_sd15, tmp_path):
    preset = resolve_preset(str(tiny_sd15), {"controlnet.pose": str(tmp_path), "steps": "9"})
    assert preset.controlnets["pose"] == ModelRef(str(tmp_path))
    assert preset.controlnets["edge"].source.endswith("controlnet-edge")
    assert preset.steps == 9


def test_preset_file_extends_a_builtin(tmp_path):
    (tmp_path / "mine").mkdir()
    path = tmp_path / "custom.toml"
    path.write_text('extends = "sd15"\nbase = "mine"\nsteps = 12\n')
    preset = resolve_preset(str(path))
    assert preset.family == "sd15" and preset.steps == 12
    assert preset.base.source == str((tmp_path / "mine").resolve())
    assert preset.controlnets == PRESETS["sd15"].controlnets


@pytest.mark.parametrize(
    ("model", "overrides", "message"),
    [
        ("no-such-preset", None, "unknown model"),
        ("sd15", {"colour": "blue"}, "unknown preset part"),
        ("sd15", {"steps": "many"}, "is not a int"),
        ("sd15", {"steps": "5000"}, "from 1 to 500"),
    ],
)
def test_bad_model_choices_are_clear(model, overrides, message):
    with pytest.raises(EngineError, match=message):
        resolve_preset(model, overrides)


def test_missing_hub_model_names_part_and_command():
    preset = PRESETS["sd15"]
    with pytest.raises(ModelMissingError) as caught:
        locate(preset.controlnets["pose"], "controlnet.pose", preset)
    assert "controlnet.pose" in str(caught.value)
    assert "`ref2img models pull sd15`" in str(caught.value)


def test_missing_local_part_in_a_tiny_folder(tiny_sd15, tmp_path):
    spec = json.loads((tiny_sd15 / "ref2img-preset.json").read_text())
    spec["base"] = str(tmp_path / "gone")
    (tmp_path / "ref2img-preset.json").write_text(json.dumps(spec))
    preset = resolve_preset(str(tmp_path))
    with pytest.raises(ModelMissingError, match="does not exist"):
        locate(preset.base, "base", preset)


def test_engine_reports_missing_model_without_a_traceback(tmp_path):
    from ref2img.engines.local import LocalEngine

    with pytest.raises(ModelMissingError, match="ref2img models pull sdxl"):
        LocalEngine("sdxl", device="cpu").load()
