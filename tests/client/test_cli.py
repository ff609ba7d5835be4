"""The ``learngene`` client commands against a live server: a progress bar on a terminal (a real
pseudo-terminal), plain lines and no bar in a pipe, ``--json`` for scripts, errors on stderr."""
from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from learngene import Client
from learngene.transfer import sha256_file
from tests.client.conftest import LEARNGENE, Live
from tests.support import REPO

CLI = [sys.executable, "-m", "learngene"]


def _env(live: Live, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEARNGENE_") or k == "LEARNGENE_TEST_REDIS_DB"}
    return {**env, "LEARNGENE_URL": live.url, "LEARNGENE_TOKEN": live.token, "COLUMNS": "120", "TERM": "xterm",
            **extra}


def run(live: Live, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=_env(live), capture_output=True, text=True, timeout=120, cwd=REPO)


def run_in_terminal(live: Live, *args: str) -> tuple[int, str]:
    """Run the command with stdin, stdout and stderr on a pseudo-terminal; everything it wrote, and its exit."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([*CLI, *args], env=_env(live), stdin=follower, stdout=follower, stderr=follower,
                            cwd=REPO, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            block = os.read(leader, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not block:
            break
        chunks.append(block)
    os.close(leader)
    return proc.wait(60), b"".join(chunks).decode(errors="replace")


def test_get_on_a_terminal_draws_a_progress_bar(live: Live, tmp_path: Path) -> None:
    code, screen = run_in_terminal(live, "get", LEARNGENE, "--depth", "6", "--out", str(tmp_path))
    assert code == 0, screen
    assert "━" in screen and "model.safetensors" in screen  # rich's bar, labelled with the file
    assert "\x1b[" in screen  # drawn with terminal control sequences
    with Client(live.url, progress=False) as client:
        made = client.descendants(learngene=LEARNGENE)
    d6 = next(d for d in made if d.spec["depth"] == 6)
    assert sha256_file(tmp_path / "model.safetensors")[0] == d6.sha256
    assert json.loads((tmp_path / "config.json").read_text())["model_args"]["depth"] == 6


def test_in_a_pipe_there_is_no_bar_and_tables_are_tab_separated(live: Live, tmp_path: Path) -> None:
    got = run(live, "get", f"{LEARNGENE}:1", "--depth", "5", "--out", str(tmp_path))
    assert got.returncode == 0, got.stderr
    assert got.stderr == "" and "\x1b" not in got.stdout
    assert f"{tmp_path / 'model.safetensors'} (" in got.stdout and "bytes fetched" in got.stdout
    again = run(live, "get", f"{LEARNGENE}:1", "--depth", "5", "--out", str(tmp_path))
    assert "already there, verified" in again.stdout

    listing = run(live, "ls", "learngenes")
    lines = listing.stdout.splitlines()
    assert lines[0].split("\t") == ["name", "method", "latest", "versions", "description"]
    assert any(line.split("\t")[:3] == [LEARNGENE, "tleg", "1"] for line in lines[1:])


def test_json_on_every_command(live: Live) -> None:
    versions = json.loads(run(live, "ls", "versions", LEARNGENE, "--json").stdout)
    assert [v["version"] for v in versions] == [1] and versions[0]["learngene"] == LEARNGENE

    picked = json.loads(run(live, "--json", "budget", LEARNGENE, "--max-params", "5e4").stdout)
    assert 0 < picked["descendant"]["param_count"] <= 50_000 and "download" not in picked

    done = json.loads(run(live, "condense", "--ancestry", str(live.ancestry_id), "--method", "tleg",
                          "--learngene", "cli-fit", "--mode", "fit", "--no-evaluate", "--follow", "--json").stdout)
    assert (done["learngene"], done["version"]) == ("cli-fit", 1) and done["lineage"]["job_id"] and done["sha256"]

    queued = json.loads(run(live, "condense", "--ancestry", str(live.ancestry_id), "--method", "tleg",
                            "--learngene", "cli-long", "--dataset", "builtin:digits", "--no-evaluate",
                            "--param", "steps=100000", "--param", "batch_size=16", "--json").stdout)
    cancelled = json.loads(run(live, "cancel", queued["id"], "--json").stdout)
    assert cancelled["id"] == queued["id"] and cancelled["cancel_requested"] is True
    jobs = json.loads(run(live, "ls", "jobs", "--kind", "condense", "--json").stdout)
    assert queued["id"] in [j["id"] for j in jobs]


def test_condense_takes_every_method_of_the_server(live: Live) -> None:
    """Issue 22: the CLI kept its own list of methods and refused FRONT; which methods exist is the server's."""
    done = json.loads(run(live, "condense", "--ancestry", str(live.ancestry_id), "--method", "front",
                          "--learngene", "cli-front", "--no-evaluate", "--follow", "--json").stdout)
    assert (done["learngene"], done["version"], done["method"]) == ("cli-front", 1, "front")
    assert done["lineage"]["mode"] == "fit"

    unknown = run(live, "condense", "--ancestry", str(live.ancestry_id), "--method", "no-such-method",
                  "--learngene", "cli-nothing", "--mode", "no-such-mode")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert "422 validation_error" in unknown.stderr and "method" in unknown.stderr and "mode" in unknown.stderr


def test_errors_go_to_stderr_with_the_api_code(live: Live) -> None:
    missing = run(live, "ls", "versions", "no-such-learngene")
    assert missing.returncode == 1 and missing.stdout == ""
    assert "404 not_found" in missing.stderr

    denied = subprocess.run([*CLI, "--token", "wrong", "get", LEARNGENE, "--depth", "2"], env=_env(live),
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert denied.returncode == 1 and "401 unauthorized" in denied.stderr


def test_client_commands_do_not_import_the_service(live: Live) -> None:
    code = ("import sys; from learngene.cli import main; main(['ls', 'learngenes']); "
            "print(sorted(m for m in ('torch', 'fastapi', 'service', 'sqlalchemy', 'celery') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env=_env(live), capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines()[-1] == "[]"


def test_server_commands_are_handed_to_the_service(tmp_path: Path) -> None:
    env = {**os.environ, "LEARNGENE_DATA_DIR": str(tmp_path), "LEARNGENE_DATABASE_URL": ""}
    out = subprocess.run([*CLI, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "database at head" and (tmp_path / "registry.db").exists()


def test_keys_is_a_server_command_too(tmp_path: Path) -> None:
    """The README's `learngene keys create` was refused by the client's parser as an unknown command."""
    env = {**os.environ, "LEARNGENE_DATA_DIR": str(tmp_path), "LEARNGENE_DATABASE_URL": ""}
    made = subprocess.run([*CLI, "keys", "create", "--owner", "alice"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("lg_")
    listed = subprocess.run([*CLI, "keys", "list"], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert listed.returncode == 0 and "\talice\tread,write\tactive" in listed.stdout
