"""What makes the denoising loop fast on a GPU, each lever on its own switch (bench/engine.py measures them).

- `skip_idle_controlnet`: diffusers runs the ControlNet forward on every step and multiplies its output
  by `scale × keep`, which is 0 after `control_guidance_end`. Skipping those forwards gives the very same
  pixels (the UNet adds no residual instead of a zero one), so it is on everywhere.
- `channels_last`: NHWC convolutions, what cuDNN is fastest at on tensor cores.
- `fuse_qkv`: one matmul for q, k and v (self-attention) or k and v (cross-attention).
- `compile`: `torch.compile` of the transformer blocks of the UNet and the ControlNet ("regional": each
  distinct block compiles once and is reused, so the compile ends in bounded time), or of the whole
  UNet ("full"). `compile_mode` is inductor's mode: None (default), "max-autotune-no-cudagraphs" or
  "reduce-overhead" (CUDA graphs).
- `inductor_tuning`: the inductor settings of PyTorch's "Diffusion, fast" recipe (1×1 convolutions as
  matmuls, coordinate-descent tuning).
- `fp8`: float8 weights and activations for the Linear layers (torchao, Hopper and newer).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any
from typing import Literal

import torch

from ref2img.engines.base import EngineOptionError

CompileKind = Literal["none", "regional", "full"]
COMPILE_KINDS: tuple[str, ...] = ("none", "regional", "full")
# The block classes the UNet repeats (diffusers' `UNet2DConditionModel._repeated_blocks`); the
# ControlNets are built of the same blocks but do not declare them.
REPEATED_BLOCKS = ("BasicTransformerBlock",)


@dataclass(frozen=True)
class Speedups:
    skip_idle_controlnet: bool = True
    channels_last: bool = True  # GPUs only: on a CPU it is slower
    fuse_qkv: bool = False
    compile: CompileKind = "none"
    compile_mode: str | None = None
    inductor_tuning: bool = False
    fp8: bool = False

    def __post_init__(self):
        if self.compile not in COMPILE_KINDS:
            raise EngineOptionError(f"--compile: must be one of {', '.join(COMPILE_KINDS)} (got {self.compile!r})")

    @property
    def compiles(self) -> bool:
        return self.compile != "none"


def prepare_denoiser(module: torch.nn.Module, speedups: Speedups, on_gpu: bool) -> torch.nn.Module:
    """Apply the levers to a UNet or a ControlNet in place (called once per module, at load)."""
    if speedups.fuse_qkv:  # before fp8: the fused projections are quantized as one
        fuse_attention_projections(module)
    if speedups.fp8:
        quantize_fp8(module)
    if speedups.channels_last and on_gpu:
        module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub omits it
    if speedups.compile == "regional":
        compile_blocks(module, speedups.compile_mode)
    return module


def compile_whole(module: torch.nn.Module, mode: str | None) -> None:
    _configure_dynamo()
    module.compile(fullgraph=True, mode=mode)


def compile_blocks(module: torch.nn.Module, mode: str | None, block_names: tuple[str, ...] = REPEATED_BLOCKS) -> int:
    """Regional compilation: each repeated block compiles in place; equal blocks share one graph."""
    _configure_dynamo()
    blocks = [sub for sub in module.modules() if type(sub).__name__ in block_names]
    for block in blocks:
        block.compile(fullgraph=True, mode=mode)
    return len(blocks)


def _configure_dynamo() -> None:
    # Sizes (512..2048 per side) and batches (1..4) each add a graph per distinct block shape; the
    # default limit of 8 would fall back to eager half-way through a server's life.
    config = torch._dynamo.config
    config.recompile_limit = max(getattr(config, "recompile_limit", 8), 64)


def apply_inductor_tuning() -> None:
    """PyTorch's "Accelerating Generative AI, part 3: Diffusion, fast" settings (global to the process)."""
    from torch._inductor import config

    config.conv_1x1_as_mm = True
    config.coordinate_descent_tuning = True
    config.epilogue_fusion = False
    config.coordinate_descent_check_all_directions = True


def fuse_attention_projections(module: torch.nn.Module) -> int:
    """Fuse q/k/v in every attention of `module` whose processor is the plain SDPA one.

    Attentions already served by another processor (the IP-Adapter's) are left as they are; call this
    again after such a processor is installed, and the plain ones are fused again.
    """
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0, FusedAttnProcessor2_0

    fused = 0
    for sub in module.modules():
        if isinstance(sub, Attention) and type(sub.processor) in (AttnProcessor2_0, FusedAttnProcessor2_0):
            if not getattr(sub, "fused_projections", False):
                sub.fuse_projections(fuse=True)
            sub.set_processor(FusedAttnProcessor2_0())  # type: ignore[arg-type]  # diffusers' hint is too narrow
            fused += 1
    return fused


def quantize_fp8(module: torch.nn.Module) -> None:
    """float8 dynamic activations × float8 weights on the Linear layers (torchao)."""
    if not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)):
        raise EngineOptionError("fp8 needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper)")
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError:
        raise EngineOptionError("fp8 needs torchao: pip install torchao") from None
    quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))


def skip_idle_controlnet(net: torch.nn.Module) -> torch.nn.Module:
    """Make `net` return no residuals, without running, when its conditioning scale is 0.

    The UNet treats "no residuals" as "no ControlNet", and x + 0·r == x, so the output is unchanged.
    `net.skipped_steps` and `net.run_steps` count what happened (the tests and the bench read them).
    """
    if getattr(net, "_ref2img_skips_idle", False):
        return net
    counted: Any = net  # nn.Module types its attributes as tensors or modules; these are plain counters
    forward = net.forward

    @functools.wraps(forward)
    def forward_unless_idle(*args, conditioning_scale=1.0, **kwargs):
        # The pipelines ask for a tuple (return_dict=False); anyone else gets the plain forward.
        if kwargs.get("return_dict") is False and _is_zero(conditioning_scale):
            counted.skipped_steps += 1
            return None, None
        counted.run_steps += 1
        return forward(*args, conditioning_scale=conditioning_scale, **kwargs)

    counted.forward = forward_unless_idle
    counted.skipped_steps = 0
    counted.run_steps = 0
    counted._ref2img_skips_idle = True
    return net


def _is_zero(scale) -> bool:
    if isinstance(scale, (list, tuple)):
        return all(_is_zero(s) for s in scale)
    if isinstance(scale, torch.Tensor):
        return bool((scale == 0).all())
    return scale == 0
