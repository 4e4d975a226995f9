"""The cloud flow, every route and error code, auth and tenant isolation — against `ref2img serve`."""

import io
import json

import httpx
import pytest
from PIL import Image

from .conftest import Cloud, data_uri, img2img_body, png_bytes

# The cloud's fields (§4.2), plus our `route` extension ("local" here; "cloud" behind --engine tomoviee).
QUERY_FIELDS = {
    "task_id",
    "status",
    "progress",
    "process",
    "reason",
    "position",
    "wait_time",
    "params",
    "result",
    "route",
}


@pytest.mark.slow
def test_cloud_flow_end_to_end(cloud, image_host):
    answer = cloud.create(
        img2img_body(
            image_host.url("/astronaut.png"),
            control_type="1",
            width=640,
            height=512,
            batch_size=2,
            params="order-17",
            wsid=1,
            storage_info={"x": 1},
        )
    )
    assert answer.status_code == 200
    envelope = answer.json()
    assert envelope["code"] == 0 and set(envelope) == {"code", "msg", "data"}
    task_id = envelope["data"]["task_id"]

    first = cloud.query(task_id)
    assert first["code"] == 0 and set(first["data"]) == QUERY_FIELDS
    assert first["data"]["status"] in (1, 2, 3) and first["data"]["params"] == "order-17"

    data = cloud.wait_final(task_id)
    assert data["status"] == 3 and data["progress"] == 100 and data["process"] == 100
    assert data["position"] == -1 and data["reason"] == ""
    assert isinstance(data["result"], str)  # a JSON-encoded string, as the cloud sends
    result = json.loads(data["result"])
    assert result["images_path"] == result["image_path"] and len(result["images_path"]) == 2
    for url in result["images_path"]:
        image = httpx.get(url)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert Image.open(__import__("io").BytesIO(image.content)).size == (640, 512)


@pytest.mark.slow
def test_result_urls_are_signed(cloud, image_host):
    data = cloud.wait_final(cloud.create_id(img2img_body(image_host.url("/astronaut.png"))))
    url = json.loads(data["result"])["images_path"][0]
    assert httpx.get(url.replace("sig=", "sig=0")).status_code == 404
    assert httpx.get(url.split("?")[0]).status_code == 404
    tampered = url.replace("/1.png", "/../../url-signing.key")
    assert httpx.get(tampered).status_code == 404


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 4000}, "width: must be an integer from 512 to 2048 (got 4000)"),
        ({"control_type": "9"}, "control_type: must be one of"),
        ({"batch_size": 0}, "batch_size: must be an integer from 1 to 4"),
        ({"prompt": ""}, "prompt: "),
        ({"control_intensity": "high"}, "control_intensity: must be a number from 0 to 1"),
    ],
)
def test_invalid_parameters_are_680001(cloud, image_host, changes, message):
    answer = cloud.create(img2img_body(image_host.url("/astronaut.png"), **changes))
    assert answer.status_code == 200
    assert answer.json()["code"] == 680001 and message in answer.json()["msg"]


def test_invalid_bodies(cloud):
    for content in (b"not json", b"[1, 2]", b"{" * 5000):
        answer = httpx.post(
            f"{cloud.base}/v1/open/capacity/application/tm_reference_img2img", content=content, headers=cloud.headers
        )
        assert answer.json()["code"] == 680001 and "body" in answer.json()["msg"]


@pytest.mark.parametrize("case", ["missing", "wrong-secret", "mismatch", "unknown-key", "garbage"])
def test_auth_failures_are_140013_with_http_401(cloud, image_host, case):
    headers = dict(cloud.headers)
    if case == "missing":
        headers.pop("Authorization")
    elif case == "wrong-secret":
        headers = Cloud(cloud.base, cloud.app_key, "sk_wrong").headers
    elif case == "mismatch":
        headers["X-App-Key"] = "ak_someone_else"
    elif case == "unknown-key":
        headers = Cloud(cloud.base, "ak_nobody", "sk_nothing").headers
    else:
        headers["Authorization"] = "Basic %%%"
    for url, body in (
        (
            f"{cloud.base}/v1/open/capacity/application/tm_reference_img2img",
            img2img_body(image_host.url("/astronaut.png")),
        ),
        (f"{cloud.base}/v1/open/pub/task", {"task_id": "t1"}),
    ):
        answer = httpx.post(url, json=body, headers=headers)
        assert answer.status_code == 401
        assert answer.json()["code"] == 140013 and answer.json()["data"] is None


