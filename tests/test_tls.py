"""HTTPS: a coordinator serving a certificate from a CA made here; agents and the CLI verify it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.conftest import A100
from tests.harness import MLOC, Agent, Coordinator, base_env, wait_for
from tests.pki import make_ca, make_server_cert, write_pem


def test_agents_and_cli_verify_the_coordinators_certificate(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca_key, ca = make_ca("MLOC test CA")
    ca_pem = write_pem(ca, pki / "ca.pem")
    cert, key = make_server_cert(ca_key, ca, pki)
    _, other_ca = make_ca("Some other CA")
    other_pem = write_pem(other_ca, pki / "other-ca.pem")

    coord = Coordinator(tmp_path / "run", scheme="https",
                        extra_env={"MLOC_TLS_CERT": str(cert), "MLOC_TLS_KEY": str(key)}).start()
    started: list[Agent] = []
    try:
        assert coord.url.startswith("https://")
        trusted = Agent(coord, "trusted", gpus=[A100], extra_env={"MLOC_CA_BUNDLE": str(ca_pem)}).start()
        started.append(trusted)
        task = coord.submit({"taskType": "command", "command": "echo over tls", "resources": {"gpus": 1}})
        assert coord.wait_state(task["id"], {"succeeded", "failed"})["state"] == "succeeded"
        assert "over tls" in coord.logs(task["id"])

        # no CA bundle (the default trust store) and the wrong CA: both refuse the coordinator
        for name, env in (("untrusting", {}), ("wrong-ca", {"MLOC_CA_BUNDLE": str(other_pem)})):
            agent = Agent(coord, name, gpus=[A100], extra_env=env).start(wait=False)
            started.append(agent)
            wait_for(lambda a=agent: "CERTIFICATE_VERIFY_FAILED" in a.proc.output(), 30,
                     f"agent {name} to refuse the certificate")
        names = {w["name"] for w in coord.workers()}
        assert names == {"trusted"}  # the refusing agents never registered
        for agent in started[1:]:  # and SIGTERM ends their retrying at once (systemctl stop must not hang)
            begun = time.monotonic()
            assert agent.stop(10) == 0 and time.monotonic() - begun < 5

        def mloc(**env: str) -> subprocess.CompletedProcess[str]:
            e = base_env(MLOC_COORDINATOR_URL=coord.url, MLOC_TOKEN=coord.admin_token, **env)
            return subprocess.run([*MLOC, "tasks"], env=e, capture_output=True, text=True, timeout=60)

        assert mloc(MLOC_CA_BUNDLE=str(ca_pem)).returncode == 0
        refused = mloc()
        assert refused.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr + refused.stdout
    finally:
        for agent in started:
            agent.stop(10)
        coord.stop()
