"""Several nodes: the link between signald daemons that share one Redis and one PostgreSQL.

``signald.app.replica`` says what a node shares (state changes as ops, events as frames);
``wire`` how it looks in Redis; ``apply`` how a node applies another node's op;
``redis_replica`` the Redis side (coredis on Trio): writer, reader, heartbeats, snapshots;
``records`` what a node keeps about itself there; ``recovery`` what it does after a broker outage;
``connect`` its client for one Redis or a Sentinel set's primary. Only
``signald.server`` builds it, when ``cluster.broker_url`` is set; nothing here is imported otherwise.
"""
