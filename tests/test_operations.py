"""Operations endpoints: health, readiness, metrics, OpenAPI."""


class TestOperations:
    def test_healthz_answers(self, client):
        assert client.get("/healthz").json() == {"status": "ok"}

    def test_readyz_reports_schema_at_head(self, client):
        response = client.get("/readyz")
        assert response.status_code == 200
        assert response.json()["status"] == "ready"

    def test_metrics_are_prometheus_text(self, client):
        client.get("/healthz")
        response = client.get("/metrics")
        assert response.status_code == 200
        assert "clearhouse_http_requests_total" in response.text

    def test_openapi_lists_the_ledger(self, client):
        paths = client.get("/openapi.json").json()["paths"]
        assert "/v1/ledger/transfers" in paths
        assert "/v1/ledger/verify" in paths

    def test_unknown_route_is_problem_json(self, client):
        response = client.get("/v1/nothing-here")
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "not_found"

    def test_real_http_round_trip(self, http):
        assert http.get("/healthz").status_code == 200


def counted(client, method: str, route: str, status: int) -> float:
    """clearhouse_http_requests_total for one label set, read from /metrics."""
    wanted = f'clearhouse_http_requests_total{{method="{method}",route="{route}",status="{status}"}} '
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class TestRequestEdges:
    """The layers every request passes: request id, metrics, the NUL guard."""

    def test_a_sane_request_id_is_echoed_and_any_other_replaced(self, client):
        assert client.get("/healthz", headers={"X-Request-Id": "abc-123.x:y"}).headers["x-request-id"] == "abc-123.x:y"
        made = client.get("/healthz", headers={"X-Request-Id": "no spaces <allowed>"}).headers["x-request-id"]
        assert made.startswith("req_")
        assert client.get("/healthz").headers["x-request-id"].startswith("req_")
        refused = client.get("/v1/nothing-here", headers={"X-Request-Id": "r-404"})
        assert refused.status_code == 404 and refused.headers["x-request-id"] == "r-404"
        assert [name for name in refused.headers if name == "x-request-id"] == ["x-request-id"]

    def test_requests_are_counted_by_route_template_and_status(self, client, platform_key):
        before = counted(client, "GET", "/v1/merchants/{merchant_id}", 404)
        unmatched = counted(client, "GET", "unmatched", 404)
        for _ in range(3):
            assert client.get("/v1/merchants/mch_nobody").status_code == 404
        client.get("/v1/nothing-here")
        assert counted(client, "GET", "/v1/merchants/{merchant_id}", 404) == before + 3
        assert counted(client, "GET", "unmatched", 404) == unmatched + 1

    def test_a_nul_in_the_path_or_query_is_refused_before_any_route(self, client):
        for url in ("/v1/merchants?name=a%00b", "/v1/merch%00ants"):
            response = client.get(url)
            assert response.status_code == 400, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["code"] == "malformed_request"


class TestAnswersBeforeRouting:
    """An answer a middleware gives before routing is still counted under its route."""

    def test_a_replayed_idempotent_answer_and_a_refused_signature_count_under_their_route(
            self, client, anonymous_client):
        route = "/v1/merchants"
        before = (counted(client, "POST", route, 201), counted(client, "POST", route, 401))
        body = {"name": "Replayed Shop", "default_currency": "CNY"}
        first = client.post(route, json=body, headers={"Idempotency-Key": "count-me-0001"})
        again = client.post(route, json=body, headers={"Idempotency-Key": "count-me-0001"})
        assert first.status_code == again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
        assert anonymous_client.post(route, json=body).status_code == 401
        assert counted(client, "POST", route, 201) == before[0] + 2
        assert counted(client, "POST", route, 401) == before[1] + 1
