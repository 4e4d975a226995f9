"""The rooms of the package and what each may import (docs/architecture.md): checked on the source,
so that an upward arrow fails here rather than in a reader's head.

Every import counts: absolute and relative, at module level and inside functions, `import ref2img`
and `from ref2img import x` (the package root, or the submodule `x`). Each top-level module and
package of `ref2img` is a room with a rule; a new one fails `test_every_room_has_a_rule` until it
gets one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ref2img"
ROOT = "ref2img"  # the package root (`ref2img/__init__.py`): the SDK's public face, imported by no room

# room -> the rooms it may import (besides itself). Lowest layers first.
ALLOWED: dict[str, set[str]] = {
    "_version": set(),
    "protocol": set(),
    "webhooks": set(),
    "client": {"_version", "protocol"},
    "images": {"protocol"},
    "provenance": {"_version"},  # the marks and the content filter: below every room that stores images
    "safe_http": {"protocol", "images"},
    # The tomoviee engine talks to the cloud through the SDK's public names.
    "engines": {"protocol", "client", "images"},
    "lifecycle": {"protocol", "engines", "images", "provenance"},
    "settings": {"engines", "provenance", "images", "client"},  # defaults named where they live
    "tasks": {"protocol", "engines", "lifecycle", "images", "safe_http", "settings", "provenance"},
    "auth": {"protocol", "tasks", "webhooks"},
    "server": {"protocol", "auth", "tasks", "lifecycle", "images", "safe_http", "settings", "webhooks", "_version"},
    "mcp_server": {"protocol", "client", "engines", "lifecycle", "images", "safe_http", "_version"},
    "cli": {
        "protocol",
        "client",
        "engines",
        "lifecycle",
        "images",
        "safe_http",
        "settings",
        "tasks",
        "auth",
        "server",
        "mcp_server",
        "webhooks",
        "_version",
        "provenance",
    },
}
ROOT_MAY_IMPORT = {"_version", "client", "protocol", "webhooks"}
SDK = "client"  # only the SDK imports its private modules (`client._core` …); the rest use its public names


def rooms_of_package(package: Path = PACKAGE) -> set[str]:
    return {
        path.stem if path.is_file() else path.name
        for path in package.iterdir()
        if (path.suffix == ".py" and path.name != "__init__.py") or (path / "__init__.py").is_file()
    }


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, package: Path = PACKAGE) -> set[str]:
    """Every ref2img module `path` imports, as dotted names; relative imports are resolved, and `from
    pkg import name` counts as `pkg.name` when `name` is a module of ours, else as `pkg`."""
    here = module_name(path, package)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                as_path = package.parent / candidate.replace(".", "/")
                found.add(candidate if as_path.with_suffix(".py").is_file() or as_path.is_dir() else source)
    return {name for name in found if name == ROOT or name.startswith(ROOT + ".")}


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def wrong_imports(path: Path, room: str, package: Path = PACKAGE) -> set[str]:
    allowed = ROOT_MAY_IMPORT if room == ROOT else ALLOWED[room]
    wrong = set()
    for module in imported_modules(path, package):
        target = room_of(module)
        if target != room and target not in allowed:
            wrong.add(f"imports {module} (room {target})")
        private = any(part.startswith("_") and part != "_version" for part in module.split(".")[2:3])
        if target == SDK and private and room != SDK:
            wrong.add(f"imports the SDK's private {module}; use ref2img.client's public names")
    return wrong


def test_every_room_has_a_rule():
    assert rooms_of_package() - set(ALLOWED) == set(), "a new room needs its line in ALLOWED"
    assert set(ALLOWED) - rooms_of_package() == set(), "ALLOWED names a room that is gone"


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_no_room_imports_a_room_it_may_not(room):
    files = [PACKAGE / f"{room}.py"] if (PACKAGE / f"{room}.py").is_file() else sorted((PACKAGE / room).rglob("*.py"))
    assert files
    wrong = {f"{path.relative_to(PACKAGE)} {problem}" for path in files for problem in wrong_imports(path, room)}
    assert not wrong, sorted(wrong)


def test_no_router_imports_another():
    """The server's routers (the modules that make an APIRouter) share what they need through services
    (`server/accept.py`, `server/services.py`), never through one another (issue 41)."""
    server = PACKAGE / "server"
    routers = {module_name(path): path for path in server.glob("*.py") if "APIRouter(" in path.read_text()}
    assert {"ref2img.server.routes", "ref2img.server.openai_routes"} <= set(routers)
    crossing = {
        f"{name} imports {other}"
        for name, path in routers.items()
        for other in imported_modules(path) & set(routers)
        if other != name
    }
    assert not crossing, sorted(crossing)


def test_the_package_root_imports_only_the_sdk_side():
    assert not wrong_imports(PACKAGE / "__init__.py", ROOT)


# -- the checker's own tests: each rule fails on the import it exists to catch ----------------------
@pytest.fixture
def fake_package(tmp_path):
    """A throw-away `ref2img` tree beside the real one's shape: rooms `client`, `tasks`, `server`."""
    package = tmp_path / "ref2img"
    for room in ("client", "tasks", "server"):
        (package / room).mkdir(parents=True)
        (package / room / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "client" / "_core.py").write_text("")
    (package / "tasks" / "queue.py").write_text("")
    (package / "protocol.py").write_text("")
    return package


