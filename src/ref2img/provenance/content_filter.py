"""The optional content filter: a prompt blocklist the operator edits, and an image classifier.

Modes: `off`; `flag` (the task succeeds, its result carrying a `flagged` extension with the reason);
`block` (the task ends at status 4 with a reason naming the content policy, and no image is stored).
A key may have its own mode (`ref2img keys create --content-filter off` for a trusted key).

The classifier is any transformers image-classification model (no remote code): a local folder, or a
hub repo pulled into the Hugging Face cache like the other parts (`ref2img models pull-classifier`) and
read from there offline. The labels it calls unsafe are `UNSAFE_LABELS`. The one we suggest is
Falconsai/nsfw_image_detection (a ViT, labels normal/nsfw, Apache-2.0; docs/provenance.md).
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

MODES = ("off", "flag", "block")
CLASSIFIER_REPO = "Falconsai/nsfw_image_detection"
# What a classifier's load reads: its config, its safetensors weights and its preprocessor; never a pickle
# (that repo also holds pytorch_model.bin and a 687 MB optimizer.pt).
CLASSIFIER_FILES = ("config.json", "preprocessor_config.json", "*.safetensors")
UNSAFE_LABELS = frozenset({"nsfw", "porn", "hentai", "sexy", "unsafe", "explicit"})
UNSAFE_THRESHOLD = 0.5


@dataclass(frozen=True)
class Verdict:
    action: str  # flag | block
    reason: str


def read_blocklist(path: Path) -> list[str]:
    """Words and phrases, one a line; `#` starts a comment."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


class ImageClassifier:
    """A transformers image classifier from a local folder; `unsafe(image)` is its top unsafe label and
    score, or None."""

    def __init__(self, folder: Path):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self.processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        self.model = AutoModelForImageClassification.from_pretrained(folder, local_files_only=True).eval()
        self._lock = threading.Lock()

    def unsafe(self, image: Image.Image) -> tuple[str, float] | None:
        import torch

        with self._lock, torch.inference_mode():
            inputs = self.processor(images=image.convert("RGB"), return_tensors="pt")
            probs = self.model(**inputs).logits.softmax(-1)[0]
        labels: dict[int, str] = self.model.config.id2label
        scored = [(labels[i], float(p)) for i, p in enumerate(probs) if labels[i].lower() in UNSAFE_LABELS]
        label, score = max(scored, key=lambda pair: pair[1], default=("", 0.0))
        return (label, score) if score >= UNSAFE_THRESHOLD else None


def folded(text: str) -> str:
    """`text` as the blocklist compares it: compatibility forms unified (full-width letters, ligatures),
    invisible format characters dropped (zero-width space, soft hyphen, joiners), case folded, accents
    dropped (`ö` is `o`), every run of whitespace one space."""
    text = "".join(char for char in unicodedata.normalize("NFKC", text) if unicodedata.category(char) != "Cf")
    text = "".join(char for char in unicodedata.normalize("NFKD", text.casefold()) if not unicodedata.combining(char))
    return " ".join(text.split())


def squashed(text: str) -> str:
    """`folded(text)` with no spaces at all: a phrase glued into one word still matches."""
    return folded(text).replace(" ", "")


class ContentFilter:
    def __init__(
        self,
        mode: str,
        blocklist: Sequence[str] = (),
        classifier: ImageClassifier | None = None,
        mode_of_key: Callable[[str], str | None] | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"--content-filter: {mode!r} is not one of {', '.join(MODES)}")
        self.default_mode = mode
        self.classifier = classifier
        self._mode_of_key = mode_of_key
        # Each term as it is matched (its normalised text, and the same without spaces), by what the
        # operator wrote.
        self._blocked = {term: (folded(term), squashed(term)) for term in blocklist if folded(term)}

    def mode(self, app_key: str) -> str:
        own = self._mode_of_key(app_key) if self._mode_of_key is not None else None
        return own or self.default_mode

    def check_prompt(self, app_key: str, *texts: str | None) -> Verdict | None:
        mode = self.mode(app_key)
        if mode == "off" or not self._blocked:
            return None
        for text in filter(None, texts):
            spaced, glued = folded(text), squashed(text)
            for term, (term_spaced, term_glued) in self._blocked.items():
                if term_spaced in spaced or term_glued in glued:
                    return Verdict(mode, f"refused by the content policy: the prompt has a blocked term ({term!r})")
        return None

    def check_image(self, app_key: str, image: Image.Image) -> Verdict | None:
        mode = self.mode(app_key)
        if mode == "off" or self.classifier is None:
            return None
        unsafe = self.classifier.unsafe(image)
        if unsafe is None:
            return None
        label, score = unsafe
        return Verdict(mode, f"refused by the content policy: an image was classified {label} ({score:.2f})")


class ClassifierMissing(ValueError):
    """The classifier a flag names is neither a folder nor a repo in the local cache."""


def locate_classifier(spec: str) -> Path:
    """The folder of `spec`: a local folder, or a hub repo id read from the local cache only (nothing is
    downloaded while serving); ClassifierMissing saying how to pull it."""
    folder = Path(spec).expanduser()
    if folder.is_dir():
        return folder
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        found = Path(snapshot_download(spec, local_files_only=True, allow_patterns=list(CLASSIFIER_FILES)))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        found = None
    if found is None or not (found / "config.json").is_file():
        raise ClassifierMissing(
            f"--image-classifier: {spec!r} is neither a folder nor a model on this machine; "
            f"get it with `ref2img models pull-classifier {spec}`"
        )
    return found


def pull_classifier(repo: str = CLASSIFIER_REPO) -> Path:
    """Download a classifier's files (config, preprocessor, safetensors) into the Hugging Face cache."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo, allow_patterns=list(CLASSIFIER_FILES)))


def open_content_filter(
    mode: str,
    blocklist: Path | None,
    classifier: str | None,
    mode_of_key: Callable[[str], str | None] | None = None,
) -> ContentFilter | None:
    """The filter of a process's flags; None when it has nothing to check with (no blocklist, no
    classifier). `classifier`: a folder or a hub repo id (`locate_classifier`)."""
    if mode not in MODES:
        raise ValueError(f"--content-filter: {mode!r} is not one of {', '.join(MODES)}")
    if blocklist is None and classifier is None:
        return None
    words = read_blocklist(blocklist) if blocklist is not None else []
    model: Any = ImageClassifier(locate_classifier(classifier)) if classifier is not None else None
    return ContentFilter(mode, words, model, mode_of_key)
