"""Several controls and a subject through the real server (tiny SD1.5): accepted, run, refused clearly."""

import json

import httpx
import pytest

from .conftest import Cloud, img2img_body

pytestmark = pytest.mark.slow  # generations on the module's server: about 20 s on the 2-core machine


def test_controls_with_the_subject_make_images_and_echo_the_request(cloud: Cloud, image_host):
    body = img2img_body(
        image_host.url("/astronaut.png"),
        control_type="2",
        control_intensity=0.6,
        params="c-1",
        controls=[
            {"type": "pose", "intensity": 0.8},
            {"type": "depth", "image": image_host.url("/astronaut.jpg"), "end": 0.6},
        ],
    )
    data = cloud.wait_final(cloud.create_id(body))
    assert data["status"] == 3 and data["params"] == "c-1", data
    assert len(json.loads(data["result"])["images_path"]) == 1
    listed = httpx.get(f"{cloud.base}/v1/tasks", headers=cloud.headers).json()["data"]["tasks"]
    settings = next(task["settings"] for task in listed if task["task_id"] == data["task_id"])
    assert [control["type"] for control in settings["controls"]] == ["pose", "depth"]  # the echo is honest


def test_bad_controls_are_refused_naming_the_field(cloud: Cloud, image_host):
    reference = image_host.url("/astronaut.png")
    cases = {
        "controls[1].type": [{"type": "edge"}, {"type": "edge"}],
        "controls[0].intensity": [{"type": "edge", "intensity": 3}],
        "controls": [{"type": "edge"}] * 4,
        "controls[0].image": [{"type": "edge", "image": "ftp://example.com/x.png"}],
    }
    for field, controls in cases.items():
        answer = cloud.create(img2img_body(reference, control_type="0", controls=controls)).json()
        assert answer["code"] in (680001, 680002) and answer["msg"].startswith(f"{field}"), (field, answer)
    mismatch = cloud.create(img2img_body(reference, control_type="3", controls=[{"type": "pose"}])).json()
    assert mismatch["code"] == 680001 and mismatch["msg"].startswith("control_type: with controls")
    broken = cloud.create_id(
        img2img_body(reference, control_type="0", controls=[{"type": "edge", "image": image_host.url("/text.png")}])
    )
    data = cloud.wait_final(broken)
    assert data["status"] == 4 and data["reason"].startswith("controls[0].image: ")
