"""Schemathesis walks every operation of the served OpenAPI document with generated input:
whatever it sends, the answer is never a 5xx and always says what was wrong."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings


@pytest.mark.slow
def test_no_generated_input_makes_a_server_error(app, engine):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:
        _never_a_server_error(operation)
    from clearhouse.kit.db import transact
    from clearhouse.ledger.verify import verify

    assert transact(engine, verify).ok


def _never_a_server_error(operation) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call()
        assert response.status_code < 500, (operation.label, case.body, response.text)
        if response.status_code >= 400:
            content_type = response.headers["content-type"]
            content_type = content_type[0] if isinstance(content_type, list) else content_type
            assert content_type.startswith("application/problem+json"), (operation.label, response.text)
            assert response.json()["code"]

    check()
