"""DWPose on onnxruntime: a YOLOX person detector, then RTMPose (SimCC) keypoints per person,
drawn as an OpenPose-style body skeleton — the map OpenPose ControlNets were trained on.

Weights: `yzd-v/DWPose` (`yolox_l.onnx`, `dw-ll_ucoco_384.onnx`); input and output sizes are read
from the ONNX sessions, so any model of the same signature works (the tiny test models too).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

MAX_PEOPLE = 10
DETECTION_SCORE = 0.3
KEYPOINT_SCORE = 0.3
_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)

# COCO-WholeBody index for each of the 18 OpenPose body points (-1: the neck, mean of the shoulders).
_OPENPOSE_FROM_COCO = [0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
_LIMBS = [
    (1, 2),
    (1, 5),
    (2, 3),
    (3, 4),
    (5, 6),
    (6, 7),
    (1, 8),
    (8, 9),
    (9, 10),
    (1, 11),
    (11, 12),
    (12, 13),
    (1, 0),
    (0, 14),
    (14, 16),
    (0, 15),
    (15, 17),
]
_COLORS = [
    (255, 0, 0),
    (255, 85, 0),
    (255, 170, 0),
    (255, 255, 0),
    (170, 255, 0),
    (85, 255, 0),
    (0, 255, 0),
    (0, 255, 85),
    (0, 255, 170),
    (0, 255, 255),
    (0, 170, 255),
    (0, 85, 255),
    (0, 0, 255),
    (85, 0, 255),
    (170, 0, 255),
    (255, 0, 255),
    (255, 0, 85),
    (255, 0, 85),
]


class DWPose:
    def __init__(self, detector: Path, estimator: Path, use_cuda: bool = False):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if use_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self._detector = ort.InferenceSession(str(detector), providers=providers)
        self._estimator = ort.InferenceSession(str(estimator), providers=providers)

    def __call__(self, image: Image.Image) -> Image.Image:
        rgb = np.asarray(image.convert("RGB"))
        people = [self._keypoints(rgb, box) for box in self._people(rgb)]
        return Image.fromarray(draw_bodies(rgb.shape[0], rgb.shape[1], people))

    # -- detection (YOLOX) ------------------------------------------------------------------
    def _people(self, rgb: np.ndarray) -> list[np.ndarray]:
        """Person boxes (x1, y1, x2, y2); the whole image when nobody is detected."""
        input_info = self._detector.get_inputs()[0]
        in_h, in_w = input_info.shape[2], input_info.shape[3]
        ratio = min(in_h / rgb.shape[0], in_w / rgb.shape[1])
        resized = cv2.resize(rgb, (int(rgb.shape[1] * ratio), int(rgb.shape[0] * ratio)))
        padded = np.full((in_h, in_w, 3), 114, dtype=np.uint8)
        padded[: resized.shape[0], : resized.shape[1]] = resized
        tensor = padded.transpose(2, 0, 1)[None].astype(np.float32)
        raw = self._detector.run(None, {input_info.name: tensor})[0][0]

        grids, strides = [], []
        for stride in (8, 16, 32):
            h, w = in_h // stride, in_w // stride
            xs, ys = np.meshgrid(np.arange(w), np.arange(h))
            grids.append(np.stack((xs, ys), 2).reshape(-1, 2))
            strides.append(np.full((h * w, 1), stride))
        grid, scale = np.concatenate(grids), np.concatenate(strides)
        centers = (raw[:, :2] + grid) * scale
        sizes = np.exp(np.clip(raw[:, 2:4], -10, 10)) * scale
        scores = raw[:, 4] * raw[:, 5]  # objectness × "person" class
        keep = scores > DETECTION_SCORE
        if not keep.any():
            return [np.array([0, 0, rgb.shape[1], rgb.shape[0]], dtype=np.float32)]
        boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1)[keep] / ratio
        picked = cv2.dnn.NMSBoxes(
            [[float(x1), float(y1), float(x2 - x1), float(y2 - y1)] for x1, y1, x2, y2 in boxes],
            scores[keep].astype(float).tolist(),
            DETECTION_SCORE,
            0.45,
        )
        return [boxes[i] for i in np.array(picked).reshape(-1)[:MAX_PEOPLE]]

    # -- keypoints (RTMPose, SimCC) ---------------------------------------------------------
    def _keypoints(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """18 OpenPose body points of one person as rows (x, y, score) in image pixels."""
        input_info = self._estimator.get_inputs()[0]
        in_h, in_w = input_info.shape[2], input_info.shape[3]
        center = (box[:2] + box[2:]) / 2
        scale = (box[2:] - box[:2]) * 1.25
        aspect = in_w / in_h
        if scale[0] > scale[1] * aspect:
            scale[1] = scale[0] / aspect
        else:
            scale[0] = scale[1] * aspect
        scale = np.maximum(scale, 1.0)
        sx, sy = in_w / scale[0], in_h / scale[1]
        warp = np.array([[sx, 0, in_w / 2 - center[0] * sx], [0, sy, in_h / 2 - center[1] * sy]], dtype=np.float32)
        crop = cv2.warpAffine(rgb, warp, (in_w, in_h), flags=cv2.INTER_LINEAR)
        tensor = ((crop.astype(np.float32) - _MEAN) / _STD).transpose(2, 0, 1)[None]
        simcc_x, simcc_y = self._estimator.run(None, {input_info.name: tensor})[:2]
        split = simcc_x.shape[-1] / in_w
        xs = simcc_x[0].argmax(-1) / split
        ys = simcc_y[0].argmax(-1) / split
        scores = np.minimum(simcc_x[0].max(-1), simcc_y[0].max(-1))
        coco = np.stack(
            [xs / in_w * scale[0] + center[0] - scale[0] / 2, ys / in_h * scale[1] + center[1] - scale[1] / 2, scores],
            axis=1,
        )
        neck = (coco[5] + coco[6]) / 2
        neck[2] = min(coco[5, 2], coco[6, 2])
        return np.stack([neck if i < 0 else coco[i] for i in _OPENPOSE_FROM_COCO])


def draw_bodies(height: int, width: int, people: list[np.ndarray]) -> np.ndarray:
    """OpenPose body rendering: coloured limbs (60% brightness) and joints on black."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    thickness = max(2, round(min(height, width) / 128))  # thicker limbs help SDXL pose nets
    for points in people:
        for (a, b), color in zip(_LIMBS, _COLORS, strict=False):
            if points[a, 2] < KEYPOINT_SCORE or points[b, 2] < KEYPOINT_SCORE:
                continue
            (x1, y1), (x2, y2) = points[a, :2], points[b, :2]
            length = math.hypot(x2 - x1, y2 - y1)
            angle = math.degrees(math.atan2(y2 - y1, x2 - x1))
            polygon = cv2.ellipse2Poly(
                (int((x1 + x2) / 2), int((y1 + y2) / 2)), (int(length / 2), thickness), int(angle), 0, 360, 1
            )
            cv2.fillConvexPoly(canvas, np.asarray(polygon), [c * 0.6 for c in color])
        for (x, y, score), color in zip(points, _COLORS, strict=False):
            if score >= KEYPOINT_SCORE:
                cv2.circle(canvas, (int(x), int(y)), thickness, color, thickness=-1)
    return canvas
