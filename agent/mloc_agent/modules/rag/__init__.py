"""rag_inference: a persistent vector store, retrieval, and the chat model rag and agents share."""
