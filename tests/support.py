"""Helpers for tests that run real servers and workers (not fixtures: plain functions)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

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


#: For tests whose own polling and queues would spend the anonymous rate limit and job slots (not what they test).
UNTHROTTLED: dict[str, object] = {"anonymous_rate_per_s": 1e6, "anonymous_burst": 10**6, "max_concurrent_jobs": 1000}


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def service_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a child process these settings (every field set explicitly, or by
    ``make_settings``, travels; the rest keep their defaults)."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    fields = settings.model_fields_set | {"data_dir", "database_url", "broker_url", "seed_on_start"}
    for name, value in settings.model_dump(include=fields).items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, (list, dict)):
            text = json.dumps(value, default=str)
        else:
            text = str(value)
        env[f"LEARNGENE_{name.upper()}"] = text
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


def start_server(settings: Settings, tmp: Path, extra_args: list[str] | None = None, timeout: float = 120,
                 env: dict[str, str] | None = None) -> tuple[Proc, str]:
    port = free_port()
    args = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--log-level", "warning"]
    proc = Proc(args + (extra_args or []), {**service_env(settings), **(env or {})}, tmp / f"server-{port}.log")
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


def start_worker(settings: Settings, tmp: Path, name: str, queues: str = "cpu,gpu", pool: str = "solo",
                 env: dict[str, str] | None = None) -> Proc:
    args = [sys.executable, "-m", "service.cli", "worker", f"--queues={queues}", f"--pool={pool}",
            f"--hostname={name}@%h", "--log-level=info"]
    if pool == "prefork":
        args.append("--concurrency=1")
    proc = Proc(args, {**service_env(settings), **(env or {})}, tmp / f"worker-{name}.log")
    wait_until(lambda: b"ready" in proc.log_path.read_bytes() or proc.popen.poll() is not None, 60, 0.2,
               "the Celery worker to be ready")
    if proc.popen.poll() is not None:
        raise AssertionError(f"worker exited early:\n{proc.log()}")
    return proc


class RedisDbClaim:
    """One db index of a shared Redis, held by one test run. A run claims the first index (1-15; 0 is left to
    applications) whose claim key it can set with NX; the key expires, so a crashed run frees its index after
    ``ttl_s``. An index holding keys no test run left (no marker) is never claimed or emptied."""

    CLAIM = "learngene:test-run"
    MARKER = "learngene:test-db"

    def __init__(self, base: str, only: str | None = None, ttl_s: int = 6 * 3600) -> None:
        self.token = uuid.uuid4().hex
        candidates = [int(only)] if only else list(range(1, 16))
        for db in candidates:
            client = redis.Redis.from_url(f"{base}/{db}")
            if not client.set(self.CLAIM, self.token, nx=True, ex=ttl_s):
                client.close()
                continue
            if client.dbsize() > 1 and not client.exists(self.MARKER):
                client.delete(self.CLAIM)  # someone else's data: leave it alone
                client.close()
                continue
            self.db, self.client, self.url = db, client, f"{base}/{db}"
            client.set(self.MARKER, "1")
            self._empty()
            return
        raise RuntimeError(f"no free Redis db index among {candidates} at {base}: each is held by another "
                           f"test run or holds data of its own")

    def _empty(self) -> None:
        keep = {self.CLAIM.encode(), self.MARKER.encode()}
        for key in self.client.scan_iter(count=1000):
            if key not in keep:
                self.client.delete(key)

    def release(self) -> None:
        self._empty()
        if self.client.get(self.CLAIM) == self.token.encode():
            self.client.delete(self.CLAIM)
        self.client.close()


class RedisServer:
    """A redis-server of a test's own on a free port, without persistence: killing it loses every message."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Proc | None = None
        self.start()

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.tmp)]
        self.proc = Proc(args, dict(os.environ), self.tmp / f"redis-{self.port}-{time.monotonic_ns()}.log")
        wait_until(lambda: b"Ready to accept connections" in self.proc.log_path.read_bytes(), 20, 0.05,  # type: ignore[union-attr]
                   "redis-server to start")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save."""
        assert self.proc is not None
        self.proc.popen.kill()
        self.proc.popen.wait()
        self.proc.stop()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class PostgresServer:
    """A PostgreSQL cluster of a test's own (initdb + pg_ctl, as user postgres when run as root) on a free port,
    so that the test may stop and start it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="lg-pg-"))
        self.data = self.dir / "data"
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(["initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "--no-instructions"])
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.start()

    def _run(self, args: list[str]) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(prefix + args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(["pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w", "start"])

    def stop(self) -> None:
        """Immediate shutdown: every connection is cut, as when the database machine goes away."""
        self._run(["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"])

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
