"""The `ref2img` command line, one module per command group. Engine commands import torch lazily, so
`--help` stays instant and bad input is refused before any model loads.

    generate, recognize     ref2img.cli.generate
    repaint                 ref2img.cli.repaint
    serve, worker           ref2img.cli.serve
    keys …, token           ref2img.cli.keys
    models …                ref2img.cli.models
    task …                  ref2img.cli.task
    mcp                     ref2img.cli.mcp
    provenance …            ref2img.cli.provenance
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ref2img.cli import generate, keys, mcp, models, provenance, repaint, serve, task
from ref2img.cli._common import UsageCommand, err

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    help="Images from a reference image and a prompt: edge, pose, subject or depth control.",
)


def _print_version(value: bool) -> None:
    if value:
        from ref2img._version import __version__

        print(f"ref2img {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Images from a reference image and a prompt: edge, pose, subject or depth control."""


for _command in (
    generate.generate,
    generate.recognize,
    repaint.repaint,
    serve.serve,
    serve.worker,
    keys.token,
    mcp.mcp,
):
    app.command()(_command)
app.add_typer(models.app, name="models")
app.add_typer(keys.app, name="keys")
app.add_typer(task.app, name="task")
app.add_typer(provenance.app, name="provenance")
for _group in (app, models.app, keys.app, task.app, provenance.app):
    for _info in _group.registered_commands:
        _info.cls = UsageCommand


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
