"""Side-by-side benchmarks of signald against python-socketio and a bare ``websockets`` server.

Run with ``python -m bench`` (or ``./dev bench``); see ``docs/benchmarks.md`` and ``python -m bench --help``.
Nothing here is imported by the daemon; its dependencies come from the ``bench`` extra.
"""
