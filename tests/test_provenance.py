"""Provenance (issue 30): C2PA manifests and the invisible watermark on results fetched from a real
server, the watermark after a platform's usual changes, `ref2img provenance check`, and the content
filter's three modes driven by a tiny random classifier with a forced verdict."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from .server.conftest import Cloud, data_uri, img2img_body, running

c2pa = pytest.importorskip("c2pa")  # the provenance extra: CI installs it, so this never skips there


def jpeg75(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=75)
    return Image.open(io.BytesIO(buffer.getvalue()))


def half(image: Image.Image) -> Image.Image:
    return image.resize((image.width // 2, image.height // 2), Image.Resampling.BICUBIC)


def crop10(image: Image.Image) -> Image.Image:
    """10% of each side's length off, centred (a platform's crop to a frame)."""
    w, h = image.size
    return image.crop((w // 20, h // 20, w - w // 20, h - h // 20))


@pytest.fixture(scope="module")
def photos(astronaut, coffee):
    from skimage import data

    return [astronaut.resize((768, 768)), coffee.resize((640, 480)), Image.fromarray(data.chelsea())]


def seeded_mark_ids(count: int, seed: int = 2026) -> list[str]:
    """`count` balanced ids with their checksum, as `new_mark_id` makes them, from a seeded draw."""
    import random

    from ref2img.provenance.watermark import ID_BITS, mark_id_from

    draw, ids = random.Random(seed), []
    while len(ids) < count:
        mark = mark_id_from(draw.getrandbits(ID_BITS))
        if mark is not None:
            ids.append(mark)
    return ids


@pytest.mark.slow  # 10 s: three photos, four reads each
def test_the_watermark_survives_jpeg_resize_and_crop(photos):
    from ref2img.provenance.watermark import detect, embed, is_mark_id, new_mark_id

    # Three fixed ids (a seeded draw of what `new_mark_id` draws): a random one misses after a crop now and
    # then (bench/provenance.py measures the rates), and a test must not depend on the draw.
    marks = seeded_mark_ids(3)
    assert all(is_mark_id(mark) for mark in marks) and len(set(marks)) == 3 and is_mark_id(new_mark_id())
    assert not is_mark_id("00ff00fe") and not is_mark_id("ffffffff")  # 15 and 32 bits set: no mark
    for photo, mark in zip(photos, marks, strict=True):
        marked = embed(photo, mark)
        for change in (lambda image: image, jpeg75, half, crop10):
            assert detect(change(marked)).mark_id == mark
        assert detect(photo).mark_id is None  # an unmarked photo carries none


def test_a_mark_id_carries_a_checksum_that_a_random_read_fails():
    """Balanced words are one in seven of all 32-bit reads; of those, the checksum lets about one in 128
    through. Every id `new_mark_id` makes passes; a word with two of its bits swapped does not."""
    import random

    from ref2img.provenance.watermark import is_mark_id, new_mark_id

    marks = [new_mark_id() for _ in range(200)]
    assert all(is_mark_id(mark) for mark in marks)
    draw = random.Random(7)
    for mark in marks:
        word = int(mark, 16)
        one = draw.choice([bit for bit in range(32) if word >> bit & 1])
        zero = draw.choice([bit for bit in range(32) if not word >> bit & 1])
        swapped = word ^ (1 << one) ^ (1 << zero)  # still 16 bits set: only the checksum can tell
        assert not is_mark_id(f"{swapped:08x}")
    balanced = [word for word in (draw.getrandbits(32) for _ in range(100_000)) if word.bit_count() == 16]
    passing = sum(is_mark_id(f"{word:08x}") for word in balanced)
    assert passing / len(balanced) < 0.02  # 1/128 expected


@pytest.mark.slow  # RivaGAN reads: a few seconds
def test_a_balanced_read_without_its_checksum_names_no_task(photos):
    """What the hostile review found: a read of 16 set bits, taken for a task's id. A word with no valid
    checksum, embedded for real and read back at full confidence, is no mark."""
    from ref2img.provenance.watermark import detect, embed, is_mark_id

    assert not is_mark_id("0000ffff")
    found = detect(embed(photos[0], "0000ffff"))
    assert found.mark_id is None


def tiny_classifier(folder: Path, unsafe: bool) -> Path:
    """A random ViT whose head always says `nsfw` (or `normal`): the real loader, a forced verdict."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        image_size=32,
        patch_size=16,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        id2label={0: "normal", 1: "nsfw"},
        label2id={"normal": 0, "nsfw": 1},
    )
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([-9.0, 9.0] if unsafe else [9.0, -9.0]))
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def marked_server(tmp_path_factory, tiny_sd15):
    """Both marks, and the filter in block mode: a blocklist, and a classifier that calls every image nsfw.
    A key's own mode (`key_with`) lets its tasks through (off) or flags them (flag)."""
    policy = tmp_path_factory.mktemp("policy")
    blocklist = policy / "blocklist.txt"
    blocklist.write_text("# the operator's words\nforbidden thing\n")
    classifier = tiny_classifier(policy / "classifier", unsafe=True)
    with running(
        tmp_path_factory,
        "marked",
        tiny_sd15,
        "--watermark",
        "--content-filter",
        "block",
        "--blocklist",
        str(blocklist),
        "--image-classifier",
        str(classifier),
    ) as server:
        yield server


