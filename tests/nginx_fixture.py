"""A private nginx (Debian package) for the tests that put signald behind a proxy.

:func:`nginx` writes a configuration of its own (no daemon, one process, temporary files in the
test's folder) around the ``http`` block content a test gives, starts nginx on a free loopback
port and stops it when the test ends. ``./dev test`` installs nginx when it is missing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from redis_fixture import free_port

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

PREAMBLE = """
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 2048; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{http}
}}
"""


@contextmanager
def nginx(tmp_path: Path, http: Callable[[int], str]) -> Iterator[int]:
    """nginx with ``http(port)`` inside its ``http`` block, listening on ``port``; yields the port."""
    assert NGINX is not None
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(PREAMBLE.format(dir=tmp_path, http=http(port)))
    process = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(200):  # until it listens (it writes nothing when it starts)
            if process.poll() is not None:
                raise AssertionError(f"nginx failed: {process.stderr.read().decode() if process.stderr else ''}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.02)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            process.kill()
            process.wait()
