"""Property-based fuzzing of the whole HTTP API from its own OpenAPI schema (schemathesis): valid and
invalid requests to every operation. Each answer must be a 2xx, or a 4xx with a JSON `error`, and
conform to the schema; never a 5xx, a hang or a dead worker. Run with `-s` to see how many cases ran."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import strategies as st

from app.main import create_app
from app.settings import Settings

CASES: Counter[tuple[str, int]] = Counter()  # cases run, by operation and answer status


@pytest.fixture(scope="module")
def fuzzed_app(models_dir: Path) -> FastAPI:
    return create_app(
        Settings(models_dir=str(models_dir), device="cpu", max_texts=5, max_chars=200, max_body_bytes=5000)
    )


# The OpenAPI document does not depend on the models loaded, so the schema is read at import time
# (`schemathesis.pytest.from_fixture` cannot be used: it breaks on pytest 9's node ids); each case is
# sent to `fuzzed_app`, whose lifespan schemathesis starts on the first call and keeps for the session.
schema = schemathesis.openapi.from_dict(create_app(Settings(device="cpu"), models={}).openapi())
schema.config.generation.update(modes=list(schemathesis.GenerationMode))
# Which language pairs are served is up to the models loaded, not the schema: a schema-valid request
# for a pair that is not served is rightly a 400, so "valid data must be accepted" cannot hold here.
# API keys are required only when configured (this app has none), so "a request without credentials is
# refused" does not hold either.
schema.config.checks.update(excluded_check_names=["positive_data_acceptance", "ignored_auth"])
# a schema-violating body that is also over the size limit is rightly refused with 413
rejection = schema.config.checks.negative_data_rejection
rejection.expected_statuses = [*rejection.expected_statuses, "413"]


@schema.hook
def flatmap_case(context: schemathesis.HookContext, case: schemathesis.Case[Any]) -> st.SearchStrategy[object]:
    """Valid bodies name random languages; most get a served pair instead, so that they reach the model
    (Hypothesis draws False more often than True, and shrinks towards it)."""
    if case.meta is None or not case.meta.generation.mode.is_positive or not isinstance(case.body, dict):
        return st.just(case)
    return st.booleans().map(lambda as_generated: case if as_generated else _to_served_pair(case))


def _to_served_pair(case: schemathesis.Case[Any]) -> schemathesis.Case[Any]:
    assert isinstance(case.body, dict)
    case.body = {**case.body, "source": "src", "target": "tgt"}
    return case


def error_is_json(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> None:
    """A 4xx says what is wrong in a JSON `{"error": "..."}`."""
    if 400 <= response.status_code < 500:
        body = response.json()
        assert isinstance(body, dict), f"{response.status_code} body is not a JSON object: {response.text[:200]}"
        assert isinstance(body.get("error"), str), f"{response.status_code} body has no string `error`: {body}"


@schema.parametrize()
@hypothesis.settings(
    max_examples=1000,
    derandomize=True,  # the same cases on every run, so CI is reproducible
    deadline=None,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_every_answer_is_2xx_or_a_4xx_with_a_json_error(case: schemathesis.Case[Any], fuzzed_app: FastAPI) -> None:
    response = case.call_and_validate(app=fuzzed_app, additional_checks=[error_is_json], timeout=30)  # no hang
    CASES[case.operation.label, response.status_code] += 1
    assert response.status_code < 500


def test_the_worker_still_translates_after_the_fuzzing(fuzzed_app: FastAPI) -> None:
    translate = schema["/translate"]["POST"]
    case = translate.Case(
        body={"q": "alpha bravo golf", "source": "src", "target": "tgt"}, media_type="application/json"
    )
    response = case.call(app=fuzzed_app)
    assert response.status_code == 200
    assert response.json() == {"translatedText": "GOLF BRAVO ALPHA"}
    assert 'status="500"' not in schema["/metrics"]["GET"].Case().call(app=fuzzed_app).text
    print(f"\nfuzz cases run: {sum(CASES.values())}")
    for label in sorted({label for label, _ in CASES}):
        statuses = {status: n for (other, status), n in sorted(CASES.items()) if other == label}
        print(f"  {label}: {sum(statuses.values())} ({', '.join(f'{n} x {s}' for s, n in statuses.items())})")
