"""`ref2img mcp`, driven by the MCP SDK's own client: over stdio (the server a subprocess, as desktop
clients start it) and once over streamable HTTP; on the tiny model, and against a running server."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
from PIL import Image

pytest.importorskip("mcp", reason="the mcp extra is not installed")

from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.types import ImageContent

from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from ref2img.images import ImageInputError
from ref2img.mcp_server.inputs import InputGuard
from ref2img.safe_http import SafeHttp

from .server.conftest import ImageHost, Server, free_port, png_bytes

STEPS = 6  # the tiny model's denoising steps in these tests: enough progress notifications to watch


def stdio(*args: str) -> StdioServerParameters:
    # The SDK starts the server with a minimal environment; the model must never be fetched.
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "ref2img.cli", "mcp", *args],
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": os.environ.get("HF_HOME", "/nonexistent")},
    )


def local_server(tiny_model: Path, out: Path, *extra: str, allow: Path | None = None) -> StdioServerParameters:
    # The tools read files only under --allow-dir folders: the test's own temporary folder.
    return stdio(
        "--model",
        str(tiny_model),
        "--part",
        f"steps={STEPS}",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--allow-dir",
        str(allow or out.parent),
        *extra,
    )


@pytest.fixture
def reference(tmp_path, astronaut) -> str:
    path = tmp_path / "reference.png"
    astronaut.resize((256, 256)).save(path)
    return str(path)


@pytest.fixture
def folders(tmp_path, astronaut) -> tuple[Path, Path]:
    """An allowed folder with an image and a symlink to the image in the folder beside it, which is not."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    astronaut.resize((64, 64)).save(allowed / "mine.png")
    astronaut.resize((64, 64)).save(outside / "secret.png")
    (allowed / "link.png").symlink_to(outside / "secret.png")
    return allowed, outside


def run(main):
    return anyio.run(main)


def text_of(result) -> str:
    return "\n".join(block.text for block in result.content if getattr(block, "type", "") == "text")


@pytest.mark.slow  # over 5 s on the 2-core machine
def test_tools_and_their_schemas_carry_the_real_ranges(tiny_sd15, tmp_path):
    async def main():
        async with Client(local_server(tiny_sd15, tmp_path)) as client:
            return (await client.list_tools()).tools

    tools = {tool.name: tool for tool in run(main)}
    assert set(tools) == {"generate", "recognize", "repaint", "get_task", "cancel_task", "list_models"}
    schema = tools["generate"].input_schema
    properties = schema["properties"]
    assert set(schema["required"]) == {"reference", "prompt"}
    assert (properties["width"]["minimum"], properties["width"]["maximum"]) == (512, 2048)
    assert (properties["height"]["minimum"], properties["height"]["maximum"]) == (512, 2048)
    assert (properties["batch_size"]["minimum"], properties["batch_size"]["maximum"]) == (1, 4)
    assert (properties["intensity"]["minimum"], properties["intensity"]["maximum"]) == (0, 1)
    names, numbers = properties["mode"]["anyOf"]
    assert names["enum"] == ["edge", "pose", "subject", "depth"]
    assert (numbers["minimum"], numbers["maximum"]) == (0, 3)
    controls = next(option for option in properties["controls"]["anyOf"] if option.get("type") == "array")
    assert controls["maxItems"] == 3
    outputs = tools["generate"].output_schema  # the structured result, declared
    assert set(outputs["required"]) >= {"task_id", "backend", "images"}
    assert set(tools["repaint"].output_schema["properties"]) >= {"file", "url", "seed"}
    recognize_modes = tools["recognize"].input_schema["properties"]["mode"]["anyOf"]
    assert [option["enum"] for option in recognize_modes] == [["edge", "pose", "subject", "depth"], [0, 1, 2, 3]]
    assert tools["get_task"].annotations.read_only_hint and tools["cancel_task"].annotations.destructive_hint


