"""Property-based fuzzing of `lumina-rt serve`'s OpenAPI document (schemathesis), against a real server process on
a loopback port: no 5xx, every response matches the schema (status code, content type, body). Bounded: a few
examples per operation, a small queue (submissions past it are 429s, which the schema declares)."""

from __future__ import annotations

import pytest

from tests.test_serve import ServerProcess, engine_dir  # noqa: F401  (fixture)

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (test extra) is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
EXAMPLES = 12  # per operation
# No 5xx; status code, content type, headers and body as the schema says. Not `positive_data_acceptance`: a request
# the schema allows may still ask for a size the engines do not serve (a 400 naming it), which no schema can say.
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def served(engine_dir, tmp_path_factory):  # noqa: F811
    server = ServerProcess(engine_dir, tmp_path_factory.mktemp("fuzz") / "store", "--max-queue", "4")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api_schema(served):
    return schemathesis.openapi.from_url(served.url + "/openapi.json")


def test_api_matches_its_schema(api_schema):
    """Each operation of /openapi.json with EXAMPLES generated cases (schemathesis' default checks: no server error,
    status code, content type and body as documented)."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case):
            case.call_and_validate(timeout=30, checks=CHECKS)

        run()
