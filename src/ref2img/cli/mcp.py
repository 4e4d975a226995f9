"""`ref2img mcp`: the MCP server for agents, over stdio (default) or streamable HTTP."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ref2img.engines.local.presets import DEFAULT_PRESET
from ref2img.images import DEFAULT_MAX_IMAGE_MB, image_cap_bytes
from ref2img.cli._common import (
    EXIT_USAGE,
    BlocklistOption,
    C2paCertOption,
    C2paFlag,
    C2paKeyOption,
    ClassifierOption,
    ContentFilterFlag,
    WatermarkFlag,
    in_process_provenance,
    provenance_options,
    AppKeyOption,
    AppSecretOption,
    CloudOption,
    DeviceOption,
    DtypeOption,
    ModelOption,
    OffloadOption,
    MaxImageOption,
    PartOption,
    ServerOption,
    fail,
    quiet_libraries,
    resolve_model,
)


def mcp(
    http: Annotated[
        str | None,
        typer.Option(
            "--http", metavar="HOST:PORT", help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio"
        ),
    ] = None,
    model: ModelOption = DEFAULT_PRESET,
    part: PartOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    offload: OffloadOption = "none",
    server: ServerOption = None,
    cloud: CloudOption = False,
    app_key: AppKeyOption = None,
    app_secret: AppSecretOption = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="folder for the full-size images")] = Path(
        "out"
    ),
    allow_dir: Annotated[
        list[Path] | None,
        typer.Option(
            "--allow-dir",
            metavar="DIR",
            help="a folder whose files the tools may read (repeatable; default: the current folder and --out); a server's data dir below one stays closed unless named itself",
        ),
    ] = None,
    allow_private_urls: Annotated[
        bool, typer.Option("--allow-private-urls", help="let image URLs reach loopback/private addresses")
    ] = False,
    max_image_mb: MaxImageOption = DEFAULT_MAX_IMAGE_MB,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            metavar="FILE",
            help="--http: the bearer token clients must send (else $REF2IMG_MCP_TOKEN, else one made and printed at start)",
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            metavar="NAME[:PORT]",
            help="--http: another Host (and Origin) name clients may use, besides the bound address (repeatable)",
        ),
    ] = None,
    c2pa: C2paFlag = True,
    watermark: WatermarkFlag = True,
    c2pa_cert: C2paCertOption = None,
    c2pa_key: C2paKeyOption = None,
    content_filter: ContentFilterFlag = "off",
    blocklist: BlocklistOption = None,
    image_classifier: ClassifierOption = None,
) -> None:
    """Serve ref2img to MCP clients: tools generate, recognize, get_task, cancel_task and list_models, on
    the local engine (--model), a ref2img server (--server URL) or the Tomoviee cloud (--cloud). The tools
    read local files only under --allow-dir folders, and fetch URLs only from public addresses. The local
    engine's images are marked as AI-generated (C2PA, watermark); a server marks its own."""
    try:
        from ref2img.mcp_server import build_server
        from ref2img.mcp_server.inputs import InputGuard
        from ref2img.safe_http import SafeHttp
    except ImportError:
        fail("the MCP server needs the mcp extra: pip install 'ref2img[mcp]'", EXIT_USAGE)
    if server and cloud:
        fail("--server and --cloud: choose one backend", EXIT_USAGE)
    marking = provenance_options(c2pa, watermark, c2pa_cert, c2pa_key, content_filter, blocklist, image_classifier)
    address = _address(http) if http else None
    token = _token(address, token_file) if address else None
    quiet_libraries()
    out_dir = out_dir.expanduser().resolve()
    fetcher = SafeHttp(allow_private=allow_private_urls, max_bytes=image_cap_bytes(max_image_mb))
    inputs = InputGuard(allow_dir or [Path.cwd(), out_dir], fetcher)
    if server or cloud:
        backend, models = _remote(server, cloud, app_key, app_secret, out_dir, inputs), None
    else:
        backend, models = _local(model, part, device, dtype, offload, out_dir, inputs, in_process_provenance(marking))
    mcp_server = build_server(backend, models)
    try:
        if address is None or token is None:
            mcp_server.run("stdio")  # stdout is the protocol's: nothing else may print there
        else:
            _serve_http(mcp_server, address, token, allowed_host or [])
    finally:
        backend.close()


def _token(address: tuple[str, int], token_file: Path | None) -> str:
    """The bearer token: --token-file, else $REF2IMG_MCP_TOKEN, else (loopback only) a new one, printed once."""
    from ref2img.mcp_server.http import TOKEN_ENV, is_loopback, new_token

    if token_file is not None:
        try:
            token = token_file.expanduser().read_text().strip()
        except OSError as exc:
            fail(f"--token-file: cannot read {token_file} ({exc.strerror})", EXIT_USAGE)
        if not token:
            fail(f"--token-file: {token_file} is empty", EXIT_USAGE)
        return token
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip()
    if not is_loopback(address[0]):
        fail(
            f"--http {address[0]}:{address[1]}: a bind other than loopback answers other machines, so it needs a "
            f"token you chose and gave to the clients: --token-file FILE or ${TOKEN_ENV}",
            EXIT_USAGE,
        )
    token = new_token()
    print(f"ref2img mcp: clients send Authorization: Bearer {token}", file=sys.stderr, flush=True)
    return token


def _serve_http(mcp_server, address: tuple[str, int], token: str, extra_hosts: list[str]) -> None:
    import uvicorn

    from ref2img.mcp_server.http import http_app

    host, port = address
    app = http_app(mcp_server, host, port, token, extra_hosts)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, proxy_headers=False)


def _address(http: str) -> tuple[str, int]:
    host, _, port = http.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"--http: {http!r} is not HOST:PORT (say 127.0.0.1:8765)", EXIT_USAGE)
    return host, int(port)


def _remote(server: str | None, cloud: bool, app_key: str | None, app_secret: str | None, out_dir: Path, inputs):
    from ref2img.client import AsyncClient, Ref2ImgError
    from ref2img.client import DEFAULT_BASE_URL
    from ref2img.mcp_server.remote import RemoteBackend

    try:
        client = AsyncClient(app_key, app_secret, base_url=DEFAULT_BASE_URL if cloud else server)
    except Ref2ImgError as exc:
        fail(str(exc), EXIT_USAGE)
    return RemoteBackend(client, out_dir, "cloud" if cloud else "server", inputs)


def _local(model: str, part: list[str] | None, device, dtype, offload: str, out_dir: Path, inputs, provenance: dict):
    from ref2img.engines.local.hub import part_statuses
    from ref2img.engines.local.presets import PRESETS
    from ref2img.mcp_server.local import LocalBackend

    preset = resolve_model(model, part)  # a bad name exits 2 now, before any model loads

    def build_engine():
        from ref2img.engines.local import LocalOptions

        return LocalOptions(preset, device=device, dtype=dtype, offload=offload).build()

    def models() -> list[dict]:
        listed = {name: candidate for name, candidate in PRESETS.items()}
        listed.setdefault(preset.name, preset)
        return [
            {
                "name": name,
                "family": candidate.family,
                "description": candidate.description,
                "ready": all(status.present for status in part_statuses(candidate)),
                "selected": name == preset.name,
            }
            for name, candidate in listed.items()
        ]

    return LocalBackend(build_engine, out_dir, inputs, provenance), models
