"""Schemathesis against each service's own OpenAPI document: no input gets a server error.

Each service runs in-process on a fresh broker and its own databases. Schemathesis generates
requests for every operation of the document the service serves, valid ones and invalid
ones, sent with the development keys of roles the service admits, and checks each answer:
never a 5xx, and a body that matches the documented response schema. The runs are bounded
(`EXAMPLES` per operation and mode) to fit the CI budget.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.result import Err
from schemathesis.generation import GenerationMode

from pathway_cli.actors import DEV_KEYS
from services.notify.main import create_app as notify_app
from services.notify.settings import Settings as NotifySettings
from services.reporting.main import create_app as reporting_app
from services.reporting.settings import Settings as ReportingSettings
from services.request.main import create_app as request_app
from services.request.settings import Settings as RequestSettings
from services.scheduling.main import create_app as scheduling_app
from services.scheduling.settings import Settings as SchedulingSettings
from services.vetting.main import create_app as vetting_app
from services.vetting.settings import Settings as VettingSettings
from tests.fixtures import SettingsFactory
from tests.harness import running_service

pytestmark = pytest.mark.integration

EXAMPLES = 10

AppFactory = Callable[[SettingsFactory, Path], FastAPI]

# Each service with the keys of the roles it admits (a practice, an operator...), so that
# generated requests get past authentication and reach the handlers.
SERVICES: dict[str, tuple[AppFactory, tuple[str, ...]]] = {
    "request": (
        lambda make, _: request_app(make(RequestSettings, "request")),
        ("A81001", "operator"),
    ),
    "vetting": (lambda make, _: vetting_app(make(VettingSettings, "vetting")), ("vetting",)),
    "scheduling": (
        lambda make, _: scheduling_app(make(SchedulingSettings, "scheduling")),
        ("clerk", "operator"),
    ),
    "reporting": (
        lambda make, _: reporting_app(make(ReportingSettings, "reporting")),
        ("reporter", "RXA01"),
    ),
    "notify": (
        lambda make, tmp: notify_app(make(NotifySettings, "notify", channel_dir=tmp / "channels")),
        ("A81001", "operator"),
    ),
}


OPERATIONS = {"/healthz", "/readyz", "/metrics"}
Operation = schemathesis.APIOperation[Any, Any, Any, Any]


def fuzz(
    document: dict[str, Any], base_url: str, keys: tuple[str, ...]
) -> tuple[list[str], list[int]]:
    """Every operation, valid and invalid inputs: the failures, each with its operation, and
    the statuses of the service's own API (not health or metrics)."""
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    statuses: list[int] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            failures.append(f"an operation schemathesis cannot use: {result.err()}")
            continue
        operation = result.ok()
        seen = [] if operation.path in OPERATIONS else statuses
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures += fuzz_operation(operation, mode, base_url, keys, seen)[:2]
    return failures, statuses


def fuzz_operation(
    operation: Operation,
    mode: GenerationMode,
    base_url: str,
    keys: tuple[str, ...],
    statuses: list[int],
) -> list[str]:
    """Failures are collected rather than raised: the services keep state, so hypothesis
    could not replay or shrink a failing request to the same answer."""
    found: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), key=st.sampled_from(keys))
    def call(case: schemathesis.Case[Operation], key: str) -> None:
        response = case.call(base_url=base_url, headers={"X-API-Key": DEV_KEYS[key]})
        statuses.append(response.status_code)
        try:
            case.validate_response(
                response, checks=[not_a_server_error, response_schema_conformance]
            )
        except (Failure, FailureGroup) as failure:
            found.append(f"{operation.label} ({mode.value}, as {key}): {failure}")

    # Unsatisfiable: nothing to make invalid, the operation takes no input.
    with contextlib.suppress(Unsatisfiable):
        call()
    return found


# Schemathesis's own strategies draw from `random` (its choice, reported by hypothesis).
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@pytest.mark.parametrize("service", list(SERVICES))
async def test_no_generated_request_gets_a_server_error_or_an_answer_off_its_schema(
    service: str, service_settings: SettingsFactory, tmp_path: Path
) -> None:
    build, keys = SERVICES[service]
    async with running_service(build(service_settings, tmp_path)) as running:
        document = (await running.client.get("/openapi.json")).json()
        assert document["paths"], f"{service} documents no operations"
        # Schemathesis calls are blocking: they run in a thread while the service serves here.
        failures, statuses = await asyncio.to_thread(fuzz, document, running.base_url, keys)
    assert failures == [], "\n\n".join(failures)
    # The keys opened the doors: some generated requests were served, not only refused.
    assert any(200 <= status < 300 for status in statuses), sorted(set(statuses))
