"""RAG documents in Feast: the rag_index stage (chunk + embed, ``rag_index``), versioned indexes (``store``),
retrieval (``retrieve``) and the RAG prompt (``rag_prompt``)."""
