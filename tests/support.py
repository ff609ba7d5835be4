"""Helpers for tests that run real servers and workers (not fixtures: plain functions)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(tmp: Path, database_url: str = "", broker_url: str = "", **overrides: object) -> Settings:
    """Test settings: no seeding and fast heartbeats unless ``overrides`` say otherwise."""
    values: dict[str, object] = {"seed_on_start": False, "heartbeat_interval_s": 0.5, "stale_after_s": 4.0}
    values.update(overrides)
    return Settings(data_dir=tmp, database_url=database_url, broker_url=broker_url, **values)  # type: ignore[arg-type]


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def service_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        LEARNGENE_DATA_DIR=str(settings.data_dir),
        LEARNGENE_DATABASE_URL=settings.database_url,
        LEARNGENE_BROKER_URL=settings.broker_url,
        LEARNGENE_SEED_ON_START=str(settings.seed_on_start).lower(),
        LEARNGENE_HEARTBEAT_INTERVAL_S=str(settings.heartbeat_interval_s),
        LEARNGENE_STALE_AFTER_S=str(settings.stale_after_s),
        LEARNGENE_CHECKPOINT_EVERY_S=str(settings.checkpoint_every_s),
        PYTHONUNBUFFERED="1",
        LEARNGENE_STORAGE_URL=settings.storage_url,
        LEARNGENE_S3_ENDPOINT_URL=settings.s3_endpoint_url,
        LEARNGENE_S3_REGION=settings.s3_region,
    )
    if settings.cache_dir is not None:
        env["LEARNGENE_CACHE_DIR"] = str(settings.cache_dir)
    # Keys and rate limits, so that a test can start a server with its own.
    for name in ("api_token", "rate_limit_per_s", "rate_limit_burst", "anonymous_rate_per_s", "anonymous_burst"):
        env[f"LEARNGENE_{name.upper()}"] = str(getattr(settings, name))
    return env


class Proc:
    """A child process (server or worker) whose output goes to a log file we can show on failure."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
                                      start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self, timeout: float = 20) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


def start_server(settings: Settings, tmp: Path, extra_args: list[str] | None = None, timeout: float = 120) -> tuple[Proc, str]:
    port = free_port()
    args = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--log-level", "warning"]
    proc = Proc(args + (extra_args or []), service_env(settings), tmp / f"server-{port}.log")
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"server exited early:\n{proc.log()}")
        try:
            return httpx.get(url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout, 0.2, "the API server to answer")
    return proc, url


def start_worker(settings: Settings, tmp: Path, name: str, queues: str = "cpu,gpu", pool: str = "solo") -> Proc:
    args = [sys.executable, "-m", "service.cli", "worker", f"--queues={queues}", f"--pool={pool}",
            f"--hostname={name}@%h", "--log-level=info"]
    if pool == "prefork":
        args.append("--concurrency=1")
    proc = Proc(args, service_env(settings), tmp / f"worker-{name}.log")
    wait_until(lambda: b"ready" in proc.log_path.read_bytes() or proc.popen.poll() is not None, 60, 0.2,
               "the Celery worker to be ready")
    if proc.popen.poll() is not None:
        raise AssertionError(f"worker exited early:\n{proc.log()}")
    return proc
