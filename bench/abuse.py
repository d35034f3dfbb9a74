"""Benchmark: a polite client's latency alone, and while three connections flood the same daemon.

The flood is the one the abuse review found: a text message opened with one byte, then endless
empty continuation frames. signald counts every fragment against the rate limit and caps a
message at 64 frames, so each abuser is closed with 1008 and reconnects, again and again. The
polite client sends ``presence.ping`` 20 times a second (within its own rate limit) and times
each ``presence.pong``. Printed: p50/p99 alone, p50/p99 under the flood, and their ratios, with
the number of 1008 closes the abusers got. The daemon is a ``signald serve`` process of its own,
so the clients' CPU does not count as its.

    .venv/bin/python -m bench.abuse                 # 5 s per phase
    .venv/bin/python -m bench.abuse --seconds 1     # quick (smoke test)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from signald.client.raw import SignaldClient, connect

READY = re.compile(r"signald ready on ws://[^:]+:(\d+)/")
EMPTY_FRAGMENTS = b"\x00\x80\x00\x00\x00\x00" * 2000  # masked empty continuation frames
TARGET_P99_RATIO = 10.0  # before the fragment limits: 206 ms against 1.3 ms, about x160


async def start_daemon(workdir: Path) -> tuple[trio.Process, int]:
    """A ``signald serve`` process on a free port, every address allowed to reconnect at will."""
    log = workdir / "daemon.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALD_")}
    with log.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "signald", "serve", "--port", "0", "--db", str(workdir / "b.db")],
            stderr=stderr, env={**env, "SIGNALD_SERVER_NEW_CONNECTIONS_PER_IP_PER_S": "0"}, cwd=workdir)
    with trio.fail_after(10):
        while not (match := READY.search(log.read_text(errors="replace"))):
            if process.poll() is not None:
                raise SystemExit(f"signald exited: {log.read_text(errors='replace')}")
            await trio.sleep(0.02)  # polling another process's log: there is no event to wait on
    return process, int(match.group(1))


async def flood(stream: trio.SocketStream) -> None:
    """Empty continuation frames, as fast as the socket takes them, until it breaks."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while True:
            await stream.send_all(EMPTY_FRAGMENTS)


async def abuser(port: int, name: str, until: float, closes: list[int]) -> None:
    """Open, flood with empty fragments until closed, reconnect; until ``until``."""
    while trio.current_time() < until:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        ws = WSConnection(ConnectionType.CLIENT)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(ws.send(Request(host="localhost", target=f"/?user={name}")))
            accepted = False
            while not accepted:
                data = await stream.receive_some(65536)
                if not data:
                    break
                ws.receive_data(data)
                accepted = any(isinstance(e, AcceptConnection) for e in ws.events())
            if accepted:
                await stream.send_all(ws.send(TextMessage(data="{", message_finished=False)))
                async with trio.open_nursery() as inner:
                    inner.start_soon(flood, stream)
                    with trio.move_on_at(until + 2):
                        code = 1006
                        while True:
                            data = await stream.receive_some(65536)
                            if not data:
                                break
                            ws.receive_data(data)
                            closed = [e for e in ws.events() if isinstance(e, CloseConnection)]
                            if closed:
                                code = closed[0].code
                                break
                        closes.append(code)
                    inner.cancel_scope.cancel()
        await stream.aclose()


async def pings(polite: SignaldClient, seconds: float) -> list[float]:
    """Round trips of ``presence.ping`` at 20/s for ``seconds``."""
    latencies: list[float] = []
    until = trio.current_time() + seconds
    while trio.current_time() < until:
        started = time.perf_counter()
        reply = await polite.request_raw("presence.ping")
        assert reply["type"] == "presence.pong", reply
        latencies.append(time.perf_counter() - started)
        await trio.sleep(0.05)
    return sorted(latencies)


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))] * 1000


async def run(seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        process, port = await start_daemon(Path(tmp))
        try:
            async with connect(f"ws://127.0.0.1:{port}/", user="polite") as polite:
                alone = await pings(polite, seconds)
                closes: list[int] = []
                async with trio.open_nursery() as abusers:
                    until = trio.current_time() + seconds
                    for i in range(3):
                        abusers.start_soon(abuser, port, f"abuser{i}", until, closes)
                    flooded = await pings(polite, seconds)
        finally:
            process.kill()
            await process.wait()
    return {
        "alone_p50_ms": pct(alone, 0.5), "alone_p99_ms": pct(alone, 0.99),
        "flooded_p50_ms": pct(flooded, 0.5), "flooded_p99_ms": pct(flooded, 0.99),
        "closes_1008": float(sum(code == 1008 for code in closes)),
        "closes_other": float(sum(code != 1008 for code in closes)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase (default 5)")
    args = parser.parse_args(argv)
    result = trio.run(run, args.seconds)
    ratio50 = result["flooded_p50_ms"] / result["alone_p50_ms"]
    ratio99 = result["flooded_p99_ms"] / result["alone_p99_ms"]
    print(f"polite ping alone:         p50 {result['alone_p50_ms']:.2f} ms, p99 {result['alone_p99_ms']:.2f} ms")
    print(f"with 3 fragment flooders:  p50 {result['flooded_p50_ms']:.2f} ms, p99 {result['flooded_p99_ms']:.2f} ms"
          f"  (flooders closed with 1008: {int(result['closes_1008'])}, otherwise: {int(result['closes_other'])})")
    verdict = "ok" if ratio99 <= TARGET_P99_RATIO else "ABOVE TARGET"
    print(f"flooded / alone: p50 x{ratio50:.2f}, p99 x{ratio99:.2f} (target p99 <= x{TARGET_P99_RATIO:g}): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