@pytest.mark.slow  # over 5 s on the 2-core machine
def test_generate_on_the_tiny_model_returns_images_seeds_and_progress(tiny_sd15, tmp_path, reference):
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done, total, message):
        progress.append((done, total, message))

    async def main():
        async with Client(local_server(tiny_sd15, tmp_path / "out")) as client:
            result = await client.call_tool(
                "generate",
                {
                    "reference": reference,
                    "prompt": "a statue",
                    "mode": 0,
                    "width": 512,
                    "height": 640,
                    "batch_size": 2,
                    "seed": 41,
                },
                progress_callback=on_progress,
            )
            task = await client.call_tool("get_task", {"task_id": result.structured_content["task_id"]})
            models = await client.call_tool("list_models", {})
            return result, task, models

    result, task, models = run(main)
    assert not result.is_error, text_of(result)
    previews = [block for block in result.content if isinstance(block, ImageContent)]
    assert len(previews) == 2 and previews[0].mime_type == "image/jpeg"
    preview = Image.open(io.BytesIO(base64.b64decode(previews[0].data)))
    assert max(preview.size) == 512 and preview.size[0] < preview.size[1]  # sized for a chat, same aspect
    images = result.structured_content["images"]
    assert [image["seed"] for image in images] == [41, 42]
    assert [Image.open(image["file"]).size for image in images] == [(512, 640)] * 2  # full size on disk
    assert result.structured_content["backend"] == "local"

    assert any(message.endswith("loading the model (the first job waits for it)") for _, _, message in progress)
    steps = [done for done, total, message in progress if total == STEPS]
    assert steps and steps == sorted(steps) and steps[-1] <= STEPS, progress
    assert all(message.startswith(result.structured_content["task_id"]) for _, _, message in progress)
    assert task.structured_content["status"] == 3 and task.structured_content["files"] == [i["file"] for i in images]
    [selected] = [model for model in models.structured_content["models"] if model["selected"]]
    assert selected["ready"] and models.structured_content["backend"] == "local"


@pytest.mark.slow  # over 5 s on the 2-core machine
def test_repaint_keeps_the_unmasked_pixels_and_reads_only_allowed_files(tiny_sd15, tmp_path, astronaut, folders):
    import numpy as np

    allowed, outside = folders
    image, mask = allowed / "image.png", allowed / "mask.png"
    astronaut.resize((512, 512)).save(image)
    painted = Image.new("L", (512, 512), 0)
    painted.paste(255, (100, 100, 300, 300))
    painted.save(mask)
    Image.new("L", (512, 512), 255).save(outside / "mask.png")

    async def main():
        async with Client(local_server(tiny_sd15, tmp_path / "out", allow=allowed)) as client:
            made = await client.call_tool(
                "repaint", {"image": str(image), "prompt": "a visor", "mask": str(mask), "seed": 5}
            )
            refused = await client.call_tool(
                "repaint", {"image": str(image), "prompt": "a visor", "mask": str(outside / "mask.png")}
            )
            return made, refused

    made, refused = run(main)
    assert not made.is_error, text_of(made)
    assert made.structured_content["seed"] == 5
    out = np.asarray(Image.open(made.structured_content["file"]).convert("RGB"))
    kept = np.asarray(painted) <= 127
    assert (out[kept] == np.asarray(Image.open(image))[kept]).all()
    assert refused.is_error and text_of(refused).startswith("mask: ")  # the argument the agent sent


@pytest.mark.slow  # over 5 s on the 2-core machine
def test_bad_input_is_a_tool_error_naming_the_field_and_its_range(tiny_sd15, tmp_path, reference):
    calls = {
        "width": {"reference": reference, "prompt": "p", "width": 100},
        "batch_size": {"reference": reference, "prompt": "p", "batch_size": 9},
        "mode": {"reference": reference, "prompt": "p", "mode": "sketch"},
        "missing file": {"reference": str(tmp_path / "missing.png"), "prompt": "p"},
        "prompt": {"reference": reference, "prompt": "   "},
        "wire name": {"reference_image": reference, "prompt": "p"},
        "cli name": {"reference": reference, "prompt": "p", "control": "pose"},
        "no reference": {"prompt": "p"},
    }

    async def main():
        async with Client(local_server(tiny_sd15, tmp_path / "out")) as client:
            answers = {field: await client.call_tool("generate", arguments) for field, arguments in calls.items()}
            answers["task_id"] = await client.call_tool("get_task", {"task_id": "t_nope"})
            answers["recognize"] = await client.call_tool("recognize", {"image": reference, "mode": "sideways"})
            subject = await client.call_tool("recognize", {"image": reference, "mode": "subject"})
            return answers, subject

    answers, subject = run(main)
    assert not subject.is_error and Image.open(subject.structured_content["file"]).size == Image.open(reference).size
    assert all(answer.is_error for answer in answers.values())
    texts = {field: text_of(answer) for field, answer in answers.items()}
    # One line each, in the CLI's words, naming the argument as the agent sent it.
    assert texts["width"] == "width: must be an integer from 512 to 2048 (got 100)"
    assert texts["batch_size"] == "batch_size: must be an integer from 1 to 4 (got 9)"
    assert texts["mode"].startswith("mode: must be one of edge, pose, subject, depth or an integer from 0 to 3")
    assert texts["missing file"].startswith("reference: no such file")
    assert texts["prompt"].startswith("prompt: must be a non-empty string")
    assert texts["wire name"].startswith("reference_image: not an argument of generate (the reference argument?)")
    assert texts["cli name"].startswith("control: not an argument of generate (the mode argument?); it takes reference")
    assert texts["no reference"].startswith("reference: required, a non-empty string")
    assert texts["task_id"] == "task_id: no task 't_nope'"
    assert texts["recognize"].startswith("mode: must be one of edge, pose, subject, depth or one of 0, 1, 2, 3")
    assert all("\n" not in text and "pydantic" not in text and "Traceback" not in text for text in texts.values())


