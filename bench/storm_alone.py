"""One reconnect storm (g) against signald alone, with a longer wait than the bench's rounds.

    python -m bench.storm_alone 19000 bench/results/OUT.json [--timeout 300]

``python -m bench --only g`` runs every server of (g) (python-socketio, ``--baseline``) with the
same wait; a 19,000-client storm of signald alone, given 300 s to finish, is this. The metrics are
those of :func:`bench.storm.reconnect_storm`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.procs import CLIENT_CPU, SPECS, pin_to, raise_nofile, running
from bench.storm import Metrics, reconnect_storm
from bench.workloads import Sizes
from bench.wsclient import run_loop


async def storm(n: int, timeout_s: float) -> Metrics:
    async with running(SPECS["signald"]) as server:
        return await reconnect_storm(server, n, "alone", send_rate=Sizes().storm_send_rate, timeout_s=timeout_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clients", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds the storm may take")
    args = parser.parse_args()
    pin_to(CLIENT_CPU)
    raise_nofile()
    metrics = run_loop(storm(args.clients, args.timeout))
    args.out.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
