"""Server processes under test: start pinned to the server core, measure with psutil, stop.

Every server is a separate ``python`` process started from the repository root. It is pinned to
one core (``SERVER_CPU``) before ``exec`` (so threads it starts, like signald's SQLite thread,
stay there too) and gets its file-descriptor soft limit raised to the hard limit. The load client
(this process and any helper processes) runs on the other core.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psutil

from bench.pgserver import bench_database_url
from bench.redisserver import bench_broker_url
from bench.wsclient import DIALECTS, Dialect

REPO = Path(__file__).resolve().parent.parent
READY = re.compile(r"ready on ws://([0-9.]+):(\d+)/")
# The same line in the text log format, with the time the daemon wrote it (its own clock).
READY_LOGGED = re.compile(r"^(\S+) INFO signald: signald ready on ws://", re.MULTILINE)
# Where servers keep their compiled bytecode when this environment writes none (see ``spawn_env``).
BYTECODE_CACHE = os.path.join(tempfile.gettempdir(), f"signald-bench-pycache-{os.getuid()}")

# signald's per-connection limits are for abuse, not for a load client: raise them for the bench.
SIGNALD_ENV = {
    "SIGNALD_LIMITS_RATE_PER_S": "1000000",
    "SIGNALD_LIMITS_RATE_BURST": "1000000",
    "SIGNALD_LIMITS_SEND_QUEUE": "1000000",
    "SIGNALD_SERVER_NEW_CONNECTIONS_PER_IP_PER_S": "0",
}


def cpus() -> tuple[int | None, int | None]:
    """(server core, client core), or (None, None) when fewer than two cores are available."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return available[0], available[1]


SERVER_CPU, CLIENT_CPU = cpus()


