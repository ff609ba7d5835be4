"""Where the client finds its server and token: an argument, then LEARNGENE_URL / LEARNGENE_TOKEN, then
``~/.config/learngene/config.toml`` (``url = "..."``, ``token = "..."``; ``$XDG_CONFIG_HOME`` respected)."""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "learngene" / "config.toml"


def _file() -> dict[str, Any]:
    path = config_path()
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}


def resolve(base_url: str | None, token: str | None) -> tuple[str, str | None]:
    """(server URL, token or None), each from the first place that has it."""
    url = base_url or os.environ.get("LEARNGENE_URL")
    tok = token or os.environ.get("LEARNGENE_TOKEN")
    stored = _file() if not (url and tok) else {}
    url = url or stored.get("url") or DEFAULT_URL
    tok = tok or stored.get("token") or None
    return str(url).rstrip("/"), tok
