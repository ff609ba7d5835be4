"""Interactive API docs (Swagger UI 5) served entirely from this package.

FastAPI's built-in ``/docs`` page pulls Swagger UI's JavaScript and CSS from a CDN, so it is a
blank page on a machine without internet. :func:`install_docs` serves a vendored copy instead
(``service/static/swagger-ui/``, produced by ``scripts/vendor_swagger_ui.sh``; version in the
``VERSION`` file there). Swagger UI 5 renders OpenAPI 3.1, which FastAPI emits.

Usage::

    app = FastAPI(docs_url=None, redoc_url=None)
    install_docs(app, title="Learngene Service")

Routes added (none of them appear in the OpenAPI schema):

* ``GET /static/swagger-ui/...``  the vendored assets (bundle, css, favicon, licences)
* ``GET /docs``                   the Swagger UI page, pointing at ``app.openapi_url``
* ``GET /docs/oauth2-redirect``   Swagger UI's OAuth2 redirect helper page
* ``GET /favicon.ico``            the Swagger favicon

This module deliberately imports nothing heavy (no torch): it only needs FastAPI/Starlette.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import fastapi
from fastapi.openapi.docs import get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_DIR", "STATIC_URL", "install_docs", "swagger_ui_version"]

ASSETS_DIR = Path(__file__).resolve().parent / "static" / "swagger-ui"
STATIC_URL = "/static/swagger-ui"

_BUNDLE = "swagger-ui-bundle.js"
_CSS = "swagger-ui.css"
_FAVICON = "favicon-32x32.png"


def swagger_ui_version() -> str:
    """The vendored swagger-ui-dist version (from ``static/swagger-ui/VERSION``)."""
    return (ASSETS_DIR / "VERSION").read_text(encoding="ascii").strip()


def _script_json(value: Any) -> str:
    """JSON that is safe to embed inside an inline ``<script>`` element."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    # "</script>" or "<!--" inside a string must not end or confuse the script element.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _page(
    *,
    title: str,
    openapi_url: str,
    static_url: str,
    oauth2_redirect_path: str | None,
    version: str,
    parameters: dict[str, Any],
) -> str:
    config: dict[str, Any] = {
        "url": openapi_url,
        "dom_id": "#swagger-ui",
        "deepLinking": True,
        "persistAuthorization": True,
        "displayRequestDuration": True,
        "showExtensions": True,
        "showCommonExtensions": True,
        # The default validator badge would call validator.swagger.io: never leave the host.
        "validatorUrl": None,
        "layout": "BaseLayout",
    }
    config.update(parameters)
    v = html.escape(version, quote=True)

    def asset(name: str) -> str:
        # ?v= makes browsers fetch the new file after an upgrade of the vendored copy.
        return html.escape(f"{static_url}/{name}?v={version}", quote=True)

    redirect = (
        f"cfg.oauth2RedirectUrl = window.location.origin + {_script_json(oauth2_redirect_path)};"
        if oauth2_redirect_path
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="swagger-ui-dist {v} (vendored)">
<title>{html.escape(title)}</title>
<link rel="icon" type="image/png" sizes="32x32" href="{asset(_FAVICON)}">
<link rel="stylesheet" type="text/css" href="{asset(_CSS)}">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{asset(_BUNDLE)}"></script>
<script>
(function () {{
  var cfg = {_script_json(config)};
  {redirect}
  cfg.presets = [SwaggerUIBundle.presets.apis];
  window.ui = SwaggerUIBundle(cfg);
}})();
</script>
</body>
</html>
"""


def install_docs(
    app: fastapi.FastAPI,
    *,
    title: str,
    docs_url: str = "/docs",
    static_url: str = STATIC_URL,
    try_it_out: bool = False,
    swagger_ui_parameters: dict[str, Any] | None = None,
) -> None:
    """Serve Swagger UI for ``app`` from the vendored assets, with no external request.

    Create the app with ``FastAPI(docs_url=None, redoc_url=None)`` so FastAPI's CDN-based pages
    are off, then call this once. ``try_it_out=True`` opens every operation in "Try it out"
    mode; ``swagger_ui_parameters`` overrides or adds Swagger UI configuration keys (JSON
    values only).
    """
    if app.openapi_url is None:
        raise ValueError("install_docs needs the OpenAPI schema: app.openapi_url is None")
    if app.docs_url == docs_url:
        raise ValueError(
            f"app already serves FastAPI's CDN docs at {docs_url}: create it with docs_url=None"
        )
    if not (ASSETS_DIR / _BUNDLE).is_file():
        raise RuntimeError(
            f"Swagger UI assets missing in {ASSETS_DIR}: run scripts/vendor_swagger_ui.sh"
        )

    docs_url = "/" + docs_url.strip("/")
    static_url = "/" + static_url.strip("/")
    oauth2_url = f"{docs_url}/oauth2-redirect"
    version = swagger_ui_version()
    parameters = {"tryItOutEnabled": bool(try_it_out), **(swagger_ui_parameters or {})}
    openapi_url = app.openapi_url

    # Mounted sub-apps are never part of the OpenAPI schema.
    app.mount(static_url, StaticFiles(directory=ASSETS_DIR), name="swagger-ui-static")

    @app.get(docs_url, include_in_schema=False)
    async def swagger_ui_html(request: fastapi.Request) -> HTMLResponse:
        # Behind a proxy that strips a prefix, root_path holds it: every URL must carry it.
        root = request.scope.get("root_path", "").rstrip("/")
        page = _page(
            title=title,
            openapi_url=root + openapi_url,
            static_url=root + static_url,
            oauth2_redirect_path=root + oauth2_url,
            version=version,
            parameters=parameters,
        )
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get(oauth2_url, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        # FastAPI's copy of Swagger UI's redirect page: inline script, no external URL.
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(
            ASSETS_DIR / _FAVICON,
            media_type="image/png",
            headers={"Cache-Control": "public, max-age=86400"},
        )
