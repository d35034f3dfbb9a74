"""Per-connection outboxes: direct writes when the socket is idle, the unsent tail first, corks."""

from __future__ import annotations

from collections.abc import Callable

import trio
import trio.testing

from signald.delivery.cork import CORK_FLUSH, BatchCork, Cork
from signald.delivery.frames import Frame
from signald.delivery.outbox import Outbox
from signald.protocol import RoomActiveEvent, RoomData


def socket_taking(room: list[int], wire: list[bytes]) -> Callable[[bytes], int]:
    """A non-blocking write that takes at most ``room[0]`` more bytes (the test sets it) into ``wire``."""
    def write(data: bytes) -> int:
        n = min(len(data), room[0])
        wire.append(data[:n])
        room[0] -= n
        return n
    return write


async def test_direct_writes_when_idle_and_queues_only_the_unsent_tail() -> None:
    wire: list[bytes] = []
    budget = [10**6]
    write = socket_taking(budget, wire)

    box = Outbox(8, binary=False, on_overflow=lambda: None)
    box.direct_write = write
    first, second, third = (Frame(RoomActiveEvent(data=RoomData(room=r))) for r in ("a", "b", "c"))
    assert box.push(first)
    assert wire == [first.wire_text] and len(box) == 0  # written at once, nothing queued
    budget[0] = 5
    assert box.push(second)  # only 5 bytes fit: the tail must go first once the socket drains
    assert box.mid_frame
    assert box.push(third)  # not idle any more: queued behind the tail, never written directly
    box.push_control(b"PONG")  # a control frame keeps its place too
    batch = await box.get_batch()
    assert b"".join(wire) + b"".join(batch) == first.wire_text + second.wire_text + third.wire_text + b"PONG"
    box.close(drop=True)
    box.push_control(b"PING")  # nothing follows a close
    assert await box.get_batch() == []


async def test_a_partly_written_frame_survives_a_dropping_close() -> None:
    box = Outbox(8, binary=False, on_overflow=lambda: None)
    box.direct_write = lambda data: 3
    frame = Frame(RoomActiveEvent(data=RoomData(room="a")))
    box.push(frame)
    box.close(drop=True)
    assert await box.get_batch() == [frame.wire_text[3:]]


def _frames(*rooms: str) -> list[Frame]:
    return [Frame(RoomActiveEvent(data=RoomData(room=r))) for r in rooms]


async def test_a_cork_turns_a_batch_of_frames_into_one_write_per_connection() -> None:
    wires: dict[str, list[bytes]] = {"x": [], "y": []}
    cork = Cork()
    boxes = {}
    for name, wire in wires.items():
        box = Outbox(100, binary=False, on_overflow=lambda: None, cork=cork)
        box.direct_write = lambda data, wire=wire: (wire.append(data), len(data))[1]
        boxes[name] = box
    frames = _frames("a", "b", "c")
    with cork:
        with cork:  # nested: only the outermost exit writes
            for frame in frames:
                for box in boxes.values():
                    assert box.push(frame)
        boxes["x"].push_control(b"PONG")  # a control frame keeps its place behind the held frames
        assert wires == {"x": [], "y": []}  # nothing written while corked
    everything = b"".join(f.wire_text for f in frames)
    assert wires == {"x": [everything + b"PONG"], "y": [everything]}  # one write each, in order
    assert len(boxes["x"]) == 0 and not boxes["x"].mid_frame
    assert boxes["y"].push(frames[0]) and wires["y"][-1] == frames[0].wire_text  # uncorked: direct again


async def test_a_corked_batch_that_does_not_fit_leaves_its_tail_to_the_writer() -> None:
    wire: list[bytes] = []
    cork = Cork()
    box = Outbox(100, binary=False, on_overflow=lambda: None, cork=cork)
    box.direct_write = lambda data: (wire.append(data[:7]), 7)[1]  # the socket takes 7 bytes
    frames = _frames("a", "b")
    with cork:
        for frame in frames:
            box.push(frame)
    assert box.mid_frame
    rest = await box.get_batch()
    assert b"".join(wire) + b"".join(rest) == frames[0].wire_text + frames[1].wire_text


async def test_a_long_corked_batch_is_written_every_cork_flush_frames_not_held_to_overflow() -> None:
    wire: list[bytes] = []
    cork = Cork()
    overflowed: list[bool] = []
    box = Outbox(CORK_FLUSH + 10, binary=False, on_overflow=lambda: overflowed.append(True), cork=cork)
    box.direct_write = lambda data: (wire.append(data), len(data))[1]
    frames = _frames(*(f"r{i}" for i in range(3 * CORK_FLUSH - 1)))
    with cork:
        for frame in frames:
            assert box.push(frame)  # a batch longer than the queue limit must not look like a slow reader
        assert len(wire) == 2  # written in shares of CORK_FLUSH frames
    assert len(wire) == 3 and not overflowed
    assert b"".join(wire) == b"".join(f.wire_text for f in frames)


