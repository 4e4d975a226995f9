"""Schema fuzzing: schemathesis generates requests from the server's own OpenAPI document, valid and
invalid, for every documented route. No answer may be a 5xx or fall outside the documented envelope
and statuses. The example count is bounded so CI stays quick; raise REF2IMG_FUZZ_EXAMPLES to dig.

Hypothesis drives schemathesis' strategies directly (not its pytest plugin, which does not follow
pytest 9.2's node internals)."""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from .conftest import Cloud, running

EXAMPLES = int(os.environ.get("REF2IMG_FUZZ_EXAMPLES", "25"))
# Not negative_data_rejection: the protocol answers invalid input with HTTP 200 and code 680001, as the
# cloud does; test_hostile_bodies checks that those answers name the field.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzzed(tiny_sd15, tmp_path_factory):
    # Failed authentications are part of the fuzz: the lock-out is raised out of its way.
    with running(tmp_path_factory, "fuzz", tiny_sd15, "--auth-failure-limit", "1000000") as server:
        yield server


@pytest.fixture(scope="module")
def operations(fuzzed) -> list:
    api = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")
    found = [result.ok() for result in api.get_all_operations()]
    assert {operation.label for operation in found} >= {
        "POST /v1/open/capacity/application/tm_reference_img2img",
        "POST /v1/open/pub/task",
        "POST /v1/open/capacity/application/tm_redrawing",
        "POST /v1/open/pub/task/cancel",
        "POST /v1/files",
        "GET /v1/open/capacity/get/token",
    }
    return found


def fuzz(operation, mode: GenerationMode, headers: dict[str, str], examples: int) -> int:
    calls = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)
        if operation.path != "/metrics":
            assert isinstance(response.json()["code"], int)
        calls.append(response.status_code)

    run()
    return len(calls)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_route_answers_in_the_envelope(fuzzed, operations, mode):
    headers = {k: v for k, v in Cloud(fuzzed.url, *fuzzed.new_key()).headers.items() if k != "Content-Type"}
    for operation in operations:
        has_input = any(True for _ in operation.iter_parameters()) or operation.body
        if mode is GenerationMode.NEGATIVE and not has_input:
            continue  # nothing to make invalid
        assert fuzz(operation, mode, headers, EXAMPLES) > 0, operation.label


@pytest.mark.slow
def test_strangers_are_refused_in_the_envelope(fuzzed, operations):
    for operation in operations:
        assert fuzz(operation, GenerationMode.POSITIVE, {}, max(EXAMPLES // 5, 3)) > 0, operation.label
