"""Hostile and unusual images through a real server: refused with 680003, or used; no worker dies."""

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from .conftest import data_uri, img2img_body, png_bytes


def as_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def usable_images(astronaut: Image.Image) -> dict[str, bytes]:
    small = astronaut.resize((128, 128))
    exif = Image.Exif()
    exif[0x0112] = 6  # a phone photo taken upright, stored sideways
    ramp = (np.arange(128 * 128, dtype=np.uint16).reshape(128, 128) * 4)
    return {
        "cmyk-jpeg": encoded(small.convert("CMYK"), "JPEG"),
        "palette-png": encoded(small.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "alpha-png": encoded(small.convert("RGBA"), "PNG"),
        "16-bit-png": encoded(Image.fromarray(ramp), "PNG"),
        "animated-gif": encoded(small, "GIF", save_all=True, append_images=[small.rotate(90)], duration=50),
        "animated-webp": encoded(small, "WEBP", save_all=True, append_images=[small.rotate(90)], duration=50),
        "exif-rotated-jpeg": encoded(small.resize((128, 96)), "JPEG", exif=exif.tobytes()),
        "wide-8-to-1": encoded(small.resize((800, 100)), "PNG"),
        "16x16": encoded(small.resize((16, 16)), "PNG"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["img2img", "img2mask"])
def test_unusual_images_are_used(cloud, astronaut, kind):
    images = usable_images(astronaut)
    tasks = {}
    for name, data in images.items():
        if kind == "img2img":
            tasks[name] = cloud.create_id(img2img_body(as_uri(data), control_type="1"))
        else:
            answer = httpx.post(f"{cloud.base}/v1/open/capacity/application/tm_reference_img2mask",
                                json={"control_type": "3", "init_image": as_uri(data)}, headers=cloud.headers)
            tasks[name] = answer.json()["data"]["task_id"]
    finals = {name: cloud.wait_final(task_id, timeout_s=120) for name, task_id in tasks.items()}
    assert {name: data["status"] for name, data in finals.items()} == {name: 3 for name in images}, finals


@pytest.mark.parametrize(("size", "message"), [((1, 1), "too small"), ((10000, 100), "too narrow")])
def test_unusable_shapes_are_680003_at_create(cloud, size, message):
    uri = data_uri(Image.new("RGB", size, "red"))
    answer = cloud.create(img2img_body(uri)).json()
    assert answer["code"] == 680003 and answer["msg"].startswith("reference_image: ") and message in answer["msg"]
    upload = httpx.post(f"{cloud.base}/v1/files", files={"file": ("x.png", png_bytes(Image.new("RGB", size)))},
                        headers={k: v for k, v in cloud.headers.items() if k != "Content-Type"}).json()
    assert upload["code"] == 680003 and message in upload["msg"]


@pytest.mark.slow
def test_broken_images_fail_their_task_and_the_worker_goes_on(cloud, astronaut):
    jpeg = encoded(astronaut, "JPEG")
    broken = {
        "truncated-jpeg": (jpeg[: len(jpeg) // 2], "image/jpeg"),
        "text-as-png": (b"I am not a picture", "image/png"),
        "gif-header-only": (b"GIF89a\x40\x00\x40\x00\x00\x00\x00", "image/gif"),
    }
    for name, (data, mime) in broken.items():
        answer = cloud.create(img2img_body(as_uri(data, mime))).json()
        if answer["code"] != 0:  # refused from the header already
            assert answer["code"] == 680003, (name, answer)
            continue
        final = cloud.wait_final(answer["data"]["task_id"])
        assert final["status"] == 4 and final["reason"].startswith("reference_image: "), (name, final)
    assert cloud.wait_final(cloud.create_id(img2img_body(data_uri(astronaut))))["status"] == 3
