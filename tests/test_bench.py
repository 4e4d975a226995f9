"""The benchmark scripts stay runnable: bench/gpu_check.sh --smoke runs every engine bench (modes, the
speed levers, cold start with the compile cache, offload) on the CPU with the tiny models."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # minutes long: CI runs it; `pytest -m "not slow"` leaves it out


def test_gpu_check_smoke(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "MODELS": str(tmp_path / "models"), "PY": sys.executable}
    run = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=ROOT,
        env=env,
    )
    log = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, log
    assert sorted(path.name for path in out.iterdir()) == [
        "cold-start.json",
        "log.txt",
        "modes.json",
        "presets.json",
        "speed.json",
        "zimage-capped.json",
        "zimage-modes.json",
    ]
    assert "skipped" not in log

    modes = json.loads((out / "modes.json").read_text())
    assert modes["ok"] and len(modes["jobs"]) == 16, log
    zimage = json.loads((out / "zimage-modes.json").read_text())
    assert zimage["ok"] and len(zimage["jobs"]) == 8 and not [job for job in zimage["jobs"] if "refused" in job], log
    capped = json.loads((out / "zimage-capped.json").read_text())  # every mode again, with --offload auto
    assert capped["ok"] and capped["setup"]["offload"] == "auto" and len(capped["jobs"]) == 8, log

    runs = json.loads((out / "speed.json").read_text())["runs"]
    # zimage-offload, zimage-subject, zimage-levers, zimage-speed4, speed, speed4, offload, levers, controls, lora,
    # approximations, intensity1, families (2): issue 39's priority order
    assert [(run["setup"]["arch"], run["setup"]["batches"]) for run in runs] == [
        ("tiny-zimage", "1"),
        ("tiny-zimage", "1"),
        ("tiny-zimage", "1"),
        ("tiny-zimage", "2"),
        ("tiny-sdxl", "1"),
        ("tiny-sdxl", "2"),
        ("tiny-sdxl", "1"),
        ("tiny-sdxl", "1"),
        ("tiny-sdxl", "1"),
        ("tiny-sdxl", "1"),
        ("tiny-sdxl", "1"),
        ("tiny-sdxl", "1"),
        ("tiny-sdxl", "1"),
        ("tiny", "1"),
    ]
    assert not [row for run in runs for row in run["rows"] if "error" in row], log
    (
        _,
        subject,
        zimage_speed,
        zimage_speed4,
        speed,
        speed4,
        offload,
        levers,
        controls,
        lora,
        approximations,
        intensity1,
    ) = runs[:12]
    rows = {(row["batch"], row["lever"]): row for row in speed["rows"] + speed4["rows"]}
    assert set(rows) == {
        (1, "diffusers"),
        (1, "off"),
        (1, "skip-idle-controlnet"),
        (1, "exact"),
        (1, "fuse-qkv"),
        (1, "previews"),
        (2, "diffusers"),
        (2, "off"),
        (2, "fuse-qkv"),
    }, log
    for lever in ("skip-idle-controlnet", "exact", "previews"):  # exact levers; a preview changes no pixel
        assert rows[(1, lever)]["drift"]["max"] == 0 and rows[(1, lever)]["drift_class"] == "exact", lever
        assert rows[(1, lever)]["drift_within_tolerance"] is True
    assert rows[(1, "fuse-qkv")]["drift_class"] == "numerics" and rows[(1, "fuse-qkv")]["drift_within_tolerance"]
    assert all(row["vs_diffusers"] > 0 for row in rows.values())
    assert set(rows[(1, "off")]["dtypes"].values()) == {"float32"}
    # The job's FLOPs, counted: less work with the idle ControlNet skipped; and one profiled row.
    flops = speed["flops"]["1"]
    assert 0 < flops["tflop_engine"] < flops["tflop_plain"], flops
    assert flops["tflop_engine_by_model"]["UNet2DConditionModel"] > 0
    profile = rows[(1, "exact")]["profile"]
    assert profile["host_s_per_step"] > 0 and profile["trace"].endswith(".json.gz")
    zimage_rows = {row["lever"]: row for row in zimage_speed["rows"]}
    assert set(zimage_rows) == {"diffusers", "off", "step-cache"} and zimage_rows["off"]["drift"]["max"] == 0, log
    assert (
        zimage_rows["step-cache"]["drift_class"] == "output-changing" and zimage_rows["step-cache"]["vs_diffusers"] > 0
    )
    assert {row["lever"] for row in zimage_speed4["rows"]} == {"diffusers", "off"}
    subject_rows = {row["lever"]: row for row in subject["rows"]}  # FLUX.2 klein against plain Flux2KleinPipeline
    assert subject["setup"]["mode"] == "subject"
    assert set(subject_rows) == {"diffusers", "off"} and subject_rows["off"]["vs_diffusers"] > 0, log
    assert {row["lever"] for row in levers["rows"]} == {"off", "channels-last", "cache-condition"}
    several = {row["lever"]: row for row in controls["rows"]}  # 1 and 3 controls in one run
    assert several["controls-1"]["s_per_image_vs_one_control"] == 1.0
    assert several["controls-3"]["s_per_image_vs_one_control"] > 0
    assert several["controls-3"]["drift"]["max"] > 0  # three maps make another image than one
    lora_row = next(row for row in lora["rows"] if row["lever"] == "lora")  # a LoRA's step cost, against exact
    assert lora_row["s_per_step_vs_exact"] > 0 and lora_row["drift"]["max"] > 0
    parked, from_disk = json.loads((out / "presets.json").read_text())["runs"]  # --max-parked 2, then 0
    for presets in (parked, from_disk):
        assert presets["setup"]["presets"] == ["tiny", "tiny-sdxl"] and all(s > 0 for s in presets["figures"].values())
        assert presets["setup"]["parked"] is False  # a CPU engine is never parked: nothing to free
    assert (parked["setup"]["max_parked"], from_disk["setup"]["max_parked"]) == (2, 0)
    approximated = {row["lever"]: row for row in approximations["rows"]}
    for lever in ("controlnet-cond-only", "cfg-cut"):
        assert approximated[lever]["drift_class"] == "output-changing"
        assert approximated[lever]["drift_within_tolerance"] is None  # reported, not judged
        assert approximated[lever]["drift"]["ssim"] <= 1.0
    assert intensity1["setup"]["intensity"] == 1.0
    assert offload["rows"][0]["offload"] == "none"  # auto on a CPU

    cold = json.loads((out / "cold-start.json").read_text())
    first, restart = cold["lives"]
    assert first["images"] == restart["images"] == 1, cold
    assert len(first["new_size_s"]) == 3 and first["worst_vs_steady"] > 0, cold  # a size not seen before
    assert restart["cache_mib_after"] > 0, cold  # the compile cache survived the restart


def test_client_bench_smoke():
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "client.py"), "--durations", "0.5", "--tasks", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(figures) == {"ref2img long-poll", "cloud, SDK plan", "cloud, fixed 10 s"}
    for row in figures.values():
        [(duration, result)] = row.items()
        assert duration == "0.5" and result["requests_per_task"] >= 1 and result["median_delay_s"] >= 0
    assert figures["ref2img long-poll"]["0.5"]["median_delay_s"] < 1.0  # long-poll sees the end at once


def test_scale_bench_smoke(postgres_url):
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "scale.py"),
            "--tasks",
            "4",
            "--task-ms",
            "20",
            "--workers",
            "1",
            "2",
            "--postgres",
            postgres_url,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(figures) == {
        "embedded (SQLite, 1 worker)",
        "Redis + PostgreSQL, 1 worker",
        "Redis + PostgreSQL, 2 workers",
    }
    assert all(row["tasks_per_s"] > 0 and row["enqueue_to_start_p99_ms"] >= 0 for row in figures.values())


def test_server_bench_smoke():
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "server.py"),
            "--seconds",
            "0.5",
            "--concurrency",
            "1",
            "4",
            "--tasks",
            "20",
            "--streams",
            "5",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures, run.stdout
    assert figures["healthz"]["streams"] == 5 and figures["healthz"]["with_streams"]["p99_ms"] > 0


def test_provenance_bench_smoke():
    pytest.importorskip("c2pa")
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "provenance.py"), "--smoke"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    figures = json.loads(run.stdout.splitlines()[-1])
    assert figures["images"] == 1 and figures["detection_rate"]["none"] == 1.0


def test_provenance_bench_false_id_smoke():
    """`--unmarked N --marked M`, the false-id and true-positive measure, on one image of each."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "provenance.py"), "--unmarked", "1", "--marked", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    figures = json.loads(run.stdout.splitlines()[-1])
    assert figures["unmarked_images"] == 1 and figures["false_ids"] == 0
    assert figures["true_positive_rate"]["none"] == 1.0


def test_inline_memory_bench_smoke():
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "inline_memory.py"),
            "--rounds",
            "1",
            "--parallel",
            "2",
            "--mb",
            "2",
            "--settle",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.splitlines()[-1])
    assert figures["tasks"] == [2] and len(figures["rss_mb"]) == 2 and figures["rss_mb"][1] > 0