def raise_nofile(wanted: int | None = None) -> int:
    """Raise this process's open-file soft limit (to ``wanted`` or the hard limit); returns it.

    Raising the hard limit itself needs CAP_SYS_RESOURCE; without it the hard limit is the cap.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted is not None and wanted > hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
    target = hard if wanted is None else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pin_to(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


@dataclass
class ServerSpec:
    """One way to run a server: a name, the load client dialect, and its command line."""

    name: str
    dialect_name: str
    argv: Callable[[str], list[str]]  # tmpdir -> argv
    env: dict[str, str] = field(default_factory=dict)
    label: str = ""
    cwd: Path = REPO  # started from here, which is also first on PYTHONPATH (see ``spawn_env``)

    @property
    def dialect(self) -> Dialect:
        return DIALECTS[self.dialect_name]


PY = sys.executable

SPECS: dict[str, ServerSpec] = {
    "signald": ServerSpec(
        "signald", "signald",
        lambda tmp: [PY, "-m", "signald", "serve", "--port", "0", "--db", os.path.join(tmp, "bench.db"),
                     "--log-level", "warning"],
        SIGNALD_ENV, "signald (SQLite file, WAL, synchronous=NORMAL)",
    ),
    "signald-mem": ServerSpec(
        "signald-mem", "signald",
        lambda tmp: [PY, "-m", "signald", "serve", "--port", "0", "--db", ":memory:", "--log-level", "warning"],
        SIGNALD_ENV, "signald with --db :memory:",
    ),
    "signald-pg": ServerSpec(
        "signald-pg", "signald",
        lambda tmp: [PY, "-m", "signald", "serve", "--port", "0", "--history-url", bench_database_url(),
                     "--log-level", "warning"],
        SIGNALD_ENV, "signald (PostgreSQL: a private local server, fsync and synchronous_commit on)",
    ),
    "signald-broker": ServerSpec(
        "signald-broker", "signald",
        lambda tmp: [PY, "-m", "signald", "serve", "--port", "0", "--history-url", bench_database_url(),
                     "--broker-url", bench_broker_url(), "--log-level", "warning"],
        SIGNALD_ENV, "signald on PostgreSQL with the Redis broker (one node of a cluster)",
    ),
    "signald-cluster": ServerSpec(  # node 0; workload (h) starts the others on the same database and broker
        "signald-cluster", "signald",
        lambda tmp: [PY, "-m", "signald", "serve", "--port", "0", "--history-url", bench_database_url(),
                     "--broker-url", bench_broker_url(), "--log-level", "warning"],
        SIGNALD_ENV, "three signald nodes on one PostgreSQL and one Redis",
    ),
    "socketio": ServerSpec(
        "socketio", "socketio",
        lambda tmp: [PY, "-m", "bench.servers.socketio_server", "--port", "0"],
        {}, "python-socketio AsyncServer on aiohttp",
    ),
    "websockets": ServerSpec(
        "websockets", "websockets",
        lambda tmp: [PY, "-m", "bench.servers.websockets_server", "--port", "0"],
        {}, "asyncio websockets + broadcast()",
    ),
}


@dataclass
class Server:
    """A running server process."""

    spec: ServerSpec
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    stderr_path: str
    ps: psutil.Process
    tmp: str = ""  # the server's directory (its database): a restart keeps it
    nofile: int | None = None
    earlier_cpu_s: float = 0.0  # CPU of the processes this server ran as before its last restart
    # Wall-clock times of the last restart's spawn and of its ready line as the daemon logged it:
    # unlike the bench's view of it (polled from an event loop busy with thousands of clients).
    spawned_wall: float = 0.0
    ready_wall: float | None = None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server so far (all its threads, earlier processes included)."""
        return self.earlier_cpu_s + self.process_cpu_seconds()

    def process_cpu_seconds(self) -> float:
        """User + system CPU time of the current process alone."""
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def thread_cpu_seconds(self) -> tuple[float, float]:
        """User + system CPU time of the current process: (its main thread, all its other threads).

        signald's main thread runs Trio (everything but the stores' writer threads)."""
        main = other = 0.0
        for t in self.ps.threads():
            if t.id == self.ps.pid:
                main += t.user_time + t.system_time
            else:
                other += t.user_time + t.system_time
        return main, other

    async def restart(self, startup_s: float = 30.0, grace_s: float = 30.0) -> float:
        """SIGTERM, wait for the exit (SIGKILL after ``grace_s``), start again on the same port and
        directory (database).

        Returns the seconds from SIGTERM to the old process's exit (its shutdown). The exit is
        waited for, and the new process spawned, on a thread of its own: polled from this event
        loop, busy with thousands of reconnecting clients, the exit was seen late and the new
        server started that much later (19,000 clients: 0.23 s from the exit seen to the spawn).
        """
        t0 = time.perf_counter()
        old = self.proc
        old.send_signal(signal.SIGTERM)
        spec = dataclasses.replace(self.spec, argv=_on_port(self.spec.argv, self.port))

        def exit_then_spawn() -> tuple[float, float, subprocess.Popen[bytes], str]:
            killer = threading.Timer(grace_s, old.kill)
            killer.start()
            try:
                last = self.process_cpu_seconds()
                with contextlib.suppress(ChildProcessError):  # until it is a zombie, not reaped yet:
                    os.waitid(os.P_PID, old.pid, os.WEXITED | os.WNOWAIT)
                with contextlib.suppress(psutil.NoSuchProcess):  # a zombie's CPU times are still readable
                    last = self.process_cpu_seconds()
                old.wait()
            finally:
                killer.cancel()
            shutdown_s = time.perf_counter() - t0
            self.spawned_wall = time.time()
            proc, stderr_path = _spawn(spec, self.tmp, self.nofile, None, log_name=f"stderr-{old.pid}.log")
            return shutdown_s, last, proc, stderr_path

        shutdown_s, last, proc, stderr_path = await asyncio.to_thread(exit_then_spawn)
        self.earlier_cpu_s += last
        self.proc, self.stderr_path = proc, stderr_path
        deadline = time.monotonic() + startup_s
        started = _ready(spec, proc, stderr_path, deadline)
        while started is None:
            await asyncio.sleep(0.01)
            started = _ready(spec, proc, stderr_path, deadline)
        self.ps = started.ps
        self.ready_wall = logged_ready(stderr_path)
        return shutdown_s

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def nofile_limit(self) -> tuple[int, int]:
        soft, hard = self.ps.rlimit(psutil.RLIMIT_NOFILE)
        return int(soft), int(hard)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(Path(self.stderr_path).read_text(errors="replace").splitlines()[-lines:])
        return ""


def _preexec(nofile: int | None) -> Callable[[], None]:
    def setup() -> None:
        pin_to(SERVER_CPU)
        raise_nofile(nofile)
    return setup