def test_other_keys_task_is_not_found(server, cloud, image_host):
    task_id = cloud.create_id(img2img_body(image_host.url("/astronaut.png")))
    other = Cloud(server.url, *server.new_key())
    assert other.query(task_id)["code"] == 680004
    assert other.cancel(task_id)["code"] == 680004
    assert cloud.query("t_does_not_exist")["code"] == 680004
    assert cloud.query(task_id)["code"] == 0


@pytest.mark.slow
def test_uploads_are_private_to_their_key(server, cloud, astronaut, coffee):
    files = {"file": ("photo.png", png_bytes(coffee), "image/png")}
    upload = httpx.post(
        f"{cloud.base}/v1/files", files=files, headers={k: v for k, v in cloud.headers.items() if k != "Content-Type"}
    ).json()
    assert upload["code"] == 0
    url = upload["data"]["url"]
    assert cloud.wait_final(cloud.create_id(img2img_body(url)))["status"] == 3

    other = Cloud(server.url, *server.new_key())
    answer = other.create(img2img_body(url))
    assert answer.json()["code"] == 680002 and "no such file" in answer.json()["msg"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("/truncated.png", "truncated or corrupt"),
        ("/empty.png", "empty (0 bytes)"),
        ("/bomb.png", "megapixel limit"),
        ("/text.png", "not an image"),
    ],
)
@pytest.mark.slow
def test_bad_images_fail_the_task_with_a_clear_reason(cloud, image_host, name, message):
    data = cloud.wait_final(cloud.create_id(img2img_body(image_host.url(name))))
    assert data["status"] == 4
    assert data["reason"].startswith("reference_image: ") and message in data["reason"]


@pytest.mark.parametrize(("payload", "message"), [(b"", "empty"), (b"text", "not an image"), (None, "megapixel limit")])
def test_bad_uploads_are_680003(cloud, payload, message):
    from .conftest import bomb_header

    files = {"file": ("x.png", bomb_header() if payload is None else payload, "image/png")}
    answer = httpx.post(
        f"{cloud.base}/v1/files", files=files, headers={k: v for k, v in cloud.headers.items() if k != "Content-Type"}
    ).json()
    assert answer["code"] == 680003 and message in answer["msg"]


@pytest.mark.slow  # over 5 s on the 2-core machine
def test_unreachable_image_fails_with_fetch_reason(cloud):
    data = cloud.wait_final(cloud.create_id(img2img_body("http://127.0.0.1:9/nothing.png")))
    assert data["status"] == 4 and "could not fetch" in data["reason"]


def test_data_uri_reference_and_init(cloud, astronaut, coffee):
    data = cloud.wait_final(
        cloud.create_id(img2img_body(data_uri(astronaut), control_type="2", init_image=data_uri(coffee), seed=3))
    )
    assert data["status"] == 3


def test_idempotency_key(cloud, image_host):
    body = img2img_body(image_host.url("/astronaut.png"))
    first = cloud.create_id(body, **{"Idempotency-Key": "order-1"})
    again = cloud.create_id(body, **{"Idempotency-Key": "order-1"})
    other = cloud.create_id(body, **{"Idempotency-Key": "order-2"})
    assert first == again != other
    changed = cloud.create({**body, "prompt": "another prompt"}, **{"Idempotency-Key": "order-1"}).json()
    assert changed["code"] == 680001 and changed["msg"].startswith("Idempotency-Key: already used"), changed


def test_the_server_decides_the_seed_at_create_and_a_resend_gets_the_same(cloud, image_host):
    body = img2img_body(image_host.url("/astronaut.png"))
    body.pop("seed", None)
    first = cloud.create(body, **{"Idempotency-Key": "seeded-1"}).json()["data"]
    again = cloud.create(body, **{"Idempotency-Key": "seeded-1"}).json()["data"]
    other = cloud.create(body, **{"Idempotency-Key": "seeded-2"}).json()["data"]
    assert first == again and isinstance(first["seed"], int) and other["seed"] != first["seed"]
    unkeyed = [cloud.create(body).json()["data"]["seed"] for _ in range(2)]
    assert unkeyed[0] != unkeyed[1]  # random without a key (2**31 choices)
    given = cloud.create({**body, "seed": 77}).json()["data"]
    assert given["seed"] == 77


