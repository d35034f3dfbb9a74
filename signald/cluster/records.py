"""What this node keeps about itself in Redis, as commands for the writer (:mod:`signald.cluster.writer`).

Every connected device of the node has a :class:`~signald.cluster.wire.ConnRecord` (node, user,
rooms) in the ``conns`` hash, and every user with a device here the status they chose in
``status``: what a node that starts, or that comes back after a broker outage, loads
(:meth:`signald.cluster.nodes.NodeTable.load`). An op this node shares changes its records first
and is published after them, in one batch of the writer (:meth:`NodeRecords.changed_by`,
:meth:`NodeRecords.published`); after an outage they are all written again
(:meth:`NodeRecords.rewritten`); a node that stops takes them out (:meth:`NodeRecords.removed`).
"""

from __future__ import annotations

from signald.app.hub import Hub
from signald.app.replica import Connect, Disconnect, Join, Kick, Leave, Op, SetStatus
from signald.cluster.wire import STATE_ENCODER, ConnRecord, Names, StateEnvelope
from signald.cluster.writer import Command


class NodeRecords:
    """The commands that write, change and remove this node's records."""

    def __init__(self, hub: Hub, names: Names, node_id: str) -> None:
        self.hub, self.names, self.node_id = hub, names, node_id

    def of_conn(self, conn: str) -> Command:
        """``conn``'s record as this node knows it now: its node, user and rooms."""
        session = self.hub.sessions.get(conn)
        user = session.user_id if session is not None else self.hub.rooms.user_of(conn) or ""
        record = ConnRecord(self.node_id, user, sorted(self.hub.rooms.rooms_of(conn)))
        return ("hset", self.names.conns, {conn: STATE_ENCODER.encode(record)})

    def of_user(self, user: str) -> list[Command]:
        """The records of ``user``'s connections on this node."""
        return [self.of_conn(conn) for conn in self.hub.sessions_by_user.get(user, ())]

    def changed_by(self, op: Op) -> list[Command]:
        """What ``op``, shared by this node, changes in its records (written before it is published)."""
        names = self.names
        if isinstance(op, Connect) and self.hub.presence.devices_of(op.user) == {op.conn}:
            # the user's first device anywhere starts afresh: not with a status left by a node that died
            return [self.of_conn(op.conn), ("hset", names.status, {op.user: self.hub.presence.chosen_status(op.user)})]
        if isinstance(op, Connect | Join | Leave):
            return [self.of_conn(op.conn)]
        if isinstance(op, Disconnect):
            commands: list[Command] = [("hdel", names.conns, op.conn)]
            session = self.hub.sessions.get(op.conn)
            if session is not None and not self.hub.presence.is_online(session.user_id):
                commands.append(("hdel", names.status, session.user_id))
            return commands
        if isinstance(op, Kick):
            return self.of_user(op.user)
        if isinstance(op, SetStatus):
            return [("hset", names.status, {op.user: op.status})]
        return []

    def published(self, op: Op) -> Command:
        """``op`` on the state channel, which every node hears."""
        return ("publish", self.names.state, STATE_ENCODER.encode(StateEnvelope(self.node_id, op)))

    def shared(self, ops: list[Op], statuses_gone: list[str] | None = None) -> list[Command]:
        """``ops`` as this node shares them: each one's records, then its publish; first the chosen
        statuses of ``statuses_gone`` out (users whose last device went while no write could say so)."""
        commands: list[Command] = [("hdel", self.names.status, statuses_gone)] if statuses_gone else []
        return commands + [command for op in ops for command in (*self.changed_by(op), self.published(op))]

    def rewritten(self) -> list[Command]:
        """Every record of this node again: its connections and its users' chosen statuses."""
        hub = self.hub
        commands = [self.of_conn(conn) for conn in hub.sessions]
        statuses = {user: hub.presence.chosen_status(user) for user in hub.sessions_by_user}
        if statuses:
            commands.append(("hset", self.names.status, statuses))
        return commands

    def removed(self) -> list[Command]:
        """A clean stop: this node's records out at once (the others need not wait for its TTL)."""
        names, mine = self.names, list(self.hub.sessions)
        commands: list[Command] = [("hdel", names.conns, mine)] if mine else []
        commands.append(("zrem", names.nodes, self.node_id))
        commands.append(("hdel", names.stats, self.node_id))
        return commands
