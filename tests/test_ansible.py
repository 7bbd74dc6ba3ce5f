"""The Ansible roles: ansible-lint passes, and the agent role applied for real to localhost (into a
temporary prefix) installs an agent that registers over HTTPS and runs a task; a second apply
changes nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import A100
from tests.harness import Coordinator, Proc, wait_for
from tests.pki import make_pki
from tests.systemd_verify import ANALYZE, verify

REPO = Path(__file__).resolve().parents[1]
ANSIBLE = REPO / "ansible"
BIN = Path(sys.executable).parent
needs_ansible = pytest.mark.skipif(not (BIN / "ansible-playbook").exists(),
                                   reason="ansible-core is not installed (make venv installs the dev extras)")


def ansible_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOC_", "ANSIBLE_"))}
    env.update(ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"), ANSIBLE_HOME=str(tmp_path / "ansible-home"),
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


@needs_ansible
def test_ansible_lint_passes(tmp_path: Path) -> None:
    lint = BIN / "ansible-lint"
    out = subprocess.run([str(lint), "--offline", "--nocolor"], cwd=ANSIBLE, env=ansible_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "Profile 'production' was required, and it passed" in out.stdout + out.stderr


def recap(output: str) -> dict[str, int]:
    line = re.search(r"^localhost\s+:\s+(.*)$", output, flags=re.M)
    assert line, output[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line.group(1))}


@needs_ansible
def test_agent_role_installs_an_agent_that_registers_and_runs_a_task(tmp_path: Path) -> None:
    ca, cert, key = make_pki(tmp_path / "pki")
    coord = Coordinator(tmp_path / "run", scheme="https",
                        extra_env={"MLOC_TLS_CERT": str(cert), "MLOC_TLS_KEY": str(key)}).start()
    host = tmp_path / "host"  # the "remote" host's filesystem: everything the role writes is under it
    systemd_running = Path("/run/systemd/system").exists()
    extra = {
        "mloc_home": f"{host}/opt/mloc", "mloc_config_dir": f"{host}/etc/mloc",
        "mloc_unit_dir": f"{host}/etc/systemd/system",
        "mloc_agent_data_dir": f"{host}/var/lib/mloc/agent", "mloc_wheelhouse": str(tmp_path / "wheelhouse"),
        "mloc_source_dir": str(REPO), "mloc_create_user": False, "mloc_user": "root", "mloc_group": "root",
        "mloc_python": sys.executable,
        # never touch a real systemd from a test: where one runs, say so; elsewhere let the role detect it
        "mloc_manage_service": False if systemd_running else "auto",
        "mloc_coordinator_url": coord.url, "mloc_join_token": coord.join_token, "mloc_ca_bundle_src": str(ca),
        "mloc_agent_name": "ansible-box", "mloc_agent_labels": {"installed_by": "ansible"},
        "mloc_agent_declared_gpus": [A100],
    }
    (tmp_path / "vars.json").write_text(json.dumps(extra))
    (tmp_path / "inventory.yml").write_text(json.dumps({"agents": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    argv = [str(BIN / "ansible-playbook"), "-i", str(tmp_path / "inventory.yml"), "site.yml",
            "-e", f"@{tmp_path / 'vars.json'}"]
    agent: Proc | None = None
    try:
        first = subprocess.run(argv, cwd=ANSIBLE, env=ansible_env(tmp_path), capture_output=True, text=True,
                               timeout=600)
        assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-3000:]
        assert recap(first.stdout)["changed"] > 5
        assert re.search(r"TASK \[mloc_agent : Run the agent under systemd\] \*+\nskipping: \[localhost\]",
                         first.stdout)  # no systemd here: the service steps are skipped
        again = subprocess.run(argv, cwd=ANSIBLE, env=ansible_env(tmp_path), capture_output=True, text=True,
                               timeout=600)
        assert again.returncode == 0, again.stdout[-5000:]
        assert recap(again.stdout)["changed"] == 0, again.stdout[-5000:]

        etc, venv = host / "etc/mloc", host / "opt/mloc/agent"
        assert (etc / "agent.env").stat().st_mode & 0o777 == 0o600
        assert f"MLOC_JOIN_TOKEN={coord.join_token}" in (etc / "agent.env").read_text()
        assert coord.join_token not in first.stdout + again.stdout  # no_log on the secret's task
        where = subprocess.run([str(venv / "bin/python"), "-c", "import mloc_agent; print(mloc_agent.__file__)"],
                               capture_output=True, text=True, check=True).stdout
        assert where.startswith(str(venv))  # installed into its own venv, not the repo's
        units = host / "etc/systemd/system"
        assert (units / "mloc-agent.service").read_text() == (REPO / "systemd/mloc-agent.service").read_text()
        if ANALYZE:
            assert verify(units / "mloc-agent.service", tmp_path / "verify",
                          [units / "mloc-agent.service.d/ansible.conf"]) == ""

        # what the unit would run, started by hand (the launcher the role installs for such hosts)
        agent = Proc([str(venv / "bin/mloc-agent-start")], {"PATH": os.environ["PATH"], "HOME": str(host)},
                     tmp_path / "installed-agent.log")
        agent.start()

        def registered() -> dict | None:
            assert agent.alive(), agent.output()[-3000:]
            return next((w for w in coord.workers() if w["name"] == "ansible-box" and w["connected"]), None)

        info = wait_for(registered, 60, "the installed agent to register")
        assert info["labels"] == {"installed_by": "ansible"} and info["gpus"][0]["name"] == A100["name"]
        task = coord.submit({"taskType": "command", "command": "echo hello from the installed agent",
                             "resources": {"gpus": 1}})
        done = coord.wait_state(task["id"], {"succeeded", "failed"}, timeout=60)
        assert done["state"] == "succeeded" and done["agent"] == "ansible-box"
        assert "hello from the installed agent" in coord.logs(task["id"])
    finally:
        if agent is not None:
            agent.stop(20)
        coord.stop()
