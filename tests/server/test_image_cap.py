"""`--max-image-mb`: the largest input image file a server takes, on every way in (upload, fetch)."""

import base64
import httpx
import numpy as np
import pytest
from PIL import Image

from ref2img.images import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_MB, ImageInputError, image_cap_bytes, open_image

from .conftest import Cloud, ImageHost, img2img_body, png_bytes, running


def noise_png(side: int) -> bytes:
    """Random pixels do not compress: a PNG of about side² × 3 bytes."""
    return png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)))


def test_the_cap_is_each_nodes_own_setting_with_a_range(tmp_path):
    """Two backends in one process (a test, an embedded server beside an MCP server) each keep the cap
    they were given: nothing in `images` is process-wide."""
    from ref2img.settings import ServerSettings
    from ref2img.tasks.backend import Backend

    big = noise_png(700)  # about 1.4 MB
    with pytest.raises(ImageInputError, match=r"over 1 MB \(the server's --max-image-mb\)"):
        open_image(big, "reference_image", image_cap_bytes(1))
    assert open_image(big, max_bytes=image_cap_bytes(2)).size == (700, 700)
    with pytest.raises(ValueError, match=r"max_image_mb: must be an integer from 1 to 1024"):
        image_cap_bytes(0)
    assert (
        DEFAULT_MAX_IMAGE_BYTES == image_cap_bytes(DEFAULT_MAX_IMAGE_MB) == 20 * 1024 * 1024
    )  # the documented default

    small, large = (
        Backend(ServerSettings(data_dir=tmp_path / name, max_image_mb=megabytes, engine_factory=lambda: None))
        for name, megabytes in (("small", 1), ("large", 2))
    )
    uri = "data:image/png;base64," + base64.b64encode(big).decode()
    with pytest.raises(ImageInputError, match="over 1 MB"):
        small.images.check(uri, "reference_image", "ak_test")
    large.images.check(uri, "reference_image", "ak_test")  # the second backend did not change the first's cap
    with pytest.raises(ImageInputError, match="over 1 MB"):
        small.images.check(uri, "reference_image", "ak_test")
    assert (small.http.max_bytes, large.http.max_bytes) == (1024 * 1024, 2 * 1024 * 1024)


@pytest.fixture(scope="module")
def small_cap(tmp_path_factory, tiny_sd15):
    with running(tmp_path_factory, "small-cap", tiny_sd15, "--max-image-mb", "1", "--allow-private-urls") as server:
        yield server


@pytest.mark.slow  # a server of its own and a task: about 20 s on the 2-core machine
def test_a_server_with_a_1_mb_cap_refuses_larger_uploads_and_fetches(small_cap):
    cloud = Cloud(small_cap.url, *small_cap.new_key())
    big, small = noise_png(700), noise_png(300)
    headers = {"X-App-Key": cloud.headers["X-App-Key"], "Authorization": cloud.headers["Authorization"]}
    refused = httpx.post(
        f"{small_cap.url}/v1/files", files={"file": ("big.png", big, "image/png")}, headers=headers
    ).json()
    assert refused["code"] == 680003 and "over 1 MB" in refused["msg"] and "--max-image-mb" in refused["msg"]
    taken = httpx.post(
        f"{small_cap.url}/v1/files", files={"file": ("small.png", small, "image/png")}, headers=headers
    ).json()
    assert taken["code"] == 0
    host = ImageHost({"/big.png": (big, "image/png")})
    try:
        task = httpx.post(
            f"{small_cap.url}/v1/open/capacity/application/tm_reference_img2img",
            json=img2img_body(host.url("/big.png")),
            headers=cloud.headers,
        ).json()
        if task["code"] == 0:  # refused by the worker's fetch rather than at the door: the task says why
            data = cloud.wait_final(task["data"]["task_id"])
            assert data["status"] == 4 and "over 1 MB" in data["reason"]
        else:
            assert task["code"] == 680003 and "over 1 MB" in task["msg"]
    finally:
        host.close()


def test_the_cap_is_a_flag_with_a_range(tiny_sd15, tmp_path):
    from typer.testing import CliRunner

    from ref2img.cli import app

    result = CliRunner().invoke(app, ["serve", "--max-image-mb", "0", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--max-image-mb" in result.output
