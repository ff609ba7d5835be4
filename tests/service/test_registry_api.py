"""The registry over HTTP, on SQLite and PostgreSQL: browsing, versions, aliases, pagination, errors."""
from __future__ import annotations

from fastapi.testclient import TestClient

from service.context import AppContext
from service.db import unit_of_work
from service.learngenes.service import publish_version


def _publish(ctx: AppContext, name: str, method: str = "tleg", **extra: object) -> int:
    with unit_of_work(ctx.sessions) as uow:
        v = publish_version(
            uow.session, name=name, method=method, description=f"{name} for tests", ancestry_id=None,
            job_id=None, dataset="builtin:digits", mode="fit", hyperparams={"aux_depth": 4},
            metrics={"loss": 0.5}, meta={"spec": {"depth": 4}}, sha256="ab" * 32, size_bytes=123,
            storage_key="sha256/ab/" + "ab" * 32, **extra,  # type: ignore[arg-type]
        )
        return v.version


def test_versions_increment_and_latest_alias_follows(ctx: AppContext, client: TestClient) -> None:
    assert _publish(ctx, "digits-tleg") == 1
    assert _publish(ctx, "digits-tleg") == 2

    lg = client.get("/v1/learngenes/digits-tleg").json()
    assert lg["latest_version"] == 2 and lg["version_count"] == 2 and lg["aliases"] == {"latest": 2}

    latest = client.get("/v1/learngenes/digits-tleg/versions/latest").json()
    assert latest["version"] == 2 and latest["aliases"] == ["latest"]
    first = client.get("/v1/learngenes/digits-tleg/versions/1").json()
    assert first["aliases"] == [] and first["lineage"]["dataset"] == "builtin:digits"
    assert first["tensors_url"] == "/v1/learngenes/digits-tleg/versions/1/tensors"

    versions = client.get("/v1/learngenes/digits-tleg/versions").json()
    assert [v["version"] for v in versions["items"]] == [2, 1]


def test_list_is_paginated_with_opaque_tokens(ctx: AppContext, client: TestClient) -> None:
    names = [f"lg-{i:02d}" for i in range(5)]
    for n in names:
        _publish(ctx, n)
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        params = {"limit": 2} | ({"page_token": token} if token else {})
        body = client.get("/v1/learngenes", params=params).json()
        seen += [item["name"] for item in body["items"]]
        pages += 1
        token = body["next_page_token"]
        if token is None:
            break
    assert seen == names and pages == 3


def test_unknown_things_are_404_in_the_common_error_format(client: TestClient) -> None:
    for url in ["/v1/learngenes/nope", "/v1/learngenes/nope/versions", "/v1/learngenes/nope/versions/1",
                "/v1/jobs/deadbeef"]:
        r = client.get(url)
        assert r.status_code == 404, url
        assert r.json()["error"]["code"] == "not_found"


def test_unknown_version_and_alias_are_404(ctx: AppContext, client: TestClient) -> None:
    _publish(ctx, "digits-wave", method="wave")
    assert client.get("/v1/learngenes/digits-wave/versions/7").status_code == 404
    assert client.get("/v1/learngenes/digits-wave/versions/stable").status_code == 404


def test_bad_query_parameters_are_422_naming_the_field(client: TestClient) -> None:
    r = client.get("/v1/learngenes", params={"limit": 1000})
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "query.limit"
    r = client.get("/v1/learngenes", params={"page_token": "%%%not-a-token"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "page_token"


def test_method_of_a_learngene_is_fixed(ctx: AppContext) -> None:
    import pytest

    from service.errors import InvalidRequest

    _publish(ctx, "fixed")
    with pytest.raises(InvalidRequest):
        _publish(ctx, "fixed", method="wave")


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "storage": "ok"}


def test_openapi_documents_errors_and_operation_ids(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    op = spec["paths"]["/v1/learngenes/{name}"]["get"]
    assert op["operationId"] == "get_learngene"
    assert op["tags"] == ["learngenes"]
    assert op["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")


def test_pages_cost_the_same_number_of_queries_whatever_their_size(ctx: AppContext, client: TestClient) -> None:
    """No query per row: a page of 12 learngenes (or versions) costs what a page of 1 costs."""
    from sqlalchemy import event

    for i in range(12):
        _publish(ctx, f"q-{i:02d}")
        _publish(ctx, "q-versions")
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(ctx.engine, "before_cursor_execute", count)
    try:
        cost = {}
        for url, limit in [("/v1/learngenes", 1), ("/v1/learngenes", 13),
                           ("/v1/learngenes/q-versions/versions", 1), ("/v1/learngenes/q-versions/versions", 12)]:
            statements.clear()
            body = client.get(url, params={"limit": limit}).json()
            assert len(body["items"]) == limit
            cost[(url, limit)] = len(statements)
    finally:
        event.remove(ctx.engine, "before_cursor_execute", count)
    assert cost[("/v1/learngenes", 13)] == cost[("/v1/learngenes", 1)]
    assert cost[("/v1/learngenes/q-versions/versions", 12)] == cost[("/v1/learngenes/q-versions/versions", 1)]
    listed = client.get("/v1/learngenes", params={"limit": 13}).json()["items"]
    assert {lg["name"]: lg["version_count"] for lg in listed}["q-versions"] == 12
    assert all(lg["aliases"]["latest"] == lg["latest_version"] for lg in listed)
