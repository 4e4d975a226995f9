"""Network abuse: private addresses in every spelling (image and callback URLs), servers that drip
headers or never end their body, file URLs tampered with, and uploads over the cap."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from ref2img.safe_http import SafeHttp, UrlRefused, is_public

from .conftest import Cloud, data_uri, img2img_body, png_bytes, running

# Each reaches this machine or its private network; each counts as "global" to some naive check.
PRIVATE_HOSTS = [
    "0x7f.1",  # hex, short form
    "127.1",  # short dotted form
    "0.0.0.0",  # "this host": connects to loopback on Linux
    "localhost.",  # a trailing dot
    "LOCALHOST",
    "100.64.0.1",  # carrier-grade NAT
    "[fc00::1]",  # unique local
    "[fe80::1]",  # link local
    "[::]",
    "[64:ff9b::7f00:1]",  # NAT64 to 127.0.0.1
    "[64:ff9b::a9fe:a9fe]",  # NAT64 to the cloud metadata address
    "[2002:7f00:1::1]",  # 6to4 around 127.0.0.1
    "[::127.0.0.1]",  # IPv4-compatible (deprecated, still routed by some stacks)
]


@pytest.fixture(scope="module")
def strict(tiny_sd15, tmp_path_factory):
    """A server that refuses private URLs, as deployed (the shared `server` fixture allows them)."""
    with running(tmp_path_factory, "strict", tiny_sd15, "--max-body-mb", "4", "--header-timeout", "1") as server:
        yield server


@pytest.fixture(scope="module")
def strict_cloud(strict) -> Cloud:
    return Cloud(strict.url, *strict.new_key())


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::7f00:1",
        "2002:7f00:1::1",
        "::127.0.0.1",
        "::ffff:10.0.0.1",
        "::1",
        "fd00::1",
        "100.64.0.1",
        "169.254.169.254",
        "224.0.0.1",
    ],
)
def test_addresses_carrying_a_private_ipv4_are_not_public(address):
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "64:ff9b::808:808", "2002:808:808::1"])
def test_public_addresses_stay_public(address):
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("host", PRIVATE_HOSTS)
def test_private_image_urls_are_refused_at_create(strict_cloud, host):
    answer = strict_cloud.create(img2img_body(f"http://{host}/x.png")).json()
    assert answer["code"] == 680002, answer
    assert answer["msg"].startswith("reference_image: ")


@pytest.mark.parametrize("host", PRIVATE_HOSTS)
def test_private_callback_urls_are_refused_at_create(strict_cloud, astronaut, host):
    answer = strict_cloud.create(
        img2img_body(data_uri(astronaut.resize((64, 64))), callback=f"http://{host}:8080/hook")
    ).json()
    assert answer["code"] == 680001, answer
    assert answer["msg"].startswith("callback: ")


class RawServer:
    """A loopback socket server whose handler gets the raw connection: for servers that misbehave
    below HTTP (headers a byte at a time, bodies that never end)."""

    def __init__(self, handle):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.handle = handle
        self.closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/x.png"

    def _serve(self) -> None:
        while not self.closed:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(connection,), daemon=True).start()

    def _run(self, connection: socket.socket) -> None:
        try:
            connection.recv(65536)
            self.handle(connection, self)
        except OSError:
            pass  # the client gave up, as it should
        finally:
            connection.close()

    def close(self) -> None:
        self.closed = True
        self.listener.close()


def drip_headers(connection: socket.socket, server: RawServer) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\n")
    while not server.closed:  # a header byte every 0.2 s: each read succeeds, the headers never end
        connection.sendall(b"X")
        time.sleep(0.2)


def endless_body(connection: socket.socket, server: RawServer) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 65536
    while not server.closed:
        connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))


def finishes_within(seconds: float, call) -> BaseException | None:
    """Run `call` in a thread; fail (instead of hanging the suite) if it has not ended in time."""
    outcome: list[BaseException | None] = []

    def run():
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    return outcome[0]


@pytest.mark.slow
def test_slow_loris_headers_end_at_the_deadline_for_images_and_callbacks():
    host = RawServer(drip_headers)
    http = SafeHttp(allow_private=True, timeout_s=1.5)
    try:
        fetch_error = finishes_within(5, lambda: http.get(host.url))
        post_error = finishes_within(5, lambda: http.post(host.url, b"{}", {"content-type": "application/json"}))
    finally:
        host.close()
    assert isinstance(fetch_error, UrlRefused) and "longer than 2 s" in str(fetch_error)
    assert isinstance(post_error, UrlRefused) and "callback took longer" in str(post_error)


def test_an_endless_body_stops_at_the_size_cap():
    host = RawServer(endless_body)
    try:
        error = finishes_within(10, lambda: SafeHttp(allow_private=True, max_bytes=2 * 1024 * 1024).get(host.url))
    finally:
        host.close()
    assert isinstance(error, UrlRefused) and "over 2 MB" in str(error)


def upload(cloud: Cloud, content: bytes, name: str = "x.png") -> httpx.Response:
    headers = {k: v for k, v in cloud.headers.items() if k != "Content-Type"}
    return httpx.post(
        f"{cloud.base}/v1/files", files={"file": (name, content, "image/png")}, headers=headers, timeout=60
    )


def test_file_urls_refuse_traversal_tampering_and_expiry(strict, strict_cloud, astronaut):
    answer = upload(strict_cloud, png_bytes(astronaut.resize((64, 64)))).json()
    assert answer["code"] == 0, answer
    url = urlsplit(answer["data"]["url"])
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    good = httpx.get(f"{strict.url}{url.path}", params=query)
    assert good.status_code == 200 and good.headers["content-type"] == "image/png"

    other_name = url.path.replace("/v1/files/", "")
    for path in [
        "../ref2img.db",
        "..%2Fref2img.db",
        "%2E%2E/%2E%2E/etc/passwd",
        "/etc/passwd",
        quote(other_name) + "/../../ref2img.db",
    ]:
        refused = httpx.get(f"{strict.url}/v1/files/{path}", params=query)
        assert refused.status_code == 404 and refused.json()["code"] == 680004, (path, refused.text)

    tampered = dict(query, sig=query["sig"][:-1] + ("0" if query["sig"][-1] != "0" else "1"))
    longer = dict(query, expires=str(int(query["expires"]) + 10**6))
    expired = dict(query, expires=str(int(time.time()) - 1))
    for params in (tampered, longer, expired, {}, dict(query, expires="soon")):
        refused = httpx.get(f"{strict.url}{url.path}", params=params)
        assert refused.status_code == 404, params
        assert refused.json() == {"code": 680004, "msg": "file: the link is invalid or has expired", "data": None}


@pytest.mark.slow
def test_uploads_over_the_cap_are_refused_before_they_are_stored(strict, strict_cloud):
    for size in (5 * 1024 * 1024, 64 * 1024 * 1024):  # the server runs with --max-body-mb 4
        answer = upload(strict_cloud, b"\x89PNG" + b"\0" * size)
        assert answer.status_code == 200 and answer.json()["code"] == 680001
        assert answer.json()["msg"] == "body: must be at most 4 MB"
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def chunked_upload():  # no Content-Length: the server must count
        yield head
        for _ in range(64):
            yield b"\0" * (1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {k: v for k, v in strict_cloud.headers.items() if k != "Content-Type"}
    streamed = httpx.post(
        f"{strict_cloud.base}/v1/files",
        content=chunked_upload(),
        timeout=60,
        headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert streamed.json() == {"code": 680001, "msg": "body: must be at most 4 MB", "data": None}
    uploads = strict.data_dir / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())
    assert upload(strict_cloud, b"not an image").json()["code"] == 680003  # under the cap: read and judged


def test_connections_dripping_their_headers_are_closed_at_the_header_deadline(strict):
    """Slow loris against the server itself: 50 connections that never finish their headers are all
    closed once --header-timeout (1 s here; 10 s by default) passes, and the server answers meanwhile."""
    drips = []
    for _ in range(50):
        sock = socket.create_connection(("127.0.0.1", strict.port))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and never the rest
        sock.settimeout(5)
        drips.append(sock)
    assert httpx.get(f"{strict.url}/healthz", timeout=5).json()["code"] == 0
    time.sleep(1.5)
    closed = 0
    for sock in drips:
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            closed += sock.recv(1024) == b""  # the server hung up
        sock.close()
    assert closed == 50
    with httpx.Client(base_url=strict.url) as kept_alive:  # a kept-alive client is not cut between requests
        assert [kept_alive.get("/healthz").status_code for _ in range(3)] == [200] * 3


@pytest.mark.slow  # a server of its own: about 8 s
def test_dripped_bodies_are_dropped_at_the_body_deadline_and_logged_as_info(tiny_sd15, tmp_path_factory):
    """Ten connections that send a whole head and then drip their body fill a server of ten connections;
    at --body-timeout each is closed, the server answers again, and the log holds INFO lines, no ERROR."""
    with running(
        tmp_path_factory, "dripped", tiny_sd15, "--max-connections", "10", "--body-timeout", "1", "--log-level", "info"
    ) as server:
        drips = []
        for _ in range(10):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(
                b"POST /studio/session HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"token": '
            )  # and never the rest
            sock.settimeout(5)
            drips.append(sock)
        time.sleep(2.5)
        ended = 0
        for sock in drips:
            try:  # hung up on at the deadline (or, for the last of ten, turned away with 503 at once)
                answer = sock.recv(1024)
                ended += answer == b"" or answer.startswith(b"HTTP/1.1 503")
            except (TimeoutError, ConnectionResetError):
                pass
            sock.close()
        assert ended == 10
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
        log = server.log()
    assert "the client left before its body arrived" in log
    assert " ERROR " not in log and "Traceback" not in log, log[-2000:]
