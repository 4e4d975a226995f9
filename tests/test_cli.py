"""The `ref2img` command line: the main job as a real process, the rest through typer's runner."""

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from ref2img.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def photo(tmp_path_factory, astronaut) -> Path:
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    astronaut.save(path)
    return path


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ref2img.cli", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    )


@pytest.mark.slow
def test_generate_main_job_as_a_process(tiny_sd15, photo, tmp_path):
    result = run_cli(
        "generate",
        str(photo),
        "an astronaut on mars",
        "--control",
        "pose",
        "--model",
        str(tiny_sd15),
        "-W",
        "1000",
        "-H",
        "600",
        "--batch",
        "2",
        "--seed",
        "7",
        "--out",
        str(tmp_path),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["seeds"] == [7, 8]
    assert record["preset"] == "tiny" and record["device"] == "cpu"
    assert record["request"]["control_type"] == "1"
    assert set(record["timings_s"]) == {"load", "generate", "total"}
    assert len(record["images"]) == 2
    for path in record["images"]:
        assert Image.open(path).size == (1000, 600)
    assert json.loads((tmp_path / f"{record['run_id']}.json").read_text()) == record
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_models_tiny_then_list(tmp_path):
    built = run_cli("models", "tiny", str(tmp_path / "tiny"), "--family", "sdxl")
    assert built.returncode == 0, built.stderr
    listed = runner.invoke(app, ["models", "list", str(tmp_path / "tiny"), "--json"])
    assert listed.exit_code == 0, listed.output
    [entry] = json.loads(listed.stdout)
    assert entry["family"] == "sdxl" and entry["ready"] is True
    assert {p["part"] for p in entry["parts"]} >= {"base", "controlnet.union", "ip_adapter", "pose_estimator"}


def test_models_tiny_for_every_family_and_an_unknown_one(tmp_path, photo):
    built = runner.invoke(app, ["models", "tiny", str(tmp_path / "z"), "--family", "zimage"])
    assert built.exit_code == 0, built.output
    [entry] = json.loads(runner.invoke(app, ["models", "list", str(tmp_path / "z"), "--json"]).stdout)
    assert entry["family"] == "zimage" and entry["ready"] is True
    assert {p["part"] for p in entry["parts"]} == {
        "base",
        "controlnet.union",
        "extra.controlnet_config",
        "extra.subject_base",
        "depth_estimator",
        "pose_detector",
        "pose_estimator",
        "subject_segmenter",
    }
    made = runner.invoke(
        app,
        [
            "generate",
            str(photo),
            "a lighthouse",
            "--model",
            str(tmp_path / "z"),
            "-c",
            "depth",
            "-W",
            "512",
            "-H",
            "640",
            "-n",
            "2",
            "--seed",
            "5",
            "--out",
            str(tmp_path / "out"),
            "--json",
        ],
    )
    assert made.exit_code == 0, made.output
    record = json.loads(made.stdout)
    assert record["preset"] == "tiny-zimage" and record["seeds"] == [5, 6] and len(record["images"]) == 2
    assert record["ignored"] == []  # depth at guidance 0 with no negative prompt: nothing left unused
    assert record["approximate"] == []  # no output-changing lever unless asked for
    unknown = runner.invoke(app, ["models", "tiny", str(tmp_path / "x"), "--family", "flux9"])
    assert unknown.exit_code == 2 and "--family: must be one of sd15, sdxl, zimage (got 'flux9')" in unknown.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-W", "4000"], "--width: must be an integer from 512 to 2048 (got 4000)"),
        (["--batch", "9"], "--batch: must be an integer from 1 to 4"),
        (["--intensity", "2"], "--intensity: must be a number from 0 to 1"),
        (["-c", "pose=x.png:3"], "--control #1, intensity: "),
        (["-c", "9"], "--control: must be edge, pose, subject, depth or 0..3"),
        (["--approximate", "turbo"], "--approximate: unknown turbo; choose from controlnet-cond-only, cfg-cut"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(tiny_sd15, photo, args, message):
    result = runner.invoke(app, ["generate", str(photo), "a prompt", "--model", str(tiny_sd15), *args])
    assert result.exit_code == 2
    assert message in result.stderr


def test_empty_prompt(tiny_sd15, photo):
    result = runner.invoke(app, ["generate", str(photo), "", "--model", str(tiny_sd15)])
    assert result.exit_code == 2 and "PROMPT: " in result.stderr


def test_unreadable_image(tiny_sd15, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("not a picture")
    result = runner.invoke(app, ["generate", str(fake), "a prompt", "--model", str(tiny_sd15)])
    assert result.exit_code == 2
    assert "REFERENCE: the data is not an image" in result.stderr


def test_missing_model_says_how_to_get_it(photo, tmp_path):
    result = runner.invoke(
        app, ["generate", str(photo), "a prompt", "--model", "sd15", "--device", "cpu", "--out", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "ref2img models pull sd15" in result.stderr
    assert "Traceback" not in result.output and not list(tmp_path.iterdir())


def test_pull_offline_is_one_clear_line():
    result = run_cli("models", "pull", "sd15")
    assert result.returncode == 1
    assert "could not download the base model" in result.stderr and "Traceback" not in result.stderr


def test_recognize_writes_the_map(tiny_sd15, photo, tmp_path):
    target = tmp_path / "maps" / "depth.png"
    result = runner.invoke(
        app, ["recognize", str(photo), "--control", "depth", "--model", str(tiny_sd15), "--out", str(target)]
    )
    assert result.exit_code == 0, result.output
    assert Image.open(target).size == (512, 512)
    mask = tmp_path / "maps" / "subject.png"  # the subject's mask, at the photo's size
    result = runner.invoke(
        app, ["recognize", str(photo), "--control", "subject", "--model", str(tiny_sd15), "--out", str(mask)]
    )
    assert result.exit_code == 0, result.output
    assert Image.open(mask).size == Image.open(photo).size


def test_several_controls_and_the_subject_from_the_command_line(tiny_sd15, photo, tmp_path):
    depth = tmp_path / "depth.png"
    Image.new("RGB", (512, 512), (80, 80, 80)).save(depth)
    made = runner.invoke(
        app,
        [
            "generate",
            str(photo),
            "a statue",
            "-c",
            "subject",
            "-c",
            "pose",
            "-c",
            f"depth=map:{depth}:0.4",
            "--model",
            str(tiny_sd15),
            "--steps",
            "2",
            "-W",
            "512",
            "-H",
            "512",
            "--out",
            str(tmp_path / "out"),
            "--json",
        ],
    )
    assert made.exit_code == 0, made.output
    record = json.loads(made.stdout)
    assert record["request"]["control_type"] == "2"
    assert record["request"]["controls"] == [
        {"type": "pose", "intensity": 0.5, "start": 0.0, "map": False},
        {"type": "depth", "image": str(depth), "intensity": 0.4, "start": 0.0, "map": True},
    ]
    twice = runner.invoke(app, ["generate", str(photo), "p", "-c", "edge", "-c", "edge", "--model", str(tiny_sd15)])
    assert twice.exit_code == 2 and "--control #2, type: edge is given twice" in twice.output


def test_repaint_in_process_keeps_the_unmasked_pixels_and_checks_the_mask(tiny_sd15, astronaut, tmp_path):
    import numpy as np
    from PIL import ImageDraw

    image, mask = tmp_path / "image.png", tmp_path / "mask.png"
    astronaut.resize((512, 512)).save(image)
    painted = Image.new("L", (512, 512), 0)
    ImageDraw.Draw(painted).ellipse((150, 100, 350, 300), fill=255)
    painted.save(mask)
    made = runner.invoke(
        app,
        [
            "repaint",
            str(image),
            "a golden helmet",
            "--mask",
            str(mask),
            "--model",
            str(tiny_sd15),
            "--part",
            "steps=2",
            "--out",
            str(tmp_path / "out"),
            "--json",
        ],
    )
    assert made.exit_code == 0, made.output
    record = json.loads(made.stdout)
    outside = np.asarray(painted) <= 127
    out = np.asarray(Image.open(record["images"][0]).convert("RGB"))
    assert (out[outside] == np.asarray(Image.open(image))[outside]).all()
    painted.resize((256, 256)).save(mask)
    wrong = runner.invoke(app, ["repaint", str(image), "p", "--mask", str(mask), "--model", str(tiny_sd15)])
    assert wrong.exit_code == 2 and "--mask: 256x256 must be the image's resolution, 512x512" in wrong.output


def test_control_map_and_init_from_an_http_url(tiny_sd15, photo, tmp_path, coffee):
    """REFERENCE and --init may be http(s) URLs; --control-map takes a ready map."""
    (tmp_path / "www").mkdir()
    coffee.save(tmp_path / "www" / "coffee.jpg")
    Image.open(photo).save(tmp_path / "www" / "ref.png")
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "www"), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        result = runner.invoke(
            app,
            [
                "generate",
                f"{base}/ref.png",
                "a prompt",
                "-c",
                "depth",
                "--init",
                f"{base}/coffee.jpg",
                "--control-map",
                str(photo),
                "--model",
                str(tiny_sd15),
                "-W",
                "640",
                "-H",
                "512",
                "--out",
                str(tmp_path / "out"),
                "--json",
            ],
        )
        missing = runner.invoke(app, ["generate", f"{base}/nope.png", "a prompt", "--model", str(tiny_sd15)])
    finally:
        server.shutdown()
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert Image.open(record["images"][0]).size == (640, 512)
    assert record["request"]["init_image"].endswith("coffee.jpg")
    assert missing.exit_code == 2 and "HTTP 404" in missing.stderr


def test_control_map_is_refused_in_subject_mode(tiny_sd15, photo):
    result = runner.invoke(
        app, ["generate", str(photo), "p", "-c", "subject", "--control-map", str(photo), "--model", str(tiny_sd15)]
    )
    assert result.exit_code == 2 and "subject mode" in result.stderr


def test_sdk_imports_without_torch():
    code = (
        "import sys, ref2img, ref2img.cli, ref2img.images, ref2img.lifecycle, ref2img.mcp_server.local; "
        "print([m for m in ('torch', 'diffusers', 'fastapi', 'sqlalchemy') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


def test_keys_create_list_revoke(tmp_path):
    created = runner.invoke(app, ["keys", "create", "--name", "ci", "--data-dir", str(tmp_path), "--json"])
    assert created.exit_code == 0, created.output
    key = json.loads(created.stdout)
    assert key["app_key"].startswith("ak_") and key["app_secret"].startswith("sk_")
    assert key["api_key"] == f"{key['app_key']}:{key['app_secret']}"  # the OpenAI routes' Bearer token
    listed = json.loads(runner.invoke(app, ["keys", "list", "--data-dir", str(tmp_path), "--json"]).stdout)
    assert listed == [
        {
            "app_key": key["app_key"],
            "name": "ci",
            "created": listed[0]["created"],
            "revoked": False,
            "max_concurrent": None,
            "per_minute": None,
        }
    ]
    stored = b"".join(path.read_bytes() for path in tmp_path.iterdir() if path.is_file())  # db, -wal, -shm
    assert key["app_secret"].encode() not in stored and key["app_key"].encode() in stored  # only a hash
    assert runner.invoke(app, ["keys", "revoke", key["app_key"], "--data-dir", str(tmp_path)]).exit_code == 0
    again = runner.invoke(app, ["keys", "revoke", key["app_key"], "--data-dir", str(tmp_path)])
    assert again.exit_code == 2 and "no active key" in again.stderr


def test_dtype_flag_and_the_dtypes_in_the_run_record(tiny_sdxl, photo, tmp_path):
    result = runner.invoke(
        app,
        [
            "generate",
            str(photo),
            "a prompt",
            "-c",
            "depth",
            "--model",
            str(tiny_sdxl),
            "--dtype",
            "bfloat16",
            "--steps",
            "2",
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["dtype"] == "bfloat16" and record["offload"] == "none" and record["compile"] == "none"
    dtypes = record["dtypes"]
    assert {"unet", "vae", "text_encoder", "text_encoder_2", "controlnet.union"} <= set(dtypes)
    assert dtypes.pop("depth_estimator") == "float32"  # the annotator's own choice (see test_dtypes.py)
    assert set(dtypes.values()) == {"bfloat16"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dtype", "half"], "'half' is not one of 'float32', 'float16', 'bfloat16'"),
        (
            ["--offload", "model", "--device", "cpu"],
            "--offload model: offloading moves weights between the CPU and a GPU",
        ),
        (["--compile", "always"], "'always' is not one of 'none', 'regional', 'full'"),
    ],
)
def test_bad_engine_flags_exit_2(tiny_sd15, photo, args, message):
    result = runner.invoke(app, ["generate", str(photo), "a prompt", "--model", str(tiny_sd15), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(re.sub("[│╭╮╰╯─]", " ", result.stderr).split()), result.stderr  # rich wraps and boxes


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_and_worker_take_the_engine_flags(command):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert all(flag in result.stdout for flag in ("--dtype", "--offload", "--compile")), result.stdout


def test_server_settings_reach_the_engine(tiny_sd15, tmp_path):
    from ref2img.settings import ServerSettings
    from ref2img.tasks.execution.engine_provider import local_engine_factory

    engine = local_engine_factory(
        ServerSettings(data_dir=tmp_path, model=str(tiny_sd15), device="cpu", dtype="bfloat16")
    )()
    assert engine.placement.dtype_name == "bfloat16"
    assert set(engine.component_dtypes().values()) == {"bfloat16"}


def test_version():
    from ref2img import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"ref2img {__version__}"


def test_unknown_model_is_bad_input_and_torch_never_loads(photo):
    code = (
        "import sys; from typer.testing import CliRunner; from ref2img.cli import app; "
        f"r = CliRunner().invoke(app, ['generate', {str(photo)!r}, 'p', '--model', 'nosuch']); "
        "print(r.exit_code, 'torch' in sys.modules); print(r.stderr, file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["2", "False"], result.stderr
    assert "--model: unknown model 'nosuch'" in result.stderr and "ref2img models tiny DIR" in result.stderr


def test_keys_create_env_feeds_the_sdk_variables(tmp_path):
    script = (
        f'eval "$({sys.executable} -m ref2img.cli keys create --env --data-dir {tmp_path})"; '
        'echo "$REF2IMG_APP_KEY $REF2IMG_APP_SECRET"'
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    app_key, app_secret = result.stdout.split()
    assert app_key.startswith("ak_") and app_secret.startswith("sk_"), result.stderr
    listed = json.loads(runner.invoke(app, ["keys", "list", "--data-dir", str(tmp_path), "--json"]).stdout)
    assert [row["app_key"] for row in listed] == [app_key]


@pytest.mark.parametrize("mode", ["pose", "edge", "subject"])
def test_the_control_map_is_saved_beside_the_images(tiny_sd15, photo, tmp_path, mode):
    result = runner.invoke(
        app,
        [
            "generate",
            str(photo),
            "p",
            "-c",
            mode,
            "--model",
            str(tiny_sd15),
            "--steps",
            "1",
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    if mode == "subject":
        assert record["control_map"] is None  # the reference itself conditions the images
        return
    assert record["control_map"] == str(tmp_path / f"{record['run_id']}-control.png")
    control = Image.open(record["control_map"])
    assert control.size == (64, 64)  # the tiny preset's model size: the map as the model saw it
    assert record["control_map_size"] == [64, 64]  # and the record says so
    assert max(control.convert("L").getextrema()) > 0  # the annotator caught something


@pytest.mark.parametrize("command", [["generate"], ["serve"], ["keys", "create"], ["task", "wait"]])
def test_help_reads_like_a_finished_tool(command):
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    assert "<bool>" not in result.stdout and "╭" not in result.stdout
    if command == ["generate"]:
        assert "[OPTIONS] REFERENCE PROMPT\n" in result.stdout and "--batch N" in result.stdout


def test_without_a_terminal_progress_comes_in_plain_lines(tiny_sd15, photo, tmp_path):
    result = runner.invoke(
        app,
        ["generate", str(photo), "p", "-c", "edge", "--model", str(tiny_sd15), "--steps", "3", "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert any(line.startswith("loaded base from ") for line in lines), result.stderr  # each part as it loads
    assert "edge x1: step 3/3" in lines, result.stderr
    assert result.stdout.strip().endswith(".png")  # then the saved paths


def test_steps_and_guidance_travel_in_the_request(tiny_sd15, photo, tmp_path):
    result = runner.invoke(
        app,
        [
            "generate",
            str(photo),
            "p",
            "--model",
            str(tiny_sd15),
            "--steps",
            "2",
            "--guidance",
            "3",
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["request"]["steps"] == 2 and record["request"]["guidance_scale"] == 3.0 and record["steps"] == 2
    assert "steps=2" in result.stderr  # the engine ran the steps asked for (its log line)
    bad = runner.invoke(app, ["generate", str(photo), "p", "--model", str(tiny_sd15), "--guidance", "31"])
    assert bad.exit_code == 2 and "--guidance" in bad.stderr


def test_a_lora_by_name_from_a_folder(tiny_sd15, photo, tmp_path):
    import shutil

    folder = tmp_path / "loras"
    folder.mkdir()
    shutil.copy(tiny_sd15 / "lora" / "pytorch_lora_weights.safetensors", folder / "style.safetensors")
    common = [
        "generate",
        str(photo),
        "p",
        "--model",
        str(tiny_sd15),
        "--steps",
        "1",
        "--lora-dir",
        str(folder),
        "--out",
        str(tmp_path / "out"),
        "--json",
    ]
    result = runner.invoke(app, [*common, "--lora", "style:0.7"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["request"]["loras"] == [{"name": "style", "weight": 0.7}]
    unknown = runner.invoke(app, [*common, "--lora", "nope"])
    assert (
        unknown.exit_code == 2
        and "--lora #1, name: 'nope' is not a LoRA of this server; it has style" in unknown.stderr
    )