async def test_a_cork_writes_nothing_for_a_connection_closed_meanwhile() -> None:
    wire: list[bytes] = []
    cork = Cork()
    box = Outbox(100, binary=False, on_overflow=lambda: None, cork=cork)
    box.direct_write = lambda data: (wire.append(data), len(data))[1]
    with cork:
        box.push(_frames("a")[0])
        box.close(drop=True)  # e.g. a slow consumer closed by another push
    assert wire == [] and await box.get_batch() == []


async def test_a_tail_the_writer_could_not_send_goes_out_first() -> None:
    box = Outbox(8, binary=False, on_overflow=lambda: None)
    first, second = _frames("a", "b")
    box.push(first)  # no direct write: queued for the writer
    (batch,) = await box.get_batch()
    box.writing = True
    box.push(second)  # queued behind the batch being written
    box.writing = False
    box.keep_unsent(batch[5:])  # the writer was cancelled after 5 bytes
    assert box.mid_frame
    assert b"".join(await box.get_batch()) == first.wire_text[5:] + second.wire_text


async def test_the_close_path_takes_the_unsent_tail_once() -> None:
    box = Outbox(8, binary=False, on_overflow=lambda: None)
    assert box.take_unsent() == b""
    box.direct_write = lambda data: 3  # the socket takes 3 bytes
    frame = _frames("a")[0]
    box.push(frame)
    box.close(drop=True)
    assert box.take_unsent() == frame.wire_text[3:]  # to be sent ahead of the close frame
    assert box.take_unsent() == b"" and not box.mid_frame and await box.get_batch() == []


async def test_a_batch_cork_holds_what_one_scheduler_pass_delivers_then_writes_it_at_once() -> None:
    wire: list[bytes] = []
    cork = Cork()
    batch = BatchCork(cork)
    box = Outbox(100, binary=False, on_overflow=lambda: None, cork=cork)
    box.direct_write = lambda data: (wire.append(data), len(data))[1]
    frames = _frames("joined-1", "joined-2", "joined-3")
    batch.hold()  # not running: nothing is held, the frame goes out at once
    assert box.push(frames[0]) and wire == [frames[0].wire_text]
    wire.clear()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(batch.run)
        await trio.testing.wait_all_tasks_blocked()

        pushed: list[bytes] = []

        async def joiner(frame: Frame) -> None:  # three joins handled in the same pass (in any order)
            batch.hold()
            assert box.push(frame)
            pushed.append(frame.wire_text)

        for frame in frames:
            nursery.start_soon(joiner, frame)
        await trio.testing.wait_all_tasks_blocked()
        assert wire == [b"".join(pushed)] and len(pushed) == 3  # one write, in order, once the pass is over
        assert box.push(frames[0]) and wire[-1] == frames[0].wire_text  # let go: direct again
        nursery.cancel_scope.cancel()
    assert cork.depth == 0


async def test_an_idle_writer_is_stopped_without_a_cancellation_and_leaves_the_queue_unsent() -> None:
    box = Outbox(100, binary=False, on_overflow=lambda: None)
    assert not box.stop_idle_writer()  # no writer waiting: the caller must cancel it
    batches: list[list[bytes]] = []

    async def writer() -> None:
        batches.append(await box.get_batch())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert box.stop_idle_writer()
    assert batches == [[]]  # returned by itself, nothing to write


async def test_the_writer_starts_only_once_a_frame_has_to_wait() -> None:
    wire: list[bytes] = []
    room = [10**6]  # what the socket takes
    started: list[bool] = []
    write = socket_taking(room, wire)

    box = Outbox(8, binary=False, on_overflow=lambda: None)
    box.attach_writer(write, lambda: started.append(True))
    first, second = (Frame(RoomActiveEvent(data=RoomData(room=r))) for r in ("a", "b"))
    assert box.push(first)
    assert not started  # it fit: no writer needed
    room[0] = 0
    assert box.push(second)
    assert box.push(first)
    assert started == [True]  # once, with the first frame that has to wait
    assert await box.get_batch() == [second.wire_text, first.wire_text]


async def test_frames_queued_before_the_connection_is_up_start_the_writer_at_once() -> None:
    started: list[bool] = []
    box = Outbox(8, binary=False, on_overflow=lambda: None)
    assert box.push(Frame(RoomActiveEvent(data=RoomData(room="a"))))  # no socket yet: queued
    box.attach_writer(lambda data: len(data), lambda: started.append(True))
    assert started == [True]


async def test_stopping_a_writer_that_never_started_ends_direct_writes() -> None:
    wire: list[bytes] = []
    started: list[bool] = []
    box = Outbox(8, binary=False, on_overflow=lambda: None)
    box.attach_writer(lambda data: (wire.append(data), len(data))[1], lambda: started.append(True))
    assert box.stop_writer()  # nothing to cancel
    box.push(Frame(RoomActiveEvent(data=RoomData(room="a"))))
    assert not wire and not started  # after the reader is done, nothing is written nor starts a writer
