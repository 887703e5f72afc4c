"""The Helm chart, rendered by the real helm v4 binary and checked as a cluster would check it."""

import json

import pytest

from kube_checks import CHART, helm, render, restricted_violations, unselected_pods, validate, workload_violations

pytestmark = pytest.mark.k8s
PROFILES = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))


@pytest.fixture(scope="module")
def rendered():
    return {p: render(p) for p in PROFILES}


def test_helm_lint_passes_for_every_profile():
    assert PROFILES == ["cpu-dev-values.yaml", "external-values.yaml", "gpu-values.yaml", "gpu-vllm-values.yaml"]
    for p in PROFILES:
        out = helm("lint", str(CHART), "--strict", "-f", str(CHART / "ci" / p), check=False)
        assert out.returncode == 0, f"{p}: {out.stdout}{out.stderr}"


@pytest.mark.parametrize("profile", PROFILES)
def test_every_rendered_object_is_valid_and_meets_policy(rendered, profile):
    objects = rendered[profile]
    assert objects, profile
    for obj in objects:
        validate(obj)
    runtime_pod = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}  # set on the ISVC by deploy
    bad = [v for o in objects for v in restricted_violations(o, runtime_pod if o["kind"] == "ServingRuntime" else None)]
    bad += [v for o in objects for v in workload_violations(o)]
    bad += [f"{w}: selected by no NetworkPolicy" for w in unselected_pods(objects)]
    assert not bad, "\n".join(bad)


def _by(objects, kind, suffix):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"{kind} *{suffix}: {[o['metadata']['name'] for o in objects if o['kind'] == kind]}"
    return found[0]


def _env(container):
    return {e["name"]: e.get("value") or e.get("valueFrom") for e in container.get("env", [])}


def test_credentials_come_from_secrets_only(rendered):
    objects = rendered["cpu-dev-values.yaml"]
    assert not [o for o in objects if o["kind"] == "Secret"], "the chart must not create Secrets from values"
    mlflow = _by(objects, "Deployment", "-mlflow")["spec"]["template"]["spec"]["containers"][0]
    env = _env(mlflow)
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == {"secretKeyRef": {"name": "shipyard-mlflow", "key": "admin-password"}}
    assert env["PGPASSWORD"] == {"secretKeyRef": {"name": "shipyard-postgres", "key": "password"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "shipyard-minio", "key": "root-password"}}
    assert "--app-name=basic-auth" in mlflow["args"]
    assert "--backend-store-uri=postgresql://shipyard@shipyard-postgres.shipyard.svc:5432/shipyard" in mlflow["args"]
    assert "--artifacts-destination=s3://shipyard/mlflow" in mlflow["args"]
    auth_ini = _by(objects, "ConfigMap", "-mlflow-auth")["data"]["basic_auth.ini"]
    feast_yaml = _by(objects, "ConfigMap", "-feast")["data"]["feature_store.yaml"]
    assert "password" not in auth_ini and "${PGPASSWORD}" in feast_yaml
    minio = _by(objects, "StatefulSet", "-minio")["spec"]["template"]["spec"]["containers"][0]
    assert _env(minio)["MINIO_ROOT_USER"] == {"secretKeyRef": {"name": "shipyard-minio", "key": "root-user"}}


def test_feast_config_is_one_feast_accepts(rendered, tmp_path, monkeypatch):
    """The chart's feature_store.yaml parses as Feast's own RepoConfig (sql registry, pgvector online store)."""
    import os

    import yaml
    from feast.repo_config import RepoConfig

    text = _by(rendered["cpu-dev-values.yaml"], "ConfigMap", "-feast")["data"]["feature_store.yaml"]
    monkeypatch.setenv("PGPASSWORD", "s3cret")
    cfg = RepoConfig(**yaml.safe_load(os.path.expandvars(text)), repo_path=tmp_path)
    assert cfg.online_store.type == "postgres" and cfg.online_store.vector_enabled
    assert cfg.online_store.similarity == "cosine"  # the embedding field's vector_search_metric
    assert cfg.registry.registry_type == "sql" and ":s3cret@shipyard-postgres.shipyard.svc:5432/" in cfg.registry.path
    # shareConfig: the same ConfigMap in the pipeline namespace, where rag_index mounts it
    shared = [o for o in rendered["gpu-values.yaml"]
              if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "shipyard-feast"]
    assert sorted(o["metadata"]["namespace"] for o in shared) == ["kubeflow", "shipyard"]
    assert shared[0]["data"] == shared[1]["data"] and shared[0]["data"]["data_uri"] == "s3://shipyard/feast"


