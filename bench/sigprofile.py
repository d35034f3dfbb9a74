"""Run a module under cProfile from the moment the process gets SIGUSR1 (``bench.shutdown --profile``).

    python -m bench.sigprofile -o OUT.prof -m signald serve ...

``python -m cProfile`` profiles a daemon's whole life, so the few seconds of a shutdown drown in
the minutes of set-up before it. Here the profiler starts disabled; SIGUSR1 (sent right before the
SIGTERM) enables it in the main thread, the one Trio runs in, and the stats are written when the
module returns (a clean exit).
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
from types import FrameType


def main() -> None:
    args = sys.argv[1:]
    if len(args) < 4 or args[0] != "-o" or args[2] != "-m":
        sys.exit("usage: python -m bench.sigprofile -o OUT.prof -m MODULE [ARGS...]")
    out, module = args[1], args[3]
    profiler = cProfile.Profile()

    def start(_signum: int, _frame: FrameType | None) -> None:
        profiler.enable()

    signal.signal(signal.SIGUSR1, start)
    sys.argv = [module, *args[4:]]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        profiler.disable()
        profiler.dump_stats(out)
        raise SystemExit(exc.code) from None
    profiler.disable()
    profiler.dump_stats(out)


if __name__ == "__main__":
    main()
