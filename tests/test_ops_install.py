"""The shipped install files (issue 11, item 6): the sample config shows
every key of the config schema with its default, and the systemd unit
passes `systemd-analyze verify` with the paths the README's install makes."""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
import shutil
import socket
import subprocess
import tomllib
import typing
from pathlib import Path

import pytest

from exmaild.config import Config, load_config, parse_listen

from .daemon import Daemon, write_config

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "conf" / "exmaild.toml"
UNIT = REPO / "systemd" / "exmaild.service"
README = REPO / "README.md"


def _schema() -> dict[str, list[dataclasses.Field]]:
    """Every section of Config and its keys, walked from the dataclasses."""
    hints = typing.get_type_hints(Config)
    out = {}
    for f in dataclasses.fields(Config):
        if f.metadata.get("internal"):
            continue
        out[f.name] = [g for g in dataclasses.fields(hints[f.name])
                       if not g.metadata.get("internal")]
    return out


def _normal(section: str, value: typing.Any) -> typing.Any:
    if isinstance(value, tuple | list):
        return [_normal(section, v) for v in value]
    if section == "listen" and isinstance(value, str | int):
        return parse_listen(str(value))
    return value


def test_sample_config_shows_every_key_with_its_default() -> None:
    text = SAMPLE.read_text()
    table = tomllib.loads(text)
    load_config(str(SAMPLE))  # valid, and no key the schema does not know
    missing, wrong = [], []
    for section, fields in _schema().items():
        sample = table.get(section, {})
        for f in fields:
            if f.default is dataclasses.MISSING:
                # Computed at run time (the FQDN): shown commented out.
                if not re.search(rf"(?m)^# {f.name} = ", text):
                    missing.append(f"{section}.{f.name} (commented)")
                continue
            if f.name not in sample:
                missing.append(f"{section}.{f.name}")
            elif _normal(section, sample[f.name]) != _normal(section, f.default):
                wrong.append(f"{section}.{f.name}: {sample[f.name]!r} != {f.default!r}")
    assert not missing, f"keys missing from {SAMPLE.name}: {missing}"
    assert not wrong, f"values that are not the default in {SAMPLE.name}: {wrong}"


def test_readme_install_makes_what_the_unit_uses() -> None:
    unit = UNIT.read_text()
    readme = README.read_text()
    exec_start = re.search(r"(?m)^ExecStart=(\S+) .*--config (\S+)", unit)
    assert exec_start is not None
    binary, config = exec_start.groups()
    venv = binary.removesuffix("/bin/twistd")
    assert f"python3 -m venv {venv}" in readme
    assert f"{config}" in readme and 'data = "/var/lib/exmaild"' in readme
    assert "useradd --system" in readme and "exmaild" in readme
    assert re.search(r"(?m)^User=exmaild$", unit) and "StateDirectory=exmaild" in unit
    # The least privilege that binds ports below 1024.
    assert re.search(r"(?m)^NoNewPrivileges=yes$", unit)
    assert re.search(r"(?m)^CapabilityBoundingSet=CAP_NET_BIND_SERVICE$", unit)
    assert re.search(r"(?m)^AmbientCapabilities=CAP_NET_BIND_SERVICE$", unit)
    for port in (25, 465, 587, 993, 995, 110, 143):
        assert f":{port}\"" in readme, port


SYSTEM_UNITS = next((p for p in (Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))
                     if (p / "sysinit.target").exists()), None)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian package systemd)")
@pytest.mark.skipif(SYSTEM_UNITS is None, reason="no systemd unit directory with sysinit.target")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    # An alternate root laid out as the README's install leaves the machine:
    # the system's own units, the unit file, and twistd in the README's venv
    # (so the unit must name the path the install makes).
    root = tmp_path / "root"
    assert SYSTEM_UNITS is not None
    shutil.copytree(SYSTEM_UNITS, root / "lib" / "systemd" / "system", symlinks=True)
    venv = re.search(r"(?m)^\s+python3 -m venv (/\S+)$", README.read_text())
    assert venv is not None, "the README's production install makes no venv"
    twistd = root / venv.group(1).lstrip("/") / "bin" / "twistd"
    twistd.parent.mkdir(parents=True)
    twistd.write_text("#!/bin/sh\n")
    twistd.chmod(0o755)
    kill = root / "bin" / "kill"  # the unit's ExecReload
    kill.parent.mkdir(parents=True, exist_ok=True)
    kill.write_text("#!/bin/sh\n")
    kill.chmod(0o755)
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc" / "systemd" / "system" / UNIT.name)
    r = subprocess.run(["systemd-analyze", "verify", f"--root={root}", UNIT.name],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def _free_privileged_port() -> int:
    for port in range(700, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the daemon with fewer capabilities")
def test_net_bind_service_is_the_one_capability_needed(tmp_path: Path) -> None:
    """What the unit grants (no new privileges, bounding set CAP_NET_BIND_SERVICE)
    binds a port below 1024; without it, the daemon says which key in one line."""
    port = _free_privileged_port()
    config, ports = write_config(tmp_path)
    config.write_text(config.read_text().replace(f'smtp = "127.0.0.1:{ports["smtp"]}"',
                                                 f'smtp = "127.0.0.1:{port}"'))
    setpriv = ["setpriv", "--no-new-privs", "--inh-caps=-all"]
    r = subprocess.run(
        [*setpriv, "--bounding-set=-all", "python3", "-c", "0"], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {r.stderr!r}")
    d = Daemon(config, ports, tmp_path)
    with pytest.raises(RuntimeError) as e:
        d.start(60, wrapper=[*setpriv, "--bounding-set=-all"])
    assert f"listen.smtp: no permission to bind 127.0.0.1:{port}" in str(e.value)
    assert "CAP_NET_BIND_SERVICE" in str(e.value) and "Traceback" not in str(e.value)
    assert not (tmp_path / "var").exists()
    d = Daemon(config, ports, tmp_path)
    d.start(60, wrapper=[*setpriv, "--bounding-set=-all,+net_bind_service"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            assert c.recv(100).startswith(b"220 ")
    finally:
        d.stop()


def test_setup_cfg_ships_every_package() -> None:
    """`pip install .` (the production install) installs every exmaild
    package: the tests import the checkout, so a missing one shows only there."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(REPO).parts)
             for p in (REPO / "exmaild").rglob("__init__.py")}
    assert found - listed == set()

