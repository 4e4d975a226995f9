"""One request model end to end: every field of `CreateRequest` crosses each boundary whole, so a new
wire field needs no copy by hand on the way (docs/architecture.md, "Adding a wire field").

Each test walks `CreateRequest.model_fields` rather than naming fields: a boundary that copied fields
one by one would drop the field added next, and fail here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from ref2img.client import _core as core
from ref2img.engines.base import Job
from ref2img.lifecycle import FolderOutputs, MemoryLedger, RunContext, run_task
from ref2img.protocol import ControlType, CreateRequest, ParameterError, TaskStatus, parse_create_request, random_seed

SRC = Path(__file__).resolve().parents[1] / "src" / "ref2img"


def every_field_set() -> CreateRequest:
    """A request whose every field differs from its default."""
    values = {
        "prompt": "a lighthouse at dusk",
        "reference_image": "https://images.example/ref.png",
        "control_type": "3",
        "control_intensity": 0.8,
        "width": 768,
        "height": 640,
        "batch_size": 2,
        "init_image": "https://images.example/init.png",
        "callback": "https://hooks.example/done",
        "params": "order-17",
        "seed": 12345,
        "negative_prompt": "blurry",
        "controls": [{"type": "depth", "image": "https://images.example/depth.png", "intensity": 0.7}],
        "steps": 12,
        "guidance_scale": 3.5,
        "model": "sdxl-fast",
        "loras": [{"name": "style", "weight": 0.5}],
    }
    assert set(values) == set(CreateRequest.model_fields), "a new field: give it a non-default value here"
    request = CreateRequest.model_validate(values)
    for name, info in CreateRequest.model_fields.items():
        assert getattr(request, name) != info.default, name
    return request


class RecordingEngine:
    """An `Engine` that records the job it was given and returns blank images of its size."""

    def __init__(self):
        self.jobs: list[Job] = []

    def generate(self, job, on_progress=lambda done, total: None, should_cancel=lambda: False, on_preview=None):
        self.jobs.append(job)
        on_progress(1, 1)
        return [Image.new("RGB", (job.width, job.height)) for _ in range(job.batch_size)]

    def recognize(self, image, control_type):
        raise AssertionError("not asked")


def test_every_field_reaches_the_engines_job_through_the_runner(tmp_path):
    request = every_field_set()
    engine = RecordingEngine()
    ledger = MemoryLedger()
    task = ledger.add(request)
    ledger.claim(task.id)
    image = Image.new("RGB", (64, 64))
    context = RunContext(
        ledger=ledger,
        outputs=FolderOutputs(tmp_path),
        engine=lambda: engine,
        load_image=lambda source, field, app_key: image,
        previews=False,
    )
    outcome = run_task(task, "test", context)
    assert outcome.status == TaskStatus.SUCCEEDED and len(outcome.result) == 2
    [job] = engine.jobs
    assert job.request == request  # the whole model, not a copy of the fields someone listed
    assert (job.steps, job.guidance_scale) == (12, 3.5)  # the knobs the families read


def test_the_sdk_sends_every_field(tmp_path):
    request = every_field_set()
    body, uploads = core.submit_body(
        request, None, core.ClientConfig.resolve("ak", "sk", "http://127.0.0.1:1", 5.0, 0, None)
    )
    assert body == request.to_wire() and uploads == {}
    assert set(body) == set(CreateRequest.model_fields)


def test_the_cloud_is_sent_every_field_it_knows_and_none_it_does_not():
    request = every_field_set()
    sources = {"reference_image": "https://ours.example/signed/ref", "init_image": "https://ours.example/signed/init"}
    sent = request.forwarded(sources).to_wire()
    assert set(sent) == set(CreateRequest.model_fields) - CreateRequest.NOT_FORWARDED
    assert {field: sent[field] for field in sources} == sources
    assert all(sent[name] == getattr(request, name) or name in sources for name in sent if name != "control_type")


def test_with_seed_keeps_a_given_seed_and_derives_a_stable_one_from_a_key():
    base = CreateRequest(prompt="p", reference_image="https://x.example/a.png", control_type=ControlType.EDGE)
    assert base.model_copy(update={"seed": 9}).with_seed().seed == 9
    assert base.with_seed("ak\norder-1").seed == base.with_seed("ak\norder-1").seed == random_seed("ak\norder-1")
    assert base.with_seed("ak\norder-1").seed != base.with_seed("ak\norder-2").seed
    seeds = {base.with_seed().seed for _ in range(20)}
    assert len(seeds) > 15 and all(0 <= seed < 2**31 for seed in seeds)


def test_a_job_needs_a_decided_seed():
    request = CreateRequest(prompt="p", reference_image="https://x.example/a.png", control_type="0")
    with pytest.raises(ValueError, match="with_seed"):
        Job(request, Image.new("RGB", (8, 8)))


def test_one_place_decides_a_default_seed():
    """A random seed is chosen in protocol.random_seed only: not in a backend, the CLI or the studio."""
    pattern = re.compile(r"randbelow\(2\s*\*\*\s*3[12]\)|Math\.random\(\)")
    places = sorted(
        str(path.relative_to(SRC))
        for path in SRC.rglob("*")
        if path.suffix in (".py", ".js") and pattern.search(path.read_text())
    )
    assert places == ["protocol.py"], places


@pytest.mark.parametrize(
    ("resolution", "aspect_ratio", "size"),
    [
        ("1024*1024", None, (1024, 1024)),
        ("768x1344", None, (768, 1344)),
        ("1024*1024", "16:9", (1368, 768)),  # the area kept, at the ratio, in multiples of 8
        ("512*512", "16:9", (912, 512)),  # 680x384 scaled up until the short side is 512
        (None, "3:4", (888, 1184)),  # the default resolution is our default size, 1024*1024
        ("2048*2048", "4:1", (2048, 512)),
    ],
)
def test_legacy_size_fields(resolution, aspect_ratio, size):
    from ref2img.protocol import legacy_size

    assert legacy_size(resolution, aspect_ratio) == size
    body = {
        "prompt": "p",
        "reference_image": "https://x.example/a.png",
        "control_type": "0",
        **({"resolution": resolution} if resolution else {}),
        **({"aspect_ratio": aspect_ratio} if aspect_ratio else {}),
    }
    request = parse_create_request(body)
    assert (request.width, request.height) == size


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"resolution": "big"}, 'resolution: must be "W*H"'),
        ({"resolution": "100*100"}, "resolution: width must be from 512 to 2048"),
        ({"aspect_ratio": "9:1"}, "aspect_ratio: must be at most 4:1"),
        ({"resolution": "1024*1024", "height": 768}, "resolution: give either width and height"),
    ],
)
def test_legacy_size_fields_refused_by_name(fields, message):
    body = {"prompt": "p", "reference_image": "https://x.example/a.png", "control_type": "0", **fields}
    with pytest.raises(ParameterError, match=f"^{re.escape(message)}"):
        parse_create_request(body)


class FillingOutputs(FolderOutputs):
    """A folder whose disk runs out after `room` images, with the error a quota gives (EDQUOT): a full disk
    cannot be made to happen at one exact image here."""

    def __init__(self, folder, room: int):
        super().__init__(folder)
        self.room = room

    def save_result(self, task_id, index, image, png=None):
        if index >= self.room:
            import errno

            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        return super().save_result(task_id, index, image, png)


def test_a_task_that_meets_a_full_disk_keeps_none_of_its_images(tmp_path):
    request = every_field_set()  # batch 2
    ledger = MemoryLedger()
    task = ledger.add(request)
    ledger.claim(task.id)
    image = Image.new("RGB", (64, 64))
    context = RunContext(
        ledger=ledger,
        outputs=FillingOutputs(tmp_path, room=1),
        engine=RecordingEngine,
        load_image=lambda source, field, app_key: image,
        previews=False,
    )
    outcome = run_task(task, "test", context)
    assert outcome.status == TaskStatus.FAILED and "disk is full" in ledger.get(task.id).reason
    assert list(tmp_path.iterdir()) == []  # the first image, written before the disk filled, is gone
