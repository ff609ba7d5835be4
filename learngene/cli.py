"""The ``learngene`` command. Client commands (ls, get, budget, upload, condense, follow, cancel) talk to a
server over HTTP and import only the SDK, so a client command starts in a fraction of a second; the server's own
commands (serve, worker, db, seed, keys) are another program's: this process becomes ``python -m service.cli``.
The client never imports the server, so it needs none of its packages, and which methods and modes exist is the
server's to say (its 422 names the field)."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SERVER_COMMANDS = ("serve", "worker", "db", "seed", "keys", "gc", "backup", "restore")


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    pairs = (("depth", args.depth), ("embed_dim", args.width), ("num_heads", args.heads),
             ("mlp_ratio", args.mlp_ratio), ("num_classes", args.num_classes))
    return {k: v for k, v in pairs if v is not None}


def _params(pairs: Sequence[str]) -> dict[str, Any]:
    """``--param steps=300 --param lr=1e-3``: values are JSON when they parse as JSON, else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--param takes key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _plain(value: Any) -> Any:
    """A result as JSON: the API's own body when there is one."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    raw = getattr(value, "raw", None)
    if raw:
        return raw
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return str(value) if isinstance(value, Path) else value


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table on a terminal; tab-separated lines with a header otherwise (for grep, cut, awk)."""
    cells = [["" if c is None else str(c) for c in row] for row in rows]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(*columns, box=None, header_style="bold")
        for row in cells:
            table.add_row(*row)
        Console().print(table)
    else:
        print("\t".join(columns))
        for row in cells:
            print("\t".join(row))


def _ls(client: Any, args: argparse.Namespace) -> Any:
    if args.what == "learngenes":
        items = client.learngenes()
        rows = [(x.name, x.method, x.latest_version, x.version_count, x.description[:60]) for x in items]
        return items, ("name", "method", "latest", "versions", "description"), rows
    if args.what == "versions":
        if not args.name:
            raise SystemExit("learngene ls versions NAME")
        items = client.versions(args.name)
        rows = [(v.version, ",".join(v.aliases), v.lineage.get("mode"), v.lineage.get("dataset"), v.size_bytes,
                 v.created_at) for v in items]
        return items, ("version", "aliases", "mode", "dataset", "bytes", "created"), rows
    if args.what == "jobs":
        items = client.jobs(state=args.state, kind=args.kind, limit=args.limit)
        rows = [(j.id, j.kind, j.state, _step(j.progress), j.attempts, j.created_at) for j in items]
        return items, ("id", "kind", "state", "progress", "attempts", "created"), rows
    if args.what == "ancestries":
        items = client.ancestries()
        rows = [(a.id, a.name, a.architecture, a.param_count, a.created_at) for a in items]
        return items, ("id", "name", "architecture", "params", "created"), rows
    if args.what == "datasets":
        items = client.datasets()
        return items, ("id", "name", "uri", "classes", "images"), [(d.id, d.name, d.uri, d.num_classes, d.num_images)
                                                                   for d in items]
    items = client.descendants(learngene=args.name, limit=args.limit)
    rows = [(d.id, d.status, d.source.get("learngene") or f"ancestry {d.source.get('ancestry')}",
             d.source.get("version"), json.dumps(d.spec, separators=(",", ":")), d.param_count) for d in items]
    return items, ("id", "status", "source", "version", "spec", "params"), rows


def _step(progress: dict[str, Any]) -> str:
    if "step" in progress and "total_steps" in progress:
        return f"{progress['step']}/{progress['total_steps']}"
    return ""


def cmd_ls(client: Any, args: argparse.Namespace) -> int:
    items, columns, rows = _ls(client, args)
    if args.json:
        print(json.dumps(_plain(items), indent=2, default=str))
    else:
        _table(columns, rows)
    return 0


def _deliver(client: Any, args: argparse.Namespace, descendant: Any) -> int:
    """Download (with --out) and report a descendant."""
    result: dict[str, Any] = {"descendant": _plain(descendant)}
    if args.out:
        done = descendant.download(args.out)
        result["download"] = _plain(dataclasses.replace(done, weights=str(done.weights), config=str(done.config)))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(f"descendant {descendant.id}: {json.dumps(descendant.spec, separators=(',', ':'))}, "
          f"{descendant.param_count:,} parameters, {descendant.gflops:.3g} GFLOPs, sha256 {descendant.sha256}")
    if args.out:
        d = result["download"]
        how = ("already there, verified" if d["skipped"] else
               f"{d['bytes_fetched']:,} bytes fetched" + (f", resumed at {d['resumed_from']:,}" if d["resumed_from"] else ""))
        print(f"{d['weights']} ({how})\n{d['config']}")
    return 0


def cmd_get(client: Any, args: argparse.Namespace) -> int:
    d = client.descendant(args.learngene, spec=_spec(args), seed=args.seed)
    return _deliver(client, args, d)


