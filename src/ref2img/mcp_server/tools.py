"""The MCP tools: generate, recognize, repaint, get_task, cancel_task, list_models.

Each tool's JSON schema carries the wire protocol's real ranges and enums (from `protocol.py`), so a
client can check its arguments before it calls. Bad input still gets a tool error whose text names the
field and its allowed range, never a traceback or a protocol error.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.mcpserver.tools import Tool
from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from PIL import Image
from pydantic import BaseModel, Field, ValidationError

from ref2img._version import __version__
from ref2img.engines.base import EngineError
from ref2img.mcp_server.results import Generated, Report, TaskState
from ref2img.protocol import (
    BATCH_SIZE_RANGE,
    INTENSITY_RANGE,
    MAX_PROMPT_CHARS,
    GUIDANCE_RANGE,
    SEED_RANGE,
    SIZE_RANGE,
    STEPS_RANGE,
    MAX_CONTROLS,
    MAX_LORAS,
    Control,
    ControlType,
    CreateRequest,
    LoraRef,
    ParameterError,
    RepaintRequest,
    parse_create_request,
    parse_repaint_request,
    renamed_field,
)

PREVIEW_PX = 512  # the longest side of the images shown in the chat; full-size files are in the result
MODE_NAMES = [member.name.lower() for member in ControlType]


class Backend(Protocol):
    name: str
    out_dir: Path

    async def generate(self, request: CreateRequest, report: Report) -> Generated: ...
    async def recognize(self, image: str, mode: ControlType, report: Report) -> Generated: ...
    async def repaint(self, request: RepaintRequest, report: Report) -> Generated: ...
    async def get_task(self, task_id: str) -> TaskState | None: ...
    async def cancel_task(self, task_id: str) -> TaskState | None: ...
    def close(self) -> None: ...


Mode = Annotated[
    Literal["edge", "pose", "subject", "depth"] | Annotated[int, Field(ge=0, le=3)],
    Field(description="what of the reference to keep: edge (0), pose (1), subject (2) or depth (3)"),
]
ImageSource = Annotated[str, Field(min_length=1, description="a local file path, an http(s) URL or a data: URI")]

INSTRUCTIONS = (
    "ref2img makes new images from a reference image and a prompt, keeping the reference's edges (mode "
    "edge), a person's pose (pose), a subject's identity (subject) or its depth (depth). Call `generate`; "
    "`recognize` shows the edge, pose or depth map that a reference gives, or its subject's mask; `repaint` "
    "redraws the masked area of an image from a prompt. Images come back small for the "
    "chat; the result's structured content has the full-size files and each image's seed."
)


# The structured results (each tool's `outputSchema`): full-size files, their URLs where served, seeds.
class ImageOut(BaseModel):
    file: str
    url: str | None
    seed: int


class GenerateOut(BaseModel):
    task_id: str
    backend: str
    images: list[ImageOut]


class MapOut(BaseModel):
    task_id: str
    backend: str
    file: str
    url: str | None


class RepaintOut(MapOut):
    seed: int | None


# Names an agent may send from the wire protocol or the CLI, and the argument each tool calls them.
ARGUMENT_HINTS = {
    "reference_image": "reference",
    "image": "reference",
    "control_type": "mode",
    "control": "mode",
    "control_intensity": "intensity",
    "n": "batch_size",
    "batch": "batch_size",
    "negative": "negative_prompt",
    "mask_url": "mask",
    "init_image": "image",
    "init": "init_image",
}
# The wire fields a tool's errors name, as that tool's arguments (a missing file is the agent's `reference`).
GENERATE_ARGUMENTS = {"reference_image": "reference", "control_type": "mode", "control_intensity": "intensity"}
REPAINT_ARGUMENTS = {"init_image": "image", "mask_url": "mask"}


class ToolServer(MCPServer):
    """MCPServer whose tools refuse arguments they do not have, and whose errors are one line in the
    CLI's words (`width: must be an integer from 512 to 2048 (got 100)`), never a validation dump."""

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        tool = self._tool_manager.get_tool(name)
        if tool is not None:
            check_arguments(tool, arguments)
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError:
            raise
        except ToolError as exc:
            raise ToolError(str(exc).removeprefix(f"Error executing tool {name}: ")) from exc.__cause__