def key_with(server, content_filter: str | None) -> Cloud:
    """A new key of the server's, with its own content-filter mode (None: the server's)."""
    from ref2img.tasks.store import Store

    app_key, secret = server.new_key()
    if content_filter is not None:
        store = Store(server.db_url)
        try:
            assert store.keys.set_limits(app_key, content_filter=content_filter)
        finally:
            store.close()
    return Cloud(server.url, app_key, secret)


def fetch_result(cloud: Cloud, data: dict) -> bytes:
    [url] = json.loads(data["result"])["images_path"]
    return httpx.get(url, timeout=30).content


@pytest.mark.slow  # a server of its own, and three CLI runs
def test_a_result_carries_a_valid_manifest_and_a_watermark_naming_its_task(marked_server, astronaut, tmp_path):
    from ref2img.provenance.watermark import embed, is_mark_id

    cloud = key_with(marked_server, "off")  # past the filter: this test is about the marks
    reference = astronaut.resize((128, 128))
    task_id = cloud.create_id(img2img_body(data_uri(reference), prompt="a secret prompt"))
    data = cloud.wait_final(task_id)
    assert data["status"] == 3, data
    assert data["marks"]["c2pa"] is True and is_mark_id(data["marks"]["watermark"])
    png = fetch_result(cloud, data)

    reader = c2pa.Reader("image/png", io.BytesIO(png))  # the same library, as any verifier would
    assert reader.get_validation_state() == "Valid"  # signed, intact; not "Trusted": a development CA
    manifest = reader.get_active_manifest()
    text = json.dumps(manifest)
    assert "trainedAlgorithmicMedia" in text and "ref2img" in text
    assert "a secret prompt" not in text  # its hash only
    generation = next(a["data"] for a in manifest["assertions"] if a["label"] == "org.ref2img.generation")
    assert generation["preset"] == "tiny" and generation["task_id"] == task_id
    assert generation["watermark"]["id"] == data["marks"]["watermark"]
    assert set(generation["inputs_sha256"]) == {"reference_image"}
    assert [i["instance_id"] for i in manifest["ingredients"]] == [
        f"sha256:{generation['inputs_sha256']['reference_image']}"
    ]

    # The SDK's download keeps the bytes as served (the manifest binds them).
    from ref2img.client import Client

    client = Client(cloud.app_key, cloud.app_secret, base_url=marked_server.url)
    [path] = client.download(client.get(task_id), tmp_path / "sdk")
    assert Path(path).read_bytes() == png

    # `provenance check` reads the manifest of the served file...
    served = tmp_path / "served.png"
    served.write_bytes(png)
    found = check(served, marked_server.data_dir)
    assert found["c2pa"]["state"] == "Valid" and found["c2pa"]["ai_generated"]
    assert found["c2pa"]["generation"]["task_id"] == task_id
    # ...and finds the task a stripped, re-encoded copy's watermark names. The tiny model's random weights
    # paint noise, which the watermark does not survive in (bench/provenance.py): a photo carries the mark.
    stripped = tmp_path / "stripped.jpg"
    jpeg75(embed(astronaut.resize((512, 512)), data["marks"]["watermark"])).save(stripped)
    found = check(stripped, marked_server.data_dir, status=4)
    assert found["c2pa"] is None and found["watermark"]["id"] == data["marks"]["watermark"]
    assert found["watermark"]["tasks"] == [task_id]
    # Each case has its own exit status, for scripts: a changed file, and one with no mark at all.
    tampered = tmp_path / "tampered.png"
    tampered.write_bytes(with_text_chunk(png))
    assert check(tampered, marked_server.data_dir, status=3)["c2pa"]["state"] == "Invalid"
    plain = tmp_path / "plain.png"
    Image.new("RGB", (256, 256), "grey").save(plain)
    assert check(plain, marked_server.data_dir, status=5)["watermark"]["id"] is None


