"""A corpus of hostile and broken input against a real coordinator: every item is refused with a 4xx
whose JSON error names the problem, valid unicode is kept byte-exact, and nothing stored is harmed
(earlier tasks unchanged, the task count grows only by accepted submits, the SQLite file intact).

Tests in this module share one coordinator and run in file order; the last one checks the damage.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import README_SFT_YAML
from tests.harness import Coordinator
from tests.protocol_peer import ProtocolPeer

LIMIT_MB = 1
MiB = 1 << 20


@dataclass
class Target:
    coord: Coordinator
    peer: ProtocolPeer
    baseline: dict[str, dict[str, Any]]  # task id -> its record before the corpus
    total_before: int
    peer_before: int = 0
    created: int = 0  # tasks the corpus itself got accepted
    seen_ids: set[str] = field(default_factory=set)

    def total(self) -> int:
        return self.coord.http.get("/api/v1/tasks", params={"page_size": 1}).json()["total"]

    def submit(self, content: bytes | str, headers: dict[str, Any] | None = None) -> httpx.Response:
        """POST a raw body to /api/v1/tasks and count what it stored."""
        resp = self.coord.http.post("/api/v1/tasks", content=content, headers=headers or {})
        if resp.status_code == 201:
            body = resp.json()
            ids = [t["id"] for t in body["tasks"]] if "tasks" in body else [body["id"]]
            self.created += len(ids)
            self.seen_ids.update(ids)
        return resp


BASELINE = [
    README_SFT_YAML,
    json.dumps({"taskType": "command", "name": "baseline-json", "command": ["echo", "kept"],
                "resources": {"gpus": 2}, "env": {"MODE": "baseline"}, "priority": 7}),
    "taskType: command\nname: \"baseline ✓ 数据 ملف\"\ncommand: \"echo unicode\"\nresources: {gpus: 1}\n",
]
STABLE = ("id", "name", "task_type", "user", "state", "priority", "created_at", "attempts", "max_attempts",
          "spec", "resources", "result", "error")


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    coord = Coordinator(Path(tmp_path_factory.mktemp("bad-input")),
                        extra_env={"MLOC_MAX_BODY_MB": str(LIMIT_MB), "MLOC_LOOPBACK_ADMIN": "false"}).start()
    peer = ProtocolPeer(coord, "corpus-peer")  # no GPUs: never claims the baseline tasks (they need some)
    try:
        baseline = {}
        for body in BASELINE:
            record = coord.submit(body)
            baseline[record["id"]] = coord.task(record["id"])
        total = coord.http.get("/api/v1/tasks", params={"page_size": 1}).json()["total"]
        yield Target(coord, peer, baseline, total, peer.submitted)
    finally:
        peer.close()
        coord.stop()


def refused(resp: httpx.Response, status: int, *words: str, field: str | None = None, line: int | None = None) -> dict:
    """A clear refusal: the status, the JSON envelope, a message naming the problem (and field, line)."""
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    err = resp.json()["error"]
    assert err["code"] and err["message"], err
    text = f"{err['message']} {err.get('hint') or ''}".lower()
    for word in words:
        assert word.lower() in text, (word, err)
    if field is not None:
        assert err.get("field") == field, err
    if line is not None:
        assert err.get("line") == line, err
    return err


FLATTENED = README_SFT_YAML.replace("\n", "")  # what `curl -d @my_task.yaml` sends
ALIASES = b"a: &a [x, x, x, x]\nb: &b [*a, *a, *a, *a]\nc: [*b, *b, *b, *b]\ntaskType: command\n"
UNREADABLE = [  # (id, body, status, words in the message, line)
    ("yaml-unclosed-flow", b"taskType: command\ncommand: [echo, hi\nname: x\n", 400, ("invalid yaml",), None),
    ("yaml-bad-indent", b"taskType: command\n  command: x\n bad: 1\n", 400, ("invalid yaml", "line 2"), 2),
    ("yaml-tab-indent", b"taskType: command\nresources:\n\tgpus: 1\n", 400, ("invalid yaml",), 3),
    ("yaml-flattened-by-curl-d", FLATTENED.encode(), 400, ("single line", "--data-binary"), None),
    ("yaml-aliases", ALIASES, 400, ("aliases",), None),
    ("yaml-python-tag", b"taskType: !!python/object/apply:os.system [true]\n", 400, ("constructor",), 1),
    ("yaml-unhashable-key", b"taskType: x\nhyperparameters: {? [1, 2] : b}\n", 400, ("unhashable",), None),
    ("yaml-two-documents", b"taskType: a\n---\ntaskType: b\n", 400, ("document",), None),
    ("yaml-impossible-date", b"taskType: foo\nhyperparameters: {d: 2024-13-45}\n", 400, ("month",), None),
    ("yaml-5000-digit-int", b"taskType: foo\npriority: 1" + b"0" * 5000 + b"\n", 400, ("digits",), None),
    ("yaml-comment-only", b"# nothing here\n", 400, ("no yaml document",), None),
    ("not-utf8", b"taskType: \xff\xfe\n", 400, ("utf-8",), None),
    ("raw-nul-byte", b"taskType: command\x00\n", 400, ("nul",), None),
    ("empty", b"", 400, ("empty",), None),
    ("only-whitespace", b"  \n\t\n", 400, ("empty",), None),
    ("json-truncated", b'{"taskType": "command", "command": ', 400, ("invalid json", "line 1"), 1),
    ("json-array-truncated", b'[{"taskType": "command"', 400, ("invalid json",), 1),
    ("json-5000-digit-int", b'{"taskType": "command", "priority": 1' + b"0" * 5000 + b"}", 400, ("digits",), None),
    ("json-bulk-empty", b"[]", 400, ("1..5000",), None),
    ("json-deep-100k", b"[" * 100_000 + b"]" * 100_000, 400, ("nests deeper",), None),
    ("json-deep-objects", b'{"a":' * 3000 + b"1" + b"}" * 3000, 400, ("nest",), None),
    ("json-deep-hyperparameters", b'{"taskType": "x", "hyperparameters": ' + b'{"a": ' * 40 + b"1" + b"}" * 41,
     400, ("nests deeper",), None),
    ("yaml-deep-block", b"- " * 3000 + b"x\n", 400, ("nest",), None),
    ("yaml-deep-flow", b"a: " + b"[" * 50_000 + b"]" * 50_000, 400, ("nest",), None),
]


@pytest.mark.parametrize(("body", "status", "words", "line"), [c[1:] for c in UNREADABLE],
                         ids=[c[0] for c in UNREADABLE])
def test_unreadable_task_bodies_are_refused(target: Target, body: bytes, status: int, words: tuple, line: int | None):
    refused(target.submit(body, {"Content-Type": "application/json"}), status, *words, line=line)


WRONG = [  # (id, body, field, words, line)
    ("tasktype-int", {"taskType": 5}, "taskType", ("string",), None),
    ("tasktype-shape", {"taskType": "Fine Tune!"}, "taskType", ("lower-case",), None),
    ("missing-tasktype", {"name": "x"}, "taskType", ("missing",), None),
    ("priority-string", {"taskType": "x", "priority": "high"}, "priority", ("integer",), None),
    ("priority-huge", {"taskType": "x", "priority": 10**30}, "priority", ("1000",), None),
    ("gpus-negative", {"taskType": "x", "resources": {"gpus": -1}}, "resources.gpus", ("greater",), None),
    ("resources-list", {"taskType": "x", "resources": [1]}, "resources", (), None),
    ("retry-zero", {"taskType": "x", "retry": {"max_attempts": 0}}, "retry.max_attempts", (), None),
    ("command-dict", {"taskType": "command", "command": {"a": 1}}, "command", (), None),
    ("command-on-sft", {"taskType": "sft", "command": "rm -rf /"}, "command", ("only allowed",), None),
    ("env-bad-name", {"taskType": "x", "env": {"1BAD": "v"}}, "env", ("variable name",), None),
    ("hyperparameters-string", {"taskType": "x", "hyperparameters": "lr=1"}, "hyperparameters", (), None),
    ("typo-field", {"taskType": "x", "hyperparameter": {}}, "hyperparameter", ("unknown field",), None),
    ("name-too-long", {"taskType": "x", "name": "n" * 201}, "name", ("200",), None),
    ("model-source-type", {"taskType": "sft", "model": {"source": {"type": "ftp", "identifier": "m"}}},
     "model.source.type", (), None),
    ("timeout-infinite", '{"taskType": "x", "timeout_s": 1e999}', "timeout_s", (), None),
    ("not-a-mapping", '"just a string"', None, ("mapping",), None),
    ("null", "null", None, ("mapping",), None),
    ("bulk-bad-second", [{"taskType": "x"}, {"taskType": 5}], "tasks[1].taskType", ("tasks[1]",), None),
    ("yaml-line-named", 'taskType: command\ncommand: "true"\nresources:\n  gpus: lots\n', "resources.gpus",
     ("line 4",), 4),
    ("escaped-nul-in-command", {"taskType": "command", "command": "echo a\u0000b"}, "command", ("nul",), None),
    ("escaped-nul-in-name", {"taskType": "x", "name": "a\u0000"}, "name", ("nul",), None),
    ("nul-in-env-value", {"taskType": "x", "env": {"A": "\u0000"}}, "env.A", ("nul",), None),
    ("yaml-nul-escape", 'taskType: command\ncommand: "a\\0b"\n', "command", ("nul",), 2),
    ("lone-surrogate-hyperparameter", '{"taskType": "x", "hyperparameters": {"tok": "\\ud800"}}',
     "hyperparameters.tok", ("surrogate",), None),
    ("lone-surrogate-in-argv", '{"taskType": "command", "command": ["echo", "\\udfff"]}', "command.1",
     ("surrogate",), None),
]


@pytest.mark.parametrize(("body", "field", "words", "line"), [c[1:] for c in WRONG], ids=[c[0] for c in WRONG])
def test_wrong_fields_are_refused_naming_the_field(target: Target, body: Any, field: str | None, words: tuple,
                                                    line: int | None) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    refused(target.submit(content), 422, *words, field=field, line=line)


UNICODE = {  # intentionally confusable text: ruff's RUF001 is off for these lines
    "emoji-cjk-rtl": {"taskType": "command", "name": "🚀 训练 – ملخص التدريب 👩🏽‍🔬",  # noqa: RUF001
                      "command": "echo 'héllo wörld 🌍'"},
    "bidi-override-and-combining": {"taskType": "command", "name": "\u202egnp.exe Z\u0351\u0352alg\u0303o",
                                    "command": ["printf", "%s", "שלום עולם"], "env": {"GREETING": "नमस्ते"}},
    "astral-and-zero-width": {"taskType": "command", "name": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢\u200b\u2060", "command": "true",  # noqa: RUF001
                              "hyperparameters": {"🔑": "値"}},
}


@pytest.mark.parametrize("spec", UNICODE.values(), ids=UNICODE.keys())
@pytest.mark.parametrize("as_yaml", [False, True], ids=["json", "yaml"])
def test_valid_unicode_is_accepted_and_kept_exactly(target: Target, spec: dict, as_yaml: bool) -> None:
    body = json.dumps(spec, ensure_ascii=False)
    if as_yaml:  # block YAML, UTF-8, with a byte order mark in front
        body = "\ufeff" + "".join(f"{k}: {json.dumps(v, ensure_ascii=False)}\n" for k, v in spec.items())
    resp = target.submit(body.encode())
    assert resp.status_code == 201, resp.text
    stored = target.coord.task(resp.json()["id"])
    assert stored["name"] == spec["name"] and stored["spec"]["command"] == spec["command"]
    assert stored["spec"].get("env", {}) == spec.get("env", {})
    assert stored["spec"].get("hyperparameters", {}) == spec.get("hyperparameters", {})


def test_huge_bodies_get_413_with_the_json_envelope(target: Target) -> None:
    big = b"taskType: command\ncommand: " + b"x" * (LIMIT_MB * MiB + 1024) + b"\n"
    refused(target.submit(big), 413, f"limit of {LIMIT_MB * MiB} bytes", "max_body_mb")
    refused(target.coord.http.post("/api/v1/tokens", content=b"{" + b" " * (2 * MiB) + b"}"), 413, "limit")
    lease = target.peer.alive()
    logs = {"epoch": lease.epoch, "chunks": [{"seq": 0, "data": "y" * (2 * MiB)}]}
    refused(target.peer.http.post(f"/api/v1/leases/{lease.task_id}/logs", json=logs), 413, "limit")
    bulk = json.dumps([{"taskType": "x"}] * 5001)  # under the byte limit, over the task limit
    refused(target.submit(bulk), 400, "1..5000")


TRAVERSAL = ["../../etc/passwd", "/abs/path", "a/../../b", "a\\b", "nul\x00byte", "", "a//b", ".", "..", "./a",
             "a/.", "a/..", "line\nbreak", "tab\there", "x" * 513, "../" * 100 + "x"]


@pytest.mark.parametrize("name", TRAVERSAL, ids=[repr(n)[:30] for n in TRAVERSAL])
def test_artifact_names_that_escape_are_refused(target: Target, name: str) -> None:
    lease = target.peer.alive()
    resp = target.peer.http.post(f"/api/v1/leases/{lease.task_id}/uploads",
                                 json={"epoch": lease.epoch, "name": name, "size": 1})
    refused(resp, 422, "name", field="name")


def test_odd_but_safe_artifact_names_stay_inside_the_store(target: Target) -> None:
    lease = target.peer.alive()
    names = ("ünïcødé/文件 📄.txt", "..hidden/..x", "%2e%2e/%2fetc", "a b/ c", "what?#.txt")
    for name in names:
        target.peer.upload(lease, name, name.encode())
    listing = target.coord.http.get(f"/api/v1/tasks/{lease.task_id}/artifacts").json()["artifacts"]
    assert sorted(a["name"] for a in listing) == sorted(names)
    for artifact in listing:  # each listed URL downloads exactly that file
        got = target.coord.http.get(artifact["url"], follow_redirects=True)
        assert got.status_code == 200 and got.content == artifact["name"].encode(), (artifact, got.status_code)
    root = (target.coord.data_dir / "artifacts").resolve()
    files = [p for p in target.coord.data_dir.rglob("*") if p.is_file()]
    assert all(p.resolve().is_relative_to(root) or p.parent == target.coord.data_dir for p in files), files
    for url in (f"/api/v1/tasks/{lease.task_id}/artifacts/..%2F..%2F..%2Fblob.key",
                f"/api/v1/tasks/{lease.task_id}/artifacts/%2e%2e/%2e%2e/mloc.db"):
        refused(target.coord.http.get(url), 404, "no artifact")
    refused(target.coord.http.get("/api/v1/blobs/..%2F..%2Fblob.key", params={"exp": "9999999999", "sig": "0"}),
            403, "signature")


BAD_QUERIES = [  # (path, params, field)
    ("/api/v1/tasks", {"page": "-1"}, "page"), ("/api/v1/tasks", {"page": "0"}, "page"),
    ("/api/v1/tasks", {"page": "abc"}, "page"), ("/api/v1/tasks", {"page": "1e3"}, "page"),
    ("/api/v1/tasks", {"page": "1" + "0" * 30}, "page"), ("/api/v1/tasks", {"page_size": str(10**9)}, "page_size"),
    ("/api/v1/tasks", {"page_size": "0"}, "page_size"), ("/api/v1/tasks", {"state": "bogus"}, "state"),
    ("/api/v1/tasks", {"state": "QUEUED"}, "state"), ("/api/v1/tasks", {"state": "queued,bogus"}, "state"),
    ("/api/v1/stats", {"start_date": "yesterday"}, "start_date"), ("/api/v1/stats", {"end_date": "2024-13-01"},
                                                                     "end_date"),
    ("{task}/logs", {"after_seq": "x"}, "after_seq"), ("{task}/logs", {"attempt": "0"}, "attempt"),
    ("{task}/logs", {"attempt": "-5"}, "attempt"),
]


@pytest.mark.parametrize(("path", "params", "field"), BAD_QUERIES, ids=[f"{q[2]}={next(iter(q[1].values()))[:12]}"
                                                                         for q in BAD_QUERIES])
def test_bad_query_parameters_are_refused_naming_them(target: Target, path: str, params: dict, field: str) -> None:
    path = path.replace("{task}", f"/api/v1/tasks/{next(iter(target.baseline))}")
    refused(target.coord.http.get(path, params=params), 422, field, field=field)


@pytest.mark.parametrize("key", [b"", b"k" * 201, b"caf\xe9", b"tab\there", b"\x80\x81"],
                         ids=["empty", "201-chars", "latin1-byte", "tab", "high-bytes"])
def test_bad_idempotency_keys_are_refused(target: Target, key: bytes) -> None:
    body = json.dumps({"taskType": "command", "command": "true"})
    refused(target.submit(body, {"Idempotency-Key": key}), 422, "Idempotency-Key", field="Idempotency-Key")


def test_idempotency_key_reuse(target: Target) -> None:
    first = target.submit(json.dumps({"taskType": "x", "name": "once"}), {"Idempotency-Key": "corpus-key-1"})
    again = target.submit(json.dumps({"taskType": "x", "name": "once"}), {"Idempotency-Key": "corpus-key-1"})
    assert first.status_code == 201 and again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = target.submit(json.dumps({"taskType": "x", "name": "twice"}), {"Idempotency-Key": "corpus-key-1"})
    refused(other, 409, "different task body", field="Idempotency-Key")


WRONG_METHODS = [("PUT", "/api/v1/tasks", "POST"), ("PUT", "/api/v1/tasks/{task}", "GET"),
                 ("GET", "/api/v1/agents/poll", "POST"), ("DELETE", "/health", "GET"),
                 ("POST", "/api/v1/openapi.json", "GET"), ("GET", "/api/v1/leases/{task}/heartbeat", "POST")]


@pytest.mark.parametrize(("method", "path", "allowed"), WRONG_METHODS, ids=[f"{m} {p}" for m, p, _ in WRONG_METHODS])
def test_wrong_methods_get_405_naming_the_method(target: Target, method: str, path: str, allowed: str) -> None:
    path = path.replace("{task}", next(iter(target.baseline)))
    resp = target.coord.http.request(method, path)
    refused(resp, 405, method, path)
    assert allowed in resp.headers["allow"]


def test_unknown_paths_get_404_json(target: Target) -> None:
    refused(target.coord.http.get("/api/v1/nope"), 404, "/api/v1/nope")
    refused(target.coord.http.get("/api/v2/tasks"), 404, "not found")


def test_agent_protocol_refuses_bad_bodies_and_credentials(target: Target) -> None:
    lease = target.peer.alive()
    beat = f"/api/v1/leases/{lease.task_id}/heartbeat"
    http = target.peer.http
    refused(http.post(beat, content=b""), 400, "empty")
    refused(http.post(beat, content=b"epoch=1", headers={"Content-Type": "application/x-www-form-urlencoded"}),
            400, "not valid json")
    refused(http.post(beat, json=[lease.epoch]), 422)
    refused(http.post(beat, json={"progress": {}}), 422, "epoch", field="epoch")
    refused(http.post(beat, json={"epoch": lease.epoch, "progress": {"step": "many"}}), 422, field="progress.step")
    refused(http.post(beat, json={"epoch": lease.epoch + 7}), 409, "not leased")
    refused(http.post(beat, json={"epoch": lease.epoch}, headers={"X-MLOC-Protocol": "2"}), 426, "protocol")
    refused(http.post(beat, json={"epoch": lease.epoch}, headers={"X-MLOC-Protocol": "one"}), 426, "protocol")
    refused(http.post(f"/api/v1/leases/{lease.task_id}/logs",
                      json={"epoch": lease.epoch, "chunks": [{"seq": 2**64, "data": "x"}]}), 422, field="chunks.0.seq")
    raw = {"X-MLOC-Protocol": "1"}
    for token in (b"Bearer \xff\xfe", b"Bearer", b"Basic abc", b"Bearer mloc_agent_forged"):
        refused(httpx.post(f"{target.coord.url}{beat}", json={"epoch": 1}, headers={**raw, "Authorization": token}),
                401, "credential")
    register = f"{target.coord.url}/api/v1/agents/register"
    body = {"agent_version": "x", "name": "intruder", "inventory": {"hostname": "h"}, "task_types": ["command"]}
    refused(httpx.post(register, json=body, headers=raw), 401, "join token")
    refused(httpx.post(register, json=body, headers={**raw, "X-MLOC-Join-Token": b"wrong\xe9"}), 401, "join token")


def test_user_api_refuses_bad_tokens(target: Target) -> None:
    for token in (b"Bearer \xff", b"Bearer", b"Token abc", b"Bearer " + b"a" * 4000):
        resp = httpx.get(f"{target.coord.url}/api/v1/tasks", headers={"Authorization": token})
        refused(resp, 401, "token")


def test_malformed_http_is_refused_by_the_http_layer(target: Target) -> None:
    """Requests HTTP itself forbids never reach a handler: aiohttp answers 400 naming the fault."""
    url = f"{target.coord.url}/api/v1/tasks"
    resp = httpx.post(url, content=b"{}", headers={"Idempotency-Key": b"\x7f"})
    assert resp.status_code == 400 and "header value" in resp.text.lower(), resp.text
    resp = httpx.get(url, headers={"Authorization": b"Bearer " + b"a" * 10_000})
    assert resp.status_code == 400 and "8190 bytes" in resp.text, resp.text


def test_nothing_stored_was_harmed(target: Target) -> None:
    """Runs last: earlier tasks unchanged, the count grew only by accepted submits, the database intact."""
    for task_id, before in target.baseline.items():
        after = target.coord.task(task_id)
        assert {k: after[k] for k in STABLE} == {k: before[k] for k in STABLE}, task_id
    assert target.total() == target.total_before + target.created + target.peer.submitted - target.peer_before
    health = target.coord.http.get("/health").json()
    assert health["status"] == "ok" and health["database"] == "ok", health
    with sqlite3.connect(f"file:{target.coord.data_dir / 'mloc.db'}?mode=ro", uri=True) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    log = target.coord.proc.output()
    # the only tracebacks: aiohttp logging the malformed HTTP above; never an error of ours (a 500)
    assert "unhandled error" not in log and log.count("Traceback") == log.count("Error handling request"), log[-3000:]