def check_arguments(tool: Tool, arguments: dict[str, Any]) -> None:
    """An unknown argument, a missing one, or a value out of its range: one line naming it and what it
    allows, from the tool's own schema (the ranges `protocol.py` gives) and its own validation."""
    properties: dict[str, Any] = tool.parameters.get("properties", {})
    for name in arguments:
        if name not in properties:
            hint = ARGUMENT_HINTS.get(name)
            meant = f" (the {hint} argument?)" if hint in properties else ""
            raise ToolError(f"{name}: not an argument of {tool.name}{meant}; it takes {', '.join(properties)}")
    try:
        tool.fn_metadata.validate_arguments(arguments)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = [str(part) for part in error["loc"]]
        name = where[0] if where else "arguments"
        if error["type"] == "missing" and name in properties:
            raise ToolError(f"{name}: required, {_allowed(properties[name])}") from None
        if name in properties and _scalar(properties[name]):  # a union's error is under its arm: said whole
            value = arguments.get(name, error["input"])
            raise ToolError(f"{name}: must be {_allowed(properties[name])} (got {_shown(value)})") from None
        raise ToolError(f"{'.'.join(where)}: {error['msg']}") from None


def _scalar(spec: dict[str, Any]) -> bool:
    return all(option.get("type") not in ("array", "object") for option in spec.get("anyOf", [spec]))


