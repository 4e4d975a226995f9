"""The rooms of the package and what each may import (docs/architecture.md): checked on the source,
so that an upward arrow fails here rather than in a reader's head."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ref2img"

# room -> the rooms of ref2img it must never import (the layers above it)
FORBIDDEN = {
    "protocol.py": {"client", "server", "tasks", "engines", "auth", "cli", "settings"},
    "client": {"server", "tasks", "engines", "auth", "cli", "settings"},
    # The tomoviee engine talks to the cloud through the SDK, which imports nothing of ours but the protocol.
    "engines": {"server", "tasks", "auth", "cli"},
    "tasks": {"server", "cli", "client"},
    "auth": {"server", "cli", "client", "engines"},
    "server": {"cli", "client", "mcp_server"},
    "mcp_server": {"server", "tasks", "cli", "auth"},
}


def imported_rooms(path: Path) -> set[str]:
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "ref2img" and len(parts) > 1:
                rooms.add(parts[1] if parts[1] != "protocol" else "protocol.py")
    return rooms


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_no_room_imports_a_room_above_it(room):
    files = [PACKAGE / room] if room.endswith(".py") else sorted((PACKAGE / room).rglob("*.py"))
    assert files
    wrong = {f"{path.relative_to(PACKAGE)} imports ref2img.{other}"
             for path in files for other in imported_rooms(path) & FORBIDDEN[room]}
    assert not wrong, sorted(wrong)


def test_the_checker_sees_an_upward_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("from ref2img.server.views import task_data\nimport ref2img.cli\n")
    assert imported_rooms(module) == {"server", "cli"}
