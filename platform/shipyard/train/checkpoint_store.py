"""Checkpoints in the artifact store: an ``s3://bucket/prefix`` mirror of the local checkpoint folder.

    pretrain: {checkpoint_dir: s3://shipyard/checkpoints/my-run}
    # or, for every pipeline run: SHIPYARD_CHECKPOINT_URI=s3://shipyard/checkpoints

A pod's disk dies with the pod; the artifact store (MinIO on the cluster) does not. Each
checkpoint is written locally first (atomic rename), then uploaded with ``trainer_state.json``
last: a checkpoint whose state file is missing remotely is incomplete and never picked. A
resumed run with no local checkpoint downloads the newest complete one.

Endpoint and credentials come from the environment, as MLflow's S3 artifact store reads them:
``MLFLOW_S3_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL``), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from shipyard.train.checkpoint import STATE_FILE


def is_remote(uri: str | os.PathLike | None) -> bool:
    return isinstance(uri, str) and uri.startswith("s3://")


def local_cache(uri: str) -> Path:
    """Where this run stages checkpoints of ``uri`` before upload.

    One folder per URI and per launch (torchrun's run id is shared by its ranks; a single process
    uses its pid), emptied at start: the bucket, not a leftover folder, says where to resume.
    """
    launch = os.environ.get("TORCHELASTIC_RUN_ID") or str(os.getpid())
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "shipyard-checkpoints" / f"{key}-{launch}"


class S3Mirror:
    def __init__(self, uri: str):
        from minio import Minio

        parsed = urlparse(uri)
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        if not endpoint:
            raise ValueError(f"checkpoint_dir {uri}: set MLFLOW_S3_ENDPOINT_URL (or AWS_ENDPOINT_URL) to the "
                             f"S3/MinIO endpoint, with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        ep = urlparse(endpoint)
        self.client = Minio(ep.netloc, access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
                            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"), secure=ep.scheme == "https",
                            region=os.environ.get("AWS_DEFAULT_REGION"))
        if not self.client.bucket_exists(self.bucket):
            raise ValueError(f"checkpoint_dir {uri}: bucket {self.bucket!r} does not exist at {endpoint}")

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def steps(self) -> list[str]:
        """Names of the complete checkpoints (their state file is uploaded), oldest first."""
        names = []
        for obj in self.client.list_objects(self.bucket, prefix=self._key("") + "/" if self.prefix else "",
                                            recursive=True):
            parts = obj.object_name.split("/")
            if parts[-1] == STATE_FILE and parts[-2].startswith("step-"):
                names.append(parts[-2])
        return sorted(set(names))

    def push(self, step_dir: Path, keep: int) -> None:
        files = sorted(p for p in step_dir.iterdir() if p.is_file())
        for f in [p for p in files if p.name != STATE_FILE] + [step_dir / STATE_FILE]:
            self.client.fput_object(self.bucket, self._key(step_dir.name, f.name), str(f))
        for old in self.steps()[:-keep]:
            for obj in self.client.list_objects(self.bucket, prefix=self._key(old) + "/", recursive=True):
                self.client.remove_object(self.bucket, obj.object_name)

    def pull_latest(self, local_root: Path) -> Path | None:
        steps = self.steps()
        if not steps:
            return None
        name = steps[-1]
        tmp = local_root / f".pull-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for obj in self.client.list_objects(self.bucket, prefix=self._key(name) + "/", recursive=True):
            self.client.fget_object(self.bucket, obj.object_name, str(tmp / obj.object_name.rsplit("/", 1)[1]))
        final = local_root / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final
