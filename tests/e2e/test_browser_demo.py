"""The browser demo (examples/web, served by ``signald serve --demo``) in a real headless Chromium.

Debian's Chromium (``/usr/bin/chromium``, installed by ``./dev test``) driven by Playwright's sync
API — never a browser that ``playwright install`` downloads. Without either the tests are skipped
saying why, unless ``SIGNALD_TEST_BROWSER=require`` (then they fail). One browser for the module;
each test opens its pages in fresh contexts (separate cookie jars, like two people). The daemon is a
real ``python -m signald serve --demo`` subprocess on a real SQLite file.

What a user would notice is asserted on the page as drawn (``#state``, ``#members``, ``#messages``,
``#typing``, the call panel); ``window.demo`` (the page's own state object) is read only for what
is not drawn as text, such as messages that arrived over the WebRTC data channel.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

CHROMIUM = Path(os.environ.get("SIGNALD_TEST_CHROMIUM", "/usr/bin/chromium"))
READY = re.compile(r"signald ready on (ws://\S+)")
SECRET = "a-browser-test-secret-of-at-least-32-bytes"
WAIT_MS = 10_000

try:
    from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the fixture skips, saying so
    sync_playwright = None


def _missing() -> str | None:
    if sync_playwright is None:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM} (./dev test installs Debian's chromium package)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    reason = _missing()
    if reason is not None:
        if os.environ.get("SIGNALD_TEST_BROWSER") == "require":
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        # --no-sandbox: Chromium's sandbox refuses to run as root (containers, CI). Loopback ICE
        # candidates: the two tabs' WebRTC connection must work on a machine with no other network.
        # A fake camera and microphone, allowed without a prompt: the call carries video and audio
        # beside the data channel, as it would for a person with a webcam.
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--no-sandbox", "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"])
        try:
            yield chromium
        finally:
            chromium.close()


class Daemon:
    """``python -m signald serve --demo`` on one port and one database, stopped and started at will."""

    def __init__(self, where: Path, config_text: str = "") -> None:
        self.where = where
        self.config = where / "signald.toml"
        self.config.write_text(config_text)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = self.where / f"daemon-{self.starts}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALD_")}
        with log.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "signald", "serve", "--demo", "--port", str(self.port), "--db",
                 str(self.where / "signald.db"), "--config", str(self.config)], stderr=stderr, cwd=self.where, env=env)
        deadline = time.monotonic() + 10
        while not (match := READY.search(log.read_text(errors="replace"))):
            assert self.process.poll() is None, f"daemon exited: {log.read_text(errors='replace')}"
            assert time.monotonic() < deadline, f"daemon not ready: {log.read_text(errors='replace')}"
            time.sleep(0.02)
        self.port = int(match.group(1).rsplit(":", 1)[1].strip("/"))

    def stop(self, signum: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                assert self.process.wait(10) == 0 or signum != signal.SIGTERM
            finally:
                if self.process.poll() is None:
                    self.process.kill()
                    self.process.wait()

    def page_url(self, query: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/demo/{query}"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"


@pytest.fixture(scope="module")
def demo_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path_factory.mktemp("demo"))
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[[str], Page]]:
    """Opens ``url`` in a context of its own (another person); closes them all after the test."""
    contexts: list[BrowserContext] = []
    problems: list[str] = []

    def open_page(url: str) -> Page:
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: problems.append(f"{url}: {error}"))
        page.goto(url)
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert problems == [], problems  # an uncaught exception in the page is a bug even if it recovered


def state(page: Page) -> Any:
    return page.evaluate("window.demo.snapshot()")


def expect_messages(page: Page, expected: list[tuple[str, str]]) -> None:
    """The chat as drawn: one list item per message, author and body, in order."""
    items = page.locator("#messages li")
    expect(items).to_have_count(len(expected), timeout=WAIT_MS)
    expect(items).to_have_text([f"{user}{body}" for user, body in expected], timeout=WAIT_MS)


def send(page: Page, body: str) -> None:
    page.fill("#body", body)
    page.press("#body", "Enter")


def test_two_pages_chat_and_see_members_presence_and_typing(
    demo_daemon: Daemon, new_page: Callable[[str], Page]
) -> None:
    alice = new_page(demo_daemon.page_url())  # a person who types their name into the form
    alice.fill("#user", "alice")
    alice.fill("#room", "chat-room")
    alice.click("#connect")
    expect(alice.locator("#state")).to_have_attribute("data-state", "open", timeout=WAIT_MS)
    expect(alice.locator("#login")).to_be_hidden()  # the form gives way to the room
    expect(alice.locator("#app")).to_be_visible()
    bob = new_page(demo_daemon.page_url("?user=bob&room=chat-room"))  # or one who follows a link
    expect(bob.locator("#state")).to_have_attribute("data-state", "open", timeout=WAIT_MS)
    expect(bob.locator("#me")).to_have_text("you are bob")

    for page in (alice, bob):
        expect(page.locator("#members li[data-user=alice]")).to_have_attribute("data-status", "online")
        expect(page.locator("#members li[data-user=bob]")).to_have_attribute("data-status", "online")
    bob.select_option("#presence", "away")
    expect(alice.locator("#members li[data-user=bob]")).to_have_attribute("data-status", "away", timeout=WAIT_MS)

    alice.fill("#body", "hello b")  # typing, not sent yet
    expect(bob.locator("#typing")).to_have_text("alice is typing…", timeout=WAIT_MS)
    expect(bob.locator("#members li[data-user=alice] .is-typing")).to_have_count(1)
    alice.fill("#body", "hello bob")
    alice.press("#body", "Enter")
    expect_messages(bob, [("alice", "hello bob")])
    expect(bob.locator("#typing")).to_have_text("", timeout=WAIT_MS)  # sending ends the typing
    send(bob, "hi alice")
    for page in (alice, bob):
        expect_messages(page, [("alice", "hello bob"), ("bob", "hi alice")])
    assert [m["seq"] for m in state(alice)["messages"]] == [1, 2]


def test_two_pages_place_a_video_call_whose_data_channel_carries_messages(
    demo_daemon: Daemon, new_page: Callable[[str], Page]
) -> None:
    alice = new_page(demo_daemon.page_url("?user=carla&room=call-room"))
    bob = new_page(demo_daemon.page_url("?user=dave&room=call-room"))
    alice.locator("button[data-call=dave]").click(timeout=WAIT_MS)
    expect(bob.locator("#incoming-text")).to_have_text("carla calls (video)", timeout=WAIT_MS)
    bob.click("#answer")
    for page, peer in ((alice, "dave"), (bob, "carla")):  # offer, answer and ICE went through signald
        expect(page.locator("#call")).to_have_attribute("data-status", "connected", timeout=WAIT_MS)
        expect(page.locator("#channel-body")).to_be_enabled(timeout=WAIT_MS)
        assert state(page)["call"]["peer"] == peer
        # The other side's camera is playing here: frames arrived, with a microphone track beside them.
        page.wait_for_function("() => document.getElementById('remote-video').videoWidth > 0", timeout=WAIT_MS)
        kinds = page.evaluate("document.getElementById('remote-video').srcObject.getTracks().map(t => t.kind).sort()")
        assert kinds == ["audio", "video"]
    assert state(alice)["call"]["id"] == state(bob)["call"]["id"]

    alice.fill("#channel-body", "peer to peer, hello")
    alice.press("#channel-body", "Enter")
    expect(bob.locator("#channel-log li.from-peer")).to_have_text(["carla: peer to peer, hello"], timeout=WAIT_MS)
    bob.fill("#channel-body", "and back")
    bob.press("#channel-body", "Enter")
    expect(alice.locator("#channel-log li.from-peer")).to_have_text(["dave: and back"], timeout=WAIT_MS)
    assert bob.evaluate("window.demo.received") == ["peer to peer, hello"]

    alice.click("#hangup")
    expect(bob.locator("#call")).to_have_attribute("data-status", "ended", timeout=WAIT_MS)
    assert state(bob)["call"]["reason"] == "hangup"

    # Without camera and microphone (none, refused, or unticked) the call is the data channel alone.
    alice.uncheck("#media")
    alice.locator("button[data-call=dave]").click(timeout=WAIT_MS)
    expect(bob.locator("#incoming-text")).to_have_text("carla calls (data)", timeout=WAIT_MS)
    bob.click("#answer")
    expect(alice.locator("#channel-body")).to_be_enabled(timeout=WAIT_MS)
    alice.fill("#channel-body", "data only")
    alice.press("#channel-body", "Enter")
    expect(bob.locator("#channel-log li.from-peer")).to_have_text(
        ["carla: peer to peer, hello", "carla: data only"], timeout=WAIT_MS)
    assert bob.evaluate("document.getElementById('remote-video').srcObject") is None


def test_the_pages_stay_exact_across_a_daemon_restart_and_going_offline(
    demo_daemon: Daemon, new_page: Callable[[str], Page]
) -> None:
    alice = new_page(demo_daemon.page_url("?user=erin&room=restart-room"))
    bob = new_page(demo_daemon.page_url("?user=frank&room=restart-room"))
    expect(alice.locator("#members li")).to_have_count(2, timeout=WAIT_MS)
    send(alice, "one")
    expect_messages(bob, [("erin", "one")])
    send(bob, "two")
    expect_messages(alice, [("erin", "one"), ("frank", "two")])

    demo_daemon.stop(signal.SIGTERM)
    for page in (alice, bob):
        expect(page.locator("#state")).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
    send(alice, "three")  # while the daemon is down: held, sent once it is back
    demo_daemon.start()  # the same port and database
    for page in (alice, bob):
        expect(page.locator("#state")).to_have_attribute("data-state", "open", timeout=WAIT_MS)
        expect_messages(page, [("erin", "one"), ("frank", "two"), ("erin", "three")])
    send(bob, "four")
    sent = [("erin", "one"), ("frank", "two"), ("erin", "three"), ("frank", "four")]
    for page in (alice, bob):
        expect_messages(page, sent)  # each once, in order: nothing lost, nothing twice

    # The window going offline drops the connection; what happened meanwhile is resumed (since_rev).
    alice.context.set_offline(True)
    expect(alice.locator("#state")).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
    send(bob, "five")
    expect_messages(bob, [*sent, ("frank", "five")])
    alice.context.set_offline(False)
    expect(alice.locator("#state")).to_have_attribute("data-state", "open", timeout=WAIT_MS)
    expect_messages(alice, [*sent, ("frank", "five")])

    history = _history(demo_daemon, "restart-room")
    for page in (alice, bob):
        shown = state(page)["messages"]
        assert [(m["id"], m["seq"], m["user_id"], m["body"]) for m in shown] == history


def test_a_tab_woken_from_sleep_replaces_a_connection_that_died_meanwhile(
    demo_daemon: Daemon, new_page: Callable[[str], Page]
) -> None:
    page = new_page(demo_daemon.page_url("?user=hana&room=sleep-room"))
    expect(page.locator("#state")).to_have_attribute("data-state", "open", timeout=WAIT_MS)
    send(page, "before the nap")
    expect_messages(page, [("hana", "before the nap")])
    assert demo_daemon.process is not None
    demo_daemon.process.send_signal(signal.SIGSTOP)  # the connection dies without a close frame or FIN
    try:
        # The tab wakes. Headless Chromium fires no page lifecycle events of its own (it never hides
        # or freezes a tab), so the test sends the one Chrome sends to a tab it unfreezes.
        page.evaluate("document.dispatchEvent(new Event('resume'))")
        # Looks alive (no close event), but the client pings once and gives up after 5 s, not 45 s.
        expect(page.locator("#state")).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
    finally:
        demo_daemon.process.send_signal(signal.SIGCONT)
    expect(page.locator("#state")).to_have_attribute("data-state", "open", timeout=WAIT_MS)
    send(page, "after the nap")
    expect_messages(page, [("hana", "before the nap"), ("hana", "after the nap")])


def _history(daemon: Daemon, room: str) -> list[tuple[str, int, str, str]]:
    """The room's history as the server stores it, asked over a raw WebSocket by another user."""
    import trio

    from signald.client.raw import connect

    async def read() -> list[tuple[str, int, str, str]]:
        async with connect(daemon.url, user="auditor") as c:
            await c.request("room.join", {"room": room})
            page = await c.request("chat.history", {"room": room, "limit": 50})
        return [(m["id"], m["seq"], m["user_id"], m["body"]) for m in page["messages"]]

    return trio.run(read)