def test_gpu_pools_place_the_serving_runtime_and_replicas_get_pdbs(rendered):
    objects = rendered["gpu-values.yaml"]
    rt = _by(objects, "ServingRuntime", "shipyard-llm")["spec"]
    assert rt["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert rt["tolerations"][0]["key"] == "nvidia.com/gpu"
    c = rt["containers"][0]
    assert c["image"].startswith("ghcr.io/shipyard-llmops/shipyard-cuda:")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and c["resources"]["limits"]["memory"] == "32Gi"
    assert c["command"] == ["python", "-m", "shipyard.serving"] and "--name={{.Name}}" in c["args"]
    sa = _by(objects, "ServiceAccount", "shipyard-inference")  # KServe's storage initializer: S3 credentials
    assert sa["secrets"] == [{"name": "shipyard-kserve-s3"}] and sa["automountServiceAccountToken"] is False
    pdbs = sorted(o["metadata"]["name"] for o in objects if o["kind"] == "PodDisruptionBudget")
    assert pdbs == ["shipyard-feast-registry", "shipyard-feast-server", "shipyard-mlflow"]
    assert not [o for o in rendered["cpu-dev-values.yaml"] if o["kind"] == "PodDisruptionBudget"]


def test_engine_vllm_pairs_the_front_with_vllm_on_the_gpu(rendered):
    rt = _by(rendered["gpu-vllm-values.yaml"], "ServingRuntime", "shipyard-llm")["spec"]
    front, vllm = rt["containers"]
    assert (front["name"], vllm["name"]) == ("kserve-container", "vllm")
    assert front["image"].startswith("ghcr.io/shipyard-llmops/shipyard:")  # the front needs no CUDA
    assert "nvidia.com/gpu" not in front["resources"]["limits"] and vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    port = vllm["readinessProbe"]["httpGet"]["port"]
    assert f"--vllm-url=http://127.0.0.1:{port}/v1" in front["args"] and "--engine=vllm" in front["args"]
    assert vllm["command"] == ["vllm", "serve"] and vllm["args"][0] == "/mnt/models"
    for flag in ("--host=127.0.0.1", f"--port={port}", "--served-model-name={{.Name}}", "--return-tokens-as-token-ids"):
        assert flag in vllm["args"]  # what serving.vllm_engine expects of its upstream
    mounts = {m["name"]: m for m in vllm["volumeMounts"]}
    assert mounts["kserve-provision-location"] == {"name": "kserve-provision-location", "mountPath": "/mnt/models",
                                                   "readOnly": True}
    wait = next(a for a in front["args"] if a.startswith("--vllm-wait-s="))
    assert front["livenessProbe"]["initialDelaySeconds"] > int(wait.split("=")[1])  # not killed while vLLM loads
    assert rt["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    out = helm("template", "t", str(CHART), "-f", str(CHART / "ci" / "cpu-dev-values.yaml"),
               "--set", "serving.runtime.engine=vllm", check=False)
    assert out.returncode != 0 and "serving.runtime.engine vllm: set serving.runtime.gpuPool" in out.stderr


def test_external_services_replace_the_bundled_ones(rendered):
    objects = rendered["external-values.yaml"]
    names = {o["metadata"]["name"] for o in objects}
    assert not {n for n in names if "minio" in n or "postgres" in n}
    env = _env(_by(objects, "Deployment", "-mlflow")["spec"]["template"]["spec"]["containers"][0])
    assert env["AWS_ENDPOINT_URL"] == "https://s3.eu-west-1.amazonaws.com"
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "shipyard-s3", "key": "access-key"}}
    assert env["PGSSLMODE"] == "verify-full"
    dns = _by(objects, "NetworkPolicy", "-egress-dns")["spec"]["egress"]
    assert dns[1]["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]


def test_rbac_is_least_privilege_in_one_namespace(rendered):
    objects = rendered["cpu-dev-values.yaml"]
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    rules = _by(objects, "Role", "shipyard-pipeline-runner")["rules"]
    grants = {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert grants[("serving.kserve.io", "inferenceservices")] >= {"create", "patch", "get", "watch"}
    assert grants[("trainer.kubeflow.org", "trainjobs")] == {"get", "list", "watch", "create", "delete"}
    assert not any(r in ("secrets", "*") or "*" in v for (_, r), v in grants.items())
    assert grants[("", "pods")] == {"get", "list", "watch"}


def test_network_policies_deny_by_default_and_allow_only_platform_flows(rendered):
    objects = rendered["cpu-dev-values.yaml"]
    deny = _by(objects, "NetworkPolicy", "-default-deny")["spec"]
    assert deny == {"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "shipyard"}},
                    "policyTypes": ["Ingress", "Egress"]}
    pg = _by(objects, "NetworkPolicy", "-postgres-ingress")["spec"]["ingress"][0]
    callers = {p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
               or p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in pg["from"]}
    assert callers == {"mlflow", "feast-registry", "feast-server", "inference", "kubeflow", "kubeflow-user-example-com"}
    assert pg["ports"] == [{"protocol": "TCP", "port": 5432}]
    egress = _by(objects, "NetworkPolicy", "-minio-bootstrap-egress")["spec"]["egress"]
    assert [e["ports"][0]["port"] for e in egress] == [9000]


def _template_error(*sets: str) -> str:
    args = ["template", "shipyard", str(CHART), "-f", str(CHART / "ci" / "cpu-dev-values.yaml")]
    for s in sets:
        args += ["--set", s]
    out = helm(*args, check=False)
    assert out.returncode != 0, f"{sets} rendered"
    return out.stderr


def test_bad_values_fail_with_a_message_naming_them():
    assert "at '/mlflow/replicas': got string, want integer" in _template_error("mlflow.replicas=two")
    assert "additional properties 'replicsa' not allowed" in _template_error("mlflow.replicsa=2")
    assert "'/s3/endpoint'" in _template_error("s3.endpoint=minio:9000")
    err = _template_error("gpuPools.h100.nodeSelector.pool=h100")
    assert "/gpuPools/h100" in err and "accelerator" in err
    error = _template_error("serving.runtime.gpuPool=a100")
    assert 'serving.runtime.gpuPool: "a100" is not defined in gpuPools' in error


def test_a_missing_required_secret_fails_naming_it():
    assert "minio.auth.existingSecret is required" in _template_error("minio.auth.existingSecret=")
    assert "postgres.auth.existingSecret is required" in _template_error("postgres.auth.existingSecret=")
    assert "mlflow.auth.existingSecret is required" in _template_error("mlflow.auth.existingSecret=")
    assert "s3.existingSecret is required" in _template_error("minio.enabled=false", "s3.endpoint=https://s3.x")
    # basic-auth off: no admin Secret needed (an explicit choice, e.g. behind an authenticating proxy)
    args = ["template", "shipyard", str(CHART), "-f", str(CHART / "ci" / "cpu-dev-values.yaml"),
            "--set", "mlflow.auth.enabled=false", "--set", "mlflow.auth.existingSecret="]
    assert "--app-name=basic-auth" not in helm(*args).stdout


def test_notes_tell_how_to_reach_mlflow_minio_and_submit():
    out = helm("install", "shipyard", str(CHART), "-n", "shipyard", "--dry-run=client",
               "-f", str(CHART / "ci" / "cpu-dev-values.yaml")).stdout
    notes = out[out.index("NOTES:"):]
    assert "port-forward svc/shipyard-mlflow 5000:5000" in notes
    assert "port-forward svc/shipyard-minio 9000 9001" in notes
    assert "shipyard submit pipelines/lifecycle.py" in notes and "--service-account shipyard-pipeline-runner" in notes


def test_values_schema_is_draft7_and_closed():
    schema = json.loads((CHART / "values.schema.json").read_text())
    import jsonschema

    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["additionalProperties"] is False


def test_guardrails_values_become_the_runtimes_rails_file(rendered, tmp_path):
    from shipyard.serving.openai_rails import load_rails

    objects = rendered["gpu-values.yaml"]
    rt = _by(objects, "ServingRuntime", "shipyard-llm")["spec"]
    front = rt["containers"][0]
    assert "--guardrails=/etc/shipyard/guardrails/guardrails.yaml" in front["args"]
    assert {"name": "guardrails", "mountPath": "/etc/shipyard/guardrails", "readOnly": True} in front["volumeMounts"]
    cm = _by(objects, "ConfigMap", "shipyard-llm-guardrails")
    assert {"name": "guardrails", "configMap": {"name": cm["metadata"]["name"]}} in rt["volumes"]
    (tmp_path / "guardrails.yaml").write_text(cm["data"]["guardrails.yaml"])
    rails = load_rails(str(tmp_path / "guardrails.yaml"))  # what the runtime loads at start
    assert [r.detector for r in rails.config.rails] == ["pii", "toxicity", "injection"]
    plain = _by(rendered["cpu-dev-values.yaml"], "ServingRuntime", "shipyard-llm")["spec"]
    assert not any(a.startswith("--guardrails") for a in plain["containers"][0]["args"])
    out = helm("template", "t", str(CHART), "-f", str(CHART / "ci" / "cpu-dev-values.yaml"),
               "--set", "serving.runtime.guardrails[0].detector=regex", check=False)
    assert out.returncode != 0 and "guardrails" in out.stderr
