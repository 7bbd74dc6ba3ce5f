"""The GPU proof kit (bench/gpu) on CPU at tiny sizes, so it never rots between GPU runs.

One dry run per module, as a user runs it (``python -m bench.gpu.kit --out DIR --dry-run``): it
starts a real coordinator and agent, trains through MLOC's sft module and as a bare TRL script,
compares them and writes the report. The tests read that report; speed is not asserted (a shared
2-core box says nothing about it), only that both paths trained and every phase answered.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from bench.gpu import pins
from bench.gpu.phases import memory_rows
from bench.gpu.wheels import slim
from tests.prerequisites import missing

# one dry run for the module: under xdist its tests stay on one worker
pytestmark = [pytest.mark.ml, pytest.mark.xdist_group("gpu_kit")]
REPO = Path(__file__).resolve().parents[2]
PHASES = {"model", "start", "sft", "inventory", "qlora", "inference", "full_finetune", "distributed", "warm_starts",
          "memory"}


@pytest.fixture(scope="session")  # once per xdist worker, however its tests interleave
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if importlib.util.find_spec("trl") is None:
        missing("the ML training stack is not installed (make venv-ml)")
    out = tmp_path_factory.mktemp("gpu-kit")
    done = subprocess.run([sys.executable, "-m", "bench.gpu.kit", "--out", str(out / "out"), "--dry-run",
                           "--work", str(out / "work")], cwd=REPO, capture_output=True, text=True, timeout=240)
    report_file = out / "out" / "report.json"
    assert report_file.exists(), f"no report (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    report = json.loads(report_file.read_text())
    failed = {n: p.get("error") for n, p in report["phases"].items() if p["status"] == "failed"}
    assert done.returncode == 0 and not failed, f"failed phases: {failed}\n{done.stderr[-3000:]}"
    return {"report": report, "summary": (out / "out" / "summary.md").read_text()}


def test_dry_run_writes_every_phase_and_says_no_gpu(dry_run: dict[str, Any]) -> None:
    report = dry_run["report"]
    assert report["mode"] == "dry-run" and report["machine"]["cuda"] is False
    assert "no GPU at hand" in report["note"]
    assert set(report["phases"]) == PHASES
    assert report["phases"]["distributed"]["status"] == "skipped"  # FSDP runs on GPUs only
    assert report["phases"]["warm_starts"]["status"] == "not landed"
    for name in ("qlora", "full_finetune"):
        assert (report["phases"][name]["status"], report["phases"][name]["reason"]) == ("skipped", "no CUDA")
    assert report["phases"]["inventory"]["status"] == "skipped"
    assert report["phases"]["inventory"]["gpu_source"] == "none"  # the agent found no GPU and declared none
    assert report["packaging"]["coverage_problems"] == []
    assert "# MLOC GPU kit" in dry_run["summary"] and "MLOC / bare TRL" in dry_run["summary"]


def test_both_paths_trained_the_same_tokens(dry_run: dict[str, Any]) -> None:
    sft = dry_run["report"]["phases"]["sft"]
    assert sft["status"] == "ok"
    for side in (sft["mloc"], sft["bare_trl"]):
        assert side["global_step"] == dry_run["report"]["profile"]["steps"]
        assert side["tokens_per_s"] > 0 and side["train_runtime_s"] > 0
        assert isinstance(side["first_loss"], float) and isinstance(side["final_loss"], float)
        assert side["memory"] is not None and side["memory"]["cuda"] is False  # the callback ran on both sides
    assert sft["mloc"]["num_tokens"] == sft["bare_trl"]["num_tokens"] == sft["expected_tokens"]
    # same model, data, seed and settings: the same first loss, to float noise
    assert sft["mloc"]["first_loss"] == pytest.approx(sft["bare_trl"]["first_loss"], rel=1e-4)
    assert sft["ratio"] == pytest.approx(sft["mloc"]["tokens_per_s"] / sft["bare_trl"]["tokens_per_s"], rel=1e-3)


def test_inference_and_the_memory_rule_answered(dry_run: dict[str, Any]) -> None:
    phases = dry_run["report"]["phases"]
    assert phases["inference"]["status"] == "ok" and phases["inference"]["tokens_per_s"] > 0
    assert phases["inference"]["vllm"]["status"] == "skipped"
    memory = phases["memory"]
    assert memory["status"] == "skipped" and memory["reason"].startswith("no CUDA")
    rows = {r["phase"]: r for r in memory["rows"]}
    assert {"sft", "inference"} <= set(rows)
    assert all(r["predicted_gb"] >= 1 and "derived" in r["rule"] for r in rows.values())


def test_pins_cover_what_the_three_packages_declare() -> None:
    assert pins.coverage_problems() == []
    wanted = {pins.normal(r.split("<")[0].split(">")[0].split("=")[0]) for r in pins.install_requirements()}
    assert {"trl", "datasets", "transformers", "pydantic", "sqlmodel", "aiosqlite", "typer"} <= wanted
    assert "boto3" not in wanted  # the S3 store only


def test_a_pin_that_misses_a_declared_bound_is_reported() -> None:
    stale = tuple(p if p.name != "transformers" else pins.Pin("transformers", "5.17.0", "the machine's")
                  for p in pins.PINS)
    assert any("transformers" in p for p in pins.coverage_problems(pins=stale))


def test_slimming_drops_members_and_keeps_record_in_step(tmp_path: Path) -> None:
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("demo/__init__.py", "x = 1\n")
        zf.writestr("demo/tests/test_demo.py", "assert True\n")
        zf.writestr("demo-1.0.dist-info/METADATA", "Name: demo\nVersion: 1.0\n")
        zf.writestr("demo-1.0.dist-info/RECORD", "demo/__init__.py,,\ndemo/tests/test_demo.py,,\n")
    out = tmp_path / "out" / wheel.name
    out.parent.mkdir()
    cut = slim(wheel, out, ("demo/tests/*",))
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        record = zf.read("demo-1.0.dist-info/RECORD").decode()
    assert cut["files_dropped"] == 1 and "demo/tests/test_demo.py" not in names
    assert "demo/__init__.py,sha256=" in record and "test_demo" not in record


def test_the_memory_rule_is_set_against_what_the_gpu_showed_both_ways() -> None:
    """The GPU branch of the memory phase, from phase records as a GPU run leaves them."""
    rule = "derived: ... (docs/tasks.md#gpu-memory)"
    phases = {
        "sft": {"status": "ok", "resources": {"gpu_memory_gb": 3.0, "gpu_memory_rule": rule},
                "nvml": {"baseline": 512.0, "peak_used_mb": 512.0 + 4096.0}, "memory": {"max_reserved_mb": 3584.0}},
        "inference": {"status": "ok", "resources": {"gpu_memory_gb": 3.0, "gpu_memory_rule": rule},
                      "nvml": {"baseline": 0.0, "peak_used_mb": 1536.0}},
        "qlora": {"status": "skipped", "reason": "no CUDA"},
    }
    memory = memory_rows(phases, {})
    rows = {r["phase"]: r for r in memory["rows"]}
    assert memory["status"] == "ok" and set(rows) == {"sft", "inference"}
    assert rows["sft"]["measured_device_gb"] == 4.0 and rows["sft"]["measured_torch_reserved_gb"] == 3.5
    assert (rows["sft"]["error_gb"], rows["sft"]["direction"]) == (-1.0, "under")
    assert (rows["inference"]["error_gb"], rows["inference"]["direction"]) == (1.5, "over")
    assert (memory["most_over_gb"], memory["most_under_gb"]) == (1.5, -1.0)
    assert rows["sft"]["rule_source"] == "coordinator"
