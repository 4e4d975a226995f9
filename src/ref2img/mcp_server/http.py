"""`ref2img mcp --http`: the streamable-HTTP transport, behind a bearer token and Host/Origin checks.

The MCP SDK checks Host and Origin (its DNS-rebinding guard) only when bound to a loopback name, and
asks for no credentials at all: any local process, and for other binds any machine or web page, could
call the tools. Here every request needs `Authorization: Bearer <token>` (compared in constant time),
and Host and Origin must name the bound address or an `--allowed-host`, whatever the bind.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Iterable

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_ENV = "REF2IMG_MCP_TOKEN"


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return f"mcp_{secrets.token_urlsafe(32)}"


def allowed_hosts(host: str, port: int, extra: Iterable[str]) -> list[str]:
    """Host header values to accept: the bound address (and, on loopback, its other names), plus each
    `--allowed-host` as given and with the port."""
    bound = f"[{host}]" if ":" in host and not host.startswith("[") else host
    names = {bound}
    if is_loopback(host):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    hosts = {f"{name}:{port}" for name in names}
    for name in extra:
        hosts.add(name)
        if not name.rsplit(":", 1)[-1].isdigit() or name.endswith("]"):
            hosts.add(f"{name}:{port}")
    return sorted(hosts)


class BearerToken:
    """ASGI middleware: 401 for an HTTP request without the token; lifespan passes through."""

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            sent = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(sent, self._expected):
                answer = JSONResponse(
                    {"error": "unauthorized: send Authorization: Bearer <the token ref2img mcp printed or was given>"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="ref2img-mcp"'},
                )
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)


def http_app(server: MCPServer, host: str, port: int, token: str, extra_hosts: Iterable[str]) -> ASGIApp:
    hosts = allowed_hosts(host, port, extra_hosts)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=[f"{scheme}://{name}" for name in hosts for scheme in ("http", "https")],
    )
    return BearerToken(server.streamable_http_app(transport_security=security, host=host), token)
