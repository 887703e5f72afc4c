"""RAG documents in Feast: chunk + embed ingestion (``ingest``), versioned indexes (``store``), retrieval (``retrieve``)."""