@pytest.mark.slow  # over 5 s on the 2-core machine
def test_a_missing_model_names_the_pull_command(tmp_path, reference):
    async def main():
        async with Client(stdio("--model", "sd15", "--device", "cpu", "--out", str(tmp_path))) as client:
            return await client.call_tool(
                "generate", {"reference": reference, "prompt": "p", "width": 512, "height": 512}
            )

    result = run(main)
    assert result.is_error and "ref2img models pull" in text_of(result), text_of(result)


@pytest.mark.slow
def test_cancel_task_and_a_client_cancellation_both_stop_the_job(tiny_sd15, tmp_path, reference):
    arguments = {"reference": reference, "prompt": "p", "width": 512, "height": 512}

    async def main():
        async with Client(local_server(tiny_sd15, tmp_path / "out", "--part", "steps=400")) as client:
            # 1. cancel_task, while the generate call waits for its job
            seen: list[str] = []

            async def remember(done, total, message):
                seen.append(message.split(":")[0])

            outcome: dict = {}

            async def call() -> None:
                outcome["result"] = await client.call_tool("generate", arguments, progress_callback=remember)

            async with anyio.create_task_group() as group:
                group.start_soon(call)
                while not seen:
                    await anyio.sleep(0.05)
                cancelled = await client.call_tool("cancel_task", {"task_id": seen[0]})
            first = await client.call_tool("get_task", {"task_id": seen[0]})

            # 2. the client gives up on its call (notifications/cancelled)
            seen.clear()
            with anyio.move_on_after(60):
                async with anyio.create_task_group() as group:
                    group.start_soon(client.call_tool, "generate", arguments, None, remember)
                    while not seen:
                        await anyio.sleep(0.05)
                    group.cancel_scope.cancel()
            deadline = time.monotonic() + 30
            while True:
                second = await client.call_tool("get_task", {"task_id": seen[0]})
                if second.structured_content["status"] != 2 or time.monotonic() > deadline:
                    break
                await anyio.sleep(0.2)
            return outcome["result"], cancelled, first, second

    result, cancelled, first, second = run(main)
    assert result.is_error and "cancelled" in text_of(result)
    assert not cancelled.is_error
    assert first.structured_content["status"] == 5 and first.structured_content["progress"] < 100
    assert second.structured_content["status"] == 5, second.structured_content
    assert not list((tmp_path / "out").glob("*.png"))  # neither job finished


def start_http_mcp(tiny_sd15, tmp_path, *extra: str, env: dict[str, str] | None = None):
    port = free_port()
    log = open(tmp_path / "mcp-http.log", "ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ref2img.cli",
            "mcp",
            "--http",
            f"127.0.0.1:{port}",
            "--model",
            str(tiny_sd15),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "out"),
            "--allow-dir",
            str(tmp_path),
            *extra,
        ],
        stdout=log,
        stderr=log,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
            return process, port
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError((tmp_path / "mcp-http.log").read_text())


def with_token(url: str, token: str):
    return streamable_http_client(url, http_client=create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}))


