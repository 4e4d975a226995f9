"""When compiled code runs (`Speedups.compile_after`): a compile costs a request seconds (10.7 s against
4.0 s steady for a new SDXL size on the H200), so a shape (size, batch, mode) may have to be seen
`compile_after` times before a call compiles for it; until then it runs eagerly, still using any
compiled graph that already fits (equal blocks at equal shapes), through torch's compiler stances.

`compile_after=1` compiles at first sight (what `torch.compile` does); 2 or 3 keeps one-off sizes eager,
so a single odd request never waits for a compile, and the sizes a server really serves compile once.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Hashable, Iterator

import torch


class CompilePolicy:
    def __init__(self, compile_after: int = 1):
        if compile_after < 1:
            raise ValueError("compile_after: must be at least 1")
        self.compile_after = compile_after
        self.seen: Counter[Hashable] = Counter()
        self.compiled: set[Hashable] = set()
        self._lock = threading.Lock()

    def stance(self, shape: Hashable) -> str:
        """The compiler stance for the next call of `shape` (counting it as seen)."""
        with self._lock:
            self.seen[shape] += 1
            if self.seen[shape] >= self.compile_after:
                self.compiled.add(shape)
                return "default"
            # Before anything compiled, "eager_on_recompile" would still compile (a first compile is
            # not a recompile): force eager then.
            return "eager_on_recompile" if self.compiled else "force_eager"

    @contextlib.contextmanager
    def applied(self, shape: Hashable) -> Iterator[str]:
        stance = self.stance(shape)
        with torch.compiler.set_stance(stance):
            yield stance
