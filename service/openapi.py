"""Responses that any operation can give, declared on every operation of the OpenAPI document.

They come from layers below the routes (the guard middleware, FastAPI's body parsing), so a route cannot list
them itself: added here once, the document stays true without each route repeating them.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.errors import _DESCRIPTIONS
from service.limits.middleware import UNLIMITED_PATHS, UPLOAD_PATHS

#: Everywhere but the probes: a bad URL or header (400), a wrong key (401), the rate limit (429), the registry
#: down while the key is looked up (503).
_EVERYWHERE = (400, 401, 429, 503)
#: With a body: too large (413), unreadable (400), invalid (422).
_WITH_BODY = (400, 413, 422)


def _error(status: int) -> dict[str, Any]:
    return {
        "description": _DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }


def install_common_responses(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
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
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
