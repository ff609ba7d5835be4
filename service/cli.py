"""The ``learngene`` command: serve the API, run a Celery worker, migrate, seed."""
from __future__ import annotations

import argparse
import logging
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
    from service.context import build_context

    settings = get_settings()
    _migrate()
    _prepare_storage()
    ctx = build_context(settings)
    if not settings.uses_celery:
        # The in-process worker picks up what a previous run left queued or orphaned.
        from worker.runner import requeue_stale, start_reaper
        from service.jobs import repository

        with ctx.sessions() as session:
            pending = [(j.id, j.queue) for j in repository.queued(session)]
        for job_id, queue in pending:
            assert ctx.dispatcher is not None
            ctx.dispatcher.publish(job_id, queue)
        requeue_stale(ctx)
        start_reaper(ctx, threading.Event())
    if settings.seed_on_start and not args.no_seed:
        from service.seed import seed_if_empty

        seed_if_empty(ctx, log=lambda msg: print(f"[seed] {msg}", flush=True))
    app = create_app(settings, ctx=ctx)
    # The API imports torch lazily; pay for it now, in the background, rather than in the first request.
    threading.Thread(target=_warm_engine, name="lg-warm", daemon=True).start()
    print(f"Learngene Service on http://{args.host}:{args.port}  (API docs: /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    ctx.close()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    settings = get_settings()
    if not settings.uses_celery:
        print("learngene worker needs LEARNGENE_BROKER_URL (e.g. redis://127.0.0.1:6379/0)", file=sys.stderr)
        return 2
    _migrate()
    _prepare_storage()
    from worker.tasks import app

    argv = ["worker", f"--queues={args.queues}", f"--loglevel={args.log_level}", f"--pool={args.pool}"]
    if args.concurrency:
        argv.append(f"--concurrency={args.concurrency}")
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    app.worker_main(argv)
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    if args.action == "upgrade":
        _migrate()
        print("database at head")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    from service.context import build_context
    from service.seed import seed_if_empty

    _migrate()
    ctx = build_context(get_settings())
    try:
        seed_if_empty(ctx, log=lambda msg: print(f"[seed] {msg}", flush=True), force=args.force)
    finally:
        ctx.close()
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
    seed.set_defaults(func=cmd_seed)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
