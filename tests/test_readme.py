"""README.md stays true: every command and flag its command table names exists (`--help` of each), and
every flag a command has is named in its row, so that the table cannot drift from the CLI again."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ref2img.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
runner = CliRunner()
# Flags every command has, or that the table leaves to `--help` on purpose.
UNLISTED = {"--help", "--install-completion", "--show-completion"}


def command_rows() -> list[tuple[tuple[str, ...], str]]:
    """(command path, the row's text) for every command the "Commands" table names."""
    section = README.read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split(" | ")[0]
        paths: list[tuple[str, ...]] = [()]
        for usage in re.findall(r"`([^`]+)`", first_cell):
            words = usage.removeprefix("ref2img ").split()
            if words[0] not in ("…", "...") and not words[0].startswith("-"):  # `… --server URL`: the same command
                paths = _paths(words)
            rows += [(path, usage) for path in paths]
    return rows


def _paths(words: list[str]) -> list[tuple[str, ...]]:
    """The command paths a usage's leading words name: `task get\\|wait KEY` is `task get` and `task wait`."""
    paths: list[tuple[str, ...]] = [()]
    for word in words:
        choices = word.split("\\|")
        if not all(re.fullmatch(r"[a-z][a-z-]*", choice) for choice in choices):
            break
        paths = [(*path, choice) for path in paths for choice in choices]
    return paths


def help_text(path: tuple[str, ...]) -> str:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, f"ref2img {' '.join(path)} --help: {result.output}"
    return result.stdout


def flags_of(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))


def test_the_table_names_commands_and_flags_that_exist():
    rows = command_rows()
    assert len(rows) > 15
    for path, usage in rows:
        named = flags_of(usage)
        missing = named - flags_of(help_text(path))
        assert not missing, f"README names {sorted(missing)} for `ref2img {' '.join(path)}`, which has none such"


@pytest.mark.parametrize(
    "path",
    [
        ("generate",),
        ("serve",),
        ("worker",),
        ("mcp",),
        ("repaint",),
        ("recognize",),
        ("models", "tiny"),
        ("keys", "create"),
        ("keys", "studio-link"),
    ],
)
def test_every_flag_of_a_command_is_in_the_table(path):
    named = set().union(*(flags_of(usage) for row_path, usage in command_rows() if row_path == path))
    missing = flags_of(help_text(path)) - named - UNLISTED
    assert not missing, f"`ref2img {' '.join(path)}` has {sorted(missing)}, which README's table does not name"


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)


@pytest.mark.slow  # a server and a 1024² task: about 15 s
def test_the_server_walk_through_ends_at_a_png_with_one_key(tiny_sd15, tmp_path_factory, astronaut):
    """ "Run the server" as written: the key made once into key.env, then the curl lines in another shell
    that sources it, from the reference to result.png on disk."""
    import os
    import subprocess
    import sys

    from .server.conftest import running

    keys_line = next(line for block in bash_blocks() for line in block.splitlines() if "--env-file key.env" in line)
    curl_block = next(block for block in bash_blocks() if "tm_reference_img2img" in block and "key.env" in block)
    folder = tmp_path_factory.mktemp("walk-through")
    astronaut.save(folder / "astronaut.png")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    with running(tmp_path_factory, "walk-through-server", tiny_sd15) as server:
        data_dir = str(server.data_dir)
        subprocess.run(
            ["bash", "-c", keys_line.replace("--data-dir data", f"--data-dir {data_dir}")],
            cwd=folder,
            env=env,
            check=True,
            timeout=60,
        )
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", curl_block.replace("http://127.0.0.1:8080", server.url)],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert done.returncode == 0 and "saved result.png" in done.stdout, done.stdout + done.stderr
    from PIL import Image

    assert Image.open(folder / "result.png").size == (1024, 1024)
    assert (folder / "key.env").read_text().count("REF2IMG_APP_KEY") == 1
    assert (folder / "key.env").stat().st_mode & 0o777 == 0o600  # the secret is no other user's to read
