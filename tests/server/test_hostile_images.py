"""Hostile and unusual images through a real server: refused with 680003, or used; no worker dies."""

import base64
import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

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
    ramp = np.arange(128 * 128, dtype=np.uint16).reshape(128, 128) * 4
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
            answer = httpx.post(
                f"{cloud.base}/v1/open/capacity/application/tm_reference_img2mask",
                json={"control_type": "3", "init_image": as_uri(data)},
                headers=cloud.headers,
            )
            tasks[name] = answer.json()["data"]["task_id"]
    finals = {name: cloud.wait_final(task_id, timeout_s=120) for name, task_id in tasks.items()}
    assert {name: data["status"] for name, data in finals.items()} == {name: 3 for name in images}, finals


@pytest.mark.parametrize(("size", "message"), [((1, 1), "too small"), ((10000, 100), "too narrow")])
def test_unusable_shapes_are_680003_at_create(cloud, size, message):
    uri = data_uri(Image.new("RGB", size, "red"))
    answer = cloud.create(img2img_body(uri)).json()
    assert answer["code"] == 680003 and answer["msg"].startswith("reference_image: ") and message in answer["msg"]
    upload = httpx.post(
        f"{cloud.base}/v1/files",
        files={"file": ("x.png", png_bytes(Image.new("RGB", size)))},
        headers={k: v for k, v in cloud.headers.items() if k != "Content-Type"},
    ).json()
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


def blank_rgba_png(width: int, height: int) -> bytes:
    """A valid, fully transparent RGBA PNG, compressed row by row (8192x8192 is 255 KB, 256 MB decoded)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor, row = zlib.compressobj(9), b"\0" * (1 + width * 4)
    pixels = b"".join([compressor.compress(row) for _ in range(height)] + [compressor.flush()])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
        + chunk(b"IDAT", pixels)
        + chunk(b"IEND", b"")
    )


def memory_kb(pid: int, field: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def test_eight_huge_uploads_at_once_stay_under_600_mb(server, cloud):
    """The figure in docs/reliability.md: the server's peak RSS above idle while eight 8192x8192 RGBA
    PNG uploads (255 KB each) arrive at once. A full decode in the request thread cost ~1 GB each."""
    png = blank_rgba_png(8192, 8192)
    pid = server.process.pid
    headers = {k: v for k, v in cloud.headers.items() if k != "Content-Type"}
    with open(f"/proc/{pid}/clear_refs", "w") as handle:
        handle.write("5")  # resets the peak (VmHWM) to the current RSS
    idle = memory_kb(pid, "VmRSS")

    def upload(index: int) -> dict:
        return httpx.post(
            f"{cloud.base}/v1/files", files={"file": (f"big-{index}.png", png)}, headers=headers, timeout=60
        ).json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(upload, range(8)))
    growth_mb = (memory_kb(pid, "VmHWM") - idle) / 1024
    print(f"\n8 parallel 8192x8192 RGBA uploads of {len(png) // 1024} KB: peak RSS {growth_mb:.0f} MB above idle")
    assert [answer["code"] for answer in answers] == [0] * 8, answers
    assert growth_mb < 600
