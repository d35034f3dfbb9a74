"""The chat rules of the history, as pure decisions both stores share.

Each store reads the facts of a message (:class:`Facts`) with its own SQL and asks these
functions what is allowed; they raise :class:`~signald.errors.SignalError` (which rolls the
operation back alone) or return what to do. Nothing here touches a database.

Semantics chosen where the protocol is silent
---------------------------------------------
- ``seq`` is assigned when the message is stored: gap-free per room at assignment time, never
  reused after hard deletes, retention or a crash (each store says how it keeps that).
- Message ids are 24 hex digits: 12 of creation time in milliseconds, 12 random (:func:`new_id`).
- ``send`` with a ``parent_id`` that is not a stored message of the same room: ``NOT_FOUND``.
  A retry (same user, room and ``client_msg_id``) returns the original message, folded, with
  ``created=False`` and no ``on_commit``; if the original was hard-deleted meanwhile: ``CONFLICT``
  (never silently re-created).
- ``edit``: author only (``FORBIDDEN``); unknown or hard-deleted: ``NOT_FOUND``; soft-deleted or
  redacted: ``CONFLICT`` (an author cannot undo a moderator's redaction by editing).
- ``delete``: author or moderator; a soft delete empties ``body``, ``attachments`` and
  ``reactions`` and sets ``deleted_at`` (:data:`SOFT_DELETED_BODY`); repeating it returns the first
  ``deleted_at`` and changes nothing.
- ``redact``: sets ``body`` to the mask, empties ``attachments`` (the content being removed may be
  the attachment), keeps reactions, sets ``redacted``; a soft-deleted message: ``CONFLICT``.
- ``react``: ``add`` on a soft-deleted message is ``CONFLICT``; reactions map each reaction to its
  users in the order they reacted; keys are ordered by their earliest current reaction.
- ``mark_read`` never moves a receipt backwards; ``unread`` counts not-deleted messages above it.
- Every change to a room's history takes the room's next revision and stores it on the message:
  a send, an edit, a soft delete, a redaction, a reaction that changed the set. A hard delete
  stores it on the message's tombstone. Read receipts, idempotent retries, repeated soft deletes
  and reactions already in place take none.
"""

from __future__ import annotations

import math
import os
from typing import Final, NamedTuple

from signald.errors import SignalError
from signald.protocol import DeleteMode, ReactionAction

__all__ = [
    "EMPTY_ATTACHMENTS", "SOFT_DELETED_BODY", "Deleted", "Facts", "check_action", "check_delete",
    "check_delete_mode", "check_edit", "check_in_room", "check_limit", "check_parent", "check_react",
    "check_receipt", "check_redact", "check_retry", "is_repeat_delete", "new_id", "new_ids",
]

SOFT_DELETED_BODY: Final = ""
"""What a soft delete leaves of the body (and it empties attachments and reactions)."""
EMPTY_ATTACHMENTS: Final = "[]"
"""Attachments as stored (JSON) once a soft delete or a redaction removed them."""


class Deleted(NamedTuple):
    """Result of ``delete``; ``rev`` that of the deletion (for a repeated soft delete, the
    message's current one)."""

    room: str
    deleted_at: str
    rev: int


class Facts(NamedTuple):
    """What the rules need to know of a stored message."""

    room: str
    seq: int
    user_id: str
    deleted_at: str | None
    redacted: bool
    rev: int
    created_ts: float


def new_id(now: float) -> str:
    """A new message id: creation time in milliseconds (48 bits), then 48 random bits, in hex."""
    return f"{math.floor(now * 1000) & 0xFFFFFFFFFFFF:012x}{os.urandom(6).hex()}"


def new_ids(now: float, count: int) -> list[str]:
    """``count`` new message ids of the same time (:func:`new_id`), from one read of randomness."""
    stamp = f"{math.floor(now * 1000) & 0xFFFFFFFFFFFF:012x}"
    random = os.urandom(6 * count).hex()
    return [stamp + random[12 * i:12 * i + 12] for i in range(count)]


