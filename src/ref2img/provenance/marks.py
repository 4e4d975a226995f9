"""Both marks on one result: the watermark into the pixels, then the C2PA manifest over the PNG bytes.
One `Marks` a process, built from its flags (`open_marks`), used by the runner wherever it stores a
generated image: `ref2img generate`, the server's workers, a fleet's, MCP, the OpenAI route."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ref2img.provenance.manifest import ImageFacts, ManifestSigner

log = logging.getLogger("ref2img.provenance")


def pixels_sha256(image: Image.Image) -> str:
    """A picture's SHA-256 over its decoded RGB pixels and size: the same picture hashes alike however
    its file was encoded."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode() + rgb.tobytes()).hexdigest()


@dataclass
class Marks:
    signer: ManifestSigner | None  # None: no manifest
    watermark: bool

    def apply(
        self, image: Image.Image, facts: ImageFacts, unchanged: Image.Image | None = None
    ) -> tuple[bytes, dict[str, Any]]:
        """The PNG bytes to store, and what they carry (the task's `marks`): the watermark `facts.watermark`
        names (one id a task, `watermark.new_mark_id`), when this process watermarks. `unchanged`: the
        image the result was made from (Image Repaint), whose pixels the result kept as they were stay
        so: the watermark goes only where the model drew."""
        from ref2img.provenance import watermark

        mark = facts.watermark if self.watermark else None
        if mark is not None:
            image = _only_where_drawn(watermark.embed(image, mark), image, unchanged)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        if self.signer is not None:
            data = self.signer.sign(data, "image/png", dataclasses.replace(facts, watermark=mark))
        return data, {"c2pa": self.signer is not None, "watermark": mark}


def _only_where_drawn(marked: Image.Image, drawn: Image.Image, unchanged: Image.Image | None) -> Image.Image:
    """`marked` where `drawn` differs from `unchanged`; `drawn`'s own pixels where the model kept them."""
    if unchanged is None or unchanged.size != drawn.size:
        return marked
    import numpy as np

    before, after = np.asarray(unchanged.convert("RGB")), np.asarray(drawn.convert("RGB"))
    kept = (before == after).all(axis=-1, keepdims=True)
    return Image.fromarray(np.where(kept, after, np.asarray(marked.convert("RGB"))))


def open_marks(*, c2pa: bool, watermark: bool, cert: Path | None, key: Path | None, dev_folder: Path) -> Marks | None:
    """The marks a process applies, from its flags. With C2PA on and no certificate of the operator's,
    the development one in `dev_folder` (made once, with a warning: validators do not trust it). A
    missing package is a clear warning, never a failed task: the other mark still applies."""
    if (cert is None) != (key is None):
        raise ValueError("--c2pa-cert and --c2pa-key: give both, or neither")
    signer = None
    if c2pa:
        try:
            if cert is None or key is None:
                from ref2img.provenance.certs import make_dev_certificate

                cert, key = make_dev_certificate(dev_folder)
                log.warning(
                    "C2PA manifests are signed with a development certificate (%s), which no validator trusts; "
                    "pass --c2pa-cert and --c2pa-key for your own",
                    cert,
                )
            signer = ManifestSigner(cert, key)
        except ImportError:
            log.warning("C2PA manifests are OFF: c2pa-python is not installed (pip install 'ref2img[provenance]')")
    # Found, not imported: the package imports torch, which a node that only serves the API never needs.
    if watermark and importlib.util.find_spec("imwatermark") is None:
        log.warning("the invisible watermark is OFF: invisible-watermark is not installed")
        watermark = False
    if signer is None and not watermark:
        return None
    return Marks(signer, watermark)