def spawn_env(spec: ServerSpec) -> dict[str, str]:
    """The environment a server of ``spec`` runs in.

    Every inherited ``SIGNALD_*`` variable is dropped, not only configuration keys: a developer's
    settings must not change what is measured, and a ``--baseline`` commit may be old enough to
    refuse variables it does not know (``./dev`` itself passes ``SIGNALD_VENV``). ``spec.cwd`` goes
    first on ``PYTHONPATH`` so its ``signald`` wins over the editable install. Servers start from
    compiled bytecode as an installed daemon does (kept in ``BYTECODE_CACHE`` if this environment
    says ``PYTHONDONTWRITEBYTECODE``).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALD_")}
    env.update(spec.env)
    env["PYTHONPATH"] = str(spec.cwd) + os.pathsep + env.get("PYTHONPATH", "")
    if env.pop("PYTHONDONTWRITEBYTECODE", ""):
        # An installed signald has its bytecode compiled (pip does it); a server that compiled its
        # ~100 modules from source at every start would add ~0.1 s to each restart (the storm's
        # start-up, docs/benchmarks.md "Daemon start-up"). The cache goes outside the repository.
        env["PYTHONPYCACHEPREFIX"] = BYTECODE_CACHE
    return env


def _on_port(argv: Callable[[str], list[str]], port: int) -> Callable[[str], list[str]]:
    """``argv`` with ``--port 0`` replaced by ``--port PORT`` (a restart listens where clients reconnect)."""
    def patched(tmp: str) -> list[str]:
        args = argv(tmp)
        i = args.index("--port")
        return [*args[:i + 1], str(port), *args[i + 2:]]
    return patched


def _spawn(spec: ServerSpec, tmp: str, nofile: int | None, wrap: list[str] | None, *,
           log_name: str = "stderr.log") -> tuple[subprocess.Popen[bytes], str]:
    argv = spec.argv(tmp)
    if wrap:
        argv = [argv[0], *wrap, *argv[1:]]
    stderr_path = os.path.join(tmp, log_name)
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(argv, cwd=spec.cwd, env=spawn_env(spec), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err, preexec_fn=_preexec(nofile))
    return proc, stderr_path


def _ready(spec: ServerSpec, proc: subprocess.Popen[bytes], stderr_path: str, deadline: float) -> Server | None:
    """The server once its ready line is out; None while still starting; raises if it never will."""
    text = Path(stderr_path).read_text(errors="replace")
    match = READY.search(text)
    if match:
        return Server(spec, proc, match.group(1), int(match.group(2)), stderr_path, psutil.Process(proc.pid))
    if proc.poll() is not None or time.monotonic() > deadline:
        raise RuntimeError(f"{spec.name} did not start (exit {proc.poll()}):\n{text[-2000:]}")
    return None


def logged_ready(stderr_path: str) -> float | None:
    """When the server wrote its ready line (epoch seconds, to the millisecond); None if not known."""
    with contextlib.suppress(OSError):
        match = READY_LOGGED.search(Path(stderr_path).read_text(errors="replace"))
        if match:
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(match.group(1)).timestamp()
    return None


@contextlib.asynccontextmanager
async def running(spec: ServerSpec, *, nofile: int | None = None, startup_s: float = 30.0,
                  wrap: list[str] | None = None) -> AsyncIterator[Server]:
    """Start ``spec`` pinned to the server core, wait for its ready line, stop it on exit.

    ``wrap`` is put before the module arguments (e.g. ``["-m", "cProfile", "-o", PATH]``).
    """
    with tempfile.TemporaryDirectory(prefix=f"bench-{spec.name}-") as tmp:
        proc, stderr_path = _spawn(spec, tmp, nofile, wrap)
        server: Server | None = None
        try:
            deadline = time.monotonic() + startup_s
            server = _ready(spec, proc, stderr_path, deadline)
            while server is None:
                await asyncio.sleep(0.05)
                server = _ready(spec, proc, stderr_path, deadline)
            server.tmp, server.nofile = tmp, nofile
            yield server
        finally:
            await stop(proc)
            if server is not None and server.proc is not proc:  # restarted meanwhile
                await stop(server.proc)


async def stop(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM (the servers shut down cleanly, cProfile writes its stats), SIGKILL after ``grace_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)


def client_cpu_seconds() -> float:
    """CPU time of this (load client) process so far."""
    t = os.times()
    return t.user + t.system


def machine_busy_seconds() -> float:
    """CPU time spent by the whole machine so far (all cores, everything but idle and iowait)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0)
                 - getattr(t, "guest_nice", 0.0) - getattr(t, "steal", 0.0))


def quiet_machine(threshold_pct: float = 10.0, sample_s: float = 1.0) -> bool:
    """True if the machine's CPU use, beside this process, stayed under ``threshold_pct`` of one core."""
    busy0, own0 = machine_busy_seconds(), client_cpu_seconds()
    time.sleep(sample_s)
    return ((machine_busy_seconds() - busy0) - (client_cpu_seconds() - own0)) / sample_s * 100 < threshold_pct