@pytest.mark.slow  # over 5 s on the 2-core machine
def test_streamable_http_needs_its_token_and_checks_host_and_origin(tiny_sd15, tmp_path, reference):
    token = "mcp_test_" + "x" * 30
    process, port = start_http_mcp(tiny_sd15, tmp_path, env={"REF2IMG_MCP_TOKEN": token})
    url = f"http://127.0.0.1:{port}/mcp"
    hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    plain = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    try:
        answers = {
            "none": httpx.post(url, json=hello, headers=plain),
            "wrong": httpx.post(url, json=hello, headers={**plain, "Authorization": "Bearer mcp_guess"}),
            "rebound host": httpx.post(
                url, json=hello, headers={**plain, "Authorization": f"Bearer {token}", "Host": f"evil.example:{port}"}
            ),
            "other origin": httpx.post(
                url, json=hello, headers={**plain, "Authorization": f"Bearer {token}", "Origin": "http://evil.example"}
            ),
        }

        async def main():
            async with Client(with_token(url, token)) as client:
                tools = (await client.list_tools()).tools
                control_map = await client.call_tool("recognize", {"image": reference, "mode": "edge"})
                return tools, control_map

        tools, control_map = run(main)
    finally:
        process.terminate()
        process.wait(15)
    assert answers["none"].status_code == 401 and answers["wrong"].status_code == 401
    assert answers["none"].headers["www-authenticate"].startswith("Bearer")
    assert answers["rebound host"].status_code == 421 and answers["other origin"].status_code == 403
    assert len(tools) == 6
    assert not control_map.is_error, text_of(control_map)
    assert Image.open(control_map.structured_content["file"]).size == (256, 256)
    assert token not in (tmp_path / "mcp-http.log").read_text()  # given, so never printed


@pytest.mark.slow
def test_a_generated_token_is_printed_once_and_other_binds_need_one_given(tiny_sd15, tmp_path):
    process, _port = start_http_mcp(tiny_sd15, tmp_path, env={"REF2IMG_MCP_TOKEN": ""})
    process.terminate()
    process.wait(15)
    log = (tmp_path / "mcp-http.log").read_text()
    assert log.count("Authorization: Bearer mcp_") == 1, log

    refused = subprocess.run(
        [sys.executable, "-m", "ref2img.cli", "mcp", "--http", f"0.0.0.0:{free_port()}", "--model", str(tiny_sd15)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "REF2IMG_MCP_TOKEN": ""},
    )
    assert refused.returncode == 2
    assert "--token-file" in refused.stderr and "REF2IMG_MCP_TOKEN" in refused.stderr, refused.stderr


@pytest.mark.slow
def test_tools_read_files_only_in_the_allowed_folders_and_urls_only_from_public_hosts(
    tiny_sd15, tmp_path, astronaut, folders
):
    allowed, outside = folders
    host = ImageHost({"/astronaut.png": (png_bytes(astronaut.resize((64, 64))), "image/png")})
    sources = {
        "allowed": str(allowed / "mine.png"),
        "outside": str(outside / "secret.png"),
        "missing": str(outside / "missing.png"),
        "symlink": str(allowed / "link.png"),
        "dotdot": str(allowed / ".." / "outside" / "secret.png"),
        "loopback url": host.url("/astronaut.png"),
        "metadata url": "http://169.254.169.254/latest/meta-data/",
    }

    async def main():
        async with Client(local_server(tiny_sd15, tmp_path / "out", allow=allowed)) as client:
            return {
                name: await client.call_tool("recognize", {"image": source, "mode": "edge"})
                for name, source in sources.items()
            }

    try:
        answers = run(main)
        guard = InputGuard([allowed], SafeHttp(allow_private=True))  # what --allow-private-urls builds
        fetched = guard.load(host.url("/astronaut.png"))
    finally:
        host.close()
    assert not answers["allowed"].is_error, text_of(answers["allowed"])
    refusals = {
        name: text_of(answer).replace(sources[name], "PATH")
        for name, answer in answers.items()
        if name in ("outside", "missing", "symlink", "dotdot")
    }
    assert all(answers[name].is_error for name in refusals)
    assert len(set(refusals.values())) == 1, refusals  # a refusal reads exactly as a missing file
    assert "no such file" in refusals["missing"]
    for name in ("loopback url", "metadata url"):
        assert answers[name].is_error and "loopback, private" in text_of(answers[name]), text_of(answers[name])
    assert fetched.size == (64, 64)
    with pytest.raises(ImageInputError, match="no such file"):
        InputGuard([allowed], SafeHttp()).load("/dev/zero")


