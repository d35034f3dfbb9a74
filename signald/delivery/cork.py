"""Corks: hold an outbox's direct writes back while a batch of events is delivered, then write each
connection's share at once (:class:`Cork`), also for the events of one Trio scheduler pass
(:class:`BatchCork`). :class:`signald.delivery.outbox.Outbox` is what they hold.
"""

from __future__ import annotations

from typing import Final, Protocol

import trio


class Corked(Protocol):
    """An outbox that collected frames under the cork (:class:`signald.delivery.outbox.Outbox`)."""

    def uncork(self) -> None:
        """Write what the cork held back."""
        ...


CORK_FLUSH: Final = 64  # frames one connection collects under a cork before they are written anyway


class Cork:
    """Holds direct writes back while a batch of events is delivered, then writes each connection's
    share at once: ``with cork: ...``.

    A committed batch of chat messages delivers several frames to every member of a room; under a
    cork each member gets them in one ``write`` instead of one per frame. Nothing waits longer than
    the ``with`` block (or :data:`CORK_FLUSH` frames). Corks nest; the outermost one writes.
    """

    __slots__ = ("depth", "held")

    def __init__(self) -> None:
        self.depth = 0
        self.held: list[Corked] = []

    def __enter__(self) -> Cork:
        self.depth += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.depth -= 1
        if self.depth == 0 and self.held:
            held, self.held = self.held, []
            for outbox in held:
                outbox.uncork()


class BatchCork:
    """Holds ``cork`` from the first :meth:`hold` until the tasks Trio runs in the same pass have
    run: then :meth:`run` (a task of the hub) lets go, and each connection gets one write for what
    they delivered.

    Why: a reconnect storm brings many joins and leaves within one scheduler pass (the history
    reads of a batch wake their joiners together), and each of them sends a ``member.*`` event to
    every member of the room: written one by one that is a write per member per join. The bytes
    and their order per connection are the same either way; what waits is at most one pass.
    """

    __slots__ = ("_held", "_task", "cork")

    def __init__(self, cork: Cork) -> None:
        self.cork = cork
        self._held = False
        self._task: trio.lowlevel.Task | None = None  # run(), parked until a hold

    def hold(self) -> None:
        """Hold the cork until the current scheduler pass is over (no-op unless :meth:`run` runs)."""
        task = self._task
        if self._held or task is None:
            return
        self._held = True
        self.cork.__enter__()
        self._task = None
        trio.lowlevel.reschedule(task)

    async def run(self) -> None:
        """Let go of the cork one pass after each hold; lets go on the way out too."""
        try:
            while True:
                self._task = trio.lowlevel.current_task()

                def abort(_: object) -> trio.lowlevel.Abort:
                    self._task = None
                    return trio.lowlevel.Abort.SUCCEEDED

                await trio.lowlevel.wait_task_rescheduled(abort)
                self._release()
        finally:
            self._task = None
            self._release()

    def _release(self) -> None:
        if self._held:
            self._held = False
            self.cork.__exit__(None, None, None)
