"""Signed callbacks received by a real HTTP receiver; SafeHttp's redirect and size rules."""

import http.server
import ipaddress
import json
import threading
import time

import pytest

from ref2img.safe_http import SafeHttp, UrlRefused
from ref2img.webhooks import verify

from .conftest import Cloud, Receiver, Server, data_uri, free_port, img2img_body


@pytest.mark.slow
def test_callback_is_signed_and_retried_with_one_id(cloud, image_host):
    receiver = Receiver(statuses=[500, 503])
    try:
        task_id = cloud.create_id(img2img_body(image_host.url("/astronaut.png"), callback=receiver.url, params="p-1"))
        calls = receiver.wait_calls(3)
        ids = {headers["webhook-id"] for headers, _ in calls}
        assert ids == {f"msg_{task_id}"}  # the same id on every attempt
        payload = verify(calls[-1][0], calls[-1][1], cloud.app_secret)
        assert payload["task_id"] == task_id and payload["status"] == 3 and payload["params"] == "p-1"
        assert json.loads(payload["result"])["images_path"]
        time.sleep(0.5)
        assert len(receiver.calls) == 3  # delivered: no more attempts
    finally:
        receiver.close()


@pytest.mark.slow
def test_callback_survives_a_server_restart(tiny_sd15, tmp_path, astronaut):
    port = free_port()
    server = Server(tmp_path / "data", tiny_sd15, "--allow-private-urls", "--callback-retry-scale", "0.3").start()
    try:
        cloud = Cloud(server.url, *server.new_key())
        task_id = cloud.create_id(img2img_body(data_uri(astronaut), callback=f"http://127.0.0.1:{port}/hook"))
        assert cloud.wait_final(task_id)["status"] == 3  # the receiver is down: the first attempt fails
        time.sleep(0.5)
        server.kill()
        receiver = Receiver(port=port)
        try:
            server.start()
            headers, body = receiver.wait_calls(1)[0]
            assert headers["webhook-id"] == f"msg_{task_id}"
            assert verify(headers, body, cloud.app_secret)["status"] == 3
        finally:
            receiver.close()
    finally:
        server.stop()


@pytest.fixture
def loopback_as_public():
    """A SafeHttp that treats 127.0.0.1 alone as 'public', to test redirects to private addresses."""
    return SafeHttp(address_allowed=lambda address: address == ipaddress.ip_address("127.0.0.1"), timeout_s=3)


def test_redirect_to_a_private_address_is_refused(loopback_as_public, image_host):
    assert loopback_as_public.get(image_host.url("/astronaut.png"))[:4] == b"\x89PNG"
    port = image_host.server.server_port
    for target in (f"127.0.0.2:{port}/astronaut.png", "169.254.169.254/latest/meta-data/", f"[::1]:{port}/x"):
        with pytest.raises(UrlRefused, match="refused"):
            loopback_as_public.get(image_host.url(f"/redirect/{target}"))


def test_size_cap_and_slow_bodies(image_host):
    small = SafeHttp(allow_private=True, max_bytes=1000, timeout_s=3)
    with pytest.raises(UrlRefused, match="over"):
        small.get(image_host.url("/astronaut.png"))

    class Drip(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            for _ in range(50):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)

        def log_message(self, *args):
            pass

    slow = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    try:
        started = time.monotonic()
        with pytest.raises(UrlRefused, match="longer than"):
            SafeHttp(allow_private=True, timeout_s=1.5).get(f"http://127.0.0.1:{slow.server_port}/")
        assert time.monotonic() - started < 4
    finally:
        slow.shutdown()
