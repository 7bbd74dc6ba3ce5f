"""Push once, train anywhere: an agent in a network namespace whose only route is the coordinator's
network runs the README's SFT flow (configs/sft_mistral_7b.yaml: a hub model and a hub dataset) on
a tiny model and a tiny alpaca-style dataset pushed to the mirror under hub-style ids; the spec
keeps those ids. Once with the coordinator's own store, once with S3 (a moto server beside the
coordinator, which the agent reaches only through presigned URLs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from mloc_shared.api_client import ApiClient
from mloc_shared.mirror_push import push_folder

from tests import netns
from tests.harness import Agent, Coordinator, free_port, wait_for
from tests.ml.conftest import REPO, artifacts, run_to_end

pytestmark = [pytest.mark.ml, pytest.mark.netns, pytest.mark.timeout(600)]
MODEL_ID, DATASET_ID = "mloc-test/tiny-gpt2", "mloc-test/alpaca-tiny"
ROWS = [{"instruction": f"add {i} and {i}", "input": "", "output": f"{i} plus {i} is {2 * i}."} for i in range(12)]


def _unroutable(nat: netns.NatNet) -> None:
    """The agent's LAN reaches the coordinator's network and nothing else: its router has no other route."""
    for address in ("203.0.113.7", "192.0.2.7", "1.1.1.1"):
        probe = subprocess.run(["ip", "-n", nat.router_ns, "route", "get", address], capture_output=True, text=True)
        assert probe.returncode != 0 and "unreachable" in probe.stderr.lower(), (address, probe.stdout)
    hub = subprocess.run([*nat.exec_prefix(nat.agent_ns), "curl", "-s", "-m", "3", "https://huggingface.co"],
                         capture_output=True)
    assert hub.returncode != 0


def _moto_in(nat: netns.NatNet, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([*nat.exec_prefix(nat.coord_ns), sys.executable, "-m", "moto.server", "-H",
                                 netns.COORD_IP, "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://{netns.COORD_IP}:{port}"

    def up() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    wait_for(up, 30, "moto server")
    return proc, url


@pytest.mark.parametrize("store", ["local", "s3"])
def test_an_agent_without_hub_access_trains_the_readme_sft_from_the_mirror(
        store: str, nat: netns.NatNet, tiny_lm: Path, tmp_path: Path) -> None:
    _unroutable(nat)
    moto, extra = None, {}
    if store == "s3":
        import boto3

        moto, url = _moto_in(nat, tmp_path / "moto.log")
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="mloc-mirror")
        extra = {"MLOC_S3_BUCKET": "mloc-mirror", "MLOC_S3_ENDPOINT_URL": url, "MLOC_S3_ACCESS_KEY_ID": "testing",
                 "MLOC_S3_SECRET_ACCESS_KEY": "testing"}
    coord = Coordinator(tmp_path, host=netns.COORD_IP, prefix=nat.exec_prefix(nat.coord_ns), extra_env=extra)
    coord.start()
    # the hub's flags off and an empty cache: the agent must find out for itself that the hub is out of reach
    agent = Agent(coord, "no-hub", prefix=nat.exec_prefix(nat.agent_ns), extra_env={
        "HF_HUB_OFFLINE": "", "HF_DATASETS_OFFLINE": "", "HF_HOME": str(tmp_path / "hf-home")})
    try:
        api = ApiClient(coord.url, coord.admin_token)
        push_folder(api, tiny_lm, "model", MODEL_ID, "main")
        rows = tmp_path / "alpaca-tiny" / "data"
        rows.mkdir(parents=True)
        (rows / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
        push_folder(api, rows.parent, "dataset", DATASET_ID, "main")
        listed = {(m["kind"], m["hub_id"]) for m in coord.http.get("/api/v1/mirror").json()["mirrored"]}
        assert listed == {("model", MODEL_ID), ("dataset", DATASET_ID)}
        agent.start()

        spec = yaml.safe_load((REPO / "configs" / "sft_mistral_7b.yaml").read_text())
        spec["model"]["source"]["identifier"] = MODEL_ID  # the tiny stand-in, in the hub-id form
        spec["model"]["adapter"] = {"type": "lora", "r": 8, "lora_alpha": 16}  # qlora needs a CUDA GPU
        spec["dataset"].update(hub=DATASET_ID, max_samples=8)
        spec["hyperparameters"] = {"max_steps": 3, "learning_rate": 0.005, "per_device_train_batch_size": 4,
                                   "max_length": 64, "logging_steps": 1, "save_steps": 100}
        spec["resources"] = {"gpus": 0}
        done = run_to_end(coord, spec, timeout=300)
        system = coord.logs(done["id"], "system")
        assert f"model {MODEL_ID}@main from the coordinator's mirror (downloaded)" in system, system
        assert f"dataset {DATASET_ID}@main from the coordinator's mirror (downloaded)" in system, system
        assert "[mloc] mirror: mloc-test/tiny-gpt2@main" in system
        assert done["result"]["global_step"] == 3, done["result"]
        assert "adapter/adapter_model.safetensors" in artifacts(coord, done["id"])
        config = coord.http.get(f"/api/v1/tasks/{done['id']}/artifacts/adapter/adapter_config.json",
                                follow_redirects=True)
        assert config.json()["base_model_name_or_path"] == MODEL_ID  # not the agent's folder of the copy
        held = agent.data_dir / "mirror" / "models" / MODEL_ID / "main"
        assert (held / "config.json").read_bytes() == (tiny_lm / "config.json").read_bytes()
    finally:
        agent.stop()
        coord.stop()
        if moto is not None:
            moto.terminate()
            moto.wait(10)
