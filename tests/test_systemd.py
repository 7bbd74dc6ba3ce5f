"""The systemd units: systemd-analyze verify passes, their hardening stays at its level, and the
agent's stop is the drain the unit's comments promise."""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

import pytest

from tests.prerequisites import missing
from tests.systemd_verify import ANALYZE, verify

UNITS = Path(__file__).resolve().parents[1] / "systemd"


@pytest.fixture
def systemd_analyze() -> None:
    if ANALYZE is None:
        missing("systemd-analyze is not installed (apt-get install systemd)")


needs_systemd = pytest.mark.usefixtures("systemd_analyze")


def service(name: str) -> dict[str, list[str]]:
    """[Service] as key -> every value (keys repeat in unit files)."""
    out: dict[str, list[str]] = {}
    section = None
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@needs_systemd
@pytest.mark.parametrize("unit", ["mloc-coordinator.service", "mloc-agent.service"])
def test_unit_passes_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    assert verify(UNITS / unit, tmp_path) == ""


@needs_systemd
@pytest.mark.parametrize(("unit", "most"), [("mloc-coordinator.service", 2.5), ("mloc-agent.service", 4.5)])
def test_unit_hardening_keeps_its_exposure_level(unit: str, most: float, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system" / unit).write_text((UNITS / unit).read_text())
    out = subprocess.run([ANALYZE, "security", "--offline=yes", f"--root={root}", unit], capture_output=True,
                         text=True, timeout=120).stdout
    level = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", out).group(1))
    assert level <= most, out[-3000:]


def test_agent_unit_drains_and_still_reaches_the_gpus() -> None:
    s = service("mloc-agent.service")
    assert s["KillMode"] == ["mixed"] and s["KillSignal"] == ["SIGTERM"]  # SIGTERM to the agent only: it drains
    minutes = re.fullmatch(r"(\d+)min", s["TimeoutStopSec"][0])
    assert minutes and int(minutes.group(1)) >= 5  # long enough for running tasks to finish and report
    assert "PrivateDevices" not in s  # it would hide /dev/nvidia*
    assert {"char-nvidia-frontend rw", "char-nvidia-uvm rw"} <= set(s["DeviceAllow"])
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
                       ("ProtectHome", "yes")):
        assert s[key] == [value], key
    assert s["ReadWritePaths"] == ["/var/lib/mloc/agent"] and s["EnvironmentFile"] == ["/etc/mloc/agent.env"]
    assert s["Restart"] == ["always"]
    env = " ".join(s["Environment"])
    assert "MLOC_DATA_DIR=/var/lib/mloc/agent" in env and "HOME=/var/lib/mloc/agent" in env


def test_example_env_files_are_valid_assignments() -> None:
    for name in ("agent.env.example", "coordinator.env.example"):
        parser = configparser.ConfigParser()
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        lines = [ln for ln in (UNITS / name).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        parser.read_string("[env]\n" + "\n".join(lines))
        assert all(k.startswith("MLOC_") for k in parser["env"]), name
