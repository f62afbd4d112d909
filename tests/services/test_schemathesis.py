"""Each service against its own OpenAPI document, by schemathesis over real HTTP: no 5xx, and every answer
(status code, content type, body) is one the document lists. Seeded (derandomized), so a failure reproduces.

`CHAOS_SCALE` multiplies the examples per operation, as for the other hostile-input tests.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import CheckFunction
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import positive_data_acceptance

from loadkit import SCALE, record
from testkit import Server

EXAMPLES_PER_OPERATION = int(60 * SCALE)
# "Schema-valid data is accepted" cannot hold for bodies the schema can only call bytes or a string: a 1x1 WebP or
# an empty text is schema-valid and rightly a 400. Every other check runs: no 5xx, documented status codes,
# content types, headers and bodies.
NOT_EXPRESSIBLE: list[CheckFunction] = [positive_data_acceptance]
SEEDED = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


CASES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def count_cases() -> Iterator[None]:
    yield
    print(f"schemathesis cases by service and status: {dict(CASES)}")
    record("schemathesis", {"cases": dict(CASES), "examples_per_operation": EXAMPLES_PER_OPERATION})


def call(case: Case, service: str) -> None:
    response = case.call_and_validate(excluded_checks=NOT_EXPRESSIBLE)
    CASES[f"{service} {response.status_code}"] += 1
    # 502 and 504 `upstream_timeout` mean an allowed image host failed; here none is allowed but the origin.
    if response.status_code in (502, 504):
        assert response.json()["error"]["code"] == "deadline_exceeded", response.text


@pytest.fixture(scope="module")
def image_api(image_service: Server) -> BaseSchema:
    return schemathesis.openapi.from_url(f"{image_service.url}/openapi.json")


@pytest.fixture(scope="module")
def text_api(text_service: Server) -> BaseSchema:
    return schemathesis.openapi.from_url(f"{text_service.url}/openapi.json")


image_schema = schemathesis.pytest.from_fixture("image_api")
text_schema = schemathesis.pytest.from_fixture("text_api")


@image_schema.parametrize()
@SEEDED
def test_the_image_service_answers_as_its_openapi_document_says(case: Case) -> None:
    call(case, "image")


@text_schema.parametrize()
@SEEDED
def test_the_text_service_answers_as_its_openapi_document_says(case: Case) -> None:
    call(case, "text")
