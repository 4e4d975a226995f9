"""Subject masks (recognition's control type 2): the main subject's foreground, white on black, at the
input's size.

Two ways, by what the preset names:
- a salient-object ONNX model (`subject_segmenter`): BiRefNet-lite, MIT, `onnx-community/BiRefNet_lite-ONNX`
  (`onnx/model.onnx`). Input `input_image` float32 (1, 3, H, W), RGB normalised with ImageNet's mean and
  std; output (1, 1, H, W) logits, a sigmoid gives the matte (its model card). H and W are read from the
  session, so any model of the same signature works (the tiny test stand-in too); a dynamic side runs at
  1024, the size the model was trained at.
- no model: GrabCut (OpenCV), seeded with the image's border as background. That is the classical
  fallback, and it finds a shape on a plain ground.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
DYNAMIC_SIDE = 1024
GRABCUT_SIDE = 512  # GrabCut is iterative and slow on large images; its mask is scaled back up
GRABCUT_BORDER = 0.04  # the share of each side taken as sure background


class SalientObjectModel:
    """A salient-object segmentation network on onnxruntime (BiRefNet's signature)."""

    def __init__(self, path: Path, use_cuda: bool = False):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if use_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self._session = ort.InferenceSession(str(path), providers=providers)
        shape = self._session.get_inputs()[0].shape
        self._size = tuple(side if isinstance(side, int) else DYNAMIC_SIDE for side in shape[2:4])

    def __call__(self, image: Image.Image) -> Image.Image:
        rgb = image.convert("RGB")
        in_h, in_w = self._size
        resized = np.asarray(rgb.resize((in_w, in_h), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
        tensor = ((resized - _MEAN) / _STD).transpose(2, 0, 1)[None].astype(np.float32)
        logits = self._session.run(None, {self._session.get_inputs()[0].name: tensor})[0]
        matte = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float32).reshape(in_h, in_w)))
        full = cv2.resize(matte.astype(np.float32), rgb.size, interpolation=cv2.INTER_LINEAR)
        return _as_mask((full * 255.0).round().clip(0, 255).astype(np.uint8))


def grabcut_mask(image: Image.Image, iterations: int = 5) -> Image.Image:
    """The classical fallback: GrabCut with the border as background and the rest as probable foreground."""
    rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    scale = min(1.0, GRABCUT_SIDE / max(height, width))
    small = cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    h, w = small.shape[:2]
    margin_x, margin_y = max(1, round(w * GRABCUT_BORDER)), max(1, round(h * GRABCUT_BORDER))
    if w <= 2 * margin_x + 1 or h <= 2 * margin_y + 1:
        return _as_mask(np.zeros((height, width), dtype=np.uint8))  # too small to hold a subject
    labels = np.zeros((h, w), dtype=np.uint8)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    rect = (margin_x, margin_y, w - 2 * margin_x, h - 2 * margin_y)
    bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    try:
        cv2.grabCut(bgr, labels, rect, background, foreground, iterations, cv2.GC_INIT_WITH_RECT)
    except cv2.error:  # a flat image: no colour model can be fitted, so there is no subject
        return _as_mask(np.zeros((height, width), dtype=np.uint8))
    subject = np.where((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)
    return _as_mask(cv2.resize(subject, (width, height), interpolation=cv2.INTER_NEAREST))


def _as_mask(gray: np.ndarray) -> Image.Image:
    # three equal channels, as the other control maps are: every viewer and mask reader takes it
    return Image.fromarray(np.stack([gray] * 3, axis=-1))
