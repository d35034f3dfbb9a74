from signald.client.raw import connect


async def test_welcome_and_ping(server):
    async with connect(server.url, user="alice") as c:
        assert c.welcome["type"] == "welcome"
        assert c.user_id == "alice"
        pong = await c.request_raw("presence.ping")
        assert pong["type"] == "presence.pong"
        assert pong["data"]["op_id"] == "c-1"
        reply = await c.request_raw("call.offer", {"target_id": "bob", "call_type": "audio", "sdp": {}})
        assert reply["data"]["code"] == "FORBIDDEN"  # a stranger, online or not