def test_the_checker_sees_an_absolute_upward_import(fake_package):
    module = fake_package / "tasks" / "runner.py"
    module.write_text("from ref2img.server.views import task_data\nimport ref2img.cli\n")
    assert {room_of(m) for m in imported_modules(module, fake_package)} == {"server", "cli"}
    assert len(wrong_imports(module, "tasks", fake_package)) == 2


def test_the_checker_resolves_relative_imports(fake_package):
    module = fake_package / "tasks" / "runner.py"
    module.write_text("from ..server import app\nfrom . import queue\nfrom .queue import send\n")
    assert imported_modules(module, fake_package) == {"ref2img.server", "ref2img.tasks.queue"}
    assert wrong_imports(module, "tasks", fake_package) == {"imports ref2img.server (room server)"}


def test_the_checker_resolves_relative_imports_in_a_package_init(fake_package):
    module = fake_package / "tasks" / "__init__.py"
    module.write_text("from .queue import send\nfrom .. import protocol\n")
    assert imported_modules(module, fake_package) == {"ref2img.tasks.queue", "ref2img.protocol"}


def test_the_checker_sees_the_bare_package_root(fake_package):
    module = fake_package / "client" / "_sync.py"
    module.write_text("from ref2img import __version__\n")
    assert imported_modules(module, fake_package) == {"ref2img"}
    assert wrong_imports(module, "client", fake_package) == {"imports ref2img (room ref2img)"}
    module.write_text("import ref2img\n")
    assert wrong_imports(module, "client", fake_package) == {"imports ref2img (room ref2img)"}


def test_the_checker_reads_from_root_import_submodule_as_the_submodule(fake_package):
    module = fake_package / "server" / "app.py"
    module.write_text("from ref2img import protocol\n")
    assert imported_modules(module, fake_package) == {"ref2img.protocol"}


def test_the_checker_sees_imports_inside_functions(fake_package):
    module = fake_package / "tasks" / "runner.py"
    module.write_text("def f():\n    from ref2img.server import app\n")
    assert wrong_imports(module, "tasks", fake_package)


def test_the_checker_refuses_the_sdks_private_modules_outside_it(fake_package):
    module = fake_package / "server" / "app.py"
    module.write_text("from ref2img.client._core import DEFAULT_BASE_URL\n")
    assert any("private" in problem for problem in wrong_imports(module, "cli", fake_package))
    inside = fake_package / "client" / "_sync.py"
    inside.write_text("from ref2img.client._core import DEFAULT_BASE_URL\nfrom . import _core\n")
    assert wrong_imports(inside, "client", fake_package) == set()


def test_the_checker_sees_a_new_room_of_either_kind(fake_package):
    (fake_package / "newmodule.py").write_text("")
    (fake_package / "newroom").mkdir()
    (fake_package / "newroom" / "__init__.py").write_text("")
    (fake_package / "static").mkdir()  # a folder that is no package is no room
    assert rooms_of_package(fake_package) == {"client", "tasks", "server", "protocol", "newmodule", "newroom"}
