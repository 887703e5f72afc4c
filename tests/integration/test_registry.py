"""Registry and promotion on a real MLflow store (SQLite backend, local artifacts)."""

import pytest

from shipyard.paths import default_tracking_uri
from shipyard.tracking.register import log_model_version
from shipyard.tracking.registry import current_alias, promote, resolve_model_dir, rollback
from shipyard.tracking.runs import artifact_root_for, client
from shipyard.tracking.tags import CANDIDATE, CHAMPION

pytestmark = pytest.mark.integration


def test_versions_promote_and_roll_back(tiny_base):
    uri = default_tracking_uri()
    c = client(uri)
    exp = c.create_experiment("reg-test", artifact_location=artifact_root_for(uri))
    versions = []
    for _ in range(2):
        run = c.create_run(exp)
        versions.append(log_model_version(uri, run.info.run_id, tiny_base, "tiny", 8))
        c.set_registered_model_alias("tiny", CANDIDATE, versions[-1])
    assert versions == ["1", "2"]
    assert promote(uri, "tiny", "1") is None
    assert promote(uri, "tiny", "2") == "1"
    assert promote(uri, "tiny", "2") == "1"  # repeating a promotion is a no-op that reports the same
    assert current_alias(uri, "tiny", CHAMPION) == "2"
    assert rollback(uri, "tiny", from_version="2") == "1"
    assert rollback(uri, "tiny", from_version="2") == "1"  # repeated with --from: nothing moves
    assert current_alias(uri, "tiny", CHAMPION) == "1"
    assert c.get_model_version("tiny", "2").tags["shipyard.rolled_back"] == "true"
    local = resolve_model_dir(uri, "models:/tiny@champion")
    assert (local / "model.safetensors").exists() and (local / "config.json").exists()

    import mlflow

    model = mlflow.pyfunc.load_model("models:/tiny@champion")
    out = model.predict(["The Python"], params={"max_new_tokens": 3})
    assert len(out) == 1 and isinstance(out[0], str)


def test_rollback_without_history_is_a_clear_error(tiny_base):
    uri = default_tracking_uri()
    c = client(uri)
    run = c.create_run(c.create_experiment("reg-test-2", artifact_location=artifact_root_for(uri)))
    v = log_model_version(uri, run.info.run_id, tiny_base, "lonely", 8)
    with pytest.raises(ValueError, match="no champion to roll back"):
        rollback(uri, "lonely")
    promote(uri, "lonely", v)
    with pytest.raises(ValueError, match="no previous champion"):
        rollback(uri, "lonely")


def test_a_promotion_interrupted_before_the_alias_moved_finishes_on_retry(tiny_base):
    from shipyard.tracking.tags import PROMOTED_OVER

    uri = default_tracking_uri()
    c = client(uri)
    exp = c.create_experiment("reg-test-3", artifact_location=artifact_root_for(uri))
    v1, v2, v3 = (log_model_version(uri, c.create_run(exp).info.run_id, tiny_base, "crashy", 8) for _ in range(3))
    promote(uri, "crashy", v1)
    promote(uri, "crashy", v2)
    # a crash after the version tag was written but before the alias moved:
    c.set_model_version_tag("crashy", v3, PROMOTED_OVER, v2)
    assert current_alias(uri, "crashy", CHAMPION) == v2
    assert promote(uri, "crashy", v3) == v2  # the retry completes it
    assert current_alias(uri, "crashy", CHAMPION) == v3
    # rollback walks the chain one step per call: v3 -> v2 -> v1
    assert rollback(uri, "crashy") == v2 and rollback(uri, "crashy") == v1
    assert rollback(uri, "crashy", from_version=v2) == v1  # v2 was already rolled back: no move
    assert current_alias(uri, "crashy", CHAMPION) == v1
    with pytest.raises(ValueError, match="crashy has no version 9"):
        rollback(uri, "crashy", from_version="9")


def test_resolve_model_dir_rejects_a_non_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        resolve_model_dir("sqlite:///unused.db", str(tmp_path))


def test_resolve_model_dir_finds_the_weights_of_a_logged_model(tmp_path):
    """/mnt/models after KServe's storage initializer fetched a registered version: MLmodel on top."""
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    (tmp_path / "artifacts" / "model").mkdir(parents=True)
    (tmp_path / "artifacts" / "model" / "config.json").write_text("{}")
    assert resolve_model_dir("sqlite:///unused.db", str(tmp_path)) == tmp_path / "artifacts" / "model"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="2 candidates"):
        resolve_model_dir("sqlite:///unused.db", str(tmp_path))
