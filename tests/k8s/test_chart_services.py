"""The chart's services as it configures them, run for real on 127.0.0.1.

The MLflow container's command, args and env and the Feast ConfigMap are taken from `helm template`;
only the Service host names become 127.0.0.1 ports, and Secrets become the values a test made up.
Postgres (with pgvector) is a real server from the pgserver wheel; S3 is moto's server in MinIO's place.
"""

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest

from conftest import DEMO, free_port, write_jsonl
from kube_checks import render
from platform_servers import start_postgres, start_s3

pytestmark = [pytest.mark.k8s, pytest.mark.integration]
NS = "shipyard"
SECRETS = {"shipyard-postgres": {"password": "pg-pass-1"},
           "shipyard-minio": {"root-user": "minio-user", "root-password": "minio-pass-1"},
           "shipyard-mlflow": {"admin-username": "admin", "admin-password": "Adm1n-pass-for-test",
                               "flask-secret-key": "f" * 32}}


@pytest.fixture(scope="module")
def chart():
    return render("cpu-dev-values.yaml", NS)


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    pg, pg_port = start_postgres(tmp_path_factory.mktemp("pg"), "shipyard", SECRETS["shipyard-postgres"]["password"],
                                 "shipyard")
    s3, s3_url = start_s3("shipyard", "minio-user", "minio-pass-1")
    hosts = {f"shipyard-postgres.{NS}.svc:5432": f"127.0.0.1:{pg_port}",
             f"shipyard-postgres.{NS}.svc": "127.0.0.1", f"http://shipyard-minio.{NS}.svc:9000": s3_url}
    yield hosts, pg_port, s3_url
    pg.send_signal(signal.SIGINT)  # postgres' "fast" shutdown: no wait for idle client pools
    s3.terminate()
    for p in (pg, s3):
        p.wait(30)


def _localize(text: str, hosts: dict) -> str:
    for k, v in hosts.items():  # longest first: host:port before host
        text = text.replace(k, v)
    return text


def _env(container: dict, hosts: dict) -> dict:
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = _localize(e["value"], hosts)
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = SECRETS[ref["name"]][ref["key"]]
    return env


def test_mlflow_runs_as_the_chart_configures_it(chart, backends, tmp_path, tiny_base):
    from shipyard.kube.inference_service import storage_uri
    from shipyard.serving.local import stop, wait_ready

    hosts, _, s3_url = backends
    dep = next(o for o in chart if o["kind"] == "Deployment" and o["metadata"]["name"] == "shipyard-mlflow")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    ini = next(o for o in chart if o["metadata"]["name"] == "shipyard-mlflow-auth")["data"]["basic_auth.ini"]
    (tmp_path / "basic_auth.ini").write_text(_localize(ini, hosts))
    port = free_port()
    args = [_localize(a, hosts).replace("--host=0.0.0.0", "--host=127.0.0.1").replace("--port=5000", f"--port={port}")
            for a in c["args"]]
    env = {**os.environ, **_env(c, hosts), "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
           "HOME": str(tmp_path)}
    assert c["command"] == ["mlflow", "server"]
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "mlflow.log", "w"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/health", proc, 180, "mlflow server (chart config)")
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert httpx.get(search).status_code == 401  # basic-auth is on
        admin = ("admin", SECRETS["shipyard-mlflow"]["admin-password"])
        assert httpx.get(search, auth=admin).status_code == 200
        # the in-cluster Service name is an allowed Host; anything else is refused (DNS rebinding)
        assert httpx.get(search, auth=admin, headers={"Host": f"shipyard-mlflow.{NS}.svc:5000"}).status_code == 200
        assert httpx.get(search, auth=admin, headers={"Host": "evil.example.com"}).status_code in (400, 403)

        # a pipeline pod's view: credentials from the client Secret, artifacts proxied into S3
        from shipyard.tracking.register import log_model_version
        from shipyard.tracking.runs import client

        os.environ.update(MLFLOW_TRACKING_USERNAME=admin[0], MLFLOW_TRACKING_PASSWORD=admin[1])
        try:
            cl = client(url)
            run = cl.create_run(cl.create_experiment("chart-test"))
            version = log_model_version(url, run.info.run_id, tiny_base, "chart-model", 8)
            download = cl.get_model_version_download_uri("chart-model", version)
        finally:
            for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                os.environ.pop(k)
        # what deploy hands KServe's storage initializer is really where the weights are
        storage = storage_uri(download, "s3://shipyard/mlflow")
        import boto3

        s3 = boto3.client("s3", endpoint_url=s3_url, aws_access_key_id="minio-user",
                          aws_secret_access_key="minio-pass-1", region_name="us-east-1")
        prefix = storage.removeprefix("s3://shipyard/")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="shipyard", Prefix=prefix).get("Contents", [])]
        assert any(k.endswith("/config.json") for k in keys) and any(k.endswith(".safetensors") for k in keys), keys
    finally:
        stop(proc)


