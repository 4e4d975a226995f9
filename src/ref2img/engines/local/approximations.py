"""The output-changing levers (`--approximate`, `speed.APPROXIMATIONS`). Each one removes work the exact
pipeline does, so the images change; none is on unless named, and bench/engine.py reports each on its
own row with its drift.

- `controlnet-cond-only`: with classifier-free guidance the ControlNet runs on a batch of two halves
  (unconditional, conditional) that differ only in the text. It runs on the conditional half alone and
  both halves get its residuals: half the ControlNet's work. (diffusers' `guess_mode` also runs the
  conditional half only, but gives the unconditional half no control at all and ramps the scales: a
  different image, not a cheaper one.)
- `cfg-cut`: guidance stops at the step where the ControlNet stops (`control_guidance_end`): from there
  the UNet runs one batch instead of two. This is diffusers' documented dynamic-CFG callback (halve the
  embeddings, set `_guidance_scale` to 0), at the point where the ControlNet, which still holds the doubled
  control image, has gone idle and no longer runs.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

# The per-step tensors a pipeline doubles for CFG and lets a callback replace (its
# `_callback_tensor_inputs`); their conditional half is the second.
CFG_PAIRED_TENSORS = ("prompt_embeds", "add_text_embeds", "add_time_ids", "image", "control_image")


def controlnet_on_cond_half(net: torch.nn.Module) -> torch.nn.Module:
    """`net` runs on the conditional half when its batch is a CFG pair (`net.ref2img_cfg_batch`, set per
    call to twice the images, or None without CFG); `net.cond_only_steps` counts it."""
    if getattr(net, "_ref2img_cond_only", False):
        return net
    counted: Any = net
    forward = net.forward

    @functools.wraps(forward)
    def forward_on_cond_half(sample, *args, **kwargs):
        pair = counted.ref2img_cfg_batch
        if kwargs.get("return_dict") is not False or pair is None or sample.shape[0] != pair:
            return forward(sample, *args, **kwargs)
        half = pair // 2
        down, mid = forward(*_second_half((sample, *args), pair, half), **_second_half(kwargs, pair, half))
        counted.cond_only_steps += 1
        return [torch.cat([r, r]) for r in down], torch.cat([mid, mid])

    counted.forward = forward_on_cond_half
    counted.ref2img_cfg_batch = None
    counted.cond_only_steps = 0
    counted._ref2img_cond_only = True
    return net


def _second_half(value, pair: int, half: int):
    """Every tensor of batch `pair` in `value` (nested lists, tuples, dicts) cut to its second half."""
    if isinstance(value, torch.Tensor):
        return value[half:] if value.ndim and value.shape[0] == pair else value
    if isinstance(value, dict):
        return {key: _second_half(item, pair, half) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_second_half(item, pair, half) for item in value)
    return value


class CfgCut:
    """A step hook: after the step that ends with the ControlNet still on, guidance stops."""

    def __init__(self, control_guidance_end: float):
        self.end = control_guidance_end
        self.cut_at: int | None = None  # the first step run without CFG

    def tensor_inputs(self, pipe) -> list[str]:
        return [name for name in CFG_PAIRED_TENSORS if name in pipe._callback_tensor_inputs]

    def __call__(self, pipeline, step: int, timestep, tensors: dict) -> dict:
        total = pipeline._num_timesteps
        following = step + 1
        # diffusers turns the ControlNet off at step i when (i + 1) / total > control_guidance_end
        if self.cut_at is not None or following >= total or (following + 1) / total <= self.end:
            return tensors
        if not pipeline.do_classifier_free_guidance:
            return tensors
        batch = tensors["latents"].shape[0]
        for name in self.tensor_inputs(pipeline):
            value = tensors.get(name)
            if isinstance(value, torch.Tensor) and value.shape[0] == 2 * batch:
                tensors[name] = value[batch:]
        pipeline._guidance_scale = 0.0
        self.cut_at = following
        return tensors
