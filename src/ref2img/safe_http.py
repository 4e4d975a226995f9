"""Outbound HTTP that cannot be turned against the server's own network (SSRF): the server's fetches
(images, callbacks) and the MCP tools' URLs go through it alike.

Each hop is resolved once, every address it resolves to must be public (not loopback, private,
link-local, CGNAT, multicast, reserved, metadata, or an IPv4-mapped, NAT64, 6to4 or IPv4-compatible
IPv6 form of those), and the request
then goes to that very address (Host header and TLS SNI keep the name), so a DNS answer that changes
between check and connect (rebinding) cannot slip through. Redirects are followed by hand, each one
checked the same way; callbacks follow none. Bodies are capped in bytes; whole exchanges in time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx

from ref2img.images import DEFAULT_MAX_IMAGE_BYTES
from ref2img.protocol import ErrorCode

MAX_REDIRECTS = 5


class UrlRefused(Exception):
    """The URL may not or could not be fetched; the message says why in a user's words."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.IMAGE_FETCH_FAILED):
        super().__init__(message)
        self.code = code


_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are the IPv4 address reached
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d; some stacks still route it as IPv4


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, NAT64, 6to4, IPv4-compatible): the address really
    reached, which `is_global` does not look at (64:ff9b::7f00:1 and 2002:7f00:1:: count as global)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or address in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and (inner := embedded_ipv4(address)) is not None:
        address = inner
    return address.is_global and not address.is_multicast


class SafeHttp:
    """Each call runs on its own event loop under one deadline for the whole exchange, redirects and
    headers included: httpx's timeouts are per read, so a server sending a byte a second (slow loris)
    would otherwise hold a worker forever. Called from worker and callback threads, never from a loop."""

    def __init__(
        self,
        allow_private: bool = False,
        timeout_s: float = 20.0,
        max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,  # the node's image cap (`--max-image-mb`)
        address_allowed=is_public,
    ):
        self.allow_private = allow_private
        self.address_allowed = address_allowed
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes

    def check(self, url: str) -> None:
        """Refuse a URL that could never be fetched (scheme, credentials, private address)."""
        self._pin(_parse(url))

    def get(self, url: str) -> bytes:
        return self._within_deadline(lambda client: self._get(client, url), "the download")

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        async def send(client: httpx.AsyncClient) -> int:
            pinned, host_headers, extensions = self._pin(_parse(url))
            response = await client.post(
                pinned, content=body, headers={**headers, **host_headers}, extensions=extensions
            )
            return response.status_code

        return self._within_deadline(send, "the callback")

    def _within_deadline(self, exchange, what: str):
        async def bounded():
            async with httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s, connect=5.0),
                follow_redirects=False,
                trust_env=False,
                headers={"user-agent": "ref2img"},
            ) as client:
                try:
                    return await asyncio.wait_for(exchange(client), self.timeout_s)
                except TimeoutError:
                    raise UrlRefused(f"{what} took longer than {self.timeout_s:.0f} s") from None

        return asyncio.run(bounded())

    async def _get(self, client: httpx.AsyncClient, url: str) -> bytes:
        target = _parse(url)
        for _ in range(MAX_REDIRECTS + 1):
            pinned, headers, extensions = self._pin(target)
            try:
                async with client.stream("GET", pinned, headers=headers, extensions=extensions) as response:
                    if response.is_redirect:
                        target = _parse(str(target.join(response.headers.get("location", ""))))
                        continue
                    if response.status_code != 200:
                        raise UrlRefused(f"{_shown(target)} answered HTTP {response.status_code}")
                    return await self._read_capped(response)
            except httpx.HTTPError as exc:
                raise UrlRefused(f"could not fetch {_shown(target)}: {_describe(exc)}") from None
        raise UrlRefused(f"{_shown(_parse(url))} redirected more than {MAX_REDIRECTS} times")

    async def _read_capped(self, response: httpx.Response) -> bytes:
        cap = self.max_bytes
        too_big = UrlRefused(f"the image is over {cap // (1024 * 1024)} MB", ErrorCode.IMAGE_INVALID)
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise too_big
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > cap:  # an endless or lying body stops at the cap
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    def _pin(self, url: httpx.URL) -> tuple[httpx.URL, dict[str, str], dict]:
        if url.scheme not in ("http", "https"):
            raise UrlRefused(f"only http and https URLs can be fetched (got {url.scheme or 'no'} scheme)")
        if url.userinfo:
            raise UrlRefused("URLs with credentials (user:password@) are not fetched")
        host = url.host
        if not host:
            raise UrlRefused("the URL has no host")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise UrlRefused(f"the host {host!r} does not resolve") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if not self.allow_private:
            for address in addresses:
                if not self.address_allowed(address):
                    raise UrlRefused(
                        f"{host} resolves to {address}, a loopback, private, link-local or "
                        "reserved address; such URLs are refused (see --allow-private-urls)"
                    )
        pinned = url.copy_with(host=str(addresses[0]))
        headers = {"host": url.netloc.decode("ascii")}
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        return pinned, headers, extensions


def _parse(url: str) -> httpx.URL:
    try:
        return httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise UrlRefused("not a valid URL") from None


def _shown(url: httpx.URL) -> str:
    text = str(url.copy_with(query=None, fragment=None))
    return text if len(text) <= 120 else text[:117] + "..."


def _describe(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "connection failed"
    return type(exc).__name__
