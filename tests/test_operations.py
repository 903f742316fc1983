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