def cmd_budget(client: Any, args: argparse.Namespace) -> int:
    budget = {k: v for k, v in (("max_params", args.max_params), ("max_gflops", args.max_gflops),
                                ("max_latency_ms", args.max_latency_ms), ("num_classes", args.num_classes))
              if v is not None}
    if args.device:
        budget["device"] = args.device
    d = client.descendant(args.learngene, budget=budget, seed=args.seed)
    return _deliver(client, args, d)


def cmd_upload(client: Any, args: argparse.Namespace) -> int:
    if args.dataset:
        item = client.upload_dataset(args.path, name=args.name, visibility=args.visibility)
        line = f"dataset {item.id}: {item.num_images} images, {item.num_classes} classes; use --dataset {item.uri}"
    else:
        model_args = json.loads(args.model_args) if args.model_args else None
        item = client.upload_ancestry(args.path, architecture=args.architecture, model_args=model_args,
                                      name=args.name, visibility=args.visibility)
        line = f"ancestry {item.id}: {item.architecture}, {item.param_count:,} parameters"
    print(json.dumps(_plain(item), indent=2, default=str) if args.json else line)
    return 0


def cmd_condense(client: Any, args: argparse.Namespace) -> int:
    job = client.condense(args.ancestry, args.method, args.learngene, dataset=args.dataset, mode=args.mode,
                          params=_params(args.param), evaluate=not args.no_evaluate, description=args.description,
                          visibility=args.visibility)
    if not args.follow:
        print(json.dumps(_plain(job), indent=2, default=str) if args.json else f"job {job.id} {job.state}")
        return 0
    version = job.follow()
    print(json.dumps(_plain(version), indent=2, default=str) if args.json else
          f"{version.learngene}:{version.version} (job {job.id})")
    return 0


def cmd_follow(client: Any, args: argparse.Namespace) -> int:
    job = client.follow(args.job)
    print(json.dumps(_plain(job), indent=2, default=str) if args.json else f"job {job.id} {job.state}")
    return 0


def cmd_cancel(client: Any, args: argparse.Namespace) -> int:
    job = client.cancel(args.job)
    print(json.dumps(_plain(job), indent=2, default=str) if args.json else
          f"job {job.id} {job.state}" + (", cancellation requested" if job.cancel_requested else ""))
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def cmd_usage(client: Any, args: argparse.Namespace) -> int:
    report = client.usage(args.owner)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    rows = []
    for o in report["owners"]:
        s = o["stored"]
        quota = o["quotas"][0] if o["quotas"] else None
        rows.append([o["owner"] or "(nobody)", *(f"{s[k]['count']} / {_size(s[k]['bytes'])}" for k in
                     ("ancestries", "datasets", "learngene_versions", "descendants")),
                     _size(o["stored_bytes"]), f"{o['descendants_produced']} ({o['descendants_evicted']} evicted)",
                     " ".join(f"{k}:{v}" for k, v in o["jobs"].items() if v) or "-",
                     _size(quota["descendant_bytes_left_today"]) if quota else "-",
                     _size(quota["upload_bytes_left_today"]) if quota else "-"])
    _table(["owner", "ancestries", "datasets", "versions", "descendants", "stored", "produced", "jobs",
            "descendant quota left", "upload quota left"], rows)
    budget = report["descendant_cache_bytes"]
    print(f"descendant cache: {_size(report['descendant_cache_used_bytes'])} of "
          f"{_size(budget) if budget else 'no bound'}")
    return 0


def cmd_rm(client: Any, args: argparse.Namespace) -> int:
    deleted = client.delete(args.kind, args.ref, cascade=args.cascade)
    print(json.dumps({"deleted": deleted}, indent=2) if args.json else "deleted " + ", ".join(deleted))
    return 0


def cmd_alias(client: Any, args: argparse.Namespace) -> int:
    if args.version is None:
        aliases = client.delete_alias(args.learngene, args.alias)
    else:
        aliases = client.set_alias(args.learngene, args.alias, args.version)
    print(json.dumps(aliases, indent=2) if args.json else
          ", ".join(f"{alias} -> {version}" for alias, version in sorted(aliases.items())))
    return 0


