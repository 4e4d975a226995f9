"""`--approximate step-cache`: First Block Cache for a diffusion transformer's repeated blocks (output-
changing, off unless named; bench/engine.py reports its speed and drift on its own row).

Each step runs the first block; when that block's residual (its output less its input) differs from the
one of the last step that ran in full by less than `THRESHOLD` (mean absolute difference over the mean
absolute value), the other blocks are skipped and the last full step's change from the first block's
output to the last block's is added instead (ParaAttention's First Block Cache; diffusers'
`apply_first_block_cache` does the same for blocks that take `hidden_states`, while Z-Image's take `x`,
and its ControlNet adds hints between blocks, which the cached change carries).

The decision is data-dependent, so it runs outside any compiled code: around each block's call, with a
regionally compiled block's graph inside it (`Module.compile` keeps that in `_compiled_call_impl`).
A whole-model compile would trace the decision: that pair is refused (`Speedups`).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

# diffusers' `FirstBlockCacheConfig` default: higher skips more steps and drifts further.
THRESHOLD = 0.05


class FirstBlockCache:
    """Installed on `blocks` (a transformer's repeated blocks, in order); `reset()` before each call."""

    def __init__(self, blocks: torch.nn.ModuleList, threshold: float = THRESHOLD):
        if len(blocks) < 2:
            raise ValueError("a step cache needs at least two blocks (a first and a last)")
        self.threshold = threshold
        self.full_steps = 0
        self.skipped_steps = 0
        head, *middle, tail = blocks
        _around_call(head, self._head)
        for block in middle:
            _around_call(block, self._middle)
        _around_call(tail, self._tail)
        self.reset()

    def reset(self) -> None:
        """A new call: nothing of the last one's steps is reused."""
        self._head_residual: torch.Tensor | None = None
        self._head_output: torch.Tensor | None = None
        self._rest_change: torch.Tensor | None = None
        self._skipping = False

    def _head(self, call, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        output = call(x, *args, **kwargs)
        residual = output - x
        self._skipping = self._close_to_last(residual)
        if self._skipping:
            self.skipped_steps += 1
        else:
            self.full_steps += 1
            self._head_residual = residual
        self._head_output = output
        return output

    def _middle(self, call, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x if self._skipping else call(x, *args, **kwargs)

    def _tail(self, call, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        assert self._head_output is not None  # the first block ran first
        if self._skipping:
            assert self._rest_change is not None
            return self._head_output + self._rest_change
        output = call(x, *args, **kwargs)
        self._rest_change = output - self._head_output
        return output

    def _close_to_last(self, residual: torch.Tensor) -> bool:
        last = self._head_residual
        if last is None or self._rest_change is None or last.shape != residual.shape:
            return False
        change = (residual - last).abs().mean() / last.abs().mean().clamp_min(1e-12)
        return bool(change < self.threshold)


def _around_call(block: torch.nn.Module, wrapper) -> None:
    """Run `wrapper(call, *args, **kwargs)` for every call of `block`, outside anything compiled in it.
    `Module.__call__` runs `_compiled_call_impl` when it is set (a regionally compiled block's graph)."""
    call = block._compiled_call_impl or block._call_impl
    block._compiled_call_impl = functools.partial(wrapper, call)
