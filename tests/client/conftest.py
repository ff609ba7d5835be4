"""A live ``learngene serve`` (embedded default, writes need a token) with one fitted TLEG learngene, made
through the SDK itself, shared by the client's tests."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.service.conftest import ARCH, TINY_ARGS, tiny_ancestry_file  # noqa: F401  (the fixture, reused)
from tests.support import Proc, make_settings, start_server

TOKEN = "client-test-token"
LEARNGENE = "sdk-tleg"


@dataclass
class Live:
    url: str
    token: str
    ancestry_id: int
    server: Proc
    tmp: Path


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_ancestry_file: Path) -> Iterator[Live]:  # noqa: F811
    from learngene import Client

    tmp = tmp_path_factory.mktemp("client-live")
    server, url = start_server(make_settings(tmp, api_token=TOKEN), tmp)
    try:
        with Client(url, TOKEN, progress=False) as client:
            # Public: the tests read them anonymously too.
            ancestry = client.upload_ancestry(tiny_ancestry_file, architecture=ARCH, model_args=TINY_ARGS,
                                              visibility="public")
            client.condense(ancestry, "tleg", LEARNGENE, mode="fit", evaluate=False,
                            visibility="public").follow(timeout=120)
        yield Live(url=url, token=TOKEN, ancestry_id=ancestry.id, server=server, tmp=tmp)
    finally:
        server.stop()
