"""The OpenAI-compatible images API, driven by the official `openai` Python package against `ref2img
serve` on the tiny model: edits in every mode, both response formats, a mask through Image Repaint,
streaming, the model list, and each error as the SDK's own exception class."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from ref2img.auth.keys import create_key
from ref2img.tasks.store import Store

from .conftest import Cloud, Server, bomb_header, png_bytes, running

openai = pytest.importorskip("openai", reason="the openai package is a dev dependency")


@pytest.fixture(scope="module")
def served(tiny_sd15, tmp_path_factory):
    with running(tmp_path_factory, "openai", tiny_sd15) as server:
        server.wait_engine()  # the model's load is the fixture's, not the first test's
        yield server


def client_for(server: Server, key: tuple[str, str] | None = None, **options) -> openai.OpenAI:
    app_key, secret = key or server.new_key()
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=f"{app_key}:{secret}", max_retries=0, **options)


@pytest.fixture(scope="module")
def key(served) -> tuple[str, str]:
    return served.new_key()


@pytest.fixture(scope="module")
def client(served, key) -> openai.OpenAI:
    return client_for(served, key)


@pytest.fixture(scope="module")
def reference(astronaut) -> bytes:
    buffer = io.BytesIO()
    astronaut.resize((256, 256)).save(buffer, format="PNG")
    return buffer.getvalue()


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def settings_of(server: Server, key: tuple[str, str], prompt: str) -> dict:
    """The task an edit made, as the key's own task list (and so the studio's history) shows it."""
    headers = Cloud(server.url, *key).headers
    tasks = httpx.get(f"{server.url}/v1/tasks?page_size=100", headers=headers, timeout=10).json()["data"]["tasks"]
    return next(task for task in tasks if task["settings"]["prompt"] == prompt)


def test_an_edit_with_one_image_and_n_2_answers_b64_json_by_default(served, key, client, reference):
    result = client.images.edit(
        image=("astronaut.png", reference, "image/png"),
        prompt="two of them",
        model="ref2img-edge",
        n=2,
        size="640x512",
        extra_body={"seed": 11},
    )
    assert len(result.data) == 2 and result.size == "640x512" and result.output_format == "png"
    images = [png(base64.b64decode(item.b64_json)) for item in result.data]
    assert [image.size for image in images] == [(640, 512), (640, 512)]
    assert all(item.url is None for item in result.data)
    task = settings_of(served, key, "two of them")  # one task like any other, in this key's history
    assert task["status"] == 3 and task["kind"] == "img2img"
    assert task["settings"]["batch_size"] == 2 and task["settings"]["seed"] == 11


def test_url_response_format_gives_fetchable_signed_links(client, reference):
    result = client.images.edit(
        image=("astronaut.png", reference, "image/png"),
        prompt="as a link",
        model="ref2img-depth",
        response_format="url",
        size="512x512",
    )
    [item] = result.data
    assert item.b64_json is None and "/v1/files/results/" in item.url
    assert png(httpx.get(item.url, timeout=10).content).size == (512, 512)


@pytest.mark.parametrize("mode, control_type", [("edge", "0"), ("pose", "1"), ("subject", "2"), ("depth", "3")])
def test_every_mode_through_model(served, key, client, reference, mode, control_type):
    prompt = f"in {mode} mode"
    result = client.images.edit(
        image=("astronaut.png", reference, "image/png"),
        prompt=prompt,
        model=f"ref2img-{mode}",
        size="512x512",
        extra_body={"control_intensity": 0.8, "negative_prompt": "blurry"},
    )
    assert len(result.data) == 1
    settings = settings_of(served, key, prompt)["settings"]
    assert settings["control_type"] == control_type and settings["control_intensity"] == 0.8
    assert settings["negative_prompt"] == "blurry"


def test_model_list_and_the_preset_suffix(served, client, reference):
    names = [model.id for model in client.models.list()]
    assert names[:4] == ["ref2img-edge", "ref2img-pose", "ref2img-subject", "ref2img-depth"]
    preset = "tiny"  # the preset's own name (the tiny sd15 models'), whatever its folder is called
    assert f"ref2img-pose:{preset}" in names and len(names) == 8
    assert client.models.retrieve("ref2img-pose").owned_by == "ref2img"
    result = client.images.edit(
        image=("a.png", reference, "image/png"), prompt="suffixed", model=f"ref2img-edge:{preset}", size="512x512"
    )
    assert len(result.data) == 1


def test_auto_size_keeps_the_references_shape(client, astronaut):
    buffer = io.BytesIO()
    astronaut.resize((400, 200)).save(buffer, format="PNG")
    result = client.images.edit(image=("wide.png", buffer.getvalue(), "image/png"), prompt="wide", model="ref2img-edge")
    width, height = (int(side) for side in result.size.split("x"))  # 2:1 at about 1024², sides multiples of 8
    assert abs(width / height - 2) < 0.02 and width % 8 == height % 8 == 0
    assert abs(width * height / 1024**2 - 1) < 0.02
    assert png(base64.b64decode(result.data[0].b64_json)).size == (width, height)


def test_a_second_image_is_the_init_image(served, key, client, reference, coffee):
    buffer = io.BytesIO()
    coffee.resize((256, 256)).save(buffer, format="PNG")
    client.images.edit(
        image=[("ref.png", reference, "image/png"), ("init.png", buffer.getvalue(), "image/png")],
        prompt="from an init image",
        model="ref2img-pose",
        size="512x512",
    )
    settings = settings_of(served, key, "from an init image")["settings"]
    assert "/v1/files/" in settings["init_image"] and settings["init_image"] != settings["reference_image"]


def test_a_mask_goes_to_image_repaint_and_keeps_the_opaque_pixels(served, key, client, astronaut):
    image = astronaut.resize((512, 512))
    mask = Image.new("RGBA", (512, 512), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (192, 192, 320, 320))  # transparent: edit here (OpenAI's convention)
    files = []
    for picture in (image, mask):
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        files.append(buffer.getvalue())
    result = client.images.edit(
        image=("photo.png", files[0], "image/png"),
        mask=("mask.png", files[1], "image/png"),
        prompt="a golden visor",
        model="ref2img-subject",
    )
    out = np.asarray(png(base64.b64decode(result.data[0].b64_json)).convert("RGB"))
    before = np.asarray(image)
    assert out.shape == (512, 512, 3) and result.size == "512x512"
    assert (out[:150, :150] == before[:150, :150]).all()  # opaque in the mask: kept exactly
    assert np.abs(out[240:272, 240:272].astype(int) - before[240:272, 240:272]).mean() > 10  # redrawn
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(
            image=("photo.png", files[0], "image/png"), mask=("mask.png", files[1], "image/png"), prompt="two", n=2
        )
    assert caught.value.body["param"] == "n"


@pytest.mark.parametrize(
    "options, param, words",
    [
        ({"size": "100x100"}, "size", "512 to 2048"),
        ({"size": "big"}, "size", "WIDTHxHEIGHT"),
        ({"n": 5}, "n", "from 1 to 4"),
        ({"n": 0}, "n", "from 1 to 4"),
        ({"size": "\u0661\u0660\u0662\u0664x\u0661\u0660\u0662\u0664"}, "size", "WIDTHxHEIGHT"),  # Arabic-Indic digits
        ({"model": "gpt-image-1"}, "model", "ref2img-edge, ref2img-pose"),
        ({"response_format": "gif"}, "response_format", "b64_json or url"),
        ({"extra_body": {"control_intensity": 2}}, "control_intensity", "from 0 to 1"),
    ],
)
def test_bad_fields_raise_bad_request_naming_the_param(client, reference, options, param, words):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(image=("a.png", reference, "image/png"), prompt="refused", **options)
    error = caught.value
    assert error.status_code == 400 and error.body["param"] == param and words in error.body["message"], error.body
    assert error.body["type"] == "invalid_request_error"


def test_a_missing_image_and_a_file_that_is_no_image(served, key):
    app_key, secret = key
    headers = {"Authorization": f"Bearer {app_key}:{secret}"}
    answer = httpx.post(f"{served.url}/v1/images/edits", data={"prompt": "no image"}, headers=headers, timeout=10)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "image"
    client = client_for(served, key)
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(image=("notes.png", b"not an image at all", "image/png"), prompt="text")
    assert caught.value.body["param"] == "image" and caught.value.body["code"] == "invalid_image"


def test_bad_auth_raises_authentication_error(served, reference):
    stranger = openai.OpenAI(base_url=f"{served.url}/v1", api_key="ak_nobody:sk_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        stranger.images.edit(image=("a.png", reference, "image/png"), prompt="who am I")
    assert caught.value.body["code"] == "invalid_api_key"
    no_colon = openai.OpenAI(base_url=f"{served.url}/v1", api_key="just-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        no_colon.models.list()
    basic = httpx.get(f"{served.url}/v1/models", headers=Cloud(served.url, *served.new_key()).headers, timeout=10)
    assert basic.status_code == 401 and "Bearer" in basic.json()["error"]["message"]


def test_generations_point_to_edits(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="no reference", model="ref2img-edge")
    assert "/v1/images/edits" in caught.value.body["message"] and caught.value.body["param"] == "image"


def key_of_one_task_a_minute(server: Server):
    store = Store(server.db_url)
    try:
        return create_key(store, per_minute=1)
    finally:
        store.close()


def test_the_keys_quota_is_a_rate_limit_error(served, reference):
    limited = key_of_one_task_a_minute(served)
    client = client_for(served, (limited.app_key, limited.app_secret))
    client.images.edit(image=("a.png", reference, "image/png"), prompt="the first", size="512x512")
    store = Store(served.db_url)
    try:
        uploads = store.files.uploaded_since(limited.app_key, 0)
        with pytest.raises(openai.RateLimitError) as caught:
            client.images.edit(image=("a.png", reference, "image/png"), prompt="the second", size="512x512")
        assert store.files.uploaded_since(limited.app_key, 0) == uploads  # refused before anything was stored
    finally:
        store.close()
    assert caught.value.response.headers["retry-after"]
    # Another key's tasks are not this key's: its list shows its own edit only.
    headers = Cloud(served.url, limited.app_key, limited.app_secret).headers
    tasks = httpx.get(f"{served.url}/v1/tasks", headers=headers, timeout=10).json()["data"]["tasks"]
    assert [task["settings"]["prompt"] for task in tasks] == ["the first"]


def test_the_readmes_curl_example_works_as_written(served, key, reference, tmp_path):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = next(block for block in re.findall(r"```bash\n(.*?)```", readme, re.S) if "/v1/images/edits" in block)
    (tmp_path / "astronaut.png").write_bytes(reference)
    app_key, secret = key
    env = {**os.environ, "REF2IMG_APP_KEY": app_key, "REF2IMG_APP_SECRET": secret}
    subprocess.run(
        ["bash", "-euo", "pipefail", "-c", example.replace("http://127.0.0.1:8080", served.url)],
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=True,
    )
    assert png((tmp_path / "edit.png").read_bytes()).size == (1024, 1024)


# -- a slow model: streaming, a client that leaves, the image cap --------------------------------------
@pytest.fixture(scope="module")
def slow_served(tiny_sd15, tmp_path_factory):
    with running(tmp_path_factory, "openai-slow", tiny_sd15, "--part", "steps=80", "--max-image-mb", "1") as server:
        yield server


@pytest.mark.slow
def test_streaming_sends_partial_images_then_the_completed_ones(slow_served, reference):
    client = client_for(slow_served)
    events = list(
        client.images.edit(
            image=("a.png", reference, "image/png"),
            prompt="streamed",
            n=2,
            size="512x512",
            stream=True,
            partial_images=2,
            model="ref2img-edge",
        )
    )
    kinds = [event.type for event in events]
    partial = [event for event in events if event.type == "image_edit.partial_image"]
    assert 1 <= len(partial) <= 2 and [event.partial_image_index for event in partial] == list(range(len(partial)))
    assert Image.open(io.BytesIO(base64.b64decode(partial[0].b64_json))).format == "JPEG"  # a step preview
    assert kinds[-2:] == ["image_edit.completed", "image_edit.completed"]
    assert all(png(base64.b64decode(event.b64_json)).size == (512, 512) for event in events[-2:])


@pytest.mark.slow
def test_a_client_that_leaves_does_not_lose_its_task(slow_served, reference):
    key = slow_served.new_key()
    client = client_for(slow_served, key, timeout=1.0)
    with pytest.raises(openai.APITimeoutError):
        client.images.edit(image=("a.png", reference, "image/png"), prompt="left early", size="512x512")
    deadline = time.monotonic() + 60
    while (task := settings_of(slow_served, key, "left early"))["status"] != 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert task["status"] == 3 and json.loads(task["result"])["images_path"]


@pytest.mark.slow
def test_an_image_over_the_servers_cap_is_refused_by_name(slow_served):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (720, 720, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    assert buffer.tell() > 1024 * 1024
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(slow_served).images.edit(image=("big.png", buffer.getvalue(), "image/png"), prompt="too big")
    assert caught.value.body["param"] == "image" and "--max-image-mb" in caught.value.body["message"]


def image_bytes(size: tuple[int, int], fmt: str = "PNG") -> bytes:
    return png_bytes(Image.new("RGBA" if fmt == "PNG" else "RGB", size, (0, 0, 0, 0) if fmt == "PNG" else "red"), fmt)


@pytest.mark.parametrize(
    "mask, words",
    [
        (image_bytes((256, 256), "TIFF"), "TIFF images are not accepted"),
        (b"not an image at all", "not an image"),
        (image_bytes((15, 15)), "too small"),
        (image_bytes((1000, 50)), "too narrow"),
        (bomb_header(), "megapixel limit"),
        (image_bytes((256, 256))[:120], "truncated"),
    ],
)
def test_a_mask_that_is_no_usable_image_is_a_400_and_stores_nothing(served, key, reference, mask, words):
    uploads = served.data_dir / "files" / "uploads"
    before = set(uploads.iterdir()) if uploads.exists() else set()
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(served, key).images.edit(
            image=("a.png", reference, "image/png"), mask=("m.png", mask, "image/png"), prompt="masked"
        )
    assert caught.value.body["param"] == "mask" and words in caught.value.body["message"], caught.value.body
    assert (set(uploads.iterdir()) if uploads.exists() else set()) == before  # the reference was not kept either


def test_uploads_count_against_the_keys_quota(served, reference):
    """A key of one task a minute may upload what one task can name (5 images) a minute, no more."""
    limited = key_of_one_task_a_minute(served)
    headers = {
        k: v for k, v in Cloud(served.url, limited.app_key, limited.app_secret).headers.items() if k != "Content-Type"
    }
    answers = [
        httpx.post(f"{served.url}/v1/files", files={"file": ("a.png", reference)}, headers=headers, timeout=30)
        for _ in range(6)
    ]
    assert [answer.json()["code"] for answer in answers] == [0] * 5 + [680005]
    assert answers[-1].status_code == 429 and "its limit (5 a minute" in answers[-1].json()["msg"]
