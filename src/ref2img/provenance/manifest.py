"""C2PA manifests, with the Content Authenticity Initiative's own bindings (`c2pa-python`).

A manifest states: created by ref2img (its version), the `trainedAlgorithmicMedia` digital source type,
the preset and its models, a SHA-256 of the prompt (never the prompt), the watermark's id, and, as
ingredients, the reference and init images by their SHA-256 only (no thumbnails: a manifest must not
carry a user's inputs). Thumbnails of the result are left out too: the result is the image itself.
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ref2img._version import __version__

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
GENERATION_ASSERTION = "org.ref2img.generation"
_SETTINGS = {"builder": {"thumbnail": {"enabled": False}}}


@dataclass(frozen=True)
class ImageFacts:
    """What a result's manifest says of it."""

    task_id: str
    kind: str  # img2img | redrawing
    prompt_sha256: str
    preset: str | None = None
    models: tuple[str, ...] = ()
    inputs: dict[str, str] = field(default_factory=dict)  # field -> SHA-256 of its decoded pixels
    watermark: str | None = None  # the id the pixels carry


class ManifestSigner:
    """Signs PNG and JPEG bytes with one certificate chain and key (ES256, PEM files)."""

    def __init__(self, cert_file: Path, key_file: Path):
        import c2pa

        self._c2pa = c2pa
        self.cert_file, self.key_file = cert_file, key_file
        info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, cert_file.read_bytes(), key_file.read_bytes(), None)
        self._signer = c2pa.Signer.from_info(info)
        self._context = c2pa.Context(c2pa.Settings.from_json(json.dumps(_SETTINGS)))
        self._lock = threading.Lock()  # one native signer: calls one at a time

    def sign(self, data: bytes, mime: str, facts: ImageFacts) -> bytes:
        builder = self._c2pa.Builder(_definition(facts), context=self._context)
        out = io.BytesIO()
        with self._lock:
            builder.sign(self._signer, mime, io.BytesIO(data), out)
        return out.getvalue()


def _definition(facts: ImageFacts) -> dict[str, Any]:
    agent = {"name": "ref2img", "version": __version__}
    generation: dict[str, Any] = {
        "task_id": facts.task_id,
        "kind": facts.kind,
        "prompt_sha256": facts.prompt_sha256,
        "preset": facts.preset,
        "models": list(facts.models),
        "inputs_sha256": facts.inputs,
    }
    if facts.watermark:
        generation["watermark"] = {"method": "invisible-watermark rivaGan", "id": facts.watermark}
    return {
        "claim_generator_info": [agent],
        "title": f"{facts.task_id}.png",
        "assertions": [
            {
                "label": "c2pa.actions.v2",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                            "softwareAgent": agent,
                        }
                    ]
                },
            },
            {"label": GENERATION_ASSERTION, "data": generation},
        ],
        "ingredients": [
            {"title": name, "relationship": "inputTo", "format": "image/png", "instance_id": f"sha256:{digest}"}
            for name, digest in sorted(facts.inputs.items())
        ],
    }


@dataclass(frozen=True)
class ManifestReport:
    state: str  # Valid / Trusted / Invalid, as the C2PA library says
    manifest: dict[str, Any]
    problems: list[str]  # the validation failures, by code

    @property
    def generation(self) -> dict[str, Any]:
        return next((a["data"] for a in self.manifest.get("assertions", []) if a["label"] == GENERATION_ASSERTION), {})

    @property
    def ai_generated(self) -> bool:
        return TRAINED_ALGORITHMIC_MEDIA in json.dumps(self.manifest.get("assertions", []))


def read_manifest(data: bytes, mime: str) -> ManifestReport | None:
    """The active manifest of an image and its validation, or None when it carries none."""
    import c2pa

    try:
        reader = c2pa.Reader(mime, io.BytesIO(data))
    except c2pa.C2paError as exc:
        if "ManifestNotFound" in type(exc).__name__ or "not found" in str(exc).lower():
            return None
        raise
    with reader:
        results = reader.get_validation_results() or {}
        failures = results.get("activeManifest", {}).get("failure", [])
        return ManifestReport(
            state=reader.get_validation_state() or "Unknown",
            manifest=reader.get_active_manifest() or {},
            problems=[failure.get("code", "") for failure in failures],
        )
