"""The predictor pod, run as KServe would assemble it: the chart's ServingRuntime container (its
command, args, probe paths) with the InferenceService's model args appended, and the rag-sidecar
container deploy builds, both from the rendered objects; only ports and paths become local."""

import json
import subprocess
import sys

import pytest

from conftest import DEMO, free_port, write_jsonl
from kube_checks import render

pytestmark = [pytest.mark.k8s, pytest.mark.integration]


def _argv(container: dict, subs: dict) -> list[str]:
    out = []
    for a in [*container["command"], *container.get("args", [])]:
        for k, v in subs.items():
            a = a.replace(k, v)
        out.append(a)
    return out


def test_runtime_and_sidecar_containers_serve_a_cited_answer(tiny_base, tmp_path):
    import openai

    from shipyard.features.rag_index import run_ingest
    from shipyard.features.rag_index_config import RagIndexConfig
    from shipyard.kube.deploy_config import DeployConfig
    from shipyard.kube.inference_service import build_inference_service
    from shipyard.serving.local import stop, wait_ready

    faq = [json.loads(line) for line in (DEMO / "rag" / "python-faq.jsonl").read_text().splitlines()][:2]
    write_jsonl(tmp_path / "docs.jsonl", [{"id": r["id"], "text": r["text"][:2000]} for r in faq])
    repo = tmp_path / "feast"
    run_ingest(RagIndexConfig(index="faq", chunk_tokens=64, overlap_tokens=8), tmp_path / "docs.jsonl", repo)

    runtime = next(o for o in render("cpu-dev-values.yaml")
                   if o["kind"] == "ServingRuntime")["spec"]["containers"][0]
    isvc = build_inference_service("tiny", "s3://shipyard/mlflow/1/models/m-1/artifacts", DeployConfig(),
                                   rag_index="faq@1")
    pred = isvc["spec"]["predictor"]
    sidecar = pred["containers"][0]
    port, rag_port = free_port(), free_port()
    # KServe: the runtime container's args, then the model's; {{.Name}} is the InferenceService name
    model = {**runtime, "args": [*runtime["args"], *pred["model"]["args"]]}
    subs = {"/mnt/models": str(tiny_base), "{{.Name}}": "tiny", "--host=0.0.0.0": "--host=127.0.0.1",
            "--port=8080": f"--port={port}", "127.0.0.1:8081": f"127.0.0.1:{rag_port}"}
    side_argv = _argv(sidecar, {"--port=8081": f"--port={rag_port}", "--repo=/etc/feast": f"--repo={repo}"})
    run_argv = _argv(model, subs)
    assert run_argv[:3] == ["python", "-m", "shipyard.serving"] and side_argv[:3] == ["python", "-m",
                                                                                    "shipyard.serving.rag_sidecar"]
    side = subprocess.Popen([sys.executable, *side_argv[1:]])
    proc = subprocess.Popen([sys.executable, *run_argv[1:]])
    try:
        # the probes KServe and the kubelet would call, on the paths the manifests declare
        wait_ready(f"http://127.0.0.1:{rag_port}{sidecar['readinessProbe']['httpGet']['path']}", side, 180, "sidecar")
        wait_ready(f"http://127.0.0.1:{port}{runtime['readinessProbe']['httpGet']['path']}", proc, 180, "runtime")
        wait_ready(f"http://127.0.0.1:{port}{runtime['livenessProbe']['httpGet']['path']}", proc, 10, "runtime")
        wait_ready(f"http://127.0.0.1:{rag_port}{sidecar['livenessProbe']['httpGet']['path']}", side, 10, "sidecar")
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="x", max_retries=0)
        raw = c.chat.completions.with_raw_response.create(
            model="tiny", max_tokens=4, temperature=0,
            messages=[{"role": "user", "content": "Why does Python use indentation for grouping?"}])
        reply = raw.parse()
        assert raw.headers["x-shipyard-rag-index"] == "faq@1"
        assert reply.model_extra["citations"][0]["chunk_id"].startswith("public/")
    finally:
        stop(proc)
        stop(side)


def test_the_vllm_profiles_front_container_serves_through_the_vllm_port(tiny_base):
    """engine vllm: the front container as rendered, with Shipyard's transformers server standing in for the vllm
    container on its port (vLLM needs a GPU; tests/integration/test_vllm_engine.py checks the dialect)."""
    import openai

    from conftest import running_server
    from shipyard.serving.local import stop, wait_ready

    rt = next(o for o in render("gpu-vllm-values.yaml") if o["kind"] == "ServingRuntime")["spec"]
    front, vllm = rt["containers"]
    vllm_port = str(vllm["readinessProbe"]["httpGet"]["port"])
    with running_server(tiny_base, "--engine", "transformers", name="tiny") as (up, _, _):
        port = free_port()
        argv = _argv(front, {"/mnt/models": str(tiny_base), "{{.Name}}": "tiny", "--host=0.0.0.0": "--host=127.0.0.1",
                             "--port=8080": f"--port={port}",
                             f"127.0.0.1:{vllm_port}/v1": f"127.0.0.1:{up}/openai/v1"})
        proc = subprocess.Popen([sys.executable, *argv[1:]])
        try:
            wait_ready(f"http://127.0.0.1:{port}{front['readinessProbe']['httpGet']['path']}", proc, 180, "front")
            c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="x", max_retries=0)
            reply = c.chat.completions.create(model="tiny", max_tokens=4, temperature=0,
                                              messages=[{"role": "user", "content": "Hello"}])
            assert 0 < reply.usage.completion_tokens <= 4
        finally:
            stop(proc)