def _allowed(spec: dict[str, Any]) -> str:
    """What a JSON schema property allows, in words: "an integer from 512 to 2048", "one of edge, pose"."""
    words = []
    for option in spec.get("anyOf", [spec]):
        kind = option.get("type")
        if "enum" in option:
            words.append("one of " + ", ".join(map(str, option["enum"])))
        elif kind in ("integer", "number") and "minimum" in option:
            article = "an integer" if kind == "integer" else "a number"
            words.append(f"{article} from {option['minimum']} to {option['maximum']}")
        elif kind == "string":
            limit = f" of at most {option['maxLength']} characters" if "maxLength" in option else ""
            words.append(f"a non-empty string{limit}")
        elif kind == "null":
            words.append("null")
        elif kind:
            words.append(f"a{'n' if kind[0] in 'aeiou' else ''} {kind}")
    return " or ".join(words) or "a value"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def build_server(backend: Backend, models: Any = None) -> MCPServer:
    """The MCP server over `backend`; `models()` lists the presets for `list_models`."""
    server: MCPServer = ToolServer("ref2img", instructions=INSTRUCTIONS, version=__version__)

    @server.tool(
        title="Generate images from a reference",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=True),
    )
    async def generate(
        reference: Annotated[
            str,
            Field(min_length=1, description="the reference image: a local file path, an http(s) URL or a data: URI"),
        ],
        prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="what to make of it")],
        ctx: Context,
        mode: Mode = "edge",
        intensity: Annotated[
            float,
            Field(ge=INTENSITY_RANGE[0], le=INTENSITY_RANGE[1], description="how closely to follow the reference"),
        ] = 0.5,
        width: Annotated[int, Field(ge=SIZE_RANGE[0], le=SIZE_RANGE[1], description="output width in pixels")] = 1024,
        height: Annotated[int, Field(ge=SIZE_RANGE[0], le=SIZE_RANGE[1], description="output height in pixels")] = 1024,
        batch_size: Annotated[
            int, Field(ge=BATCH_SIZE_RANGE[0], le=BATCH_SIZE_RANGE[1], description="images to make")
        ] = 1,
        seed: Annotated[
            int | None, Field(ge=SEED_RANGE[0], le=SEED_RANGE[1], description="seed of image 1; image k uses seed+k-1")
        ] = None,
        negative_prompt: Annotated[str | None, Field(max_length=MAX_PROMPT_CHARS, description="what to avoid")] = None,
        init_image: Annotated[
            str | None, Field(min_length=1, description="an image to start from (img2img): path, URL or data: URI")
        ] = None,
        controls: Annotated[
            list[Control] | None,
            Field(
                max_length=MAX_CONTROLS,
                description="several controls at once (edge, pose, depth; each from the reference or its own image, "
                "a ready map with map: true); with mode subject, the reference's subject is kept too",
            ),
        ] = None,
        steps: Annotated[
            int | None,
            Field(ge=STEPS_RANGE[0], le=STEPS_RANGE[1], description="denoising steps (default: the model's)"),
        ] = None,
        guidance_scale: Annotated[
            float | None,
            Field(ge=GUIDANCE_RANGE[0], le=GUIDANCE_RANGE[1], description="guidance scale (default: the model's)"),
        ] = None,
        model: Annotated[
            str | None,
            Field(
                min_length=1,
                max_length=100,
                description="which preset makes the images (list_models; default: the server's)",
            ),
        ] = None,
        loras: Annotated[
            list[LoraRef] | None,
            Field(max_length=MAX_LORAS, description="LoRAs of the server by name, each with a weight (-2 to 2)"),
        ] = None,
    ) -> Annotated[CallToolResult, GenerateOut]:
        """Make 1 to 4 new images from a reference image and a prompt."""
        body: dict[str, Any] = {
            "prompt": prompt,
            "reference_image": reference,
            "control_type": _control_type(mode).value,
            "control_intensity": float(intensity),
            "width": width,
            "height": height,
            "batch_size": batch_size,
            "seed": seed,
            "negative_prompt": negative_prompt,
            "init_image": init_image,
            "controls": [control.model_dump(mode="json", exclude_none=True) for control in controls]
            if controls
            else None,
            "steps": steps,
            "guidance_scale": guidance_scale,
            "model": model,
            "loras": [lora.model_dump() for lora in loras] if loras else None,
        }
        with _as_tool_errors(GENERATE_ARGUMENTS):
            request = parse_create_request({key: value for key, value in body.items() if value is not None})
            made = await backend.generate(request, _reporter(ctx))
        seeds = ", ".join(str(s) for s in made.seeds)
        summary = f"{len(made.files)} image(s), seeds {seeds}, task {made.task_id}: " + ", ".join(map(str, made.files))
        images = [
            {"file": str(path), "url": made.urls[i] if i < len(made.urls) else None, "seed": made.seeds[i]}
            for i, path in enumerate(made.files)
        ]
        return _with_previews(made.files, summary, {"task_id": made.task_id, "backend": backend.name, "images": images})

    @server.tool(
        title="Show a reference's control map or subject mask",
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True),
    )
    async def recognize(
        image: Annotated[
            str, Field(min_length=1, description="the image: a local file path, an http(s) URL or a data: URI")
        ],
        ctx: Context,
        mode: Annotated[
            Literal["edge", "pose", "subject", "depth"] | Literal[0, 1, 2, 3],
            Field(description="which map: edge (0), pose (1), the subject's mask (2) or depth (3)"),
        ] = "edge",
    ) -> Annotated[CallToolResult, MapOut]:
        """The edge, pose or depth map that `generate` would condition on, or the subject's foreground mask."""
        with _as_tool_errors({"init_image": "image", "control_type": "mode"}):
            made = await backend.recognize(image, _control_type(mode), _reporter(ctx))
        [path] = made.files
        return _with_previews(
            made.files,
            f"control map: {path}",
            {
                "task_id": made.task_id,
                "backend": backend.name,
                "file": str(path),
                "url": made.urls[0] if made.urls else None,
            },
        )

    @server.tool(title="Repaint part of an image", annotations=ToolAnnotations(open_world_hint=True))
    async def repaint(
        image: Annotated[
            str, Field(min_length=1, description="the image to repaint: a path, an http(s) URL or a data: URI")
        ],
        prompt: Annotated[
            str, Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="what to paint in the masked area")
        ],
        ctx: Context,
        mask: Annotated[
            str | None,
            Field(
                min_length=1,
                description="white where the image is redrawn, at its size (path, URL or data: URI); none: all of it",
            ),
        ] = None,
        seed: Annotated[int | None, Field(ge=SEED_RANGE[0], le=SEED_RANGE[1], description="seed")] = None,
        negative_prompt: Annotated[str | None, Field(max_length=MAX_PROMPT_CHARS, description="what to avoid")] = None,
    ) -> Annotated[CallToolResult, RepaintOut]:
        """Image Repaint (inpainting): the masked area redrawn from the prompt; every other pixel is kept."""
        body = {
            "prompt": prompt,
            "init_image": image,
            "mask_url": mask,
            "seed": seed,
            "negative_prompt": negative_prompt,
        }
        with _as_tool_errors(REPAINT_ARGUMENTS):
            request = parse_repaint_request({key: value for key, value in body.items() if value is not None})
            made = await backend.repaint(request, _reporter(ctx))
        [path] = made.files
        structured = {
            "task_id": made.task_id,
            "backend": backend.name,
            "file": str(path),
            "url": made.urls[0] if made.urls else None,
            "seed": made.seeds[0] if made.seeds else None,
        }
        return _with_previews(
            made.files, f"repainted, seed {structured['seed']}, task {made.task_id}: {path}", structured
        )

    @server.tool(title="A task's state", annotations=ToolAnnotations(read_only_hint=True))
    async def get_task(task_id: Annotated[str, Field(min_length=1, max_length=100)]) -> dict[str, Any]:
        """Status (1 queued, 2 running, 3 done, 4 failed, 5 cancelled, 6 timed out), progress and results."""
        with _as_tool_errors():
            return _known(task_id, await backend.get_task(task_id)).as_dict()

    @server.tool(title="Cancel a task", annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=True))
    async def cancel_task(task_id: Annotated[str, Field(min_length=1, max_length=100)]) -> dict[str, Any]:
        """Stop a queued or running task (a running one stops at its next step)."""
        with _as_tool_errors():
            return _known(task_id, await backend.cancel_task(task_id)).as_dict()

    @server.tool(title="Models", annotations=ToolAnnotations(read_only_hint=True))
    async def list_models() -> dict[str, Any]:
        """The local engine's presets, which are on this machine, and which one this server uses."""
        return {"backend": backend.name, "models": models() if models else []}

    return server


