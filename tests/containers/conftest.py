"""The container tests: podman on this machine, images built before pytest (tests/setup/containers.sh).

They skip with a reason only where no container runtime can run at all (and fail instead under
make test, which builds everything first). All of them share one xdist worker, one at a time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.prerequisites import missing

COORDINATOR_IMAGE = "localhost/mloc-coordinator:test"
AGENT_IMAGE = "localhost/mloc-agent:test"
TASK_IMAGE = "localhost/mloc-test-task:1"
BASE_IMAGE = "localhost/mloc-test-base:bookworm"


def podman_env() -> dict[str, str]:
    """The environment podman runs in: the test containers.conf (runc, cgroupfs) from the set-up."""
    env = dict(os.environ)
    if "CONTAINERS_CONF" not in env:
        conf = Path.home() / ".cache" / "mloc" / "containers" / "containers.conf"
        if conf.exists():
            env["CONTAINERS_CONF"] = str(conf)
    return env


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=podman_env(), check=check,
                          timeout=timeout)


@pytest.fixture(scope="session")
def container_images() -> dict[str, str]:
    """The images the set-up built; a missing one is a missing prerequisite."""
    if shutil.which("podman") is None:
        missing("podman is not installed (make test installs it: tests/setup/system-packages.sh)")
    probe = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False)
    if probe.returncode != 0:
        missing(f"podman cannot run containers here: {probe.stderr.strip()[:300]}")
    for image in (COORDINATOR_IMAGE, AGENT_IMAGE, TASK_IMAGE, BASE_IMAGE):
        if podman("image", "exists", image, check=False).returncode != 0:
            missing(f"image {image} is not built (bash tests/setup/containers.sh builds it)")
    return {"coordinator": COORDINATOR_IMAGE, "agent": AGENT_IMAGE, "task": TASK_IMAGE, "base": BASE_IMAGE}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/containers/" in str(item.fspath):
            item.add_marker(pytest.mark.containers)
            item.add_marker(pytest.mark.xdist_group("containers"))  # one podman user at a time
