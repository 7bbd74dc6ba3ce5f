"""``taskType: rag_inference``: ingest documents into a persistent Chroma collection, answer questions
from the top-k passages, and write answers with their sources to a JSONL artifact.

Accepts the original README's example as written (``embedding_model``, ``vector_db: chromadb``,
``retrieval_k``). The collection persists on the agent, in the task's owner's folder under
``<data_dir>/vectors`` (rag/collections.py), so the same user's later tasks on that agent reuse what
was ingested; see docs/rag.md.
Heavy libraries are imported inside ``execute`` only: the agent's main process imports this file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from mloc_agent import task_contract
from mloc_agent.modules.base import BaseModule, ProgressCallback, TaskContext
from mloc_agent.modules.errors import TaskInputError
from mloc_agent.modules.rag.collections import persist_dir

DEFAULT_SYSTEM = ("Answer the question using only the numbered context passages. Cite the passages you use "
                  "as [n]. If the context does not contain the answer, say that you do not know.")
DEFAULT_TEMPLATE = "Context:\n{context}\n\nQuestion: {question}"


def agent_data_dir(workdir: Path) -> Path | None:
    """The agent's data dir: MLOC_AGENT_DATA_DIR, which the agent sets for every task process."""
    value = os.environ.get(task_contract.AGENT_DATA_DIR)
    if value:
        return Path(value)
    return workdir.parent.parent if workdir.parent.name == "work" else None


def format_context(passages: list[dict[str, Any]]) -> str:
    return "\n\n".join(f"[{p['rank']}] (source: {p['source']})\n{p['text']}" for p in passages)


class RagModule(BaseModule):
    task_type = "rag_inference"
    requires = ("chromadb", "langchain_chroma", "langchain_text_splitters", "sentence_transformers")

    async def execute(self, progress_callback: ProgressCallback | None = None) -> dict[str, Any]:
        from mloc_shared.hyperparams import RagInferenceHyperparameters, parse_hyperparameters

        from mloc_agent.modules.rag import chat_model
        from mloc_agent.modules.sources.documents import load_documents, load_questions

        report = progress_callback or self.ctx.progress
        params = parse_hyperparameters("rag_inference", self.spec.get("hyperparameters"))
        assert isinstance(params, RagInferenceHyperparameters)
        downloads = self.ctx.workdir / "inputs"
        dataset_refs = _dataset_refs(self.spec.get("dataset"))
        refs = list(params.documents or []) + dataset_refs
        questions = load_questions(params.questions, params.questions_file, downloads, self.ctx)
        choice = chat_model.choose(params.chat_model, self.spec)
        directory = persist_dir(params.persist_directory, agent_data_dir(self.ctx.workdir) or self.ctx.workdir,
                                self.ctx.owner)
        self.ctx.paths.name_or_path(params.embedding_model, "hyperparameters.embedding_model")  # a path: allowed?
        if not refs and not questions:
            raise TaskInputError("rag_inference has nothing to do: give hyperparameters.documents (files, "
                                 "folders, globs or URLs) to ingest and/or hyperparameters.questions / "
                                 "questions_file to answer")

        report({"message": "loading documents and the embedding model"})
        docs = load_documents(list(params.documents or []), downloads, self.ctx)
        docs += load_documents(dataset_refs, downloads, self.ctx, field="dataset")
        if refs and not docs:
            raise TaskInputError(f"hyperparameters.documents: no readable text in {', '.join(refs)}")
        from mloc_agent.modules.rag.store import RagStore, locked

        device = _device(self.ctx.gpus)
        with locked(directory):
            store = RagStore(directory, params.collection, params.embedding_model, device)
            stats = store.ingest(docs, params.chunk_size, params.chunk_overlap,
                                 lambda done, total: report({"step": done, "total": total,
                                                             "message": f"embedding chunks {done}/{total}"}))
            size = store.count()
            print(f"[rag] collection {params.collection!r} in {directory}: {size} chunks "
                  f"({stats['chunks_added']} added, {stats['chunks_already_stored']} already stored)", flush=True)
            if questions and size == 0:
                raise TaskInputError(f"collection {params.collection!r} is empty: give hyperparameters.documents")
            answers = self._answer(store, questions, params, choice, device, report) if questions else []
        result: dict[str, Any] = {"collection": params.collection, "persist_directory": str(directory),
                                  "collection_chunks": size, **stats, "questions": len(questions),
                                  "chat_model": choice.describe(), "embedding_model": params.embedding_model}
        if questions:
            result["answers_file"] = params.output_file
            result["answers"] = [{"question": a["question"][:300], "answer": (a["answer"] or "")[:500] or None,
                                  "sources": [s["source"] for s in a["sources"]]} for a in answers[:20]]
        return result

    def _answer(self, store: Any, questions: list[dict[str, Any]], params: Any, choice: Any, device: str,
                report: ProgressCallback) -> list[dict[str, Any]]:
        """Retrieve, generate, and write one JSON line per question as it is answered."""
        generate = _generator(choice, params, device, self.ctx)
        out_path = self.ctx.output_dir / params.output_file
        out_path.parent.mkdir(parents=True, exist_ok=True)
        answers = []
        started = time.monotonic()
        with open(out_path, "w", encoding="utf-8") as out:
            for i, q in enumerate(questions):
                passages = store.search(q["question"], params.retrieval_k)
                prompt = (params.prompt_template or DEFAULT_TEMPLATE).replace("{context}", format_context(passages))
                messages = [{"role": "system", "content": DEFAULT_SYSTEM},
                            {"role": "user", "content": prompt.replace("{question}", q["question"])}]
                answer = generate(messages) if generate is not None else None
                row = {"id": q["id"], "question": q["question"], "answer": answer, "sources": passages,
                       "chat_model": choice.describe()}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                out.flush()
                answers.append(row)
                elapsed = time.monotonic() - started
                report({"step": i + 1, "total": len(questions), "message": f"answered {i + 1}/{len(questions)}",
                        "eta_s": round(elapsed / (i + 1) * (len(questions) - i - 1), 1)})
        return answers


def _generator(choice: Any, params: Any, device: str, ctx: TaskContext) -> Any:
    """messages -> answer text, or None for retrieval only."""
    from mloc_agent.modules.rag import chat_model

    if choice.provider == "none":
        return None
    if choice.provider == "openai":
        llm = chat_model.openai_chat(choice, params.temperature, params.max_new_tokens, urls=ctx.urls)

        def remote(messages: list[dict[str, str]]) -> str:
            reply = llm.invoke([(m["role"], m["content"]) for m in messages])
            return reply.text if isinstance(reply.text, str) else str(reply.content)

        return remote
    local = chat_model.LocalGenerator(ctx.paths.name_or_path(choice.settings.model, "chat_model.model"), device)
    return lambda messages: local(messages, params.max_new_tokens, params.temperature)


def _dataset_refs(dataset: dict[str, Any] | None) -> list[str]:
    """``dataset: {path: ...}`` / ``{uri: ...}`` / ``{paths: [...]}`` also name documents."""
    if not dataset:
        return []
    refs = [dataset[k] for k in ("path", "uri") if isinstance(dataset.get(k), str)]
    refs += [str(p) for p in dataset.get("paths") or []]
    return refs


def _device(gpus: list[int]) -> str:
    if gpus:
        import torch

        if torch.cuda.is_available():
            return "cuda"
    return "cpu"
