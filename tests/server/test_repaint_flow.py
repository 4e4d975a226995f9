"""Image Repaint (`tm_redrawing`) against a real server on the tiny model: the skill docs' body (S8/S9),
the same task machinery as img2img (query, result shape, callbacks' fields), and the page's limits."""

import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from .conftest import Cloud, ImageHost, png_bytes

pytestmark = pytest.mark.slow  # the module's own server loads the engine: about 20 s on the 2-core machine

ROUTE = "/v1/open/capacity/application/tm_redrawing"


@pytest.fixture(scope="module")
def pictures(astronaut):
    image = astronaut.resize((512, 512))
    mask = Image.new("L", (512, 512), 0)
    ImageDraw.Draw(mask).ellipse((160, 96, 352, 288), fill=255)
    host = ImageHost(
        {
            "/input.png": (png_bytes(image), "image/png"),
            "/mask.png": (png_bytes(mask.convert("RGB")), "image/png"),
            "/small-mask.png": (png_bytes(mask.resize((256, 256)).convert("RGB")), "image/png"),
        }
    )
    yield host, image, np.asarray(mask) > 127
    host.close()


def fetch(url: str) -> Image.Image:
    return Image.open(io.BytesIO(httpx.get(url).content)).convert("RGB")


def test_the_docs_example_repaints_the_masked_area_only(cloud: Cloud, pictures):
    host, image, area = pictures
    body = {
        "prompt": "Clear blue sky with fluffy clouds",
        "init_image": host.url("/input.png"),
        "mask_url": host.url("/mask.png"),
        "callback": "",
        "params": "order-7",
    }
    created = httpx.post(f"{cloud.base}{ROUTE}", json=body, headers=cloud.headers).json()
    assert created["code"] == 0 and created["data"]["task_id"]
    data = cloud.wait_final(created["data"]["task_id"])
    assert data["status"] == 3 and data["params"] == "order-7"
    result = json.loads(data["result"])
    assert result["images_path"] == result["image_path"] and len(result["images_path"]) == 1
    out = np.asarray(fetch(result["images_path"][0]))
    assert out.shape == (512, 512, 3)
    assert (out[~area] == np.asarray(image)[~area]).all()  # every unmasked pixel as it was
    assert np.abs(out[area].astype(int) - np.asarray(image)[area]).mean() > 10


def test_without_a_mask_the_whole_image_is_redrawn(cloud: Cloud, pictures):
    host, image, _ = pictures
    created = httpx.post(
        f"{cloud.base}{ROUTE}",
        json={"prompt": "a lighthouse", "init_image": host.url("/input.png")},
        headers=cloud.headers,
    ).json()
    data = cloud.wait_final(created["data"]["task_id"])
    out = fetch(json.loads(data["result"])["images_path"][0])
    assert out.size == image.size and np.abs(np.asarray(out, dtype=int) - np.asarray(image)).mean() > 10


def test_bad_bodies_and_images_are_refused_naming_the_field(cloud: Cloud, pictures):
    host, _, _ = pictures
    answers = {
        "prompt": {"init_image": host.url("/input.png")},
        "init_image": {"prompt": "p"},
        "mask_url": {"prompt": "p", "init_image": host.url("/input.png"), "mask_url": 7},
        "callback": {"prompt": "p", "init_image": host.url("/input.png"), "callback": "ftp://x"},
    }
    for field, body in answers.items():
        answer = httpx.post(f"{cloud.base}{ROUTE}", json=body, headers=cloud.headers).json()
        assert answer["code"] == 680001 and answer["msg"].startswith(f"{field}: "), (field, answer)
    unauthorized = httpx.post(f"{cloud.base}{ROUTE}", json={"prompt": "p", "init_image": host.url("/input.png")})
    assert unauthorized.status_code == 401 and unauthorized.json()["code"] == 140013
    wrong_size = httpx.post(
        f"{cloud.base}{ROUTE}",
        json={"prompt": "p", "init_image": host.url("/input.png"), "mask_url": host.url("/small-mask.png")},
        headers=cloud.headers,
    ).json()
    data = cloud.wait_final(wrong_size["data"]["task_id"])
    assert data["status"] == 4 and data["reason"].startswith("mask_url: 256x256 must be the image's resolution")
