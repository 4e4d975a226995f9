"""Lets the skill's scripts find the ref2img SDK when it is not installed (the skill folder is the repo)."""

import sys
from pathlib import Path

try:
    import ref2img  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
