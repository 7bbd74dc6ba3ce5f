"""What an agent reports it holds (mloc_agent/model_cache.py): its Hugging Face cache read by
huggingface_hub.scan_cache_dir, mirror copies and its store under the data dir, each with its size,
and its free disk; a poll carries a scan only when it changed."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path

import pytest
from mloc_agent import model_cache
from mloc_agent.model_cache import ModelCache, model_line, scan, spec_hub_model
from mloc_shared.protocol import HeldModel

pytestmark = pytest.mark.timeout(20)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes], repo_type: str = "model") -> None:
    """The layout huggingface_hub downloads into: blobs named by hash, a snapshot of links to them, and
    refs/main naming the snapshot."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


def write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def test_a_scan_lists_the_hub_cache_mirror_copies_and_the_store_with_their_sizes(tmp_path: Path) -> None:
    cache, data = tmp_path / "hf" / "hub", tmp_path / "agent"
    put_in_hub_cache(cache, "org/tiny", {"config.json": b"{}" * 10, "model.safetensors": b"w" * 300})
    put_in_hub_cache(cache, "org/rows", {"train.jsonl": b"r" * 50}, repo_type="dataset")
    write(data / "mirror" / "models" / "org" / "pushed" / "config.json", 40)
    write(data / "mirror" / "models" / "org" / "pushed" / "model.safetensors", 60)
    write(data / "mirror" / "datasets" / "plain-rows" / "train.jsonl", 7)
    write(data / "mirror" / "models" / "org" / "half" / "config.json", 9)  # still downloading: not held yet
    write(data / "mirror" / "models" / "org" / "half" / "model.safetensors.partial", 99)
    (data / "models" / "empty").mkdir(parents=True)
    write(data / "models" / "my-finetune" / "adapter_config.json", 5)
    write(data / "datasets" / "local.jsonl", 11)
    write(data / "work" / "t1-1" / "output" / "model.safetensors", 1000)  # a task's work dir is no store

    found = scan(data, cache)
    assert {(m.where, m.kind, m.id, m.bytes) for m in found.models} == {
        ("hf-cache", "model", "org/tiny", 320), ("hf-cache", "dataset", "org/rows", 50),
        ("mirror", "model", "org/pushed", 100), ("mirror", "dataset", "plain-rows", 7),
        ("store", "model", "my-finetune", 5), ("store", "dataset", "local.jsonl", 11),
    }
    assert 0 < found.disk_free_bytes <= shutil.disk_usage(data).total
    assert found.holds("org/tiny") == "hf-cache" and found.holds("org/pushed") == "mirror"
    assert found.holds("org/rows") is None and found.holds("my-finetune") is None  # a dataset; a store folder


def test_a_cache_or_data_dir_that_is_not_there_holds_nothing(tmp_path: Path) -> None:
    found = scan(tmp_path / "agent", tmp_path / "no-such-cache")
    assert found.models == () and found.disk_free_bytes > 0
    assert scan(tmp_path / "agent", None).models == ()  # no huggingface_hub installed: no hub cache to read


def test_a_repo_with_no_complete_snapshot_is_not_held(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    (cache / "models--org--started" / "blobs").mkdir(parents=True)
    (cache / "models--org--started" / "blobs" / "abc.incomplete").write_bytes(b"x" * 10)
    assert scan(tmp_path / "agent", cache).models == ()


async def test_a_poll_carries_a_scan_until_one_that_carried_it_is_answered(tmp_path: Path) -> None:
    cache, data = tmp_path / "hub", tmp_path / "agent"
    models = ModelCache(data, cache)
    assert await models.refresh() is True
    first = models.unreported()
    assert first is not None and first.models == ()
    models.reported_to_coordinator(first)
    assert models.unreported() is None
    changed = await models.refresh()  # nothing new held; free disk may have moved (other writers)
    assert (models.unreported() is not None) == changed

    put_in_hub_cache(cache, "org/fetched", {"config.json": b"{}"})  # a task fetched a model
    assert await models.refresh() is True
    sent = models.unreported()
    assert sent is not None and [m.id for m in sent.models] == ["org/fetched"]
    assert models.unreported() is sent  # a poll that was dropped before its answer: the next one carries it
    models.reported_to_coordinator(sent)
    assert models.unreported() is None


async def test_a_burst_of_task_ends_costs_two_scans_and_small_disk_moves_are_no_news(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scans: list[Path] = []

    def counted(data_dir: Path, cache_dir: Path | None) -> model_cache.ModelScan:
        scans.append(data_dir)
        return real_scan(data_dir, cache_dir)

    real_scan = model_cache.scan
    monkeypatch.setattr(model_cache, "scan", counted)
    models = ModelCache(tmp_path / "agent", tmp_path / "hub")
    await asyncio.gather(*(models.refresh() for _ in range(10)))
    assert len(scans) == 2  # the first, and one covering the nine asked while it ran
    models.reported_to_coordinator(models.unreported())

    told = models.reported
    assert told is not None
    models.current = model_cache.ModelScan(told.models, told.disk_free_bytes - (1 << 20))  # a task's logs
    assert models.unreported() is None
    models.current = model_cache.ModelScan(told.models, told.disk_free_bytes - (2 << 30))  # a 2 GB checkpoint
    assert models.unreported() is models.current


def test_the_task_log_says_whether_its_hub_model_was_on_the_agent(tmp_path: Path) -> None:
    cache, data = tmp_path / "hub", tmp_path / "agent"
    put_in_hub_cache(cache, "org/tiny", {"config.json": b"{}"})
    found = scan(data, cache)
    hub = {"model": {"source": {"type": "huggingface", "identifier": "org/tiny"}}}
    assert model_line(hub, found) == "[mloc] model org/tiny is on this agent already (hf-cache)\n"
    other = {"model": {"source": {"identifier": "org/other"}}}  # type huggingface is the default
    assert model_line(other, found) == "[mloc] model org/other is not on this agent yet: loading it downloads it\n"
    for no_hub in ({}, {"model": {"source": {"type": "local", "identifier": "/m"}}},
                   {"model": {"source": {"identifier": "./folder"}}}):
        assert spec_hub_model(no_hub) is None and model_line(no_hub, found) is None


def test_the_wire_model_reads_a_newer_agents_values() -> None:
    m = HeldModel.model_validate({"id": "org/x", "kind": "adapter", "bytes": 3, "where": "peer", "extra": 1})
    assert (m.kind, m.where) == ("adapter", "peer")
