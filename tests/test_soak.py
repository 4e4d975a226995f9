"""The short soak (bench/soak.py, about 2 minutes): clients, bad inputs, cancels and a SIGKILLed
server, and still every accepted task ends and no request gets a 5xx."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # minutes long: CI runs it; `pytest -m "not slow"` leaves it out


def test_short_soak_loses_nothing():
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--clients", "4", "--seconds", "80", "--json"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    report = run.stdout
    assert figures["lost"] == 0, report
    assert figures["server_errors"] == 0 and figures["bad_inputs_misanswered"] == 0, report
    assert sum(figures["ended"].values()) == figures["accepted"] > 10, report
    assert figures["ended"].get("succeeded", 0) > 0 and figures["bad_inputs_sent"] > 0, report
    assert len(figures["lives"]) == 2, report  # it ran across the restart
