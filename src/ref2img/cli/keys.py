"""`ref2img keys` (app keys of a server's store) and `ref2img token` (the Basic header of a key)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from ref2img.cli._common import EXIT_USAGE, DataDirOption, DbOption, err, fail, new_group, out

app = new_group("Create, list, limit and revoke the server's app keys.")

MaxConcurrentOption = Annotated[
    int | None,
    typer.Option("--max-concurrent", metavar="N", min=0, help="tasks queued or running at once (0: no limit)"),
]
PerMinuteOption = Annotated[
    int | None, typer.Option("--per-minute", metavar="N", min=0, help="tasks created a minute (0: no limit)")
]
ContentFilterOption = Annotated[
    str | None,
    typer.Option(
        "--content-filter",
        metavar="MODE",
        help="this key's own content-filter mode: off (a trusted key), flag or block; server: the server's",
    ),
]


def _limit(value: int | None) -> int | None:
    return value or None  # 0 means no limit


def open_store(data_dir: Path, db: str | None = None):
    from ref2img.tasks.store import Store

    if db:
        return Store(db)
    from ref2img.tasks.private_files import private_dir

    private_dir(data_dir)
    return Store(f"sqlite:///{data_dir / 'ref2img.db'}")


@app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", metavar="NAME", help="a label for the key")] = "",
    data_dir: DataDirOption = Path("ref2img-data"),
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the key as JSON")] = False,
    as_env: Annotated[
        bool,
        typer.Option(
            "--env",
            help='print `export REF2IMG_APP_KEY=… REF2IMG_APP_SECRET=…` lines: `eval "$(ref2img keys create --env)"`',
        ),
    ] = False,
    env_file: Annotated[
        Path | None,
        typer.Option(
            "--env-file",
            metavar="PATH",
            help="write the --env lines to this file, readable by its owner only (600): `. ./key.env` reads it",
        ),
    ] = None,
    max_concurrent: MaxConcurrentOption = None,
    per_minute: PerMinuteOption = None,
) -> None:
    """Create an app key. The secret is shown this once; the server keeps only a salted hash."""
    import shlex

    from ref2img.auth.keys import create_key

    key = create_key(open_store(data_dir, db), name, _limit(max_concurrent), _limit(per_minute))
    # The OpenAI-style routes take the pair as one Bearer token (an OpenAI client's API key is one string).
    api_key = f"{key.app_key}:{key.app_secret}"
    if as_json:
        print(json.dumps({"app_key": key.app_key, "app_secret": key.app_secret, "name": key.name, "api_key": api_key}))
        return
    # The names the SDK, the CLI and the README's curl lines all read.
    env_lines = (
        f"export REF2IMG_APP_KEY={shlex.quote(key.app_key)}\nexport REF2IMG_APP_SECRET={shlex.quote(key.app_secret)}"
    )
    if env_file is not None:  # a shell's `> key.env` would leave the secret as readable as its umask says
        from ref2img.tasks.private_files import private_file, write_private

        write_private(private_file(env_file), (env_lines + "\n").encode())
        err.print(f"wrote {env_file} (mode 600): `. ./{env_file.name}` gives a shell this key")
        return
    if as_env:
        print(env_lines)
        return
    out.print(f"app_key:    {key.app_key}\napp_secret: {key.app_secret}", highlight=False)
    out.print(f"api_key:    {api_key}  (OpenAI clients: the Bearer token)", highlight=False)
    err.print("Store the secret now: it cannot be shown again.")


@app.command("list")
def keys_list(
    data_dir: DataDirOption = Path("ref2img-data"),
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """App keys with their names, state and quotas (never their secrets)."""
    rows = [
        {
            "app_key": row.app_key,
            "name": row.name,
            "created": datetime.fromtimestamp(row.created_at, UTC).isoformat(timespec="seconds"),
            "revoked": row.revoked_at is not None,
            "max_concurrent": row.max_concurrent,
            "per_minute": row.per_minute,
        }
        for row in open_store(data_dir, db).keys.list()
    ]
    if as_json:
        print(json.dumps(rows))
        return
    for row in rows:
        limits = ", ".join(
            f"{label} {row[field]}"
            for field, label in (("max_concurrent", "at once"), ("per_minute", "a minute"))
            if row[field]
        )
        out.print(
            f"{row['app_key']}  {row['created']}  {'revoked' if row['revoked'] else 'active'}  {row['name']}"
            + (f"  ({limits})" if limits else ""),
            highlight=False,
        )


@app.command("update")
def keys_update(
    app_key: Annotated[str, typer.Argument(metavar="APP_KEY", help="the key to change")],
    max_concurrent: MaxConcurrentOption = None,
    per_minute: PerMinuteOption = None,
    content_filter: ContentFilterOption = None,
    data_dir: DataDirOption = Path("ref2img-data"),
    db: DbOption = None,
) -> None:
    """Change a key's quotas (past one, creates answer 680005 / HTTP 429 with Retry-After) or its own
    content-filter mode."""
    from ref2img.provenance.content_filter import MODES

    limits: dict[str, int | str | None] = {
        name: _limit(value)
        for name, value in (("max_concurrent", max_concurrent), ("per_minute", per_minute))
        if value is not None
    }
    if content_filter is not None:
        if content_filter not in (*MODES, "server"):
            fail(f"--content-filter: {content_filter!r} is not one of {', '.join(MODES)}, server", EXIT_USAGE)
        limits["content_filter"] = None if content_filter == "server" else content_filter
    if not limits:
        fail("give --max-concurrent N, --per-minute N (0: no limit) and/or --content-filter MODE", EXIT_USAGE)
    if not open_store(data_dir, db).keys.set_limits(app_key, **limits):
        fail(f"no key {app_key!r}", EXIT_USAGE)
    out.print(f"updated {app_key}", highlight=False)


@app.command("revoke")
def keys_revoke(
    app_key: Annotated[str, typer.Argument(metavar="APP_KEY", help="the key to revoke")],
    data_dir: DataDirOption = Path("ref2img-data"),
    db: DbOption = None,
) -> None:
    """Revoke an app key: its requests are refused from now on (within 30 s on a running server)."""
    if not open_store(data_dir, db).keys.revoke(app_key):
        fail(f"no active key {app_key!r}", EXIT_USAGE)
    out.print(f"revoked {app_key}", highlight=False)


@app.command("studio-link")
def keys_studio_link(
    url: Annotated[
        str, typer.Option("--url", metavar="URL", help="the server's address, as a browser reaches it")
    ] = "http://127.0.0.1:8080",
    data_dir: DataDirOption = Path("ref2img-data"),
    db: DbOption = None,
) -> None:
    """A fresh sign-in link to the studio of the server on this data dir (or --db): it works once, within
    10 minutes, and signs the browser in to the server's `studio` key."""
    from ref2img.server.studio import sign_in_url

    print(sign_in_url(open_store(data_dir, db), url))
    err.print("The link works once, for 10 minutes; anyone who opens it first is signed in.")


def token(
    app_key: Annotated[str, typer.Argument(metavar="APP_KEY", help="app key")],
    app_secret: Annotated[str, typer.Argument(metavar="APP_SECRET", help="app secret")],
    show: Annotated[bool, typer.Option("--print", help="print the token on stdout")] = False,
) -> None:
    """The `Authorization: Basic …` value for an app key (computed locally; nothing is sent)."""
    from ref2img.protocol import basic_token

    err.print("[yellow]The token is a credential: anyone who has it can use your key.[/]")
    if not show:
        err.print("Add --print to write it to stdout.")
        raise typer.Exit(0)
    print(basic_token(app_key, app_secret))
