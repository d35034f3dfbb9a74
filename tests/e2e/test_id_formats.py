"""The identifiers and timestamps docs/protocol.md promises, as a client receives them.

"Message ids: 24 hex digits (12 of creation time in ms, 12 random); session ids ``s-`` + 16 hex;
server-made call ids: 32 hex; ``seq`` from 1; ``device_id`` == ``session_id``; without ``?user=``
the user id is ``guest-<8 hex>``; timestamps are ISO 8601 UTC strings with milliseconds." Clients
store and compare these (a session id found in ``members[].devices`` is a device of
``device.online``), so their shape is part of the surface.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from conftest import events_of

from signald.client.raw import connect
from signald.server import RunningServer

HEX = re.compile(r"[0-9a-f]+")
ISO_MS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def iso_ms(text: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 UTC timestamp with milliseconds."""
    assert ISO_MS_UTC.fullmatch(text), text
    return round(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp() * 1000)


async def test_ids_and_timestamps_have_their_documented_shapes(server: RunningServer) -> None:
    async with connect(server.url, user="alice") as alice, connect(server.url) as guest:
        welcome = alice.welcome["data"]
        session = welcome["session_id"]
        assert session.startswith("s-") and len(session) == 18 and HEX.fullmatch(session[2:])
        iso_ms(welcome["server_time"])
        assert guest.user_id.startswith("guest-") and len(guest.user_id) == 14 and HEX.fullmatch(guest.user_id[6:])

        joined = await alice.request("room.join", {"room": "lobby"})
        assert joined["members"][0]["devices"] == [session]
        await guest.request("room.join", {"room": "lobby"})
        await events_of(alice)
        async with connect(server.url, user="alice") as second:
            [online] = [e for e in await events_of(guest) if e[0] == "device.online"]
            assert online[1] == {"device_id": second.session_id, "user_id": "alice"}
            assert second.session_id in (await second.request("session.info"))["devices"]

        message = await alice.request("chat.send", {"scope": "lobby", "body": "hi"})
        assert message["seq"] == 1 and message["rev"] == 1
        assert len(message["id"]) == 24 and HEX.fullmatch(message["id"])
        assert int(message["id"][:12], 16) == iso_ms(message["created_at"])  # creation time in ms
        info = await alice.request("session.info")
        iso_ms(info["connected_at"])
        pong = await alice.request_raw("presence.ping")
        iso_ms(pong["data"]["timestamp"])

        call = await alice.request("call.offer", {"target_id": guest.user_id, "call_type": "data",
                                                  "sdp": {"type": "offer", "sdp": "v=0\r\n"}})
        assert len(call["call_id"]) == 32 and HEX.fullmatch(call["call_id"])
