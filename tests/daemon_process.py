"""One real ``signald serve`` process for a whole test module, for property tests that drive it from
many short ``trio.run`` calls (hypothesis cannot drive a pytest-trio test, and a daemon per example
would cost most of the run).

:func:`serving` starts the daemon on port 0 with a TOML config, waits for its ready line, yields a
:class:`Served` and kills it on exit. Its stderr goes to a file: :meth:`Served.tracebacks` is what a
test checks last ("nothing a client sends makes the daemon log a traceback", docs/protocol.md).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

READY = re.compile(r"signald ready on (wss?://[^\s\"]+)")
# The daemon's own crash report in a log line (not a client's text quoted in one).
TRACEBACK = "Traceback (most recent call last):"


@attrs.frozen
class Served:
    url: str  # ws://127.0.0.1:<port>/
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])

    @property
    def http(self) -> str:
        return "http://" + self.url.split("://", 1)[1].rstrip("/")

    def log_text(self, since: int = 0) -> str:
        with self.log.open("rb") as log:
            log.seek(since)
            return log.read().decode(errors="replace")

    def log_size(self) -> int:
        """Where the log ends now: pass it to :meth:`tracebacks` to see only what follows."""
        return self.log.stat().st_size

    def tracebacks(self, since: int = 0) -> list[str]:
        """Each traceback the daemon logged (after byte ``since``), with the line before it (what failed)."""
        lines = self.log_text(since).splitlines()
        return ["\n".join(lines[max(0, n - 1):n + 40]) for n, line in enumerate(lines) if line == TRACEBACK]


@contextmanager
def serving(tmp_path: Path, config_text: str, *args: str) -> Iterator[Served]:
    """``python -m signald serve --port 0 --config <config_text>`` in ``tmp_path`` until the block ends."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALD_")}
    config = tmp_path / "signald.toml"
    config.write_text(config_text)
    log = tmp_path / "daemon.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "signald", "serve", "--port", "0", "--config", str(config),
                                    *args], stderr=stderr, stdout=subprocess.DEVNULL, cwd=tmp_path, env=env)
    try:
        deadline = time.monotonic() + 15
        while not (match := READY.search(log.read_text(errors="replace"))):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"daemon did not start: {log.read_text(errors='replace')}")
            time.sleep(0.02)
        yield Served(match.group(1), log, process)
        assert process.poll() is None, f"the daemon exited: {log.read_text(errors='replace')[-2000:]}"
    finally:
        process.kill()
        process.wait(5)
