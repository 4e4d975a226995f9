"""The data dir is private whatever the umask: folders 700, files 600.

It holds the database (the file-URL signing secret, the studio's session secret, each key's webhook
signing key), uploads and results: another local user reading any of it could forge a file URL or a
studio cookie, or see a tenant's images. Files are created with their mode (never chmod-ed after a
moment of being readable), and an existing data dir that is wider than 700 is narrowed with a warning.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from ref2img.lifecycle.data_dir import MARKER

log = logging.getLogger("ref2img.data")

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (and any missing parents below an existing folder) as 700; narrow it, with a
    warning, when it exists wider."""
    path = Path(path)
    missing = []
    walker = path
    while not walker.exists():
        missing.append(walker)
        walker = walker.parent
    for folder in reversed(missing):
        folder.mkdir(mode=FOLDER_MODE, exist_ok=True)
        os.chmod(folder, FOLDER_MODE)  # mkdir's mode is masked by the umask: a 077 one keeps it, others too
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("data dir %s was readable by others (mode %o): narrowed to 700", path, mode)
        os.chmod(path, FOLDER_MODE)
    return path


def private_file(path: Path) -> Path:
    """Make sure `path` exists and only its owner may read it (created 600; an existing wider one is
    narrowed, with a warning)."""
    descriptor = os.open(path, os.O_CREAT | os.O_WRONLY, FILE_MODE)
    os.close(descriptor)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o): narrowed to 600", path, mode)
        os.chmod(path, FILE_MODE)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to a new or truncated file that was never readable by others."""
    descriptor = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, FILE_MODE)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///…` URL (None for PostgreSQL or an in-memory database)."""
    if not url.startswith("sqlite"):
        return None
    database = url.split("///", 1)[-1]
    return None if database in ("", ":memory:") else Path(database)


def mark_data_dir(path: Path) -> None:
    """Leave the marker by which `ref2img mcp` and others know this folder as a data dir (an empty file)."""
    private_file(Path(path) / MARKER)
