import pytest

from ref2img.protocol import ControlType, CreateRequest, ParameterError, parse_create_request

BASE = {"prompt": "a cat", "reference_image": "https://example.com/cat.png", "control_type": "0"}


def parse(**changes):
    body = {**BASE, **changes}
    return parse_create_request({k: v for k, v in body.items() if v is not ...})


def test_defaults_and_types():
    request = parse()
    assert request.control_type is ControlType.EDGE
    assert (request.width, request.height, request.batch_size, request.control_intensity) == (1024, 1024, 1, 0.5)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("width", 4000, "from 512 to 2048"),
        ("width", 511, "from 512 to 2048"),
        ("height", "1024", "from 512 to 2048"),  # a string is not a JSON number
        ("height", True, "from 512 to 2048"),
        ("batch_size", 5, "from 1 to 4"),
        ("batch_size", 0, "from 1 to 4"),
        ("control_intensity", 1.5, "from 0 to 1"),
        ("control_intensity", float("nan"), "from 0 to 1"),
        ("control_type", "9", '"0" (edge)'),
        ("control_type", "edge", '"0" (edge)'),
        ("control_type", 4, '"0" (edge)'),
        ("prompt", "", "non-empty"),
        ("prompt", "   ", "non-empty"),
        ("prompt", "x" * 2001, "at most 2000"),
        ("seed", -1, "from 0 to"),
    ],
)
def test_out_of_range_names_field_and_range(field, value, allowed):
    with pytest.raises(ParameterError) as caught:
        parse(**{field: value})
    assert caught.value.field == field
    assert allowed in str(caught.value)
    assert str(caught.value).startswith(f"{field}: ")


def test_missing_required_field():
    with pytest.raises(ParameterError) as caught:
        parse(reference_image=...)
    assert caught.value.field == "reference_image"
    assert "is required" in caught.value.message


def test_not_an_object():
    with pytest.raises(ParameterError) as caught:
        parse_create_request(["a", "list"])
    assert caught.value.field == "body"


def test_legacy_aliases_and_unknown_fields():
    request = parse_create_request(
        {
            "prompt": "p",
            "image": "https://x/y.png",
            "image_num": 3,
            "control_type": "3",
            "wsid": 7,
            "storage_info": {"a": 1},
        }
    )
    assert request.reference_image == "https://x/y.png"
    assert request.batch_size == 3
    assert request.control_type is ControlType.DEPTH


def test_alias_errors_use_the_canonical_name():
    with pytest.raises(ParameterError) as caught:
        parse_create_request({"prompt": "p", "image": "u", "image_num": 9, "control_type": "0"})
    assert caught.value.field == "batch_size"


def test_integral_floats_and_int_control_type_are_accepted():
    request = parse(width=1024.0, control_type=2)
    assert request.width == 1024 and isinstance(request.width, int)
    assert request.control_type is ControlType.SUBJECT


def test_subject_mode_defaults_init_image_to_reference():
    assert parse(control_type="2").resolved_init_image() == BASE["reference_image"]
    assert parse(control_type="2", init_image="https://x/i.png").resolved_init_image() == "https://x/i.png"
    assert parse(control_type="0").resolved_init_image() is None


def test_wire_body_sends_control_type_as_string_and_omits_unset_extensions():
    body = parse(control_type=1).to_wire()
    assert body["control_type"] == "1"
    assert "seed" not in body and "negative_prompt" not in body
    assert CreateRequest.model_validate(body) == parse(control_type="1")


def test_control_type_parse_accepts_names():
    assert ControlType.parse("pose") is ControlType.POSE
    assert ControlType.parse(3) is ControlType.DEPTH
    with pytest.raises(ValueError):
        ControlType.parse(True)
