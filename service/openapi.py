"""The OpenAPI document as the service really behaves.

* Responses that any operation can give come from layers below the routes (the guard middleware, FastAPI's body
  parsing), so a route cannot list them itself: they are declared here once, on every operation.
* Whether a key is needed depends on the configuration and on whether any key exists, so the security of each
  operation is written when the document is asked for: required for admin routes, for writes once keys are
  required, for reads when LEARNGENE_REQUIRE_KEY_FOR_READS; optional (``{}`` beside the bearer scheme) otherwise.
"""
from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.http_errors import DESCRIPTIONS
from service.keys.auth import keys_required
from service.limits.middleware import UNLIMITED_PATHS, UPLOAD_PATHS

#: Everywhere but the probes: a bad URL or header (400), a wrong key (401), the rate limit (429), the registry
#: down while the key is looked up (503).
_EVERYWHERE = (400, 401, 429, 503)
#: With a body: too large (413), unreadable (400), invalid (422).
_WITH_BODY = (400, 413, 422)
_BEARER = {"HTTPBearer": []}
ADMIN_PREFIX = "/v1/keys"
METRICS_PATH = "/metrics"


def _error(status: int) -> dict[str, Any]:
    return {
        "description": DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }


def base_schema(app: FastAPI) -> dict[str, Any]:
    """The document without per-configuration security, built once."""
    if not hasattr(app.state, "base_openapi"):
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes, tags=app.openapi_tags)
        for path, operations in schema.get("paths", {}).items():
            if path in UNLIMITED_PATHS:
                continue
            for method, op in operations.items():
                codes = set(_EVERYWHERE)
                if "requestBody" in op:
                    codes |= set(_WITH_BODY)
                if op.get("parameters"):
                    codes.add(422)
                if method == "post" and path in UPLOAD_PATHS:
                    codes.add(411)
                responses = op.setdefault("responses", {})
                for status in sorted(codes):
                    responses.setdefault(str(status), _error(status))
        app.state.base_openapi = schema
    return app.state.base_openapi  # type: ignore[no-any-return]


def install_openapi(app: FastAPI) -> None:
    cache: dict[bool, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        ctx = app.state.ctx
        with ctx.sessions() as session:
            writes_need_key = keys_required(session, ctx.settings)
        if writes_need_key not in cache:
            schema = copy.deepcopy(base_schema(app))
            for path, operations in schema.get("paths", {}).items():
                for method, op in operations.items():
                    if "security" not in op:
                        continue
                    if path.startswith(ADMIN_PREFIX):
                        needed = True
                    elif path == METRICS_PATH:
                        needed = ctx.settings.resolved_metrics_access == "admin"
                    elif method in ("get", "head"):
                        needed = ctx.settings.require_key_for_reads
                    else:
                        needed = writes_need_key
                    op["security"] = [_BEARER] if needed else [_BEARER, {}]
            cache[writes_need_key] = schema
        return cache[writes_need_key]

    app.openapi = openapi  # type: ignore[method-assign]