def _control_type(mode: str | int) -> ControlType:
    try:
        return ControlType.parse(mode)
    except ValueError:
        raise ToolError(f"mode: must be one of {', '.join(MODE_NAMES)} or 0 to 3") from None


def _reporter(ctx: Context) -> Report:
    async def report(done: float, total: float, message: str) -> None:
        await ctx.report_progress(done, total, message)  # a no-op unless the client sent a progress token

    return report


def _known(task_id: str, state: TaskState | None) -> TaskState:
    if state is None:
        raise ToolError(f"task_id: no task {task_id!r}")
    return state


@contextlib.contextmanager
def _as_tool_errors(arguments: dict[str, str] | None = None) -> Iterator[None]:
    """Every failure the user can act on, as a tool error in one line (the field and its range first),
    the field spelt as the tool's argument (`arguments`: wire field -> argument)."""
    from ref2img.client import Ref2ImgError
    from ref2img.images import ImageInputError

    try:
        yield
    except (ParameterError, ImageInputError, Ref2ImgError, EngineError) as exc:
        raise ToolError(renamed_field(str(exc), arguments or {})) from None


def _with_previews(files: list[Path], summary: str, structured: dict[str, Any]) -> CallToolResult:
    content: list[Any] = [_preview(path) for path in files]
    content.append(TextContent(type="text", text=summary))
    content.append(TextContent(type="text", text=json.dumps(structured)))  # for clients without structured content
    return CallToolResult(content=content, structured_content=structured)


def _preview(path: Path) -> ImageContent:
    """A JPEG whose longest side is PREVIEW_PX: small enough for a chat window and a model's context."""
    import base64

    with Image.open(path) as image:
        preview = image.convert("RGB")
        preview.thumbnail((PREVIEW_PX, PREVIEW_PX))
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=85)
    return ImageContent(type="image", data=base64.b64encode(buffer.getvalue()).decode(), mime_type="image/jpeg")
