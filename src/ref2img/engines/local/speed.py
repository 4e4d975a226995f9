"""What makes the denoising loop fast on a GPU, each lever on its own switch (bench/engine.py measures them).

- `skip_idle_controlnet`: diffusers runs the ControlNet forward on every step and multiplies its output
  by `scale × keep`, which is 0 after `control_guidance_end` (and on every step at intensity 0, the only
  idle steps the Z-Image pipeline has). Skipping those forwards gives the very same pixels (the denoiser
  adds no residual instead of a zero one), so it is on everywhere.
- `channels_last`: NHWC convolutions, what cuDNN is fastest at on tensor cores.
- `fuse_qkv`: one matmul for q, k and v (self-attention) or k and v (cross-attention).
- `compile`: `torch.compile` of the transformer blocks of the UNet and the ControlNet ("regional": each
  distinct block compiles once and is reused, so the compile ends in bounded time), or of the whole
  UNet and the whole ControlNet ("full"). `compile_mode` is inductor's mode: None (default),
  "max-autotune-no-cudagraphs" or "reduce-overhead" (CUDA graphs over each step: `steps.py` marks
  where a step begins, which diffusers does only for `OptimizedModule`s).
- `compile_after`: a shape compiles the N-th time it is seen, earlier calls run eagerly
  (`compile_policy.py`).
- `compile_convs`: regional compile also of the convolution blocks (`ResnetBlock2D`, `Downsample2D`,
  `Upsample2D`) and of the VAE decoder.
- `inductor_tuning`: the inductor settings of PyTorch's "Diffusion, fast" recipe (1×1 convolutions as
  matmuls, coordinate-descent tuning).
- `fp8`: float8 weights and activations (torchao, per-row scales, Ada/Hopper) for the Linear layers
  inside the compiled blocks only, never the cross-attention k/v over the text tokens nor the small
  embedding MLPs; it needs `compile` (eager fp8 is slower than bf16).
- `cache_condition`, `cache_prompts`, `decode_on_device`, `preprocess_on_device`: exact levers
  (`caches.py`, `decode.py`, `preprocess.py`): the ControlNet's condition embedding once per call, a
  prompt's text-encoder output once per prompt, the images turned to 8 bits on the device, the control
  maps and init images sent as 8 bits and scaled there.
- `approximate`: the output-changing levers (`approximations.py`), off unless named.
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
# The convolution blocks `compile_convs` adds (the UNet's, the ControlNet's and the VAE decoder's).
CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
# Output-changing levers: each changes the images, so none is on unless named (`--approximate`).
APPROXIMATIONS: dict[str, str] = {
    "controlnet-cond-only": "the ControlNet runs on the conditional half of the CFG batch; both halves get its residuals",
    "cfg-cut": "classifier-free guidance stops where the ControlNet does (control_guidance_end): one UNet "
    "batch instead of two for the rest of the steps",
    "step-cache": "First Block Cache on a diffusion transformer (Z-Image): a step whose first block changed little "
    "since the last full step reuses that step's change through the other blocks (step_cache.py)",
}
# The approximations each kind of model applies; the others are named in the run record as not applied.
UNET_APPROXIMATIONS = frozenset({"controlnet-cond-only", "cfg-cut"})


@dataclass(frozen=True)
class Speedups:
    skip_idle_controlnet: bool = True
    channels_last: bool = True  # GPUs only: on a CPU it is slower
    fuse_qkv: bool = False
    compile: CompileKind = "none"
    compile_mode: str | None = None
    compile_after: int = 1  # calls of a shape before one compiles for it (compile_policy.py)
    compile_convs: bool = False
    inductor_tuning: bool = False
    fp8: bool = False
    cache_condition: bool = True
    cache_prompts: bool = True
    decode_on_device: bool = True
    preprocess_on_device: bool = True
    approximate: frozenset[str] = frozenset()

    def __post_init__(self):
        if self.compile not in COMPILE_KINDS:
            raise EngineOptionError(f"--compile: must be one of {', '.join(COMPILE_KINDS)} (got {self.compile!r})")
        unknown = sorted(set(self.approximate) - set(APPROXIMATIONS))
        if unknown:
            raise EngineOptionError(
                f"--approximate: unknown {', '.join(unknown)}; choose from {', '.join(APPROXIMATIONS)}"
            )
        if "cfg-cut" in self.approximate and not self.skip_idle_controlnet:
            raise EngineOptionError("--approximate cfg-cut needs the idle ControlNet skipped (skip_idle_controlnet)")
        if self.compile_after < 1:
            raise EngineOptionError(f"--compile-after: must be at least 1 (got {self.compile_after})")
        if "step-cache" in self.approximate and self.compile == "full":
            raise EngineOptionError(
                "--approximate step-cache: not with --compile full (its per-step decision would be compiled "
                "into the model); use --compile regional"
            )
        if self.fp8 and not self.compiles:
            raise EngineOptionError("fp8 needs --compile: eager float8 is slower than bfloat16")

    @property
    def compiles(self) -> bool:
        return self.compile != "none"

    @property
    def marks_steps(self) -> bool:
        """CUDA graphs (inductor's "reduce-overhead") must be told where each denoising step begins."""
        return self.compiles and self.compile_mode == "reduce-overhead"

    def compiled_blocks(self) -> tuple[str, ...]:
        return REPEATED_BLOCKS + (CONV_BLOCKS if self.compile_convs else ())


def parse_approximations(words: str | None) -> frozenset[str]:
    """`--approximate cfg-cut,controlnet-cond-only` → the set (checked by `Speedups`)."""
    return frozenset(word.strip() for word in (words or "").split(",") if word.strip())


def prepare_denoiser(module: torch.nn.Module, speedups: Speedups, on_gpu: bool) -> torch.nn.Module:
    """Apply the levers to a UNet or a ControlNet in place (called once per module, at load)."""
    if speedups.fuse_qkv:  # before fp8: the fused projections are quantized as one
        fuse_attention_projections(module)
    if speedups.fp8:
        quantize_fp8(module, REPEATED_BLOCKS)
    if speedups.channels_last and on_gpu:
        module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub omits it
    if speedups.compile == "regional":
        compile_blocks(module, speedups.compile_mode, speedups.compiled_blocks())
    elif speedups.compile == "full":
        compile_whole(module, speedups.compile_mode)
    return module


def prepare_decoder(vae: torch.nn.Module, speedups: Speedups) -> None:
    """`compile_convs`: the VAE decoder compiles as a whole (it runs once per call, on one shape a size)."""
    if speedups.compile_convs and speedups.compiles:
        _configure_dynamo()
        vae.decoder.compile(fullgraph=True, mode=speedups.compile_mode)  # type: ignore[union-attr]


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


# Linears left in bf16 under fp8: the cross-attention k/v see only the 77 (or so) text tokens, a
# matmul too small for fp8's scaling to pay; fused, they are one `to_kv`.
FP8_SKIPPED_NAMES = ("attn2.to_k", "attn2.to_v", "attn2.to_kv")


def fp8_targets(module: torch.nn.Module, block_names: tuple[str, ...]) -> list[str]:
    """The Linear layers fp8 converts: those inside a compiled block (`block_names`), less the
    cross-attention k/v. Embedding MLPs (time, text, control type) sit outside the blocks: left out."""
    inside: set[str] = set()
    for name, sub in module.named_modules():
        if type(sub).__name__ in block_names:
            inside.update(f"{name}.{child}" for child, _ in sub.named_modules() if child)
    return [
        name
        for name, sub in module.named_modules()
        if isinstance(sub, torch.nn.Linear) and name in inside and not name.endswith(FP8_SKIPPED_NAMES)
    ]


def quantize_fp8(module: torch.nn.Module, block_names: tuple[str, ...]) -> int:
    """float8 dynamic activations × float8 weights with per-row scales (torchao) on `fp8_targets`."""
    if not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)):
        raise EngineOptionError("fp8 needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper)")
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError:
        raise EngineOptionError("fp8 needs torchao: pip install torchao") from None
    targets = set(fp8_targets(module, block_names))
    quantize_(
        module,
        Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
        filter_fn=lambda sub, name: name in targets,
    )
    return len(targets)


def skip_idle_controlnet(
    net: torch.nn.Module, idle: Any = (None, None), tuple_calls_only: bool = True
) -> torch.nn.Module:
    """Make `net` return `idle` (no residuals), without running, when its conditioning scale is 0.

    The UNet treats "no residuals" (`(None, None)`) as "no ControlNet", and the Z-Image transformer its
    `controlnet_block_samples=None` (`idle=None`, `tuple_calls_only=False`: its pipeline calls the net
    positionally); x + 0·r == x, so the output is unchanged either way.
    `net.skipped_steps` and `net.run_steps` count what happened (the tests and the bench read them).
    """
    if getattr(net, "_ref2img_skips_idle", False):
        return net
    counted: Any = net  # nn.Module types its attributes as tensors or modules; these are plain counters
    forward = net.forward

    @functools.wraps(forward)
    def forward_unless_idle(*args, conditioning_scale=1.0, **kwargs):
        # The pipelines ask for a tuple (return_dict=False); anyone else gets the plain forward.
        if (not tuple_calls_only or kwargs.get("return_dict") is False) and _is_zero(conditioning_scale):
            counted.skipped_steps += 1
            return idle
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
