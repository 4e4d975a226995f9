"""One model loaded once where two pipelines of a preset would each load it: Z-Image and FLUX.2 klein 4B
both read Qwen3-4B (8 GB in bf16), and the two repos ship the same weights (ComfyUI gives both models
one file, `qwen_3_4b.safetensors`, sha256 6c671498…).

Whether a checkpoint holds the weights of a model already loaded is read, not assumed: the same
architecture, and the same values in a sample of its tensors (the first, middle and last ones in the
model's order, their first rows). A fine-tune changes nearly every tensor, so the sample tells; reading
it costs milliseconds where loading the model again costs seconds and its memory. A checkpoint that
differs is loaded on its own, as before.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

log = logging.getLogger("ref2img.engine")

SAMPLED_ROWS = 8
# transformers keeps a base model under this name inside its task models (`Qwen3ForCausalLM.model`).
BASE_PREFIX = "model."
INDEX_NAME = "model.safetensors.index.json"
# The config keys that decide a text encoder's shapes and arithmetic (the rest, token ids or the
# generation defaults, may differ between two repos of the same weights).
ARCHITECTURE = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "hidden_act",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "attention_bias",
)


def holds_same_weights(model: torch.nn.Module, folder: Path) -> bool:
    """Whether the transformers checkpoint in `folder` (config.json + safetensors, sharded or not) holds
    `model`'s weights, `model` being the checkpoint's base model or the model itself."""
    config: Any = getattr(model, "config", None)
    if not hasattr(config, "from_pretrained") or not (folder / "config.json").is_file():
        return False
    theirs = type(config).from_pretrained(folder).to_dict()
    ours = config.to_dict()
    if any(ours.get(key) != theirs.get(key) for key in ARCHITECTURE):
        return False
    files = _files_by_key(folder)
    if files is None:
        return False
    state = model.state_dict()
    names = list(state)
    middle = len(names) // 2
    for name in dict.fromkeys(names[:2] + names[middle : middle + 1] + names[-2:]):
        key = name if name in files else BASE_PREFIX + name
        if key not in files:
            return False
        with safe_open(str(files[key]), framework="pt") as checkpoint:
            rows = checkpoint.get_slice(key)[:SAMPLED_ROWS]
        if state[name].is_meta:  # offloaded by accelerate: its values are elsewhere
            return False
        mine = state[name][:SAMPLED_ROWS].detach().to("cpu")
        if rows.shape != mine.shape or not torch.equal(rows.to(mine.dtype), mine):
            return False
    return True


def _files_by_key(folder: Path) -> dict[str, Path] | None:
    index = folder / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {key: folder / file for key, file in weight_map.items()}
    files: dict[str, Path] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as checkpoint:
            files.update(dict.fromkeys(checkpoint.keys(), file))
    return files or None
