"""Micro-benchmark: what reading the ``id`` of a refused frame costs, next to a full decode.

A frame refused before it is decoded (``RATE_LIMITED``, or ``TOO_LARGE`` over
``limits.max_frame_bytes``) still answers with its ``id`` in ``op_id``; ``signald.protocol.codec.read_op_id``
reads only that. This times, per frame, in one process and without sockets:

- the full decode of a valid ``chat.send`` (what a carried-out frame costs: ``decode_frame``);
- ``read_op_id`` of the same small frame (a rate-limited one);
- ``read_op_id`` of a ``chat.send`` just over 64 KiB (a too-large one), with its ``id`` first and last;
- for scale, the full decode that the 64 KiB frame would have cost, and measuring its size.

    .venv/bin/python -m bench.refused_frames            # JSON and MessagePack, best of 7
    .venv/bin/python -m bench.refused_frames --quick    # tiny run (smoke test)
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from collections.abc import Callable
from typing import Any

import msgspec
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, TextMessage

from signald.inbound import message_size
from signald.protocol import decode_frame
from signald.protocol.codec import read_op_id

MAX_FRAME_BYTES = 65536


def frames(msgpack: bool) -> dict[str, str | bytes]:
    """The frames timed: a small valid chat.send, and one just over ``MAX_FRAME_BYTES``."""

    def encode(message: dict[str, Any]) -> str | bytes:
        return msgspec.msgpack.encode(message) if msgpack else json.dumps(message, separators=(",", ":"))

    small = {"type": "chat.send", "id": "c-17", "data": {"scope": "lobby", "body": "hello, how are you?"}}

    def big(body_chars: int, id_last: bool = False) -> str | bytes:
        data = {"scope": "lobby", "body": "x" * body_chars}
        message = {"type": "chat.send", "data": data, "id": "c-18"} if id_last else \
            {"type": "chat.send", "id": "c-18", "data": data}
        return encode(message)

    envelope = len(big(60_000)) - 60_000
    body_chars = MAX_FRAME_BYTES + 1 - envelope  # one byte over the limit
    big_first, big_last = big(body_chars), big(body_chars, id_last=True)
    assert len(big_first) == len(big_last) == MAX_FRAME_BYTES + 1
    return {"small": encode(small), "big_first": big_first, "big_last": big_last}


def per_frame_us(call: Callable[[], object], number: int, repeat: int) -> float:
    """Best of ``repeat`` runs of ``number`` calls, in microseconds per call."""
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def measure(msgpack: bool, number: int, repeat: int) -> list[tuple[str, float]]:
    f = frames(msgpack)
    small, big_first, big_last = f["small"], f["big_first"], f["big_last"]
    assert read_op_id(small, msgpack=msgpack) == "c-17"
    assert read_op_id(big_first, msgpack=msgpack) == read_op_id(big_last, msgpack=msgpack) == "c-18"
    big_number = max(1, number // 100)
    return [
        (f"full decode, valid chat.send ({len(small)} B)",
         per_frame_us(lambda: decode_frame(small, msgpack=msgpack), number, repeat)),
        (f"id only, rate-limited chat.send ({len(small)} B)",
         per_frame_us(lambda: read_op_id(small, msgpack=msgpack), number, repeat)),
        (f"id only, too-large frame, id first ({len(big_first)} B)",
         per_frame_us(lambda: read_op_id(big_first, msgpack=msgpack), big_number, repeat)),
        (f"id only, too-large frame, id last ({len(big_last)} B)",
         per_frame_us(lambda: read_op_id(big_last, msgpack=msgpack), big_number, repeat)),
        ("(full decode of that frame, for scale)",
         per_frame_us(lambda: decode_frame(big_first, msgpack=msgpack), big_number, repeat)),
        ("(message_size of that frame, already paid)",
         per_frame_us(lambda: message_size(big_first), big_number, repeat)),
        ("(wsproto receiving that frame, already paid)", per_frame_us(_receiver(big_first), big_number, repeat)),
    ]


def _receiver(message: str | bytes) -> Callable[[], object]:
    """A call that feeds one masked ws_frame holding ``message`` to an open server-side wsproto
    connection and takes the message out: what the transport does with a frame over one read."""
    client, server = Connection(ConnectionType.CLIENT), Connection(ConnectionType.SERVER)
    wire = client.send(TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message))

    def receive() -> object:
        server.receive_data(wire)
        return list(server.events())

    return receive


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=200_000, help="calls per run for small frames (default 200000)")
    parser.add_argument("--repeat", type=int, default=7, help="runs; the best is shown (default 7)")
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.number, args.repeat = 200, 1
    print(f"µs per frame, best of {args.repeat}, {sys.implementation.name} {sys.version.split()[0]}, "
          f"msgspec {msgspec.__version__}")
    for msgpack in (False, True):
        print(f"\n{'MessagePack' if msgpack else 'JSON'}")
        for label, us in measure(msgpack, args.number, args.repeat):
            print(f"  {label:<48} {us:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
