"""Checkpoints mirrored to S3 (moto's S3 server on 127.0.0.1): a pod with an empty disk resumes from it."""

import shutil

import pytest

from conftest import TINY_PRETRAIN, free_port
from shipyard.train.pretrain_config import PretrainConfig

pytestmark = pytest.mark.integration


@pytest.fixture()
def s3(monkeypatch):
    from minio import Minio
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = Minio(f"127.0.0.1:{port}", access_key="test", secret_key="test", secure=False, region="us-east-1")
    client.make_bucket("shipyard")
    yield client
    server.stop()


def test_checkpoints_go_to_s3_and_a_fresh_disk_resumes_from_there(s3, tiny_corpus, tiny_tokenizer, tmp_path):
    from shipyard.train.checkpoint_store import local_cache
    from shipyard.train.pretrain import run_pretrain

    uri = "s3://shipyard/checkpoints/run-7/pretrain"
    stale = local_cache(uri) / "step-000012"  # a leftover staging folder must never be resumed from
    stale.mkdir(parents=True, exist_ok=True)
    (stale / "trainer_state.json").write_text("{}")
    cfg = PretrainConfig(**{**TINY_PRETRAIN, "max_steps": 12}, checkpoint_every=4)
    first = run_pretrain(cfg.model_copy(update={"max_steps": 8}), tiny_corpus, tiny_tokenizer, tmp_path / "a",
                         checkpoint_dir=uri)
    assert first["steps"] == 8
    keys = sorted(o.object_name for o in s3.list_objects("shipyard", prefix="checkpoints/run-7/", recursive=True))
    assert {k.split("/")[-2] for k in keys} == {"step-000004", "step-000008"}
    assert "checkpoints/run-7/pretrain/step-000008/trainer_state.json" in keys
    shutil.rmtree(local_cache(uri))  # a new pod: nothing on its disk; the bucket has steps 4 and 8

    resumed = run_pretrain(cfg, tiny_corpus, tiny_tokenizer, tmp_path / "b", checkpoint_dir=uri)
    assert resumed["resumed_at_step"] == 8 and resumed["steps"] == 12
    keys = {o.object_name.split("/")[-2] for o in s3.list_objects("shipyard", prefix="checkpoints/", recursive=True)}
    assert keys == {"step-000008", "step-000012"}  # keep_checkpoints=2, pruned remotely too


def test_an_incomplete_upload_is_never_picked(s3, tmp_path):
    from shipyard.train.checkpoint_store import S3Mirror

    s3.put_object("shipyard", "c/step-000009/model.safetensors", __import__("io").BytesIO(b"x"), 1)
    assert S3Mirror("s3://shipyard/c").pull_latest(tmp_path) is None
    with pytest.raises(ValueError, match="bucket 'nope' does not exist"):
        S3Mirror("s3://nope/c")
