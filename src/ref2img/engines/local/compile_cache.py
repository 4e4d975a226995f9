"""Compiled kernels kept on disk, so that a restarted server or worker compiles from cache, not anew.

Inductor's caches (FX graphs, AOTAutograd graphs, Triton kernels, autotuning results) all live under
`TORCHINDUCTOR_CACHE_DIR`, keyed by torch version, GPU model and graph. By default that is a folder in
/tmp, which a reboot or a new container loses; we point it at a lasting folder instead.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("ref2img.engine")

CACHE_ENV = "REF2IMG_COMPILE_CACHE"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ref2img" / "torch-compile"


def use_compile_cache(directory: str | Path | None = None) -> Path:
    """Keep compile artifacts under `directory` ($REF2IMG_COMPILE_CACHE, else ~/.cache/ref2img/torch-compile).

    Must run before the first compilation: inductor reads TORCHINDUCTOR_CACHE_DIR each time it needs
    the folder. It is overwritten, not defaulted: importing torch already sets it to the /tmp default.
    """
    chosen = Path(directory or os.environ.get(CACHE_ENV) or default_cache_dir()).expanduser()
    chosen.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(chosen)
    from torch._functorch import config as functorch_config
    from torch._inductor import config as inductor_config

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    log.info("compile cache: %s", chosen)
    return chosen