def check(image: Path, data_dir: Path, status: int = 0) -> dict:
    """`provenance check --json`, which must exit with `status`: 0 valid, 3 tampered, 4 watermark only,
    5 unmarked."""
    done = subprocess.run(
        [sys.executable, "-m", "ref2img.cli", "provenance", "check", str(image), "--json", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == status, done.stdout + done.stderr
    return json.loads(done.stdout)


def with_text_chunk(png: bytes) -> bytes:
    """The PNG with one more tEXt chunk after its header: an edit the C2PA hash binding sees."""
    import struct
    import zlib

    body = b"Comment\x00edited"
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    return png[:33] + chunk + png[33:]


def stored_results(server, task_id: str) -> list[Path]:
    return sorted((server.data_dir / "results" / task_id).glob("*")) + sorted(
        (server.data_dir / "files" / "results" / task_id).glob("*")
    )


@pytest.mark.slow  # the marked server of this module
def test_a_blocked_prompt_and_a_blocked_image_end_at_status_4_with_nothing_stored(marked_server, astronaut):
    cloud = key_with(marked_server, None)  # the server's mode: block
    reference = data_uri(astronaut.resize((64, 64)))
    by_prompt = cloud.create_id(img2img_body(reference, prompt="a Forbidden Thing here"))
    by_image = cloud.create_id(img2img_body(reference, prompt="a lighthouse"))
    data = cloud.wait_final(by_prompt)
    assert data["status"] == 4 and "content policy" in data["reason"] and "forbidden thing" in data["reason"].lower()
    assert data["result"] == "" and "marks" not in data
    data = cloud.wait_final(by_image)
    assert data["status"] == 4 and data["reason"].startswith(
        "refused by the content policy: an image was classified nsfw"
    )
    assert data["result"] == ""
    for task_id in (by_prompt, by_image):
        assert stored_results(marked_server, task_id) == []


@pytest.mark.slow  # the marked server of this module
def test_flag_mode_keeps_the_images_and_says_why(marked_server, astronaut):
    cloud = key_with(marked_server, "flag")
    task_id = cloud.create_id(img2img_body(data_uri(astronaut.resize((64, 64))), prompt="a forbidden thing"))
    data = cloud.wait_final(task_id)
    assert data["status"] == 3 and len(stored_results(marked_server, task_id)) == 1
    assert "prompt has a blocked term" in data["flagged"] and "classified nsfw" in data["flagged"]
    assert data["marks"]["c2pa"] is True


@pytest.mark.slow  # the marked server of this module
def test_a_trusted_key_is_not_filtered(marked_server, astronaut):
    app_key, secret = marked_server.new_key()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ref2img.cli",
            "keys",
            "update",
            app_key,
            "--content-filter",
            "off",
            "--data-dir",
            str(marked_server.data_dir),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    cloud = Cloud(marked_server.url, app_key, secret)
    task_id = cloud.create_id(img2img_body(data_uri(astronaut.resize((64, 64))), prompt="a forbidden thing"))
    assert cloud.wait_final(task_id)["status"] == 3


def test_the_image_classifier_flags_or_blocks(tiny_sd15, astronaut, tmp_path):
    """In-process runs (as `generate` and MCP run them): flag keeps the images and says why; block
    stores none; a classifier that finds nothing changes nothing."""
    from ref2img.engines.local.engine import LocalEngine
    from ref2img.lifecycle import FolderOutputs, MemoryLedger, RunContext, run_task
    from ref2img.protocol import CreateRequest, TaskStatus
    from ref2img.provenance.content_filter import ContentFilter, ImageClassifier

    engine = LocalEngine(str(tiny_sd15)).load()
    unsafe = ImageClassifier(tiny_classifier(tmp_path / "unsafe", unsafe=True))
    safe = ImageClassifier(tiny_classifier(tmp_path / "safe", unsafe=False))
    request = CreateRequest.model_validate(img2img_body("ref", seed=1))
    outcomes = {}
    for name, content in (
        ("flag", ContentFilter("flag", classifier=unsafe)),
        ("block", ContentFilter("block", classifier=unsafe)),
        ("safe", ContentFilter("block", classifier=safe)),
    ):
        ledger, folder = MemoryLedger(), tmp_path / name
        task = ledger.add(request)
        ledger.claim(task.id)
        context = RunContext(
            ledger=ledger,
            outputs=FolderOutputs(folder),
            engine=lambda: engine,
            load_image=lambda *_: astronaut.resize((64, 64)),
            previews=False,
            content=content,
        )
        outcome = run_task(task, "test", context)
        outcomes[name] = (outcome.status, sorted(p.name for p in folder.glob("*.png")), ledger.get(task.id))
    status, files, task = outcomes["flag"]
    assert status == TaskStatus.SUCCEEDED and len(files) == 1 and "classified nsfw" in task.marks["flagged"]
    status, files, task = outcomes["block"]
    assert status == TaskStatus.FAILED and files == [] and "content policy" in task.reason
    status, files, task = outcomes["safe"]
    assert status == TaskStatus.SUCCEEDED and len(files) == 1 and "flagged" not in task.marks


def test_provenance_init_makes_a_chain_that_signs(tmp_path):
    from ref2img.provenance.manifest import ImageFacts, ManifestSigner, read_manifest

    done = subprocess.run(
        [sys.executable, "-m", "ref2img.cli", "provenance", "init", str(tmp_path / "p")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    cert, key = tmp_path / "p" / "c2pa-dev-chain.pem", tmp_path / "p" / "c2pa-dev-key.pem"
    assert cert.read_text().count("BEGIN CERTIFICATE") == 2 and oct(key.stat().st_mode)[-3:] == "600"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "teal").save(buffer, "JPEG")
    signed = ManifestSigner(cert, key).sign(buffer.getvalue(), "image/jpeg", ImageFacts("t1", "img2img", "0" * 64))
    report = read_manifest(signed, "image/jpeg")
    assert report is not None and report.state == "Valid" and report.ai_generated
    assert report.problems == ["signingCredential.untrusted"]  # intact; only its development CA is unknown
    assert read_manifest(buffer.getvalue(), "image/jpeg") is None  # an unsigned image carries none


def test_bad_provenance_flags_are_refused_naming_the_flag(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ref2img.cli import app

    monkeypatch.delenv("REF2IMG_C2PA_CERT", raising=False)
    monkeypatch.delenv("REF2IMG_C2PA_KEY", raising=False)
    for command in ("serve", "worker", "generate", "mcp"):
        fixed = {
            "worker": ["--queue", "redis://x", "--db", "sqlite://", "--storage", str(tmp_path)],
            "generate": [str(tmp_path / "ref.png"), "p"],
        }.get(command, [])
        for args, message in (
            (["--content-filter", "maybe"], "--content-filter: 'maybe' is not one of off, flag, block"),
            (["--c2pa-cert", str(tmp_path / "c.pem")], "--c2pa-cert and --c2pa-key: give both"),
            (["--blocklist", str(tmp_path / "none.txt")], "--blocklist: no file"),
        ):
            done = CliRunner().invoke(app, [command, *fixed, *args])
            assert done.exit_code == 2 and message in done.output, (command, args, done.output)


def test_generate_marks_its_images_in_process(tiny_sd15, astronaut, tmp_path):
    """`ref2img generate` on the local engine: a signed manifest and a watermark on each PNG, both in
    the run record; --no-c2pa --no-watermark leaves the images plain."""
    from typer.testing import CliRunner

    from ref2img.cli import app
    from ref2img.provenance.manifest import read_manifest
    from ref2img.provenance.watermark import is_mark_id

    photo = tmp_path / "ref.png"
    astronaut.resize((96, 96)).save(photo)
    base = ["generate", str(photo), "a prompt", "--model", str(tiny_sd15), "--steps", "2", "--json"]
    marked = CliRunner().invoke(app, [*base, "--watermark", "--out", str(tmp_path / "a")])
    assert marked.exit_code == 0, marked.output
    record = json.loads(marked.stdout)
    assert record["marks"]["c2pa"] is True and is_mark_id(record["marks"]["watermark"])
    [path] = record["images"]
    report = read_manifest(Path(path).read_bytes(), "image/png")
    assert report is not None and report.state == "Valid" and report.ai_generated
    assert report.generation["watermark"]["id"] == record["marks"]["watermark"]

    plain = CliRunner().invoke(app, [*base, "--no-c2pa", "--no-watermark", "--out", str(tmp_path / "b")])
    assert plain.exit_code == 0, plain.output
    record = json.loads(plain.stdout)
    assert record["marks"] == {}
    assert read_manifest(Path(record["images"][0]).read_bytes(), "image/png") is None


def test_the_mcp_servers_local_engine_marks_and_filters(tiny_sd15, astronaut, tmp_path):
    """MCP on the local engine runs the same runner: its images are signed, and its prompts filtered."""
    import asyncio

    from ref2img.cli._common import in_process_provenance, provenance_options
    from ref2img.engines.local import LocalOptions
    from ref2img.mcp_server.inputs import InputGuard
    from ref2img.mcp_server.local import LocalBackend
    from ref2img.protocol import CreateRequest
    from ref2img.provenance.manifest import read_manifest
    from ref2img.safe_http import SafeHttp

    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text("forbidden\n")
    astronaut.resize((96, 96)).save(tmp_path / "ref.png")
    options = provenance_options(True, False, None, None, "block", blocklist, None)
    backend = LocalBackend(
        lambda: LocalOptions(str(tiny_sd15)).build(),
        tmp_path / "out",
        InputGuard([tmp_path], SafeHttp()),
        in_process_provenance(options),
    )
    try:

        async def run(prompt: str):
            body = img2img_body(str(tmp_path / "ref.png"), prompt=prompt, steps=2)

            async def report(*_) -> None:
                pass

            return await backend.generate(CreateRequest.model_validate(body), report)

        made = asyncio.run(run("a lighthouse"))
        [path] = made.files
        assert read_manifest(path.read_bytes(), "image/png").ai_generated
        with pytest.raises(Exception, match="content policy"):
            asyncio.run(run("a forbidden lighthouse"))
    finally:
        backend.close()


@pytest.mark.slow  # a mirror, a pull and two more processes: about 12 s
def test_the_classifier_is_pulled_through_the_mirror_and_read_offline(tmp_path):
    """`ref2img models pull-classifier` fetches the real repo's config, preprocessor and safetensors
    (never its pickles) through a hub mirror; `--image-classifier REPO` then reads the cache offline."""
    import os

    from .hub_fixture import write_repo
    from .test_models_mirror import Mirror

    tiny = tiny_classifier(tmp_path / "tiny", unsafe=True)
    layout = {
        name: (tiny / name).read_bytes() for name in ("config.json", "preprocessor_config.json", "model.safetensors")
    }
    layout |= {"pytorch_model.bin": b"pickle", "optimizer.pt": b"pickle", "README.md": b"---\nlicense: apache-2.0\n---"}
    source = tmp_path / "source-cache"
    write_repo(source, "Falconsai/nsfw_image_detection", layout)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home")}
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        env.pop(name, None)
    with Mirror(source) as mirror:
        pulled = subprocess.run(
            [sys.executable, "-m", "ref2img.cli", "models", "pull-classifier"],
            env={**env, "HF_ENDPOINT": mirror.url},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert pulled.returncode == 0, pulled.stderr
    [snapshot] = (tmp_path / "hf-home" / "hub" / "models--Falconsai--nsfw_image_detection" / "snapshots").iterdir()
    assert sorted(p.name for p in snapshot.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    code = (
        "from ref2img.provenance.content_filter import ContentFilter, ImageClassifier, locate_classifier; "
        "from PIL import Image; "
        "f = ContentFilter('block', classifier=ImageClassifier(locate_classifier('Falconsai/nsfw_image_detection'))); "
        "print(f.check_image('ak', Image.new('RGB', (64, 64))).reason)"
    )
    offline = {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    read = subprocess.run([sys.executable, "-c", code], env=offline, capture_output=True, text=True, timeout=120)
    assert read.returncode == 0 and "classified nsfw" in read.stdout, read.stderr
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "ref2img.cli",
            "serve",
            "--data-dir",
            str(tmp_path / "d"),
            "--image-classifier",
            "someone/not-pulled",
        ],
        env=offline,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "ref2img models pull-classifier someone/not-pulled" in missing.stderr


def test_a_repaint_keeps_its_unmasked_pixels_exactly_under_the_watermark(astronaut):
    """Image Repaint's promise (the pixels outside the mask come back as sent) holds with the marks on: the
    watermark goes only where the model drew."""
    import numpy as np

    from ref2img.provenance.manifest import ImageFacts
    from ref2img.provenance.marks import Marks
    from ref2img.provenance.watermark import new_mark_id

    original = astronaut.resize((512, 512))
    drawn = np.asarray(original).copy()
    drawn[128:384, 128:384] = 255 - drawn[128:384, 128:384]  # the model redrew the centre
    data, marks = Marks(signer=None, watermark=True).apply(
        Image.fromarray(drawn), ImageFacts("t1", "redrawing", "0" * 64, watermark=new_mark_id()), original
    )
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    outside = np.ones((512, 512), bool)
    outside[128:384, 128:384] = False
    assert (stored[outside] == np.asarray(original)[outside]).all()  # untouched where the model kept them
    assert (stored[~outside] != drawn[~outside]).any() and marks["watermark"]  # marked where it drew


@pytest.mark.parametrize(
    "prompt",
    [
        "a forbidden\u200b thing",
        "a forbid\u00adden thing",
        "a ｆｏｒｂｉｄｄｅｎ thing",
        "a FORBIDDEN THING",
        "a förbidden thing",
        "a forbiddenthing",
        "aforbidden thing",
        "a forbidden   thing",
        "a forbidden\nthing",
    ],
)
def test_the_blocklist_sees_through_invisible_wide_accented_glued_and_spaced_forms(prompt):
    from ref2img.provenance.content_filter import ContentFilter

    content = ContentFilter("block", ["forbidden thing"])
    verdict = content.check_prompt("ak_any", prompt)
    assert verdict is not None and "'forbidden thing'" in verdict.reason
    assert content.check_prompt("ak_any", "a permitted thing, forbidden elsewhere") is None


@pytest.mark.slow  # the marked server of this module
def test_a_content_policy_refusal_on_the_openai_route_is_a_400_content_policy_violation(marked_server, astronaut):
    openai = pytest.importorskip("openai", reason="the openai package is a dev dependency")
    cloud = key_with(marked_server, None)
    client = openai.OpenAI(
        base_url=f"{marked_server.url}/v1", api_key=f"{cloud.app_key}:{cloud.app_secret}", max_retries=0
    )
    buffer = io.BytesIO()
    astronaut.resize((64, 64)).save(buffer, format="PNG")
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(image=("a.png", buffer.getvalue(), "image/png"), prompt="a forbidden thing", size="512x512")
    assert caught.value.status_code == 400 and caught.value.body["code"] == "content_policy_violation"
    assert caught.value.body["message"].startswith("refused by the content policy")