@pytest.mark.slow
def test_the_server_backend_against_a_running_ref2img_serve(tiny_sd15, tmp_path, reference):
    server = Server(tmp_path / "data", tiny_sd15).start()
    try:
        app_key, secret = server.new_key()
        parameters = stdio("--server", server.url, "--out", str(tmp_path / "out"), "--allow-dir", str(tmp_path))
        parameters.env.update(REF2IMG_APP_KEY=app_key, REF2IMG_APP_SECRET=secret)
        progress: list = []

        async def on_progress(done, total, message):
            progress.append((done, total, message))

        async def main():
            async with Client(parameters) as client:
                result = await client.call_tool(
                    "generate",
                    {"reference": reference, "prompt": "p", "mode": "depth", "width": 512, "height": 512, "seed": 5},
                    progress_callback=on_progress,
                )
                task = await client.call_tool("get_task", {"task_id": result.structured_content["task_id"]})
                # a control's local image is read here, within --allow-dir, and uploaded; one outside is refused
                controlled = await client.call_tool(
                    "generate",
                    {
                        "reference": reference,
                        "prompt": "p",
                        "mode": "subject",
                        "width": 512,
                        "height": 512,
                        "controls": [{"type": "pose"}, {"type": "depth", "image": reference}],
                    },
                )
                outside = await client.call_tool(
                    "generate",
                    {
                        "reference": reference,
                        "prompt": "p",
                        "mode": "edge",
                        "controls": [{"type": "edge", "image": "/etc/hostname"}],
                    },
                )
                return result, task, controlled, outside

        result, task, controlled, outside = run(main)
    finally:
        server.stop()
    assert not controlled.is_error, text_of(controlled)
    assert outside.is_error and "controls[0].image: no such file in the allowed folders" in text_of(outside)
    assert not result.is_error, text_of(result)
    [image] = result.structured_content["images"]
    assert result.structured_content["backend"] == "server" and image["seed"] == 5
    assert image["url"].startswith(server.url) and Image.open(image["file"]).size == (512, 512)
    assert task.structured_content["status"] == 3
    # The same file (each reading signs its URL afresh, with its own expiry).
    assert [url.split("?")[0] for url in task.structured_content["urls"]] == [image["url"].split("?")[0]]
    assert progress and all(message.startswith(result.structured_content["task_id"]) for _, _, message in progress)


def test_the_input_guard_reads_only_allowed_files_and_public_urls(folders):
    """The rules of `--allow-dir` and the URL guard, in process (the slow test above runs them through
    a real MCP client)."""
    allowed, outside = folders
    guard = InputGuard([allowed], SafeHttp())
    assert guard.load(str(allowed / "mine.png")).size == (64, 64)
    messages = set()
    for source in (
        outside / "secret.png",
        outside / "missing.png",
        allowed / "link.png",
        allowed / "nope.png",
        allowed / ".." / "outside" / "secret.png",
        allowed,
        "/dev/zero",
    ):
        with pytest.raises(ImageInputError) as refused:
            guard.load(str(source))
        messages.add(str(refused.value).replace(str(source), "PATH"))
    assert len(messages) == 1 and "no such file" in messages.pop()
    for url in ("http://127.0.0.1:22/", "http://169.254.169.254/latest/meta-data/", "http://[::1]/x.png"):
        with pytest.raises(ImageInputError, match="loopback, private"):
            guard.load(url)


def test_a_data_dir_below_an_allowed_folder_stays_closed_unless_named(tmp_path, astronaut):
    """The README's layout: `ref2img mcp` started in the folder that holds a server's data dir. Another
    tenant's upload there is refused like a missing file; the operator who names the data dir opens it."""
    from ref2img.tasks.private_files import mark_data_dir
    from ref2img.tasks.storage import open_storage

    work = tmp_path / "work"
    data_dir = work / "d1"
    data_dir.mkdir(parents=True)
    mark_data_dir(data_dir)  # as the server's Backend leaves it
    storage = open_storage(data_dir, b"k" * 32)
    buffer = io.BytesIO()
    astronaut.resize((64, 64)).save(buffer, format="PNG")
    theirs = storage.path(storage.save_upload("f_theirs", buffer.getvalue(), "png"))
    older = work / "old-data"  # a data dir an older version made: known by its database
    (older / "files").mkdir(parents=True)
    (older / "ref2img.db").touch()
    astronaut.resize((64, 64)).save(older / "files" / "x.png")
    astronaut.resize((64, 64)).save(work / "mine.png")

    default = InputGuard([work], SafeHttp())  # what `ref2img mcp` allows with no --allow-dir, run in work/
    assert default.load(str(work / "mine.png")).size == (64, 64)
    for source in (theirs, older / "files" / "x.png"):
        with pytest.raises(ImageInputError, match="no such file in the allowed folders"):
            default.load(str(source))
    assert InputGuard([data_dir], SafeHttp()).load(str(theirs)).size == (64, 64)  # named by the operator
