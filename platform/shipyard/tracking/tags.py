"""The names Shipyard writes on MLflow runs and model versions, and the model URIs it reads.

The writers (runs, the register stage, the registry) and the reader (lineage) import these from here,
so a tag has one spelling and no tracking module needs another to know it.
"""

from __future__ import annotations

import re

# aliases: every new version is the candidate; the champion is the one that serves
CANDIDATE, CHAMPION = "candidate", "champion"
# model-version tags: the champion a version replaced, whether it was rolled back, its pinned RAG index
PREVIOUS_TAG = "shipyard.previous_champion"
PROMOTED_OVER = "shipyard.promoted_over"
ROLLED_BACK = "shipyard.rolled_back"
RAG_INDEX_TAG = "shipyard.rag_index_version"
# run and model-version tags: shipyard.data.<key>.sha256|path, shipyard.stage_run.<stage> = run ids
DATA_PREFIX = "shipyard.data."
STAGE_PREFIX = "shipyard.stage_run."


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (name, alias, version)."""
    m = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", uri)
    if not m:
        raise ValueError(f"{uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return m.group(1), m.group(2), m.group(3)
