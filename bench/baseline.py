"""``--baseline REV``: an older signald commit measured in the same run, side by side with today's.

Before/after figures of a refactor are only comparable when measured minutes apart on the same
machine: runs on different days differ by more than most refactors change. The commit's
``signald`` package is exported with ``git archive`` into a temporary directory (no worktree, so
the repository's state is not touched), and the ``signald-before`` server runs from there with
the same command line and environment as ``signald``. Which package a server imports is checked
before the run, since an editable install or a stray ``PYTHONPATH`` could silently measure
today's code twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.procs import PY, REPO, SPECS, ServerSpec, spawn_env

BEFORE = "signald-before"
PG_BEFORE = "signald-pg-before"
"""The baseline on PostgreSQL: beside ``signald-pg`` wherever that runs (PostgreSQL ÷ SQLite before)."""
BROKER_BEFORE = "signald-broker-before"
"""The baseline with the Redis broker: beside ``signald-broker`` in (h) (a change on the broker's path)."""


def resolve(rev: str, repo: Path = REPO) -> str:
    """The short commit id of ``rev``; raises ``ValueError`` if git does not know it."""
    done = subprocess.run(["git", "rev-parse", "--verify", "--short", f"{rev}^{{commit}}"], cwd=repo,
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise ValueError(f"--baseline {rev}: not a commit ({done.stderr.strip()})")
    return done.stdout.strip()


@contextlib.contextmanager
def checkout(commit: str, repo: Path = REPO) -> Iterator[Path]:
    """A temporary directory holding ``signald/`` as it is at ``commit``; removed on exit."""
    with tempfile.TemporaryDirectory(prefix=f"bench-baseline-{commit}-") as tmp:
        archive = subprocess.run(["git", "archive", "--format=tar", commit, "signald"], cwd=repo,
                                 capture_output=True, check=True, timeout=60).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp)


def before_spec(tree: Path, commit: str) -> ServerSpec:
    """``signald``'s spec (same argv, same environment), run from ``tree``."""
    return dataclasses.replace(SPECS["signald"], name=BEFORE, label=f"signald at {commit} (--baseline)", cwd=tree)


def imported_from(spec: ServerSpec) -> Path:
    """Where a server of ``spec`` imports ``signald`` from: same interpreter, cwd and environment.

    ``python -c`` puts the working directory first on ``sys.path`` exactly as ``python -m`` does.
    """
    done = subprocess.run([PY, "-c", "import signald; print(signald.__file__)"], cwd=spec.cwd, env=spawn_env(spec),
                          capture_output=True, text=True, timeout=60, check=True)
    return Path(done.stdout.strip()).resolve()


def check_imports(specs: list[ServerSpec]) -> None:
    """Raise ``RuntimeError`` unless each spec imports the ``signald`` package of its own tree."""
    for spec in specs:
        where = imported_from(spec)
        if not where.is_relative_to(spec.cwd.resolve() / "signald"):
            raise RuntimeError(f"{spec.name} would import signald from {where}, not from {spec.cwd}")


def with_before(servers: tuple[str, ...]) -> tuple[str, ...]:
    """A workload's servers with ``signald-before`` right after ``signald`` (if it runs at all)."""
    out: list[str] = []
    for name in servers:
        out.append(name)
        if name == "signald":
            out.append(BEFORE)
        if name == "signald-pg":
            out.append(PG_BEFORE)
        if name == "signald-broker":
            out.append(BROKER_BEFORE)
    return tuple(out)


@contextlib.contextmanager
def registered(rev: str) -> Iterator[dict[str, str]]:
    """Check out ``rev``, add the ``signald-before`` spec to ``SPECS`` for the block; yields what was run."""
    commit = resolve(rev)
    with checkout(commit) as tree:
        spec = before_spec(tree, commit)
        check_imports([SPECS["signald"], spec])
        SPECS[BEFORE] = spec
        SPECS[PG_BEFORE] = dataclasses.replace(SPECS["signald-pg"], name=PG_BEFORE, cwd=tree,
                                               label=f"signald on PostgreSQL at {commit} (--baseline)")
        SPECS[BROKER_BEFORE] = dataclasses.replace(SPECS["signald-broker"], name=BROKER_BEFORE, cwd=tree,
                                                   label=f"signald with the Redis broker at {commit} (--baseline)")
        try:
            yield {"rev": rev, "commit": commit}
        finally:
            del SPECS[BEFORE], SPECS[PG_BEFORE], SPECS[BROKER_BEFORE]
