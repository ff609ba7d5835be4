"""The OpenAPI UI (/docs) works with no internet: Swagger UI 5 is served from our own package.

Two kinds of checks against a live uvicorn server:

* plain HTTP: the page references only our own host, the schema is OpenAPI 3.1, the vendored
  assets come back with the right content types, the docs routes stay out of the schema;
* a real headless Chromium (Debian's, see tests/browser.py): the page renders the operations,
  the favicon comes from our host, and "Try it out" -> "Execute" on GET /v1/learngenes shows the
  server's answer. Every request the browser made is checked to have stayed on our host.

The server under test is the real service after its first start (``seeded_server``): "Try it out"
on the learngene list must show the seeded learngene. A small stand-in app checks install_docs()
under a root path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import fastapi
import httpx
import pytest
from pydantic import BaseModel

from service.docs_ui import ASSETS_DIR, STATIC_URL, install_docs, swagger_ui_version

from tests.browser import headless_chromium, requires_chromium

TITLE = "Learngene Service"
LIST_PATH = "/v1/learngenes"

# ------------------------------------------------------------------------------------------
# The app under test


class LearngeneSummary(BaseModel):
    name: str


class LearngenePage(BaseModel):
    items: list[LearngeneSummary]
    next_page_token: str | None = None


def make_demo_app() -> fastapi.FastAPI:
    """A stand-in with a few tagged routes, built the way the real app is: CDN docs off, then
    install_docs()."""
    app = fastapi.FastAPI(title=TITLE, version="0.1.0", docs_url=None, redoc_url=None)

    @app.get(
        LIST_PATH, tags=["learngenes"], response_model=LearngenePage, summary="List learngenes"
    )
    def list_learngenes(page_size: int = 50, page_token: str | None = None) -> LearngenePage:
        return LearngenePage(items=[LearngeneSummary(name="digits-tleg")], next_page_token=None)

    @app.get(LIST_PATH + "/{name}", tags=["learngenes"], response_model=LearngeneSummary)
    def get_learngene(name: str) -> LearngeneSummary:
        if name != "digits-tleg":
            raise fastapi.HTTPException(404, "no such learngene")
        return LearngeneSummary(name=name)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    install_docs(app, title=TITLE)
    return app


@pytest.fixture(scope="module")
def docs_app_url(seeded_server: str) -> str:
    """Base URL (no trailing slash) of the real service, seeded on its first start."""
    return seeded_server


@pytest.fixture(scope="module")
def http(docs_app_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=docs_app_url, timeout=30, trust_env=False) as client:
        yield client


# ------------------------------------------------------------------------------------------
# Plain HTTP

EXTERNAL_URL = re.compile(r"(?i)(?:https?:)?//[a-z0-9.-]+")


def test_docs_page_references_only_our_host(http: httpx.Client) -> None:
    r = http.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    assert not EXTERNAL_URL.findall(page), "the /docs page must not load anything from elsewhere"
    assert f'src="{STATIC_URL}/swagger-ui-bundle.js' in page
    assert f'href="{STATIC_URL}/swagger-ui.css' in page
    assert '"url":"/openapi.json"' in page
    assert '"persistAuthorization":true' in page and '"deepLinking":true' in page
    # Every src/href is a path on this server.
    for ref in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert ref.startswith("/"), ref


def test_oauth2_redirect_page_is_local(http: httpx.Client) -> None:
    r = http.get("/docs/oauth2-redirect")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "swaggerUIRedirectOauth2" in r.text
    assert not re.search(r"(?:src|href)=\"(?:https?:)?//", r.text)


def test_openapi_is_3_1_and_hides_docs_routes(http: httpx.Client) -> None:
    r = http.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert spec["openapi"].startswith("3.1."), spec["openapi"]
    assert "get" in spec["paths"][LIST_PATH]
    for path in spec["paths"]:
        assert not path.startswith(("/docs", "/static", "/favicon")), path


@pytest.mark.parametrize(
    ("path", "content_types"),
    [
        (f"{STATIC_URL}/swagger-ui-bundle.js", ("text/javascript", "application/javascript")),
        (f"{STATIC_URL}/swagger-ui.css", ("text/css",)),
        (f"{STATIC_URL}/favicon-32x32.png", ("image/png",)),
        ("/favicon.ico", ("image/png",)),
    ],
)
def test_assets_are_served_with_content_types(
    http: httpx.Client, path: str, content_types: tuple[str, ...]
) -> None:
    r = http.get(path)
    assert r.status_code == 200, path
    assert r.headers["content-type"].split(";")[0].strip() in content_types, r.headers
    name = "favicon-32x32.png" if path == "/favicon.ico" else path.rsplit("/", 1)[1]
    assert r.content == (ASSETS_DIR / name).read_bytes()


def test_vendored_assets_are_swagger_ui_5_and_small() -> None:
    version = swagger_ui_version()
    assert re.fullmatch(r"5\.\d+\.\d+", version), version
    names = {p.name for p in ASSETS_DIR.iterdir()}
    needed = {"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "LICENSE", "NOTICE"}
    assert needed <= names, names
    assert names <= needed | {"swagger-ui-bundle.js.LICENSE.txt", "VERSION"}, names
    assert sum(p.stat().st_size for p in ASSETS_DIR.iterdir()) < 4 * 1024 * 1024


def test_docs_page_honours_root_path() -> None:
    # Behind a proxy that strips a prefix (root_path), every URL on the page must carry it.
    from fastapi.testclient import TestClient

    with TestClient(make_demo_app(), root_path="/api") as client:
        page = client.get("/docs").text
        assert f'src="/api{STATIC_URL}/swagger-ui-bundle.js' in page
        assert '"url":"/api/openapi.json"' in page
        # ...and the URLs it names resolve.
        for ref in re.findall(r'(?:src|href)="([^"]*)"', page):
            assert client.get(ref).status_code == 200, ref


def test_install_docs_refuses_an_app_with_cdn_docs() -> None:
    with pytest.raises(ValueError, match="docs_url=None"):
        install_docs(fastapi.FastAPI(), title="x")


# ------------------------------------------------------------------------------------------
# In a real headless browser

LIST_OP = f'.opblock.opblock-get:has(.opblock-summary-path[data-path="{LIST_PATH}"])'


def _is_ours(url: str, base: str) -> bool:
    return url.startswith(base + "/") or url.startswith(("data:", "blob:", "about:"))


@pytest.mark.browser
@requires_chromium
def test_swagger_ui_renders_and_executes_offline(docs_app_url: str) -> None:
    with headless_chromium() as page:
        page.open(docs_app_url + "/docs")

        # The operations list is rendered from our OpenAPI 3.1 schema.
        page.wait_for(".opblock")
        assert TITLE in page.text(".info .title")
        assert "OAS 3.1" in page.text(".info .title")
        ops = page.evaluate(
            """Array.from(document.querySelectorAll('.opblock'), b => [
                 b.querySelector('.opblock-summary-method').innerText.trim(),
                 b.querySelector('.opblock-summary-path').getAttribute('data-path')])"""
        )
        assert ["GET", LIST_PATH] in ops, ops
        assert set(page.texts(".opblock-tag span")) >= {"learngenes"}, page.texts(".opblock-tag")

        # The favicon is ours, and it is really there.
        icon = page.evaluate("document.querySelector('link[rel~=\"icon\"]').href")
        assert icon.startswith(docs_app_url + "/"), icon
        for url in (icon, docs_app_url + "/favicon.ico"):
            fetched = page.evaluate(
                f"fetch({url!r}).then(r => [r.status, r.headers.get('content-type')])",
                await_promise=True,
            )
            assert fetched == [200, "image/png"], (url, fetched)

        # Open the learngene-list operation, "Try it out", "Execute": the real answer shows.
        page.click(f"{LIST_OP} .opblock-summary-control")
        page.click(f"{LIST_OP} button.try-out__btn")
        page.click(f"{LIST_OP} button.execute")
        live = f"{LIST_OP} .live-responses-table tbody"
        body = page.text(f"{live} .response-col_description", text="digits-tleg")
        assert '"digits-tleg"' in body, body
        assert page.text(f"{live} .response-col_status").strip() == "200"

        # Nothing left this host: every request (page, bundle, css, schema, the call) was ours.
        assert docs_app_url + "/openapi.json" in page.requests
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            prefix = f"{docs_app_url}{STATIC_URL}/{asset}"
            assert any(u.startswith(prefix) for u in page.requests), (asset, page.requests)
        assert any(u.startswith(docs_app_url + LIST_PATH) for u in page.requests), page.requests
        foreign = [u for u in page.requests if not _is_ours(u, docs_app_url)]
        assert not foreign, foreign
        assert not page.errors, page.errors
