"""A node's provenance flags (`serve`, `worker`, `generate`), and what they build."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ref2img.provenance.content_filter import ContentFilter
    from ref2img.provenance.marks import Marks


@dataclass(frozen=True)
class ProvenanceOptions:
    c2pa: bool = False  # the CLI's commands turn both marks on by default
    watermark: bool = False
    c2pa_cert: Path | None = None
    c2pa_key: Path | None = None
    content_filter: str = "off"  # off | flag | block
    blocklist: Path | None = None
    classifier: str | None = None  # a transformers image classifier: a folder, or a hub repo id in the cache

    def marks(self, dev_folder: Path) -> Marks | None:
        from ref2img.provenance.marks import open_marks

        return open_marks(
            c2pa=self.c2pa, watermark=self.watermark, cert=self.c2pa_cert, key=self.c2pa_key, dev_folder=dev_folder
        )

    def content(self, mode_of_key: Callable[[str], str | None] | None = None) -> ContentFilter | None:
        from ref2img.provenance.content_filter import open_content_filter

        return open_content_filter(self.content_filter, self.blocklist, self.classifier, mode_of_key)
