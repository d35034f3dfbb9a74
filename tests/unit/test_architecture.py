"""The layer rules of docs/architecture.md, read from the source with ``ast``.

Every import counts: at module level, under ``TYPE_CHECKING`` and inside functions, because each
of them is a dependency a reader has to follow. ``ALLOWED`` lists the violations that still
exist; it may only shrink: a violation not in it fails, and so does an entry that no longer
happens (remove it).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[2]
PACKAGE: Final = ROOT / "signald"

# Lowest first. A module may import from its own layer and the layers below it, never above.
LAYERS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("base", ("signald.errors", "signald.timefmt", "signald.logfmt", "signald.lazy")),
    ("protocol", ("signald.protocol",)),
    ("state", ("signald.state", "signald.auth", "signald.config")),
    ("history", ("signald.history",)),
    ("delivery", ("signald.delivery",)),
    ("transport", ("signald.transport",)),
    ("app", ("signald.app",)),
    ("cluster", ("signald.cluster",)),
    ("handlers", ("signald.router", "signald.handlers", "signald.inbound")),
    ("entry", ("signald.server", "signald.cli", "signald.commands", "signald.workers", "signald.client", "signald.hub",
               "signald.__main__", "signald.api", "signald")),
)

# Modules that do no I/O and hold no event loop: they take ``now`` and return what to send.
PURE: Final = ("signald.errors", "signald.timefmt", "signald.protocol", "signald.state", "signald.auth",
               "signald.history.queries", "signald.history.rules", "signald.history.writes",
               "signald.history.contract", "signald.transport.framing", "signald.transport.upgrade",
               # the client core both adapters (and the JavaScript client's port) share
               "signald.client.core", "signald.client.schedule", "signald.client.view", "signald.client.model",
               "signald.client.wire", "signald.client.base", "signald.client.errors")
IO_MODULES: Final = frozenset({"trio", "trio_websocket", "threading", "socket", "sqlite3", "select", "selectors",
                               "asyncio", "psycopg", "coredis", "anyio"})

# Handlers reach clients through the context and the hub, never through sockets or outboxes.
HANDLER_FORBIDDEN: Final = ("signald.transport", "signald.delivery", "trio.lowlevel")

# The one module allowed to touch each library's internals (behind a probe with a public fallback).
INTERNALS: Final = {"trio": "signald.history.inline", "wsproto": "signald.transport.wsproto_probe"}

# Only these touch file descriptors (os.read/os.write, fileno(), epoll).
FD_MODULES: Final = ("signald.transport", "signald.delivery.outbox")
FD_CALLS: Final = frozenset({"fileno", "epoll"})
FD_OS_CALLS: Final = frozenset({"read", "write", "writev", "readv"})

MAX_LINES: Final = 400

# (rule, module, detail) that still exist. Only ever remove entries.
ALLOWED: Final[frozenset[tuple[str, str, str]]] = frozenset({
})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def under(name: str, prefixes: tuple[str, ...] | str) -> bool:
    if isinstance(prefixes, str):
        prefixes = (prefixes,)
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer_of(name: str) -> int:
    best, rank = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if under(name, prefix) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank >= 0, f"{name} belongs to no layer: add it to LAYERS"
    return rank


def imports(path: Path, known: dict[str, Path]) -> Iterator[str]:
    """Every module ``path`` imports, resolved to a module of ``known`` where it names one."""
    tree = ast.parse(path.read_text(), str(path))
    this = module_name(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = this if path.name == "__init__.py" else this.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield candidate if candidate in known else base


def violations() -> set[tuple[str, str, str]]:
    known = modules()
    found: set[tuple[str, str, str]] = set()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        source = path.read_text()
        if source.count("\n") > MAX_LINES:
            found.add(("size", name, f"{source.count(chr(10))} lines"))
        for target in set(imports(path, known)):
            top = target.split(".")[0]
            if target in known:
                graph[name].add(target)
                if layer_of(target) > layer_of(name):
                    found.add(("upward", name, target))
            if under(name, PURE) and top in IO_MODULES:
                found.add(("io-in-pure", name, top))
            if under(name, "signald.handlers") and under(target, HANDLER_FORBIDDEN):
                found.add(("handler-reach", name, target))
            for library, owner in INTERNALS.items():
                if top == library and any(part.startswith("_") for part in target.split(".")[1:]) and name != owner:
                    found.add(("internals", name, target))
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                touches_fd = node.attr in FD_CALLS or (
                    isinstance(node.value, ast.Name) and node.value.id == "os" and node.attr in FD_OS_CALLS)
                if touches_fd and not under(name, FD_MODULES):
                    found.add(("fd", name, node.attr))
                if under(name, "signald.handlers") and node.attr == "finish":
                    found.add(("handler-calls-router", name, "finish"))
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                    and isinstance(node.args[1].value, str) and node.args[1].value.startswith("_")
                    and node.args[1].value not in ("__name__", "__dict__")
                    and name not in INTERNALS.values()):
                found.add(("internals", name, f"getattr {node.args[1].value}"))
    for cycle in cycles(graph):
        found.add(("cycle", cycle[0], " -> ".join(cycle)))
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def test_no_new_violations() -> None:
    new = violations() - ALLOWED
    assert not new, "layer rules broken (see docs/architecture.md):\n" + "\n".join(map(str, sorted(new)))


def test_allowlist_only_shrinks() -> None:
    gone = ALLOWED - violations()
    assert not gone, "fixed violations still listed in ALLOWED; remove:\n" + "\n".join(map(str, sorted(gone)))


def test_checker_sees_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert layer_of("signald.state.rooms") < layer_of("signald.app.hub") < layer_of("signald.handlers.chat")


@pytest.mark.parametrize("module", ["signald.state.rooms", "signald.state.presence", "signald.protocol",
                                    "signald.client.core", "signald.client.base"])
def test_a_sans_io_module_loads_no_io(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "heavy = {'trio', 'wsproto', 'trio_websocket', 'prometheus_client', 'jwt', 'sqlite3', 'signald.app',"
        " 'signald.transport', 'signald.history', 'signald.delivery', 'asyncio', 'websockets'}\n"
        "print(sorted(m for m in sys.modules if m in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout


DOCS: Final = ROOT / "docs"


def test_the_picture_draws_the_layers_the_test_enforces() -> None:
    dot = (DOCS / "architecture.dot").read_text()
    nodes = {line.split()[0] for line in dot.splitlines() if "[label=" in line}
    assert nodes == {name for name, _ in LAYERS}


def test_the_chat_send_walk_names_functions_that_exist() -> None:
    """Every ``module.Name`` or ``module.Name.attr`` the walk in docs/architecture.md names is real."""
    import importlib
    import re

    text = (DOCS / "architecture.md").read_text()
    walk = text.split("## One `chat.send`", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`((?:protocol|state|history|delivery|transport|app|inbound)(?:\.\w+)+)`", walk))
    assert len(named) >= 10, named
    for dotted in sorted(named):
        parts = dotted.split(".")
        for split in range(len(parts), 0, -1):  # the longest importable module prefix
            try:
                obj: object = importlib.import_module("signald." + ".".join(parts[:split]))
            except ModuleNotFoundError:
                continue
            for attr in parts[split:]:
                assert hasattr(obj, attr), f"docs/architecture.md names {dotted}, which does not exist"
                obj = getattr(obj, attr)
            break
        else:
            raise AssertionError(f"docs/architecture.md names {dotted}: no such module")
