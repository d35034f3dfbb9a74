"""``signald health URL`` as a container's HEALTHCHECK runs it: against a real daemon, light.

The probe starts a fresh interpreter every 15 s (Dockerfile) next to the daemon it checks, so what
it imports is CPU taken from the daemon at each check. It needs argparse and the standard
library's HTTP client, nothing of trio, msgspec, the wire, the configuration or the optional
libraries (docs/benchmarks.md, "signald health"). Each run here is ``python -X importtime -m
signald health ...``: every module imported is a line on stderr, so the modules seen are exactly
those the probe loaded; the probe's own line (on stderr when unhealthy) is what is left.

Exit status and output stay those of docs/deploy.md: 0 and ``200 <body>`` on stdout for a 200,
1 and one line on stderr otherwise (a 503 with its body, or ``unreachable: <reason>``).
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import trio
from conftest import daemon

IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$")
IMPORT_HEADER = "import time: self [us] | cumulative | imported package"

# What the probe must never load: the daemon's libraries (trio and what it brings, the wire codec,
# the WebSocket and HTTP parsers, attrs/cattrs behind signald.config) and the optional ones.
NOT_FOR_THE_PROBE = ("trio", "trio_websocket", "outcome", "sniffio", "sortedcontainers", "msgspec", "wsproto", "h11",
                     "attr", "attrs", "cattrs", "sqlite3", "jwt", "cryptography", "prometheus_client", "psycopg",
                     "psycopg_binary", "psycopg_c", "coredis", "hiredis", "httpx", "asyncio")
# Of signald itself, the probe loads the package root (lazy names only), the entry point, the
# parser and the check.
SIGNALD_FOR_THE_PROBE = frozenset({"signald", "signald.lazy", "signald.__main__", "signald.cli", "signald.commands",
                                   "signald.commands.parser", "signald.api", "signald.api.health"})


class Probe:
    """One ``signald health`` run: its exit status, stdout, the stderr lines that are not import times,
    and the modules it imported."""

    def __init__(self, done: subprocess.CompletedProcess[str]) -> None:
        self.returncode = done.returncode
        self.stdout = done.stdout
        self.modules: list[str] = []
        said: list[str] = []
        for line in done.stderr.splitlines():
            if match := IMPORTED.match(line):
                self.modules.append(match.group(1))
            elif line != IMPORT_HEADER:
                said.append(line)
        self.stderr = "\n".join(said)

    def too_heavy(self) -> list[str]:
        """The modules it loaded that a probe does not need."""
        return sorted(m for m in self.modules
                      if any(m == p or m.startswith(p + ".") for p in NOT_FOR_THE_PROBE)
                      or (m.split(".")[0] == "signald" and m not in SIGNALD_FOR_THE_PROBE))


async def probe(*args: str) -> Probe:
    done = await trio.run_process([sys.executable, "-X", "importtime", "-m", "signald", "health", *args],
                                  capture_stdout=True, capture_stderr=True, check=False)
    return Probe(subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode()))


def assert_light(run: Probe) -> None:
    # the method sees the probe's own imports, so an empty list below means something
    assert {"signald.cli", "signald.api.health", "urllib.request"} <= set(run.modules), run.modules
    heavy = run.too_heavy()
    assert heavy == [], f"signald health loaded {sorted({m.split('.')[0] for m in heavy})}: {heavy}"


async def test_a_healthy_then_draining_daemon_exit_0_then_1_and_the_probe_loads_nothing_of_the_daemon(
        tmp_path: Path) -> None:
    async with daemon(tmp_path, "probed", "--db", str(tmp_path / "d.db"),
                      config_text="[server]\ndrain_s = 30\n") as (process, url):
        readyz = url.replace("ws://", "http://").rstrip("/") + "/readyz"
        healthy = await probe(readyz)
        assert (healthy.returncode, healthy.stderr) == (0, "")
        assert healthy.stdout == '200 {"status":"ok"}\n'
        assert_light(healthy)

        process.send_signal(signal.SIGTERM)  # drains: /readyz answers 503 for drain_s
        with trio.fail_after(10):
            while "draining" not in (tmp_path / "probed.log").read_text():  # noqa: ASYNC110  # a file: no event
                await trio.sleep(0.02)
        draining = await probe(readyz, "--timeout", "5")
        assert (draining.returncode, draining.stdout) == (1, "")
        assert draining.stderr == '503 {"status":"unavailable","reason":"shutting down"}'
        assert_light(draining)


async def test_nothing_listening_exits_1_with_one_line_and_the_probe_stays_light() -> None:
    with socket.socket() as holder:  # bound, never listening: connecting is refused at once
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        refused = await probe(f"http://127.0.0.1:{port}/readyz", "--timeout", "2")
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.count("\n") == 0 and refused.stderr.startswith("unreachable: "), refused.stderr
    assert "refused" in refused.stderr.lower()
    assert_light(refused)


async def test_health_help_stays_light() -> None:
    done = await trio.run_process([sys.executable, "-X", "importtime", "-m", "signald", "health", "--help"],
                                  capture_stdout=True, capture_stderr=True, check=False)
    run = Probe(subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode()))
    assert run.returncode == 0 and run.stdout.startswith("usage: signald health [-h] [--timeout TIMEOUT] url")
    assert "signald.cli" in run.modules and run.too_heavy() == [], run.too_heavy()