def cmd_pin(client: Any, args: argparse.Namespace) -> int:
    d = client.pin(args.descendant, not args.unpin)
    print(json.dumps(_plain(d), indent=2, default=str) if args.json else
          f"descendant {d.id} {'pinned' if d.pinned else 'unpinned'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    # Connection options are accepted before or after the command; SUPPRESS keeps a later default from
    # overwriting an earlier value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="server (default: LEARNGENE_URL, then the config file)")
    common.add_argument("--token", default=argparse.SUPPRESS, help="API token (default: LEARNGENE_TOKEN, then the config file)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts")
    parser = argparse.ArgumentParser(
        prog="learngene", parents=[common], description="Learngene Service: the client (ls, get, budget, upload, "
        "condense, follow, cancel) and the server (serve, worker, db, seed; see `learngene serve --help`).")
    sub = parser.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("ls", parents=[common], help="list learngenes, versions NAME, jobs, ancestries, datasets, descendants")
    ls.add_argument("what", choices=["learngenes", "versions", "jobs", "ancestries", "datasets", "descendants"])
    ls.add_argument("name", nargs="?", help="the learngene (versions; optional for descendants)")
    ls.add_argument("--state", help="jobs in this state")
    ls.add_argument("--kind", help="jobs of this kind (expand, condense)")
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(func=cmd_ls)

    def sized(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help)
        p.add_argument("learngene", help="NAME or NAME:VERSION (or an alias: NAME:latest)")
        p.add_argument("--out", type=Path, help="download model.safetensors and config.json into this folder")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--num-classes", type=int)
        return p

    get = sized("get", "a descendant of a given size (produced if needed)")
    get.add_argument("--depth", type=int)
    get.add_argument("--width", type=int, help="embedding dimension")
    get.add_argument("--heads", type=int)
    get.add_argument("--mlp-ratio", type=float)
    get.set_defaults(func=cmd_get)

    budget = sized("budget", "the largest descendant within a budget")
    budget.add_argument("--max-params", type=lambda s: int(float(s)), help="e.g. 5e6")
    budget.add_argument("--max-gflops", type=float)
    budget.add_argument("--max-latency-ms", type=float)
    budget.add_argument("--device", choices=["cpu", "cuda"])
    budget.set_defaults(func=cmd_budget)

    upload = sub.add_parser("upload", parents=[common], help="upload an ancestry (.safetensors or a Hugging Face "
                            "snapshot folder) or, with --dataset, an ImageFolder archive")
    upload.add_argument("path", type=Path)
    upload.add_argument("--architecture", help="timm architecture (a .safetensors file needs it)")
    upload.add_argument("--model-args", help="JSON of timm.create_model keyword arguments")
    upload.add_argument("--name", default="")
    upload.add_argument("--dataset", action="store_true", help="the file is a dataset archive (.zip, .tar.gz)")
    upload.add_argument("--public", dest="visibility", action="store_const", const="public", default="private",
                        help="everyone may see and use it (default: only you and admins)")
    upload.set_defaults(func=cmd_upload)

    condense = sub.add_parser("condense", parents=[common], help="condense an ancestry into a new learngene version")
    condense.add_argument("--ancestry", type=int, required=True)
    condense.add_argument("--method", required=True, help="a condensing method (GET /v1/methods lists them)")
    condense.add_argument("--learngene", required=True, help="name of the learngene that gains the version")
    condense.add_argument("--dataset", help="builtin:digits, dataset:<id>, imagefolder:<path>")
    condense.add_argument("--mode", help="fit, train or refine, as the method offers (default: train with a "
                          "dataset, else fit)")
    condense.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    condense.add_argument("--no-evaluate", action="store_true", help="skip the evaluation card")
    condense.add_argument("--description", default="")
    condense.add_argument("--public", dest="visibility", action="store_const", const="public",
                          help="make the learngene public (a new one is private by default)")
    condense.add_argument("--follow", action="store_true", help="stream progress until the version is ready")
    condense.set_defaults(func=cmd_condense)

    follow = sub.add_parser("follow", parents=[common], help="stream a job's progress until it ends")
    follow.add_argument("job")
    follow.set_defaults(func=cmd_follow)

    cancel = sub.add_parser("cancel", parents=[common], help="cancel a job")
    cancel.add_argument("job")
    cancel.set_defaults(func=cmd_cancel)

    usage = sub.add_parser("usage", parents=[common], help="bytes stored, jobs, descendants and quotas left "
                           "(yours; an admin's: every owner's)")
    usage.add_argument("--owner", help="admins: one owner")
    usage.set_defaults(func=cmd_usage)

    rm = sub.add_parser("rm", parents=[common], help="delete a descendant, version, learngene, ancestry or dataset")
    rm.add_argument("kind", choices=["descendant", "version", "learngene", "ancestry", "dataset"])
    rm.add_argument("ref", help="an id; NAME:VERSION for a version; NAME for a learngene")
    rm.add_argument("--cascade", action="store_true", help="admins: even with learngene versions in its lineage")
    rm.set_defaults(func=cmd_rm)

    alias = sub.add_parser("alias", parents=[common], help="point an alias of a learngene at a version (no "
                           "version: remove the alias)")
    alias.add_argument("learngene")
    alias.add_argument("alias")
    alias.add_argument("version", type=int, nargs="?")
    alias.set_defaults(func=cmd_alias)

    pin = sub.add_parser("pin", parents=[common], help="keep a descendant's weights out of cache eviction")
    pin.add_argument("descendant", type=int)
    pin.add_argument("--unpin", action="store_true")
    pin.set_defaults(func=cmd_pin)
    return parser


def _become_the_server(argv: list[str]) -> int:
    if importlib.util.find_spec("service") is None:
        print(f"learngene {argv[0]}: the server is not installed here (this is the client alone)", file=sys.stderr)
        return 2
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "service.cli", *argv])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SERVER_COMMANDS:
        return _become_the_server(argv)
    args = build_parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    from learngene import Client
    from learngene.errors import LearngeneError

    try:
        with Client(getattr(args, "url", None), getattr(args, "token", None)) as client:
            return int(args.func(client, args))
    except LearngeneError as exc:
        print(f"learngene: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("learngene: interrupted (run the same command again to resume a download)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
