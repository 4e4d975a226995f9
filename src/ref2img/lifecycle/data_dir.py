"""How a server's data dir is recognised by the parts that must keep out of it.

A data dir holds every tenant's uploads and results and the server's secrets. `ref2img mcp` reads local
files on its caller's word, so a data dir below one of its allowed folders must stay closed to it unless
the operator named that data dir itself. The server leaves a marker file in its data dir and in its
storage root; a SQLite database beside it counts too, for a data dir an older version made.
"""

from __future__ import annotations

from pathlib import Path

MARKER = ".ref2img-data-dir"
_SIGNS = (MARKER, "ref2img.db")


def is_data_dir(folder: Path) -> bool:
    return any((folder / sign).exists() for sign in _SIGNS)


def data_dir_between(top: Path, path: Path) -> Path | None:
    """The first data dir strictly below `top` on the way to `path` (`path` itself included when it is a
    folder); None when there is none, or when `top` is a data dir or inside one: the operator named it."""
    if any(is_data_dir(folder) for folder in [top, *top.parents]):
        return None
    for folder in [path, *path.parents]:
        if folder == top or not folder.is_relative_to(top):
            return None
        if folder.is_dir() and is_data_dir(folder):
            return folder
    return None
