"""The import graph of the project's own code, read with ``ast`` (nothing is imported): no circles, a job kernel
that reaches no domain, a client that reaches no server code.

Every import statement counts, wherever it is written: at module level, inside a function (a lazy import still
closes a circle, only later and harder to see), and under ``if TYPE_CHECKING:`` (a circle the type checker walks
is one a refactoring turns real). An edge goes to the module imported: ``from a.b import c`` is an edge to
``a.b.c`` when that is a module of ours, else to ``a.b``. The ``__init__`` of a parent package is not an edge of
its own: Python runs it first, but what it imports is its own edges.
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "service", "worker", "learngene", "bench")

#: The job kernel: claims, heartbeats, retries, cancellation, the reaper. It runs every domain's jobs and imports
#: none of them: the composition root hands it the kinds.
KERNEL = "service.jobs"
#: What the kernel may still reach in a domain package, and why.
KERNEL_MAY_REACH = {
    # Who is calling: every route checks the caller's key, the kernel's own (cancel a job) included.
    "service.keys.auth": "authentication of the caller",
    "service.keys.repository": "the key lookup authentication does",
}
#: The only server code the client package may import: ``Client.load`` builds the downloaded descendant in
#: memory, which needs the stitched architecture registered with timm (an optional path: torch and timm must be
#: installed, which the client never requires otherwise).
CLIENT_MAY_IMPORT = {("learngene.client", "engine.stitched")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        # A relative import counts from the importing module's package.
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        yield candidate if candidate in known else base


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (any import statement anywhere in its file)."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(node, name, path.name == "__init__.py", known):
                    # ``import a.b.c`` names a module; ``from a import f`` may name a function of ``a``.
                    while target and target not in known:
                        target = target.rpartition(".")[0]
                    if target and target != name:
                        edges.add(target)
        graph[name] = edges
    return graph


def tangles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's, iteratively): each module of one
    reaches every other, so each is at least one circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return components


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per tangle, as a path that starts and ends at the same module."""
    return [circle_in(graph, component) for component in tangles(graph)]


def circle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest circle through the component's first module (breadth first inside the component)."""
    start = min(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in came_from:
                    came_from[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no circle in {sorted(component)}")


def reachable(graph: dict[str, set[str]], starts: list[str]) -> dict[str, str]:
    """Every module the ``starts`` reach, each with the module that imports it on a shortest path from them."""
    via: dict[str, str] = {}
    frontier = list(starts)
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in via and child not in starts:
                    via[child] = node
                    following.append(child)
        frontier = following
    return via


def _path(via: dict[str, str], end: str) -> list[str]:
    path = [end]
    while path[-1] in via:
        path.append(via[path[-1]])
    return path[::-1]


def _file(module: str) -> str:
    return str(_modules()[module].relative_to(REPO))


def domain_packages() -> set[str]:
    """The service's domains: every package under ``service/`` with HTTP endpoints, the kernel's aside."""
    return {_module_name(p.parent) for p in (REPO / "service").glob("*/endpoints.py")} - {KERNEL}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_there_is_no_import_circle(graph: dict[str, set[str]]) -> None:
    found = tangles(graph)
    assert not found, "import circles:\n" + "\n".join(
        f"{' -> '.join(_file(m) for m in circle_in(graph, tangle))}"
        + (f" (and more: {len(tangle)} modules reach each other)" if len(tangle) > 2 else "")
        for tangle in found)


def test_the_job_kernel_reaches_no_domain(graph: dict[str, set[str]]) -> None:
    domains = domain_packages()
    assert {"service.condensing", "service.descendants", "service.learngenes"} <= domains
    kernel = sorted(m for m in graph if m == KERNEL or m.startswith(KERNEL + "."))
    via = reachable(graph, kernel)
    leaks = [" -> ".join(_file(m) for m in _path(via, target)) for target in sorted(via)
             if target.rpartition(".")[0] in domains and target not in KERNEL_MAY_REACH]
    assert not leaks, "the job kernel reaches a domain:\n" + "\n".join(leaks)


def test_the_client_imports_no_server_code(graph: dict[str, set[str]]) -> None:
    found = sorted((module, target) for module, targets in graph.items() if module.split(".")[0] == "learngene"
                   for target in targets if target.split(".")[0] in ("service", "engine", "worker", "bench"))
    assert set(found) <= CLIENT_MAY_IMPORT, f"the client package imports server code: {found}"
    # The exception is real (an exception for nothing would hide a renamed module).
    assert CLIENT_MAY_IMPORT <= set(found)


def test_the_graph_sees_every_kind_of_import() -> None:
    """The reader itself: lazy, type-checking and relative imports are edges; a name imported from a package is
    an edge to that package."""
    source = ("from __future__ import annotations\nfrom typing import TYPE_CHECKING\n"
              "if TYPE_CHECKING:\n    from service.context import AppContext\n"
              "def f():\n    import engine.methods.tleg\n    from engine.methods import REGISTRY\n"
              "from . import schemas\nfrom .repository import get\n")
    known = {"service.context", "engine.methods", "engine.methods.tleg", "service.jobs", "service.jobs.schemas",
             "service.jobs.repository", "service.jobs.runner"}
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found |= {t for t in _imported(node, "service.jobs.runner", False, known) if t in known}
    assert found == {"service.context", "engine.methods.tleg", "engine.methods", "service.jobs.schemas",
                     "service.jobs.repository"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
