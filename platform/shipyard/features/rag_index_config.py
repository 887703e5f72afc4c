"""The rag_index stage's config (``shipyard.features.rag_index``): the profile's ``rag:`` section, and
what ``shipyard rag ingest`` builds from its flags."""

from __future__ import annotations

from pydantic import Field, model_validator

from shipyard.schema import StrictModel

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"  # a Feast feature-view name prefix and a Milvus collection name
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
DEFAULT_TENANT = "public"


class RagIndexConfig(StrictModel):
    """How documents become an index version: token windows of the embedding model's tokenizer."""

    index: str = Field(pattern=NAME_PATTERN, description="Index name; every ingest adds a version.")
    documents: str | None = Field(None, description="JSONL file(s) or a folder of .txt/.md/.rst files.")
    chunk_tokens: int = Field(200, ge=16, le=254,
                              description="Window size; all-MiniLM-L6-v2 reads 256 tokens, [CLS] and [SEP] included.")
    overlap_tokens: int = Field(40, ge=0)
    tenant: str = Field(DEFAULT_TENANT, pattern=TENANT_PATTERN, description="Tenant of rows that name none.")
    batch_size: int = Field(64, gt=0, description="Chunks per embedding batch.")

    @model_validator(mode="after")
    def _overlap(self) -> RagIndexConfig:
        if self.overlap_tokens >= self.chunk_tokens:
            raise ValueError(f"overlap_tokens {self.overlap_tokens} must be below chunk_tokens {self.chunk_tokens}")
        return self
