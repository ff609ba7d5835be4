"""``Client``: the Learngene Service over HTTP (httpx), with typed results and typed errors."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import httpx

from learngene import bars, config, events
from learngene.errors import APIError, ConnectionFailed, JobFailed, ServerError, error_for
from learngene.models import (Ancestry, CondenseJob, Dataset, Descendant, Download, Job, Learngene, Resource,
                              Version)
from learngene.transfer import fetch_blob

R = TypeVar("R", bound=Resource)

__version__ = "0.1.0"
STITCHED_ARCHITECTURE = "learngene_stitched_vit"


#: Longest ``download`` waits for weights the server is making again after evicting them from its cache.
REGENERATION_WAIT_S = 600.0

def cache_dir() -> Path:
    """Where ``load`` keeps descendants it downloaded, one folder per sha256."""
    base = os.environ.get("LEARNGENE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"), "learngene")
    return Path(base)


class Client:
    """``Client("http://host:8000", token)``; both default to LEARNGENE_URL / LEARNGENE_TOKEN, then
    ``~/.config/learngene/config.toml``. ``progress=None`` draws bars only when stderr is a terminal."""

    def __init__(self, base_url: str | None = None, token: str | None = None, *, timeout: float = 60.0,
                 progress: bool | None = None) -> None:
        self.base_url, self.token = config.resolve(base_url, token)
        headers = {"user-agent": f"learngene-python/{__version__}"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        self.progress = progress
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # --- plumbing --------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"{method} {self.base_url}{path}: {exc}") from exc
        if r.is_error:
            try:
                body = r.json()
            except ValueError:
                body = None
            raise error_for(r.status_code, body, r.headers)
        return r

    def _one(self, cls: type[R], path: str, **kwargs: Any) -> R:
        return cls.from_json(self._request("GET", path, **kwargs).json(), self)

    def _all(self, cls: type[R], path: str, params: dict[str, Any] | None = None, limit: int | None = None) -> list[R]:
        """Every item of a paginated listing (or the first ``limit``), following ``next_page_token``."""
        out: list[R] = []
        query = {k: v for k, v in (params or {}).items() if v is not None}
        query["limit"] = min(limit or 200, 200)
        while True:
            page = self._request("GET", path, params=query).json()
            out.extend(cls.from_json(item, self) for item in page["items"])
            token = page.get("next_page_token")
            if not token or (limit is not None and len(out) >= limit):
                return out[:limit] if limit is not None else out
            query["page_token"] = token

    def _show(self, progress: bool | None) -> bool:
        return bars.wanted(self.progress if progress is None else progress)

    # --- the registry ----------------------------------------------------------------------------------

    def learngenes(self, method: str | None = None) -> list[Learngene]:
        return self._all(Learngene, "/v1/learngenes", {"method": method})

    def learngene(self, name: str) -> Learngene:
        return self._one(Learngene, f"/v1/learngenes/{name}")

    def versions(self, learngene: str) -> list[Version]:
        return self._all(Version, f"/v1/learngenes/{learngene}/versions")

    def version(self, learngene: str, ref: int | str = "latest") -> Version:
        """``ref``: a version number or an alias (``latest``)."""
        return self._one(Version, f"/v1/learngenes/{learngene}/versions/{ref}")

    def ancestries(self) -> list[Ancestry]:
        return self._all(Ancestry, "/v1/ancestries")

    def ancestry(self, ancestry_id: int) -> Ancestry:
        return self._one(Ancestry, f"/v1/ancestries/{ancestry_id}")

    def datasets(self) -> list[Dataset]:
        return self._all(Dataset, "/v1/datasets")

    def dataset(self, dataset_id: int) -> Dataset:
        return self._one(Dataset, f"/v1/datasets/{dataset_id}")

    def usage(self, owner: str | None = None) -> dict[str, Any]:
        """Bytes stored per kind, jobs, descendants produced and today's quotas left: yours (an admin's: every
        owner's, or ``owner``'s)."""
        params = {"owner": owner} if owner is not None else None
        return self._request("GET", "/v1/usage", params=params).json()  # type: ignore[no-any-return]

    def delete(self, kind: str, ref: str | int, *, cascade: bool = False) -> list[str]:
        """Delete a ``descendant`` (id), ``version`` (``name:version``), ``learngene`` (name), ``ancestry`` or
        ``dataset`` (id); ``cascade`` (admins) despite learngene versions in their lineage. Returns what was
        deleted (a version takes its descendants along)."""
        paths = {"descendant": "/v1/descendants/{}", "learngene": "/v1/learngenes/{}",
                 "ancestry": "/v1/ancestries/{}", "dataset": "/v1/datasets/{}"}
        if kind == "version":
            name, _, version = str(ref).partition(":")
            path = f"/v1/learngenes/{name}/versions/{version or 'latest'}"
        elif kind in paths:
            path = paths[kind].format(ref)
        else:
            raise ValueError(f"kind must be one of {sorted({*paths, 'version'})}, not {kind!r}")
        params = {"cascade": "true"} if cascade else None
        return list(self._request("DELETE", path, params=params).json()["deleted"])

    def set_alias(self, learngene: str, alias: str, version: int) -> dict[str, int]:
        """Point ``alias`` at ``version``; returns every alias of the learngene."""
        return self._request("PUT", f"/v1/learngenes/{learngene}/aliases/{alias}",  # type: ignore[no-any-return]
                             json={"version": version}).json()

    def delete_alias(self, learngene: str, alias: str) -> dict[str, int]:
        aliases: dict[str, int] = self._request("DELETE", f"/v1/learngenes/{learngene}/aliases/{alias}").json()
        return aliases

    def pin(self, descendant: Descendant | int, pinned: bool = True) -> Descendant:
        """A pinned descendant's weights are never evicted from the server's descendant cache."""
        descendant_id = descendant.id if isinstance(descendant, Descendant) else descendant
        return Descendant.from_json(self._request("PATCH", f"/v1/descendants/{descendant_id}",
                                                  json={"pinned": pinned}).json(), self)

    def methods(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/methods").json()  # type: ignore[no-any-return]

    # --- jobs ------------------------------------------------------------------------------------------

    def jobs(self, state: str | None = None, kind: str | None = None, limit: int | None = 50) -> list[Job]:
        """Newest first."""
        return self._all(Job, "/v1/jobs", {"state": state, "kind": kind}, limit=limit)

    def job(self, job_id: str) -> Job:
        return self._one(Job, f"/v1/jobs/{job_id}")

    def cancel(self, job: Job | str) -> Job:
        """Ask for cancellation; the job ends ``cancelled`` at its next check."""
        job_id = job if isinstance(job, str) else job.id
        return Job.from_json(self._request("POST", f"/v1/jobs/{job_id}/cancel").json(), self)

    def follow(self, job: Job | str, progress: bool | None = None, timeout: float | None = None) -> Job:
        """Stream the job's events until it ends (reconnecting if the stream is cut); the finished job.
        Raises ``JobFailed`` when it failed or was cancelled, TimeoutError past ``timeout`` seconds."""
        job_id = job if isinstance(job, str) else job.id
        deadline = None if timeout is None else time.monotonic() + timeout
        last = self.job(job_id)
        with bars.job(f"{last.kind} {job_id[:8]}", self._show(progress)) as update:
            while not last.finished:
                window = 300.0 if deadline is None else max(1.0, min(300.0, deadline - time.monotonic()))
                last = self._stream_events(job_id, window, update) or self.job(job_id)
                if not last.finished and deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"job {job_id} still {last.state} after {timeout} s")
        if last.state != "succeeded":
            raise JobFailed(last)
        return last

    def _stream_events(self, job_id: str, window: float, update: Any) -> Job | None:
        """One event stream, at most ``window`` seconds long; the job's state it ended with."""
        final: Job | None = None
        params = {"poll_s": 0.2, "timeout_s": max(1, int(window))}
        try:
            # No read timeout: between progress events the server sends nothing, for minutes when training.
            with self._http.stream("GET", f"/v1/jobs/{job_id}/events", params=params,
                                   timeout=httpx.Timeout(10.0, read=window + 30)) as r:
                if r.is_error:
                    r.read()
                    raise error_for(r.status_code, r.json(), r.headers)
                for event, data in events.parse(r.iter_lines()):
                    if event == "state" and "kind" in data:  # the stream's last word: the whole job
                        final = Job.from_json(data, self)
                    else:
                        update({**data, "state": data.get("state") or event})
        except httpx.TransportError:
            return None  # the caller reconnects
        return final

    # --- descendants -----------------------------------------------------------------------------------

    def descendants(self, learngene: str | None = None, limit: int | None = None) -> list[Descendant]:
        return self._all(Descendant, "/v1/descendants", {"learngene": learngene}, limit=limit)

    def get_descendant(self, descendant_id: int) -> Descendant:
        return self._one(Descendant, f"/v1/descendants/{descendant_id}")

    def descendant(self, learngene: str | None = None, *, spec: dict[str, Any] | None = None,
                   budget: dict[str, Any] | None = None, seed: int = 0, ancestry: int | None = None,
                   method: str | None = None, progress: bool | None = None,
                   timeout: float | None = None) -> Descendant:
        """A ready descendant of ``learngene`` (``name`` or ``name:version``) at ``spec`` (``{"depth": 6}``) or
        the largest under ``budget`` (``{"max_params": 5e6}``); produced if needed, following its job."""
        body: dict[str, Any] = {"seed": seed}
        for key, value in (("learngene", learngene), ("ancestry", ancestry), ("method", method), ("spec", spec),
                           ("budget", budget)):
            if value is not None:
                body[key] = value
        if budget and isinstance(budget.get("max_params"), float):
            body["budget"] = {**budget, "max_params": int(budget["max_params"])}
        out = Descendant.from_json(self._request("POST", "/v1/descendants", json=body, params={"wait": 5}).json(),
                                   self)
        if out.status == "pending" and out.job_id:
            self.follow(out.job_id, progress=progress, timeout=timeout)
            out = self.get_descendant(out.id)
        elif out.status == "pending":  # produced by someone else's job, which is theirs to follow
            out = self._wait_settled(out.id, timeout)
        if out.status != "ready":
            raise JobFailed(self.job(out.job_id)) if out.job_id else APIError(
                f"descendant {out.id} is {out.status}", status=0, code=out.status)
        return out

    def _wait_settled(self, descendant_id: int, timeout: float | None) -> Descendant:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (out := self.get_descendant(descendant_id)).status == "pending":
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"descendant {descendant_id} still pending after {timeout} s")
            time.sleep(0.5)
        return out

    def download(self, descendant: Descendant | int, directory: str | os.PathLike[str],
                 progress: bool | None = None) -> Download:
        """``model.safetensors`` + ``config.json`` into ``directory``: resumed after an interruption,
        checked against the sha256 ETag, skipped when the verified file is already there."""
        d = descendant if isinstance(descendant, Descendant) else self.get_descendant(descendant)
        if d.sha256 is None:
            raise APIError(f"descendant {d.id} is {d.status}, nothing to download", status=0, code=d.status)
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / "model.safetensors"
        deadline = time.monotonic() + REGENERATION_WAIT_S
        while True:
            try:
                fetched, kept, redone = fetch_blob(self._http, f"/v1/descendants/{d.id}/weights", weights, d.sha256,
                                                   d.size_bytes, show_progress=self._show(progress))
                break
            except ServerError as exc:
                # Evicted from the server's descendant cache: it makes the same bytes again meanwhile.
                if exc.code != "unavailable" or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
        config_file = folder / "config.json"
        cfg = self._request("GET", f"/v1/descendants/{d.id}/config").content
        if not config_file.exists() or config_file.read_bytes() != cfg:
            tmp = config_file.with_name("config.json.incomplete")
            tmp.write_bytes(cfg)
            os.replace(tmp, config_file)
        return Download(weights=weights, config=config_file, sha256=d.sha256, size_bytes=d.size_bytes or 0,
                        bytes_fetched=fetched, resumed_from=kept, skipped=fetched == 0 and not redone and kept == 0,
                        discarded_corrupt_partial=redone)

    def load(self, descendant: Descendant | int | None = None, *, directory: str | os.PathLike[str] | None = None,
             progress: bool | None = None, **request: Any) -> Any:
        """The timm model (imports torch and timm, only here). Either a descendant (or its id), or the
        arguments of ``descendant()``: ``client.load(learngene="digits-tleg", spec={"depth": 6})``. Files are
        kept in ``directory`` or the cache (LEARNGENE_CACHE, ``~/.cache/learngene``), one folder per sha256."""
        if descendant is None:
            descendant = self.descendant(progress=progress, **request)
        d = descendant if isinstance(descendant, Descendant) else self.get_descendant(descendant)
        folder = Path(directory) if directory is not None else cache_dir() / "descendants" / str(d.sha256)
        files = self.download(d, folder, progress=progress)
        import timm

        if json.loads(files.config.read_text()).get("architecture") == STITCHED_ARCHITECTURE:
            import engine.stitched  # noqa: F401  (registers the stitched architecture with timm)
        return timm.create_model(f"local-dir:{folder}", pretrained=True)

    # --- uploads and condensing ------------------------------------------------------------------------

    def upload_ancestry(self, path: str | os.PathLike[str], architecture: str | None = None,
                        model_args: dict[str, Any] | None = None, name: str = "",
                        progress: bool | None = None, visibility: str = "private") -> Ancestry:
        """A ``.safetensors`` file (with ``architecture`` and ``model_args``), or a Hugging Face snapshot
        folder (``model.safetensors`` + timm ``config.json``). ``visibility="public"`` lets everyone see and use
        it; by default only its owner (and admins) do."""
        source = Path(path)
        weights, config_json = (source / "model.safetensors", source / "config.json") if source.is_dir() else (source, None)
        data: dict[str, str] = {"name": name or (source.name if source.is_dir() else source.stem),
                                "visibility": visibility}
        if architecture:
            data["architecture"] = architecture
        if model_args is not None:
            data["model_args"] = json.dumps(model_args)
        # The server checks every field before it stores the weights, so they go last (httpx sends data first).
        files: dict[str, Any] = {}
        if config_json is not None:
            files["config"] = ("config.json", config_json.read_bytes(), "application/json")
        with open(weights, "rb") as f, bars.transfer(f"upload {weights.name}", weights.stat().st_size, 0,
                                                         self._show(progress)) as advance:
            files["file"] = (weights.name, _Counting(f, advance), "application/octet-stream")
            r = self._request("POST", "/v1/ancestries", data=data, files=files, timeout=httpx.Timeout(60.0, write=None))
        return Ancestry.from_json(r.json(), self)

    def upload_dataset(self, path: str | os.PathLike[str], name: str = "", progress: bool | None = None,
                       visibility: str = "private") -> Dataset:
        """A .zip or .tar(.gz) of an ImageFolder; use its ``uri`` as ``condense(dataset=...)``."""
        archive = Path(path)
        with open(archive, "rb") as f, bars.transfer(f"upload {archive.name}", archive.stat().st_size, 0,
                                                         self._show(progress)) as advance:
            r = self._request("POST", "/v1/datasets", data={"name": name or archive.name, "visibility": visibility},
                              files={"file": (archive.name, _Counting(f, advance))},
                              timeout=httpx.Timeout(60.0, write=None))
        return Dataset.from_json(r.json(), self)

    def condense(self, ancestry: Ancestry | int, method: str, learngene: str, *, dataset: str | None = None,
                 mode: str | None = None, params: dict[str, Any] | None = None, evaluate: bool = True,
                 description: str = "", visibility: str | None = None) -> CondenseJob:
        """Queue condensing; ``.follow()`` on the result streams its progress and returns the new version.
        ``visibility`` (``public`` or ``private``) sets the learngene's; a new one is private by default."""
        body: dict[str, Any] = {"ancestry": ancestry if isinstance(ancestry, int) else ancestry.id, "method": method,
                                "learngene": learngene, "params": params or {}, "evaluate": evaluate,
                                "description": description}
        if dataset is not None:
            body["dataset"] = dataset
        if mode is not None:
            body["mode"] = mode
        if visibility is not None:
            body["visibility"] = visibility
        return CondenseJob.from_json(self._request("POST", "/v1/condense-jobs", json=body).json(), self)


class _Counting:
    """A file whose reads advance a progress bar (httpx streams multipart parts by reading them)."""

    def __init__(self, f: BinaryIO, advance: Any) -> None:
        self._f, self._advance = f, advance

    def read(self, n: int = -1) -> bytes:
        block = self._f.read(n)
        self._advance(len(block))
        return block

    def __getattr__(self, name: str) -> Any:  # fileno, seek, tell: httpx sizes the part from them
        return getattr(self._f, name)
