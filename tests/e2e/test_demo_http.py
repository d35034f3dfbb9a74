"""``signald serve --demo``: the browser demo's fixed files at ``/demo/`` on the WebSocket port.

Requests are written by hand on a raw TCP stream, so that paths reach the daemon exactly as typed
(an HTTP library would normalise ``..`` away before sending). The installed case (a wheel, where
the files live in ``signald/_demo/``) is checked by building the wheel and serving from it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import trio
from conftest import make_config, start_server

from signald.app.demo import FILES
from signald.cli import build_parser, config_from_args
from signald.server import RunningServer

ROOT = Path(__file__).resolve().parents[2]


async def get(server: RunningServer, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request for ``path``, sent byte for byte as given."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.fixture
async def demo_server(nursery: trio.Nursery, tmp_path: Path) -> RunningServer:
    return await start_server(nursery, make_config(tmp_path, server={"demo": True}))


async def test_the_page_and_the_client_it_imports_are_served_as_they_are_in_the_repository(
    demo_server: RunningServer,
) -> None:
    status, headers, body = await get(demo_server, "/demo/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert body == (ROOT / "examples/web/index.html").read_bytes()
    assert "nosniff" in headers["x-content-type-options"] and "default-src 'self'" in headers["content-security-policy"]
    status, headers, body = await get(demo_server, "/demo/signald.js")
    assert (status, headers["content-type"]) == (200, "text/javascript; charset=utf-8")
    assert body == (ROOT / "clients/js/signald.js").read_bytes()  # the one file, not a copy
    for name in ("demo.js", "style.css", "index.html"):
        status, _, body = await get(demo_server, f"/demo/{name}")
        assert status == 200 and body == (ROOT / "examples/web" / name).read_bytes()
    assert b'from "./signald.js"' in (ROOT / "examples/web/demo.js").read_bytes()
    status, headers, _ = await get(demo_server, "/demo")
    assert (status, headers["location"]) == (308, "/demo/")
    status, headers, body = await get(demo_server, "/demo/signald.js", method="HEAD")
    assert (status, body, headers["content-length"]) == (200, b"", str((ROOT / "clients/js/signald.js").stat().st_size))
    status, headers, _ = await get(demo_server, "/demo/", method="POST")
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    assert (await get(demo_server, "/healthz"))[0] == 200  # the rest of plain HTTP is unchanged
    assert (await get(demo_server, "/elsewhere"))[0] == 426


@pytest.mark.parametrize("path", [
    "/demo/../pyproject.toml", "/demo/..%2fpyproject.toml", "/demo/%2e%2e/README.md", "/demo/%2E%2E%2Fsetup.py",
    "/demo//etc/passwd", "/demo/./index.html", "/demo/index.html/", "/demo/../../../../etc/passwd",
    "/demo/..\\pyproject.toml", "/demo/signald.d.ts", "/demo/web/index.html", "/demo/%00", "/demo/.",
    "/demo/" + "a" * 300,
])
async def test_only_the_fixed_names_are_served_nothing_found_by_walking_paths(
    demo_server: RunningServer, path: str
) -> None:
    status, headers, body = await get(demo_server, path)
    assert status == 404 and headers["content-type"] == "application/json"
    assert b"NOT_FOUND" in body and b"[project]" not in body and b"root:" not in body


async def test_without_demo_every_demo_path_is_404(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery, make_config(tmp_path))
    for path in ("/demo/", "/demo/signald.js", "/demo/index.html", "/demo"):
        status, _, body = await get(server, path)
        assert status == 404 and b"--demo" in body, path


async def test_the_demo_stays_on_the_websocket_port_when_the_api_has_its_own(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # The page's WebSocket goes to the host that served it: the demo belongs with the WebSocket.
    server = await start_server(nursery, make_config(tmp_path, server={"demo": True},
                                                     api={"port": 0, "keys": ["k" * 32]}))
    assert (await get(server, "/demo/"))[0] == 200


def test_the_flag_the_file_and_the_environment_switch_it_on(tmp_path: Path) -> None:
    assert config_from_args(build_parser().parse_args(["serve", "--demo"])).server.demo is True
    assert config_from_args(build_parser().parse_args(["serve"])).server.demo is False
    assert make_config(tmp_path, server={"demo": "true"}).server.demo is True


def test_a_wheel_carries_the_demo_and_serves_it_without_the_repository(tmp_path: Path) -> None:
    """The build copies the page and clients/js/signald.js into signald/_demo/ (setup.py)."""
    source = tmp_path / "src"
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "signald", source / "signald", ignore=shutil.ignore_patterns("__pycache__", "_demo"))
    shutil.copytree(ROOT / "examples/web", source / "examples/web")
    (source / "clients/js").mkdir(parents=True)
    shutil.copy(ROOT / "clients/js/signald.js", source / "clients/js/signald.js")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                            str(source)], capture_output=True, text=True, timeout=120, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("signald-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        shipped = {Path(n).name: archive.read(n) for n in archive.namelist() if n.startswith("signald/_demo/")}
        archive.extractall(tmp_path / "installed")
    assert set(shipped) == set(FILES)
    assert shipped["signald.js"] == (ROOT / "clients/js/signald.js").read_bytes()
    # Imported from the unpacked wheel, far from any checkout: the files come from signald/_demo.
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "installed")}
    script = ("import signald.app.demo as d; pages = d.load_demo(True); "
              f"assert d.__file__.startswith({str(tmp_path / 'installed')!r}), d.__file__; "
              "print(sorted(pages.files), len(pages.files['/demo/signald.js'].body))")
    check = subprocess.run([sys.executable, "-c", script],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=False)
    assert check.returncode == 0, check.stderr
    assert str(len(shipped["signald.js"])) in check.stdout and "'/demo/'" in check.stdout