def test_a_4401_refusal_makes_the_page_get_a_token_and_come_in(
    browser: Browser, tmp_path: Path
) -> None:
    daemon = Daemon(tmp_path, f'[auth]\nmode = "jwt"\njwt_secret = "{SECRET}"\nleeway_s = 0\n')
    daemon.start()
    try:
        expired = jwt.encode({"sub": "gina", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256")
        context = browser.new_context()
        fetched: list[str] = []

        def token_endpoint(route: Any) -> None:  # the page's backend, which knows who is logged in
            fetched.append(route.request.url)
            fresh = jwt.encode({"sub": "gina", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
            route.fulfill(status=200, content_type="text/plain", body=fresh)

        context.route("**/token-for-the-demo", token_endpoint)
        page = context.new_page()
        page.goto(daemon.page_url(f"?token={expired}&token_url=/token-for-the-demo&room=jwt-room"))
        expect(page.locator("#state")).to_have_attribute("data-state", "open", timeout=WAIT_MS)
        expect(page.locator("#me")).to_have_text("you are gina")
        expect(page.locator("#members li[data-user=gina]")).to_have_count(1, timeout=WAIT_MS)
        assert len(fetched) == 1 and page.evaluate("window.demo.tokenFetches") == 1
        log = (tmp_path / "daemon-1.log").read_text()
        assert re.search(r"connection refused.*4401", log), log  # the expired token was refused first
        context.close()
    finally:
        daemon.stop()
