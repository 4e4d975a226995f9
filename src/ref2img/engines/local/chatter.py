"""Library chatter at debug level only: casting notes, weight-loading bars, fallback notices.

diffusers and transformers speak through their own loggers, `warnings` and tqdm bars. Unless the
engine's logger (`ref2img.engine`) is at DEBUG, they are held to errors and their bars are off; the
engine logs one line per model part it loads instead.
"""

from __future__ import annotations

import logging
import warnings

log = logging.getLogger("ref2img.engine")


def quiet_libraries() -> None:
    if log.isEnabledFor(logging.DEBUG):
        return
    import diffusers
    import transformers

    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(diffusers|transformers|torch)(\.|$)")
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