def test_recognition_task_with_template_wrapping(cloud, image_host):
    body = {
        "wsid": 1,
        "template_info": [
            {
                "template_id": "tm_reference_img2mask_template_spatial",
                "input_params": {"control_type": "3", "init_image": image_host.url("/astronaut.jpg")},
            }
        ],
    }
    answer = httpx.post(
        f"{cloud.base}/v1/open/capacity/application/tm_reference_img2mask", json=body, headers=cloud.headers
    ).json()
    assert answer["code"] == 0
    data = cloud.wait_final(answer["data"]["task_id"])
    masks = json.loads(data["result"])["mask_path"]
    assert len(masks) == 1 and httpx.get(masks[0]).status_code == 200
    subject = httpx.post(
        f"{cloud.base}/v1/open/capacity/application/tm_reference_img2mask",
        json={"control_type": "2", "init_image": image_host.url("/astronaut.jpg")},
        headers=cloud.headers,
    ).json()
    assert subject["code"] == 0  # type 2: the subject's mask, one URL like the other maps
    data = cloud.wait_final(subject["data"]["task_id"])
    [mask_url] = json.loads(data["result"])["mask_path"]
    mask = Image.open(io.BytesIO(httpx.get(mask_url).content))
    assert mask.size == Image.open(io.BytesIO(httpx.get(image_host.url("/astronaut.jpg")).content)).size
    unknown = httpx.post(
        f"{cloud.base}/v1/open/capacity/application/tm_reference_img2mask",
        json={"control_type": "7", "init_image": image_host.url("/astronaut.jpg")},
        headers=cloud.headers,
    ).json()
    assert unknown["code"] == 680001 and unknown["msg"].startswith("control_type: ")


def test_the_recognition_pages_full_body_is_accepted_and_checked(cloud, image_host):
    """The EN page's body (D3/D4a: `wsid`, `storage_info`, `template_info` with its template id), as given;
    then each documented field wrong, refused naming it."""
    route = f"{cloud.base}/v1/open/capacity/application/tm_reference_img2mask"
    documented = {
        "wsid": 123,
        "callback": "",
        "params": "",
        "template_info": [
            {
                "template_id": "tm_reference_img2mask_template_spatial",
                "input_params": {"control_type": "0", "init_image": image_host.url("/astronaut.jpg")},
            }
        ],
        "storage_info": {"input": {"oss": {"type": 0}}, "output": {"url": {"expire_time": 1}}},
    }
    answer = httpx.post(route, json=documented, headers=cloud.headers).json()
    assert answer["code"] == 0, answer
    assert json.loads(cloud.wait_final(answer["data"]["task_id"])["result"])["mask_path"]
    wrong = {
        "wsid": ({"wsid": "me"}, "wsid: must be a non-negative integer"),
        "template_id": (
            {"template_info": [{**documented["template_info"][0], "template_id": "tm_other"}]},
            "template_info[].template_id: must be 'tm_reference_img2mask_template_spatial'",
        ),
        "own bucket": (
            {"storage_info": {"output": {"oss": {"bucket": "mine", "key": "k"}}}},
            'storage_info: must be {"input": {"oss": {"type": 0}}',
        ),
    }
    for name, (change, message) in wrong.items():
        refused = httpx.post(route, json={**documented, **change}, headers=cloud.headers).json()
        assert refused["code"] == 680001 and refused["msg"].startswith(message), (name, refused)
    assert (
        "not supported"
        in httpx.post(route, json={**documented, **wrong["own bucket"][0]}, headers=cloud.headers).json()["msg"]
    )


def test_the_legacy_size_fields_make_width_and_height(cloud, image_host):
    """The older skill docs' body (S11): `image`, `resolution`, `aspect_ratio`, `image_num`."""
    legacy = {
        "prompt": "a lighthouse",
        "image": image_host.url("/astronaut.jpg"),
        "control_type": "0",
        "resolution": "1024*1024",
        "aspect_ratio": "16:9",
        "image_num": 1,
    }
    answer = cloud.create(legacy).json()
    assert answer["code"] == 0, answer
    data = cloud.wait_final(answer["data"]["task_id"])
    assert data["status"] == 3
    conflict = cloud.create({**legacy, "width": 512}).json()
    assert conflict["code"] == 680001 and conflict["msg"].startswith("resolution: give either width and height")
    bad = cloud.create({**legacy, "aspect_ratio": "wide"}).json()
    assert bad["code"] == 680001 and bad["msg"].startswith('aspect_ratio: must be "a:b"')


