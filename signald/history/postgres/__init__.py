"""The history store on PostgreSQL (``psycopg`` 3, the optional extra ``signald[postgres]``).

``store`` (the Trio-side API, :class:`~signald.history.postgres.store.PostgresStore`), ``writer``
(the writer thread, group commit, reconnects), ``sql`` (the dialect: connection adapter, how
``seq``/``rev`` are taken, retention) and ``schema`` (migrations under an advisory lock).
"""
