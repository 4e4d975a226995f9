"""`ref2img mcp`: the MCP server for agents, over stdio (default) or streamable HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ref2img.cli._common import (
    EXIT_USAGE,
    AppKeyOption,
    AppSecretOption,
    CloudOption,
    DeviceOption,
    DtypeOption,
    ModelOption,
    OffloadOption,
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
    model: ModelOption = "sdxl",
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
) -> None:
    """Serve ref2img to MCP clients: tools generate, recognize, get_task, cancel_task and list_models, on
    the local engine (--model), a ref2img server (--server URL) or the Tomoviee cloud (--cloud)."""
    try:
        from ref2img.mcp_server import build_server
    except ImportError:
        fail("the MCP server needs the mcp extra: pip install 'ref2img[mcp]'", EXIT_USAGE)
    if server and cloud:
        fail("--server and --cloud: choose one backend", EXIT_USAGE)
    address = _address(http) if http else None
    quiet_libraries()
    out_dir = out_dir.expanduser().resolve()
    if server or cloud:
        backend, models = _remote(server, cloud, app_key, app_secret, out_dir), None
    else:
        backend, models = _local(model, part, device, dtype, offload, out_dir)
    mcp_server = build_server(backend, models)
    try:
        if address is None:
            mcp_server.run("stdio")  # stdout is the protocol's: nothing else may print there
        else:
            mcp_server.run("streamable-http", host=address[0], port=address[1])
    finally:
        backend.close()


def _address(http: str) -> tuple[str, int]:
    host, _, port = http.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"--http: {http!r} is not HOST:PORT (say 127.0.0.1:8765)", EXIT_USAGE)
    return host, int(port)


def _remote(server: str | None, cloud: bool, app_key: str | None, app_secret: str | None, out_dir: Path):
    from ref2img.client import AsyncClient, Ref2ImgError
    from ref2img.client._core import DEFAULT_BASE_URL
    from ref2img.mcp_server.remote import RemoteBackend

    try:
        client = AsyncClient(app_key, app_secret, base_url=DEFAULT_BASE_URL if cloud else server)
    except Ref2ImgError as exc:
        fail(str(exc), EXIT_USAGE)
    return RemoteBackend(client, out_dir, "cloud" if cloud else "server")


def _local(model: str, part: list[str] | None, device, dtype, offload: str, out_dir: Path):
    from ref2img.engines.local.hub import part_statuses
    from ref2img.engines.local.presets import PRESETS
    from ref2img.mcp_server.local import LocalBackend

    preset = resolve_model(model, part)  # a bad name exits 2 now, before any model loads

    def build_engine():
        from ref2img.engines.local import LocalEngine

        return LocalEngine(preset, device=device, dtype=dtype, offload=offload)

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

    return LocalBackend(build_engine, out_dir), models
