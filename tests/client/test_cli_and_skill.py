"""The CLI through the SDK, and the skill's scripts exactly as its SKILL.md shows them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from ref2img.cli import app

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def env_for(server, credentials) -> dict:
    return {"REF2IMG_BASE_URL": server.url, "REF2IMG_APP_KEY": credentials[0], "REF2IMG_APP_SECRET": credentials[1]}


@pytest.mark.slow
def test_generate_through_a_server(server, credentials, astronaut, tmp_path):
    reference = tmp_path / "ref.png"
    astronaut.save(reference)
    result = runner.invoke(
        app,
        [
            "generate",
            str(reference),
            "an astronaut",
            "-c",
            "depth",
            "-W",
            "600",
            "-H",
            "512",
            "--batch",
            "2",
            "--seed",
            "3",
            "--out",
            str(tmp_path / "out"),
            "--json",
        ],
        env=env_for(server, credentials),
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["server"] == server.url and record["seeds"] == [3, 4] and len(record["urls"]) == 2
    assert [Image.open(path).size for path in record["images"]] == [(600, 512)] * 2
    assert (tmp_path / "out" / f"{record['task_id']}.json").exists()


def masked_pair(astronaut, tmp_path) -> tuple[Path, Path]:
    from PIL import ImageDraw

    image, mask = tmp_path / "image.png", tmp_path / "mask.png"
    astronaut.resize((512, 512)).save(image)
    painted = Image.new("L", (512, 512), 0)
    ImageDraw.Draw(painted).rectangle((100, 100, 300, 260), fill=255)
    painted.save(mask)
    return image, mask


@pytest.mark.slow
def test_repaint_through_a_server_uploads_the_files_and_keeps_the_unmasked_pixels(
    server, credentials, astronaut, tmp_path
):
    import numpy as np

    image, mask = masked_pair(astronaut, tmp_path)
    result = runner.invoke(
        app,
        [
            "repaint",
            str(image),
            "a golden visor",
            "--mask",
            str(mask),
            "--seed",
            "9",
            "--server",
            server.url,
            "--out",
            str(tmp_path / "out"),
            "--json",
        ],
        env=env_for(server, credentials),
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["seeds"] == [9] and len(record["images"]) == 1
    outside = np.asarray(Image.open(mask)) <= 127
    assert (
        np.asarray(Image.open(record["images"][0]).convert("RGB"))[outside] == np.asarray(Image.open(image))[outside]
    ).all()


@pytest.mark.slow
def test_task_commands(server, credentials, astronaut, tmp_path):
    from ref2img import Client

    with Client(*credentials, base_url=server.url) as client:
        task_id = client.create("p", astronaut, "edge")
    env = env_for(server, credentials)
    waited = runner.invoke(app, ["task", "wait", task_id, "--out", str(tmp_path), "--json"], env=env)
    assert waited.exit_code == 0, waited.output
    assert json.loads(waited.stdout)["status"] == 3 and list(tmp_path.glob(f"{task_id}-1.png"))
    got = runner.invoke(app, ["task", "get", task_id, "--json"], env=env)
    assert json.loads(got.stdout)["status_name"] == "succeeded"
    cancelled = runner.invoke(app, ["task", "cancel", task_id, "--json"], env=env)
    assert json.loads(cancelled.stdout)["status"] == 3  # already done: cancel changes nothing
    missing = runner.invoke(app, ["task", "get", "t_nope"], env=env)
    assert missing.exit_code == 1 and "680004" in missing.stderr


@pytest.mark.slow
def test_remote_errors_are_one_line(server, credentials):
    env = env_for(server, credentials)
    bad = runner.invoke(app, ["generate", "https://x/y.png", "p", "-W", "9000", "--server", server.url], env=env)
    assert bad.exit_code == 2 and "width" in bad.stderr
    wrong = runner.invoke(app, ["task", "get", "t1"], env={**env, "REF2IMG_APP_SECRET": "sk_bad"})
    assert wrong.exit_code == 1 and "140013" in wrong.stderr and "Traceback" not in wrong.output
    nokey = runner.invoke(
        app,
        ["task", "get", "t1"],
        env={"REF2IMG_BASE_URL": server.url, "REF2IMG_APP_KEY": "", "REF2IMG_APP_SECRET": ""},
    )
    assert nokey.exit_code == 2 and "REF2IMG_APP_KEY" in nokey.stderr


def test_token_prints_only_when_asked():
    quiet = runner.invoke(app, ["token", "ak", "sk"])
    assert quiet.exit_code == 0 and quiet.stdout == "" and "credential" in quiet.stderr
    shown = runner.invoke(app, ["token", "ak", "sk", "--print"])
    assert shown.stdout.strip() == "Basic YWs6c2s="


def run_script(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, **env}
    )


@pytest.mark.slow
def test_skill_command_line(server, credentials, image_host):
    result = run_script(
        [
            "scripts/tomoviee_img2img_client.py",
            *credentials,
            "a cat",
            image_host.url("/astronaut.png"),
            "0",
            "512",
            "512",
            "1",
            "0.5",
        ],
        env_for(server, credentials),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Task created: " in result.stdout and "Task completed" in result.stdout
    assert "images_path" in result.stdout
    usage = run_script(["scripts/tomoviee_img2img_client.py"], {})
    assert usage.returncode == 1 and "Usage:" in usage.stdout


@pytest.mark.slow
def test_skill_python_example_as_documented(server, credentials, image_host):
    code = f"""
from scripts.tomoviee_img2img_client import TomovieeImg2ImgClient

client = TomovieeImg2ImgClient({credentials[0]!r}, {credentials[1]!r})
task_id = client.image_to_image(
    prompt="Keep subject identity and posture, transform scene to modern office, photorealistic lighting",
    reference_image={image_host.url("/astronaut.png")!r},
    control_type="2",
    init_image={image_host.url("/astronaut.jpg")!r},
    width=1024,
    height=1024,
    batch_size=1,
    control_intensity=0.5,
)

result = client.poll_until_complete(task_id)
import json
image_url = json.loads(result["result"])["images_path"][0]
print(image_url)
from scripts.tomoviee_image_to_image_client import TomovieeClient
assert TomovieeClient is TomovieeImg2ImgClient
"""
    result = run_script(["-c", code], {"REF2IMG_BASE_URL": server.url})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(server.url + "/v1/files/results/")


@pytest.mark.slow  # over 5 s on the 2-core machine
def test_skill_failure_is_an_exception_with_the_reason(server, credentials):
    code = f"""
from scripts.tomoviee_img2img_client import TomovieeClient
client = TomovieeClient({credentials[0]!r}, {credentials[1]!r})
task_id = client.image_to_image(prompt="p", reference_image="http://127.0.0.1:9/x.png", control_type="0")
try:
    client.poll_until_complete(task_id, poll_interval=1, timeout=60)
except Exception as exc:
    print("raised:", exc)
"""
    result = run_script(["-c", code], {"REF2IMG_BASE_URL": server.url})
    assert "raised: Task failed: " in result.stdout and "could not fetch" in result.stdout, result.stderr


def test_auth_token_script():
    result = run_script(["scripts/generate_auth_token.py", "ak", "sk"], {})
    assert result.returncode == 0 and result.stdout.strip() == "Authorization: Basic YWs6c2s="
    assert "credential" in result.stderr