def test_feast_config_serves_rag_from_postgres_and_s3(chart, backends, tmp_path, monkeypatch):
    """rag ingest into the chart's Feast (SQL registry + pgvector in Postgres, rows in S3), then the
    sidecar's two backends find the same chunks, and `feast serve` (the chart's command) starts on it."""
    from shipyard.features import store as fs
    from shipyard.features.embed import Embedder
    from shipyard.features.rag_index import run_ingest
    from shipyard.features.rag_index_config import RagIndexConfig
    from shipyard.features.retrieve import FeastRetriever, load_index

    hosts, pg_port, s3_url = backends
    cm = next(o for o in chart if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "shipyard-feast")
    repo = tmp_path / "feast"
    repo.mkdir()
    text = _localize(cm["data"]["feature_store.yaml"], hosts).replace("port: 5432", f"port: {pg_port}")
    (repo / "feature_store.yaml").write_text(text)
    import psycopg  # the bundled Postgres runs the chart's init script on its first start

    init = next(o for o in chart if o["metadata"]["name"] == "shipyard-postgres-init")["data"]["01-shipyard.sql"]
    with psycopg.connect(host="127.0.0.1", port=pg_port, user="shipyard", dbname="shipyard",
                         password=SECRETS["shipyard-postgres"]["password"], autocommit=True) as conn:
        conn.execute(init)
    for k, v in {"PGPASSWORD": SECRETS["shipyard-postgres"]["password"], "AWS_ACCESS_KEY_ID": "minio-user",
                 "AWS_SECRET_ACCESS_KEY": "minio-pass-1", "AWS_ENDPOINT_URL": s3_url, "AWS_DEFAULT_REGION": "us-east-1",
                 "SHIPYARD_FEAST_DATA": cm["data"]["data_uri"]}.items():
        monkeypatch.setenv(k, v)
    faq = [json.loads(line) for line in (DEMO / "rag" / "python-faq.jsonl").read_text().splitlines()][:2]
    write_jsonl(tmp_path / "docs.jsonl", [{"id": r["id"], "text": r["text"][:3000]} for r in faq])
    result = run_ingest(RagIndexConfig(index="faq", chunk_tokens=64, overlap_tokens=8), tmp_path / "docs.jsonl", repo)
    assert result.version == 1 and result.chunks > 5
    store = fs.open_store(repo)
    _, _, view = fs.resolve(store, "faq@1")
    assert view.batch_source.path == "s3://shipyard/feast/faq_v1.parquet"
    assert len(fs.read_version(store, view)) == result.chunks

    question = "Why does Python use indentation for grouping statements?"
    vec = Embedder().embed([question])[0]
    exact, _, info = load_index("faq@1", str(repo), "faiss")
    assert info["version"] == 1
    want = exact.search(vec, "public", 3)
    got = FeastRetriever(store, view).search(vec, "public", 3)
    assert [h.chunk_id for h in got] == [h.chunk_id for h in want]
    assert want[0].chunk_id.startswith("public/" + faq[0]["id"])
    assert got[0].score == pytest.approx(want[0].score, abs=1e-4)  # the same cosine similarity
    # filters: the sidecar's default backend searches inside the filtered rows. (Feast 0.67's pgvector
    # search filters after its top_k, so a filtered Feast query can come back short: not the default.)
    assert [h.doc_id for h in exact.search(vec, "public", 3, {"doc_id": faq[1]["id"]})] == [faq[1]["id"]] * 3

    port = free_port()
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "feast"), "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--no-access-log"], cwd=repo, env={**os.environ},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from shipyard.serving.local import stop, wait_ready

    reg_port = free_port()
    registry = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "feast"), "serve_registry",
                                 "--port", str(reg_port)], cwd=repo, env={**os.environ},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", proc, 120, "feast feature server (chart config)")
        # the registry server's readiness probe is gRPC health: ask it what the kubelet would
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{reg_port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=120)
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        stop(proc)
        stop(registry)
