"""Feast is the system of record for RAG documents and their index versions.

Each ingest of index ``NAME`` writes version N as its own feature view ``NAME_vN`` (entity
``chunk_id``; features chunk, doc_id, text, source, tenant and the embedding with a vector index),
tagged ``shipyard.index``/``shipyard.index_version``. Its rows are the view's offline source (a
parquet file under ``$SHIPYARD_FEAST_DATA``, e.g. ``s3://shipyard/feast`` on a cluster so every pod
reads the same rows, else ``<repo>/data``) and are written to the online store (milvus-lite
locally; Postgres + pgvector with the Helm chart), so older versions stay servable while a model
pinned to them is live.

The repo is ``$SHIPYARD_FEAST_REPO``, else ``<state dir>/feast``; a ``feature_store.yaml`` already
there (e.g. the Helm chart's ConfigMap) is used as is, otherwise a local one is written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from shipyard.features.embed import EMBEDDING_DIM

PROJECT = "shipyard_rag"
INDEX_TAG, VERSION_TAG = "shipyard.index", "shipyard.index_version"
FEATURES = ("chunk", "doc_id", "text", "source", "tenant")

LOCAL_YAML = f"""\
# Written by shipyard (shipyard.features.store): Feast with a local registry, file offline store and
# milvus-lite online store. Replace it (e.g. with the Helm chart's) to use a Milvus server.
project: {PROJECT}
provider: local
registry: registry.db
offline_store:
  type: file
online_store:
  type: milvus
  path: online_store.db
  embedding_dim: {EMBEDDING_DIM}
  index_type: FLAT
  metric_type: COSINE
  vector_enabled: true
entity_key_serialization_version: 3
"""


def repo_for(tracking_uri: str | None = None) -> Path:
    """The default repo: ``$SHIPYARD_FEAST_REPO``, else beside a SQLite MLflow store (so pipeline steps,
    whatever their working directory, and ``shipyard serve`` find the same one), else the state dir."""
    from shipyard.paths import default_tracking_uri, state_dir

    if os.environ.get("SHIPYARD_FEAST_REPO"):
        return Path(os.environ["SHIPYARD_FEAST_REPO"])
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent / "feast"
    return state_dir() / "feast"


def repo_dir(path: str | Path | None = None) -> Path:
    if path is None:
        path = repo_for()
    repo = Path(path).resolve()
    repo.mkdir(parents=True, exist_ok=True)
    if not (repo / "feature_store.yaml").exists():
        (repo / "feature_store.yaml").write_text(LOCAL_YAML)
    return repo


def open_store(path: str | Path | None = None):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydantic "shadows an attribute" noise from feast's milvus config
        from feast import FeatureStore

        return FeatureStore(repo_path=str(repo_dir(path)))


def view_name(index: str, version: int) -> str:
    return f"{index}_v{version}"


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@VERSION`` (``NAME@latest`` too) -> (name, version or None)."""
    m = re.fullmatch(r"([a-z][a-z0-9_]{0,62})(?:@(\d+|latest))?", ref)
    if not m:
        raise ValueError(f"index {ref!r}: expected NAME or NAME@VERSION (lower-case letters, digits, _)")
    return m.group(1), int(m.group(2)) if m.group(2) and m.group(2) != "latest" else None


def versions(store, index: str) -> dict[int, object]:
    """{version: feature view} of one index, from Feast's registry."""
    out = {}
    for fv in store.list_feature_views(allow_cache=False):
        if fv.tags.get(INDEX_TAG) == index:
            out[int(fv.tags[VERSION_TAG])] = fv
    return out


def resolve(store, ref: str):
    """(index, version, feature view) for ``NAME`` (the latest version) or ``NAME@VERSION``."""
    index, version = parse_ref(ref)
    found = versions(store, index)
    if not found:
        raise LookupError(f"index {index!r} has no versions in the Feast repo {store.repo_path}; "
                          f"create one with `shipyard rag ingest PATH --index {index}`")
    if version is None:
        version = max(found)
    if version not in found:
        raise LookupError(f"index {index!r} has no version {version}; it has {sorted(found)}")
    return index, version, found[version]


def cosine_metric(store) -> str:
    """The online store's name for cosine search: pgvector (the Helm chart's store) spells it lowercase."""
    return "cosine" if store.config.online_store.type == "postgres" else "COSINE"


def write_version(store, index: str, frame, tags: dict[str, str]) -> int:
    """Register the next version of ``index`` with ``frame``'s rows (offline parquet + online store)."""
    from datetime import timedelta

    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Array, Float32, String

    version = max(versions(store, index), default=0) + 1
    name = view_name(index, version)
    root = os.environ.get("SHIPYARD_FEAST_DATA") or str(Path(store.repo_path) / "data")
    path = f"{root.rstrip('/')}/{name}.parquet"
    _write_parquet(frame, path)
    entity = Entity(name="chunk_id", join_keys=["chunk_id"], value_type=ValueType.STRING,
                    description="tenant/doc_id#n")
    view = FeatureView(
        name=name, entities=[entity], ttl=timedelta(0), online=True,
        schema=[*(Field(name=f, dtype=String) for f in FEATURES),
                Field(name="embedding", dtype=Array(Float32), vector_index=True,
                      vector_search_metric=cosine_metric(store))],
        source=FileSource(name=f"{name}_source", path=path, timestamp_field="event_timestamp"),
        tags={INDEX_TAG: index, VERSION_TAG: str(version), **tags})
    store.apply([entity, view])
    store.write_to_online_store(name, frame)
    return version


def _filesystem(path: str):
    """(pyarrow filesystem, path in it) for a local path or an s3:// / gs:// URI (S3 endpoint and
    credentials from the AWS_* environment, as every other S3 client here)."""
    from pyarrow import fs

    if "://" in path:
        return fs.FileSystem.from_uri(path)
    return fs.LocalFileSystem(), str(Path(path).resolve())


def _write_parquet(frame, path: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    filesystem, where = _filesystem(path)
    filesystem.create_dir(where.rsplit("/", 1)[0], recursive=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), where, filesystem=filesystem)


def read_version(store, view):
    """All rows of one version, from the view's offline source (the data the online store was written from)."""
    import pyarrow.parquet as pq

    filesystem, where = _filesystem(view.batch_source.path)
    return pq.read_table(where, filesystem=filesystem).to_pandas()
