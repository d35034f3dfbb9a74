"""``signald history export|stats|migrate``: a history database read (or migrated) from the command line.

Exit status: 0 when done, 2 for a bad ``--url``, a missing SQLite file or a database at another
schema version, 1 when the store cannot be read (or migrated). :mod:`signald.cli` imports this
module only for ``signald history``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import msgspec
import trio

from signald.history.contract import SchemaError, StorageError
from signald.history.export import export as export_messages
from signald.history.factory import make_store
from signald.state.dburl import parse_history_url, sqlite_url


def history(args: argparse.Namespace) -> int:
    """``signald history export|stats|migrate``: the exit status."""
    url = args.url if args.url else sqlite_url(args.db)
    try:
        parsed = parse_history_url(url)
    except ValueError as exc:
        print(f"signald: --url: {exc}", file=sys.stderr)
        return 2
    # sqlite would create a missing file (read-write) or fail vaguely (read-only)
    if parsed.backend == "sqlite" and args.history_command != "migrate" and not os.path.isfile(parsed.target):
        print(f"signald: no history database at {parsed.target}", file=sys.stderr)
        return 2
    where = parsed.target if parsed.backend == "sqlite" else parsed.shown

    async def run() -> None:
        async with make_store(url, read_only=args.history_command != "migrate") as store:
            if args.history_command == "export":
                async for message in export_messages(store, args.room):
                    sys.stdout.write(msgspec.json.encode(message).decode() + "\n")
                return
            stats = await store.stats()
            if args.history_command == "stats":
                sys.stdout.write(json.dumps(dict(stats), indent=2) + "\n")
            else:
                print(f"signald: {where}: schema version {stats['schema_version']}")

    try:
        trio.run(run)
    except SchemaError as exc:
        print(f"signald: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"signald: cannot {'migrate' if args.history_command == 'migrate' else 'read'} {where}: "
              f"{exc.message}", file=sys.stderr)
        return 1
    return 0
