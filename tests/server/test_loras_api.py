"""`loras` at the door: a server without --lora-dir lists none and refuses any by name, before queueing."""

from __future__ import annotations

import httpx

from .conftest import data_uri, img2img_body


def test_a_server_without_lora_folders_lists_none_and_refuses_them(server, cloud, astronaut):
    listed = httpx.get(f"{server.url}/v1/loras", headers=cloud.headers, timeout=10).json()
    assert listed == {"code": 0, "msg": "success", "data": {"loras": []}}
    body = img2img_body(data_uri(astronaut.resize((64, 64))), loras=[{"name": "style", "weight": 0.8}])
    answer = httpx.post(
        f"{server.url}/v1/open/capacity/application/tm_reference_img2img", json=body, headers=cloud.headers, timeout=10
    ).json()
    assert answer["code"] == 680001
    assert answer["msg"] == "loras[0].name: 'style' is not a LoRA of this server; it has none (no --lora-dir)"
    path = {**body, "loras": [{"name": "../etc/passwd"}]}  # never a path: refused by the protocol itself
    answer = httpx.post(
        f"{server.url}/v1/open/capacity/application/tm_reference_img2img", json=path, headers=cloud.headers, timeout=10
    ).json()
    assert answer["code"] == 680001 and answer["msg"].startswith("loras[0].name: must be the name of a LoRA")
