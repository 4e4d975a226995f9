"""Control maps from photos: Canny edges (OpenCV, no weights), depth (transformers
`depth-estimation`, e.g. Depth-Anything-V2-Small), pose (DWPose), the subject's mask (a salient-object
model, or GrabCut without one; `subject_mask.py`). Models load on first use."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image

from ref2img.engines.base import EngineError
from ref2img.engines.local.device import Placement
from ref2img.engines.local.hub import folder_of, locate
from ref2img.engines.local.presets import Preset
from ref2img.protocol import ControlType

if TYPE_CHECKING:
    from transformers import DepthEstimationPipeline

    from ref2img.engines.local.pose import DWPose
    from ref2img.engines.local.subject_mask import SalientObjectModel

log = logging.getLogger("ref2img.engine")


def canny_map(image: Image.Image, low: int = 100, high: int = 200) -> Image.Image:
    """White edges on black, 3 channels: what canny ControlNets expect."""
    gray = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(gray, low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


class Annotators:
    def __init__(self, preset: Preset, placement: Placement):
        self._preset = preset
        self._placement = placement
        self._use_cuda = placement.device.type == "cuda"
        self._depth: DepthEstimationPipeline | None = None
        self._pose: DWPose | None = None
        self._segmenter: SalientObjectModel | None = None
        self._lock = threading.Lock()

    def control_map(self, image: Image.Image, mode: ControlType) -> Image.Image:
        if mode is ControlType.EDGE:
            return canny_map(image)
        if mode is ControlType.DEPTH:
            return self._depth_map(image)
        if mode is ControlType.POSE:
            return self._pose_map(image)
        raise EngineError(f"no control map for mode {mode!r}")

    def recognize(self, image: Image.Image, mode: ControlType) -> Image.Image:
        """What recognition returns: the control map, or in subject mode (2) the subject's mask."""
        return self.subject_mask(image) if mode is ControlType.SUBJECT else self.control_map(image, mode)

    def subject_mask(self, image: Image.Image) -> Image.Image:
        if self._preset.subject_segmenter is None:
            from ref2img.engines.local.subject_mask import grabcut_mask

            return grabcut_mask(image)
        with self._lock:
            if self._segmenter is None:
                from ref2img.engines.local.subject_mask import SalientObjectModel

                path = locate(self._preset.subject_segmenter, "subject_segmenter", self._preset)
                self._segmenter = SalientObjectModel(path, use_cuda=self._use_cuda)
                log.info("loaded subject_segmenter from %s (onnxruntime)", path)
            segmenter = self._segmenter
        return segmenter(image)

    def _depth_map(self, image: Image.Image) -> Image.Image:
        with self._lock:
            if self._depth is None:
                from transformers import pipeline

                path = folder_of(self._preset.depth_estimator, "depth_estimator", self._preset)
                # float32 whatever the engine's dtype: the pipeline turns its output into numpy, which
                # has no bfloat16; the model is small (25M parameters for Depth-Anything-V2-Small).
                self._depth = pipeline("depth-estimation", model=str(path), device=self._placement.device)
                log.info("loaded depth_estimator from %s (float32)", path)
            estimator = self._depth
        depth = estimator(image.convert("RGB"))["predicted_depth"]
        values = depth.squeeze().float().cpu().numpy()
        values = cv2.resize(values, image.size, interpolation=cv2.INTER_CUBIC)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
        gray = (scaled * 255.0).clip(0, 255).astype(np.uint8)  # near = bright, as depth ControlNets expect
        return Image.fromarray(np.stack([gray] * 3, axis=-1))

    def modules(self) -> dict:
        """The torch models loaded so far (DWPose runs on onnxruntime, not torch)."""
        return {"depth_estimator": self._depth.model} if self._depth is not None else {}

    def _pose_map(self, image: Image.Image) -> Image.Image:
        with self._lock:
            if self._pose is None:
                from ref2img.engines.local.pose import DWPose

                detector = locate(self._preset.pose_detector, "pose_detector", self._preset)
                estimator = locate(self._preset.pose_estimator, "pose_estimator", self._preset)
                self._pose = DWPose(detector, estimator, use_cuda=self._use_cuda)
                log.info("loaded pose_detector and pose_estimator from %s (onnxruntime)", detector.parent)
            pose = self._pose
        return pose(image)
