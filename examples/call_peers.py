"""Two scripted peers place a call through a running signald: alice calls bob.

    python -m signald serve &
    python examples/call_peers.py --url ws://127.0.0.1:8765/

Both join a room (users may only call someone they share a room with), alice offers with her own
``call_id`` (so her trickled ICE can go out before the ack), bob answers, both trickle ICE, alice
hangs up. Every message is printed as the receiving side sees it. The SDP and ICE objects are
fakes shaped like a browser's ``RTCSessionDescription`` / ``RTCIceCandidate.toJSON()``.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any

import trio

from signald.client.raw import SignaldClient, connect


def session_description(kind: str, session_id: int) -> dict[str, str]:
    """Shaped like ``RTCSessionDescription.toJSON()``."""
    lines = ["v=0", f"o=- {session_id} 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "m=audio 9 UDP/TLS/RTP/SAVPF 111"]
    return {"type": kind, "sdp": "\r\n".join(lines) + "\r\n"}


def candidate(host: str, port: int) -> dict[str, Any]:
    """Shaped like ``RTCIceCandidate.toJSON()``."""
    return {"candidate": f"candidate:1 1 udp 2122260223 {host} {port} typ host", "sdpMid": "0",
            "sdpMLineIndex": 0, "usernameFragment": "f7Qa"}


async def receive(peer: SignaldClient, kind: str) -> dict[str, Any]:
    """Wait for the next ``kind`` event at ``peer`` and print it as ``sender -> receiver``."""
    with trio.fail_after(10):
        data: dict[str, Any] = (await peer.next_event(kind))["data"]
    if kind == "call.offer":
        detail = f"call_type={data['call_type']} sdp.type={data['sdp']['type']}"
    elif kind == "call.answer":
        detail = f"sdp.type={data['sdp']['type']}"
    elif kind == "call.ice":
        detail = "candidate={}:{}".format(*data["candidate"]["candidate"].split(" ")[4:6])
    else:
        detail = f"reason={data['reason']}"
    print(f"{data['from_user']} -> {peer.user_id}  {kind:<11}  call_id={data['call_id']}  {detail}", flush=True)
    return data


async def run(url: str, room: str) -> None:
    async with connect(url, user="alice") as alice, connect(url, user="bob") as bob:
        for peer in (alice, bob):
            await peer.request("room.join", {"room": room})
            print(f"{peer.user_id} joined {room}", flush=True)
        call_id = str(uuid.uuid4())  # chosen by the caller: ICE may flow before the offer's ack
        offer = session_description("offer", 46117)
        await alice.request("call.offer", {"target_id": "bob", "call_type": "audio", "sdp": offer, "call_id": call_id})
        await alice.request("call.ice", {"target_id": "bob", "call_id": call_id,
                                         "candidate": candidate("192.168.1.10", 50000)})
        await receive(bob, "call.offer")
        await receive(bob, "call.ice")  # trickled before the answer
        answer = session_description("answer", 90210)
        await bob.request("call.answer", {"target_id": "alice", "call_id": call_id, "sdp": answer})
        await receive(alice, "call.answer")
        await bob.request("call.ice", {"target_id": "alice", "call_id": call_id,
                                       "candidate": candidate("192.168.1.20", 50002)})
        await receive(alice, "call.ice")
        await alice.request("call.end", {"target_id": "bob", "call_id": call_id, "reason": "hangup"})
        await receive(bob, "call.end")
        print("call finished", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="alice calls bob through a running signald")
    parser.add_argument("--url", default="ws://127.0.0.1:8765/", help="the daemon's WebSocket URL")
    parser.add_argument("--room", default="call-demo", help="the room both peers join first")
    args = parser.parse_args(argv)
    try:
        trio.run(run, args.url, args.room)
    except Exception as exc:  # a demo: say what went wrong (refused, timed out...) and exit non-zero
        while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        cause = exc.__cause__ or exc.__context__
        detail = str(exc) or (f"{type(cause).__name__}: {cause}" if cause else "")
        print(f"call_peers: {type(exc).__name__}: {detail} ({args.url})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