def test_token_endpoint(cloud):
    answer = httpx.get(
        f"{cloud.base}/v1/open/capacity/get/token", params={"access_key": cloud.app_key, "secret": cloud.app_secret}
    ).json()
    assert answer["code"] == 0 and answer["data"]["access_token"] == cloud.headers["Authorization"]
    wrong = httpx.get(f"{cloud.base}/v1/open/capacity/get/token", params={"access_key": cloud.app_key, "secret": "x"})
    assert wrong.status_code == 401 and wrong.json()["code"] == 140013


def test_long_poll_returns_on_change_and_caps_wait(cloud, image_host):
    import time

    task_id = cloud.create_id(img2img_body(image_host.url("/astronaut.png")))
    started = time.monotonic()
    cloud.query(task_id, wait=20)
    assert time.monotonic() - started < 15  # a change (claim, progress or the end) came well before 20 s
    final = cloud.wait_final(task_id)
    started = time.monotonic()
    assert cloud.query(task_id, wait=20)["data"]["status"] == final["status"]
    assert time.monotonic() - started < 2  # a finished task answers at once
    assert cloud.query(task_id, wait=31)["code"] == 680001


def test_service_routes(server):
    health = httpx.get(f"{server.url}/healthz").json()
    assert health["code"] == 0 and health["data"]["status"] == "ok"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "ref2img_queue_depth" in metrics and 'ref2img_tasks{status="succeeded"}' in metrics
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert {"/v1/open/pub/task", "/v1/open/capacity/application/tm_redrawing"} <= set(paths)
    schema = httpx.get(f"{server.url}/openapi.json").json()["components"]["schemas"]
    assert {"prompt", "init_image", "mask_url"} <= set(schema["RepaintRequest"]["properties"])  # its body, documented
    assert httpx.get(f"{server.url}/no/such/route").status_code == 404


def test_docs_are_served_from_the_package_and_every_page_sends_security_headers(server):
    import re

    docs = httpx.get(f"{server.url}/docs")
    assert docs.status_code == 200
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", docs.text)
    assert assets and all(asset.startswith("/") for asset in assets), assets  # no CDN, works offline
    for asset in assets:
        if asset.endswith((".js", ".css")):
            assert httpx.get(f"{server.url}{asset}").status_code == 200, asset
    for path, script in (
        ("/", "script-src 'self';"),
        ("/docs", "script-src 'self' 'unsafe-inline'"),
        ("/healthz", "default-src 'none'"),
    ):
        headers = httpx.get(f"{server.url}{path}").headers
        assert (
            script in headers["content-security-policy"]
            and "frame-ancestors 'none'" in headers["content-security-policy"]
        ), (path, headers)
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"


def test_inline_images_are_kept_as_the_keys_files_not_in_the_tasks_row(server, cloud, astronaut):
    """A `data:` image is stored once as a file of the key's; the row names the file, so it stays small;
    the same body under one Idempotency-Key finds the same task; another key cannot name that file."""
    from sqlalchemy import create_engine, text

    body = img2img_body(
        data_uri(astronaut.resize((256, 256))),
        init_image=data_uri(astronaut.resize((200, 200))),
        control_type="3",
        controls=[{"type": "depth", "image": data_uri(astronaut.resize((128, 128)))}],
    )
    first = cloud.create_id(body, **{"Idempotency-Key": "inline-1"})
    assert cloud.create_id(body, **{"Idempotency-Key": "inline-1"}) == first
    assert cloud.wait_final(first)["status"] == 3
    with create_engine(server.db_url).connect() as connection:
        row = connection.execute(text("SELECT request FROM tasks WHERE id = :id"), {"id": first}).scalar_one()
    request = json.loads(row)
    assert "data:" not in row and len(row) < 2000, row[:300]
    names = [request["reference_image"], request["init_image"], request["controls"][0]["image"]]
    assert all(name.startswith("stored:uploads/f") for name in names) and len(set(names)) == 3
    stranger = Cloud(server.url, *server.new_key())
    refused = stranger.create(img2img_body(names[0])).json()
    assert refused["code"] == 680002 and "no such file" in refused["msg"]
