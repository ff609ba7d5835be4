"""The ``learngene`` command: serve the API, run a Celery worker, migrate, seed."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading

from service.settings import get_settings

log = logging.getLogger("learngene")


def _migrate() -> None:
    from service.db import make_engine
    from service.migrate import upgrade

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def _prepare_storage() -> None:
    """An S3 bucket that is not there yet is created (MinIO in docker compose starts empty)."""
    from service.storage import S3ArtifactStore, make_store

    store = make_store(get_settings())
    if isinstance(store, S3ArtifactStore):
        store.ensure_bucket()


def _warm_engine() -> None:
    import engine.methods.tleg  # noqa: F401  (torch, timm and the method code)
    import engine.planner  # noqa: F401


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.wiring import build_context

    settings = get_settings()
    _migrate()
    _prepare_storage()
    ctx = build_context(settings)
    if not settings.uses_celery:
        # The in-process worker picks up what a previous run left queued or orphaned, and keeps doing so.
        from service.jobs import repository
        from service.jobs.runner import requeue_stale, start_maintenance
        from service.jobs.service import publish

        with ctx.sessions() as session:
            pending = [(j.id, j.queue) for j in repository.queued(session)]
        for job_id, queue in pending:
            publish(ctx, job_id, queue)
        requeue_stale(ctx)
        start_maintenance(ctx, threading.Event())
    if settings.seed_on_start and not args.no_seed:
        from service.seed import NoWorker, seed_if_empty

        try:
            seed_if_empty(ctx, log=lambda msg: print(f"[seed] {msg}", flush=True))
        except NoWorker as exc:  # the API serves meanwhile; the seeded learngenes come when a worker does
            print(f"[seed] {exc}", flush=True)
    app = create_app(settings, ctx=ctx)
    # The API imports torch lazily; pay for it now, in the background, rather than in the first request.
    threading.Thread(target=_warm_engine, name="lg-warm", daemon=True).start()
    print(f"Learngene Service on http://{args.host}:{args.port}  (API docs: /docs)", flush=True)
    # Our logging setup, not uvicorn's: its lines come out in LEARNGENE_LOG_FORMAT, and the request middleware
    # writes the access log (with request ids and route templates).
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, log_config=None, access_log=False,
                timeout_graceful_shutdown=settings.shutdown_grace_s)
    ctx.close()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = get_settings()
    if not settings.uses_celery:
        print("learngene worker needs LEARNGENE_BROKER_URL (e.g. redis://127.0.0.1:6379/0)", file=sys.stderr)
        return 2
    _migrate()
    _prepare_storage()
    argv = [f"--queues={args.queues}", f"--loglevel={args.log_level}", f"--pool={args.pool}"]
    if args.concurrency:
        argv.append(f"--concurrency={args.concurrency}")
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    # The Celery adapter (``worker/``) sits above the service, which never imports it: become it instead.
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "worker", *argv])


def cmd_db(args: argparse.Namespace) -> int:
    if args.action == "upgrade":
        _migrate()
        print("database at head")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    from service.seed import NoWorker, seed_if_empty
    from service.wiring import build_context

    _migrate()
    ctx = build_context(get_settings())
    try:
        seed_if_empty(ctx, log=lambda msg: print(f"[seed] {msg}", flush=True), force=args.force,
                      worker_wait_s=args.wait_for_worker)
    except NoWorker as exc:
        print(f"learngene seed: {exc}", file=sys.stderr)
        return 1
    finally:
        ctx.close()
    return 0


def _parse_bytes(text: str) -> int:
    """``10G``, ``500M``, ``123`` (powers of 1024)."""
    units = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    text = text.strip().upper().removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def cmd_keys(args: argparse.Namespace) -> int:
    """Keys are managed on the registry directly, so the first one needs no running server or other key."""
    from pydantic import ValidationError

    from service.wiring import build_context
    from service.db import unit_of_work
    from service.errors import ServiceError
    from service.keys import service as keys
    from service.keys.schemas import KeyCreate, KeyOut

    _migrate()
    ctx = build_context(get_settings(), with_dispatcher=False)
    try:
        with unit_of_work(ctx.sessions) as uow:
            if args.action == "create":
                req = KeyCreate(owner=args.owner, scopes=args.scopes.split(","), rate_per_s=args.rate,
                                burst=args.burst, max_concurrent_jobs=args.jobs,
                                descendant_bytes_per_day=args.descendant_bytes_per_day,
                                upload_bytes_per_day=args.upload_bytes_per_day)
                row, key = keys.create_key(uow.session, req)
                print(f"key {row.id} for {row.owner} ({row.scopes}); shown once, keep it:", file=sys.stderr)
                print(key)
            elif args.action == "revoke":
                row = keys.revoke(uow.session, keys.find_key(uow.session, args.key))
                print(f"key {row.id} ({row.prefix}..., {row.owner}) revoked")
            else:
                for row in keys.list_keys(uow.session, 10_000, None, args.owner):
                    out = KeyOut.model_validate(row)
                    state = f"revoked {out.revoked_at:%Y-%m-%d %H:%M}" if out.revoked_at else "active"
                    print(f"{out.id}\t{out.prefix}...\t{out.owner}\t{','.join(out.scopes)}\t{state}")
    except ValidationError as exc:
        print(f"learngene keys: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    except ServiceError as exc:
        print(f"learngene keys: {exc.message}", file=sys.stderr)
        return 1
    finally:
        ctx.close()
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    """Blobs no row names (a crash between writing one and committing its row): listed, and removed unless
    ``--dry-run``."""
    from service.registry import gc
    from service.wiring import build_context

    _migrate()
    ctx = build_context(get_settings(), with_dispatcher=False)
    try:
        found = gc.collect(ctx, dry_run=args.dry_run, grace_s=args.grace)
    finally:
        ctx.close()
    for blob in found.orphans:
        print(f"{blob.key}\t{blob.size}")
    verb = "would remove" if args.dry_run else "removed"
    count = len(found.orphans) if args.dry_run else len(found.removed)
    print(f"{verb} {count} orphan blob(s), {found.orphan_bytes} bytes, and {len(found.scratch)} scratch file(s); "
          f"{found.young} younger than the grace period left alone", file=sys.stderr)
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """The registry (database rows and every blob a row needs) into a new folder, each file with its sha256."""
    from service.registry.backup import BackupError, backup
    from service.wiring import build_context

    _migrate()
    ctx = build_context(get_settings(), with_dispatcher=False)
    try:
        summary = backup(ctx, args.folder)
    except BackupError as exc:
        print(f"learngene backup: {exc}", file=sys.stderr)
        return 1
    finally:
        ctx.close()
    print(f"backed up {sum(summary.tables.values())} rows of {len(summary.tables)} tables and {summary.blobs} "
          f"blobs ({summary.blob_bytes} bytes) into {args.folder}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """A backup into this (empty) registry: every file is checked against its sha256 before anything is written."""
    from service.registry.backup import BackupError, restore
    from service.wiring import build_context

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _prepare_storage()
    ctx = build_context(settings, with_dispatcher=False)
    try:
        summary = restore(ctx, args.folder)
    except BackupError as exc:
        print(f"learngene restore: {exc}", file=sys.stderr)
        return 1
    finally:
        ctx.close()
    print(f"restored {sum(summary.tables.values())} rows and {summary.blobs} blobs ({summary.blob_bytes} bytes), "
          "each checked against its sha256")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="learngene", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start the HTTP API (embedded default: SQLite, local files, in-process jobs)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--no-seed", action="store_true", help="do not seed an empty registry")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="start a Celery worker (needs LEARNGENE_BROKER_URL)")
    worker.add_argument("--queues", default="cpu,gpu", help="comma-separated: cpu, gpu")
    worker.add_argument("--concurrency", type=int, default=0)
    # solo: tasks run in the worker process itself, so CUDA is never initialized in a parent that forks.
    worker.add_argument("--pool", default="solo", choices=["solo", "prefork", "threads"])
    worker.add_argument("--hostname", default="")
    worker.add_argument("--log-level", default="info")
    worker.set_defaults(func=cmd_worker)

    db = sub.add_parser("db", help="database maintenance")
    db.add_argument("action", choices=["upgrade"])
    db.set_defaults(func=cmd_db)

    seed = sub.add_parser("seed", help="seed the registry with the built-in learngenes")
    seed.add_argument("--force", action="store_true", help="seed even when learngenes exist")
    seed.add_argument("--wait-for-worker", type=float, default=120, metavar="SECONDS",
                      help="with a broker: give up when no worker has taken a job after this long (default 120)")
    seed.set_defaults(func=cmd_seed)

    keys = sub.add_parser("keys", help="API keys: create (printed once), revoke, list")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it (only its hash is stored)")
    create.add_argument("--owner", required=True, help="who the key and what it creates belong to")
    create.add_argument("--scopes", default="read,write", help="comma-separated: read, write, admin")
    create.add_argument("--rate", type=float, help="requests per second (default LEARNGENE_RATE_LIMIT_PER_S)")
    create.add_argument("--burst", type=int, help="requests at once (default LEARNGENE_RATE_LIMIT_BURST)")
    create.add_argument("--jobs", type=int, help="queued + running jobs (default LEARNGENE_MAX_CONCURRENT_JOBS)")
    create.add_argument("--descendant-bytes-per-day", type=_parse_bytes, help="e.g. 50G")
    create.add_argument("--upload-bytes-per-day", type=_parse_bytes, help="e.g. 5G")
    revoke = keys_sub.add_parser("revoke", help="revoke a key, by id or prefix")
    revoke.add_argument("key")
    listing = keys_sub.add_parser("list", help="every key (prefix, owner, scopes, state), never the key itself")
    listing.add_argument("--owner")
    keys.set_defaults(func=cmd_keys)

    gc = sub.add_parser("gc", help="remove blobs in storage that no row names (left by a crash)")
    gc.add_argument("--dry-run", action="store_true", help="only list them")
    gc.add_argument("--grace", type=float, metavar="SECONDS",
                    help="leave blobs younger than this (default LEARNGENE_GC_GRACE_S)")
    gc.set_defaults(func=cmd_gc)

    from pathlib import Path

    backup = sub.add_parser("backup", help="back the registry up (database rows and blobs, sha256-checked) into "
                            "a new folder")
    backup.add_argument("folder", type=Path)
    backup.set_defaults(func=cmd_backup)
    restore = sub.add_parser("restore", help="restore a backup folder into an empty registry (this "
                             "LEARNGENE_DATABASE_URL and LEARNGENE_STORAGE_URL)")
    restore.add_argument("folder", type=Path)
    restore.set_defaults(func=cmd_restore)
    return parser


def main(argv: list[str] | None = None) -> int:
    from service import logs

    logs.configure(get_settings().resolved_log_format)
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