def check_limit(limit: int, where: str = "`$.data.limit`") -> None:
    """A page holds at least one message."""
    if limit < 1:
        raise SignalError("INVALID_PAYLOAD", f"{where} must be >= 1")


def check_delete_mode(mode: str) -> None:
    """A delete is soft or hard."""
    if mode not in ("soft", "hard"):
        raise SignalError("INVALID_PAYLOAD", "`$.data.mode` must be 'soft' or 'hard'")


def check_action(action: str) -> None:
    """A reaction is added or removed."""
    if action not in ("add", "remove"):
        raise SignalError("INVALID_PAYLOAD", "`$.data.action` must be 'add' or 'remove'")


def check_text(**fields: str | None) -> None:
    """Stored text must not contain U+0000: PostgreSQL cannot store it, and both stores answer alike.

    ``INVALID_PAYLOAD`` naming the field (``$.data.body``); checked before anything else is read.
    """
    for name, value in fields.items():
        if value is not None and "\x00" in value:
            raise SignalError("INVALID_PAYLOAD", f"`$.data.{name}` must not contain NUL (U+0000)")


def check_retry(original_exists: bool) -> None:
    """A retried ``client_msg_id`` whose message was hard-deleted is never re-created."""
    if not original_exists:
        raise SignalError("CONFLICT", "the message sent with this client_msg_id was deleted")


def check_parent(parent_id: str, parent_room: str | None, room: str) -> None:
    """A reply's parent must be a stored message of the same room."""
    if parent_room != room:
        raise SignalError("NOT_FOUND", f"parent message {parent_id!r} not found in room {room!r}")


def _found(message_id: str, facts: Facts | None) -> Facts:
    if facts is None:
        raise SignalError("NOT_FOUND", f"message {message_id!r} not found")
    return facts


def check_edit(message_id: str, facts: Facts | None, user_id: str) -> Facts:
    """Only the author edits, and never a deleted or redacted message."""
    facts = _found(message_id, facts)
    if facts.user_id != user_id:
        raise SignalError("FORBIDDEN", "only the author can edit a message")
    if facts.deleted_at is not None:
        raise SignalError("CONFLICT", "the message was deleted")
    if facts.redacted:
        raise SignalError("CONFLICT", "the message was redacted")
    return facts


def check_delete(message_id: str, facts: Facts | None, user_id: str, moderator: bool) -> Facts:
    """The author or a moderator deletes; see :func:`is_repeat_delete` for a soft delete again."""
    facts = _found(message_id, facts)
    if facts.user_id != user_id and not moderator:
        raise SignalError("FORBIDDEN", "only the author or a moderator can delete a message")
    return facts


def is_repeat_delete(facts: Facts, mode: DeleteMode) -> bool:
    """A soft delete of a soft-deleted message changes nothing (and keeps the first ``deleted_at``)."""
    return mode == "soft" and facts.deleted_at is not None


def check_redact(message_id: str, facts: Facts | None) -> Facts:
    """A soft-deleted message has nothing left to redact."""
    facts = _found(message_id, facts)
    if facts.deleted_at is not None:
        raise SignalError("CONFLICT", "the message was deleted")
    return facts


def check_in_room(message_id: str, facts: Facts | None, room: str) -> Facts:
    """Reactions and receipts name the room: the message must be in it."""
    if facts is None or facts.room != room:
        raise SignalError("NOT_FOUND", f"message {message_id!r} not found in room {room!r}")
    return facts


def check_react(message_id: str, facts: Facts | None, room: str, action: ReactionAction) -> Facts:
    """A reaction names a message of the room; nobody adds one to a deleted message."""
    facts = check_in_room(message_id, facts, room)
    if action == "add" and facts.deleted_at is not None:
        raise SignalError("CONFLICT", "the message was deleted")
    return facts


def check_receipt(message_id: str, facts: Facts | None, room: str) -> Facts:
    """A read receipt names a message of the room."""
    return check_in_room(message_id, facts, room)
