"""submit and status against a stand-in of the KFP v2beta1 REST API (the routes kfp.Client calls).

No KFP API server can run here (it is Go, not on PyPI); the stand-in records what the real
kfp.Client posts, so the test checks our half of the contract: the run carries the placed pipeline
spec, the arguments, the ServiceAccount and the pipeline root, and status reads the run back.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import REPO

pytestmark = pytest.mark.k8s


class KfpStandIn(BaseHTTPRequestHandler):
    runs: dict = {}

    def _send(self, body: dict, code: int = 200):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # http.server's name
        if self.path.startswith("/apis/v2beta1/healthz"):
            return self._send({"multi_user": False})
        if self.path.startswith("/apis/v2beta1/experiments"):
            return self._send({"experiments": [], "total_size": 0})
        if self.path.startswith("/apis/v2beta1/runs/"):
            run = self.runs.get(self.path.rsplit("/", 1)[1])
            return self._send(run) if run else self._send({"error": "run not found"}, 404)
        return self._send({"error": self.path}, 404)

    def do_POST(self):  # http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/apis/v2beta1/experiments":
            return self._send({"experiment_id": "exp-1", "display_name": body["display_name"]})
        if self.path == "/apis/v2beta1/runs":
            run_id = f"run-{len(self.runs) + 1}"
            self.runs[run_id] = {**body, "run_id": run_id, "state": "RUNNING",
                                 "created_at": "2026-11-23T07:00:00Z",
                                 "run_details": {"task_details": [
                                     {"display_name": "deploy", "state": "RUNNING"},
                                     {"display_name": "root", "state": "RUNNING"}]}}
            return self._send(self.runs[run_id])
        return self._send({"error": self.path}, 404)

    def log_message(self, *args):
        pass


@pytest.fixture()
def kfp_api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), KfpStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", KfpStandIn.runs
    server.shutdown()
    KfpStandIn.runs.clear()


def test_submit_posts_the_placed_pipeline_and_status_reads_it_back(kfp_api, tmp_path):
    from typer.testing import CliRunner

    from shipyard.cli import app
    from shipyard.tracking.runs import client

    host, runs = kfp_api
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    cli = CliRunner()
    out = cli.invoke(app, ["submit", str(REPO / "pipelines" / "deploy.py"), "-c",
                           str(REPO / "pipelines" / "configs" / "gpu-small.yaml"), "--host", host,
                           "--tracking-uri", tracking, "--param", "model_uri=models:/shipyard-tiny@champion"])
    assert out.exit_code == 0, out.output
    assert "submitted KFP run run-1" in out.output
    run = runs["run-1"]
    assert run["display_name"] == "shipyard-deploy-gpu-small" and run["experiment_id"] == "exp-1"
    assert run["service_account"] == "shipyard-pipeline-runner"  # the profile's cluster.service_account
    rc = run["runtime_config"]
    assert rc["pipeline_root"] == "s3://shipyard/pipelines"
    params = rc["parameters"]
    assert params["model_uri"] == "models:/shipyard-tiny@champion" and params["tracking_uri"] == tracking
    assert json.loads(params["config"])["cluster"]["deploy"]["pool"] == "l4"
    # the MLflow parent run the components nest under exists, before any pod runs
    parent = client(tracking).get_run(params["parent_run_id"])
    assert parent.data.tags["mlflow.runName"].startswith("shipyard-deploy")
    # the placed spec travelled: the deploy step's Secrets are in the platform spec
    k8s = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-deploy"]["secretAsEnv"][0]["secretName"] == "shipyard-mlflow-client"

    out = cli.invoke(app, ["status", "run-1", "--host", host])
    assert out.exit_code == 0, out.output
    assert "run-1  shipyard-deploy-gpu-small  RUNNING" in out.output and "deploy" in out.output
    out = cli.invoke(app, ["status", "nope", "--host", host])
    assert out.exit_code == 2 and f"KFP run 'nope' at {host}: 404" in out.output
