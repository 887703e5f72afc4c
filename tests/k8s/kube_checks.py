"""Static checks for Kubernetes objects, as strict as a real API server plus our own policy.

- ``validate``: core kinds against the upstream OpenAPI schemas (``kubernetes-validate``, strict:
  unknown fields fail), KServe and Kubeflow Trainer kinds against their CRDs' openAPIV3Schema.
- ``restricted_violations``: the Pod Security Standard "restricted" profile, plus readOnlyRootFilesystem.
- ``workload_violations``: resources (requests and limits) and readiness + liveness probes on
  every long-running container.
- ``unselected_pods``: pods that no NetworkPolicy selects.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

KUBE_VERSION = "1.32.0"  # kubectl on the image; the chart's kubeVersion is >=1.29
CRDS = Path(__file__).parents[1] / "schemas" / "crds"
HELM = Path(sys.executable).parent / "helm"
CHART = Path(__file__).parents[2] / "helm" / "shipyard"
OVERLAY_DIR = Path(__file__).parents[2] / "manifests" / "overlays"
CRD_FILES = {
    ("serving.kserve.io", "InferenceService"): "serving.kserve.io_inferenceservices.yaml",
    ("serving.kserve.io", "ServingRuntime"): "serving.kserve.io_servingruntimes.yaml",
    ("trainer.kubeflow.org", "TrainJob"): "trainer.kubeflow.org_trainjobs.yaml",
}
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet", "ServingRuntime", "InferenceService"}


def load_all(text: str) -> list[dict]:
    return [d for d in yaml.load_all(text, Loader=yaml.CSafeLoader) if d]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    if not HELM.is_file():
        raise RuntimeError(f"{HELM} is missing: `make helm` installs it (scripts/install_helm.py)")
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, check=check)


def render(values: str, namespace: str = "shipyard") -> list[dict]:
    """The chart's objects for ``helm/shipyard/ci/<values>`` (release "shipyard")."""
    return load_all(helm("template", "shipyard", str(CHART), "-n", namespace, "-f", str(CHART / "ci" / values)).stdout)


def kustomize(overlay: str) -> list[dict]:
    """The objects of ``manifests/overlays/<overlay>``, rendered by kubectl."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not on PATH (the image has 1.32)"
    out = subprocess.run([kubectl, "kustomize", str(OVERLAY_DIR / overlay)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return load_all(out.stdout)


@functools.lru_cache(maxsize=None)
def crd_schema(group: str, kind: str, version: str) -> dict:
    crd = yaml.load((CRDS / CRD_FILES[(group, kind)]).read_text(), Loader=yaml.CSafeLoader)
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise LookupError(f"{kind}: the CRD has no version {version}")


def validate(obj: dict) -> None:
    """Raise with the object's kind/name and the failing path when the API server would reject it."""
    import jsonschema
    import kubernetes_validate

    group, _, version = obj["apiVersion"].rpartition("/")
    where = f"{obj['kind']}/{obj.get('metadata', {}).get('name')}"
    if (group, obj["kind"]) in CRD_FILES:
        try:
            jsonschema.validate(obj, crd_schema(group, obj["kind"], version))
        except jsonschema.ValidationError as exc:
            path = ".".join(str(p) for p in exc.absolute_path)
            raise AssertionError(f"{where}: {path}: {exc.message}") from None
        return
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        raise AssertionError(f"{where}: {path}: {exc.message}") from None


def pod_specs(obj: dict) -> list[tuple[str, dict, dict]]:
    """(where, pod spec, pod labels) of every pod an object creates."""
    kind, name, spec = obj["kind"], obj["metadata"]["name"], obj.get("spec", {})
    where = f"{kind}/{name}"
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        t = spec["template"]
        return [(where, t["spec"], t.get("metadata", {}).get("labels", {}))]
    if kind == "CronJob":
        t = spec["jobTemplate"]["spec"]["template"]
        return [(where, t["spec"], t.get("metadata", {}).get("labels", {}))]
    if kind == "Pod":
        return [(where, spec, obj["metadata"].get("labels", {}))]
    if kind == "ServingRuntime":  # merged into each predictor pod; pod-level fields come from the InferenceService
        return [(where, spec, {})]
    if kind == "InferenceService":
        p = spec["predictor"]
        containers = ([{**p["model"], "name": "kserve-container"}] if "model" in p else []) + p.get("containers", [])
        return [(where, {**p, "containers": containers}, p.get("labels", {}))]
    if kind == "TrainJob":
        out = []
        for patch in spec.get("runtimePatches", []):
            runtime = patch.get("trainingRuntimeSpec", {}).get("template", {}).get("spec", {})
            for job in runtime.get("replicatedJobs", []):
                t = job["template"]["spec"]["template"]
                out.append((f"{where}[{job['name']}]", t["spec"], t.get("metadata", {}).get("labels", {})))
        return out
    return []


def _containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                   "projected", "secret", "name"}


def restricted_violations(obj: dict, pod_level_from: dict | None = None) -> list[str]:
    """Pod Security "restricted" (v1.32) violations, plus readOnlyRootFilesystem. ``pod_level_from``
    supplies the pod-level securityContext where the object has none of its own (a ServingRuntime)."""
    bad = []
    for where, pod, _ in pod_specs(obj):
        psc = pod.get("securityContext") or (pod_level_from or {})
        bad += [f"{where}: {flag}" for flag in ("hostNetwork", "hostPID", "hostIPC") if pod.get(flag)]
        bad += [f"{where}: volume {vol['name']} uses {sorted(set(vol) - ALLOWED_VOLUMES)}"
                for vol in pod.get("volumes", []) if set(vol) - ALLOWED_VOLUMES]
        if psc.get("runAsUser") == 0:
            bad.append(f"{where}: runAsUser 0")
        for c in _containers(pod):
            bad += [f"{where}: container {c['name']}: {problem}" for problem in _container_violations(c, psc)]
    return bad


def _container_violations(c: dict, psc: dict) -> list[str]:
    """What one container's securityContext (over the pod's ``psc``) breaks of "restricted"."""
    csc = c.get("securityContext") or {}
    caps = csc.get("capabilities") or {}
    seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    non_root = csc.get("runAsNonRoot") or (psc.get("runAsNonRoot") and csc.get("runAsNonRoot") is not False)
    checks = [
        (csc.get("privileged"), "privileged"),
        (csc.get("allowPrivilegeEscalation") is not False, "allowPrivilegeEscalation must be false"),
        ("ALL" not in caps.get("drop", []), "capabilities.drop must include ALL"),
        (set(caps.get("add", [])) - {"NET_BIND_SERVICE"}, "capabilities.add beyond NET_BIND_SERVICE"),
        (not non_root, "runAsNonRoot must be true (pod or container)"),
        (csc.get("runAsUser") == 0, "runAsUser 0"),
        (seccomp not in ("RuntimeDefault", "Localhost"), "seccompProfile must be RuntimeDefault or Localhost"),
        (csc.get("readOnlyRootFilesystem") is not True, "readOnlyRootFilesystem must be true"),
    ]
    return [message for broken, message in checks if broken]


def workload_violations(obj: dict) -> list[str]:
    """Containers without cpu+memory requests and limits; long-running ones without both probes."""
    bad = []
    for where, pod, _ in pod_specs(obj):
        for c in _containers(pod):
            at = f"{where}: container {c['name']}"
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(res.get(part) or {})
                if missing:
                    bad.append(f"{at}: resources.{part} lacks {sorted(missing)}")
            merged = obj["kind"] == "InferenceService" and c["name"] == "kserve-container"  # probes: its runtime's
            if obj["kind"] in LONG_RUNNING and c in pod.get("containers", []) and not merged:
                for probe in ("readinessProbe", "livenessProbe"):
                    if probe not in c:
                        bad.append(f"{at}: no {probe}")
    return bad


def _selects(selector: dict, labels: dict) -> bool:
    if selector.get("matchExpressions"):
        raise NotImplementedError("matchExpressions")
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def unselected_pods(objects: list[dict]) -> list[str]:
    """Pods (by their template labels) that no NetworkPolicy in ``objects`` selects."""
    policies = [o["spec"]["podSelector"] for o in objects if o["kind"] == "NetworkPolicy"]
    return [where for o in objects for where, _, labels in pod_specs(o)
            if o["kind"] != "ServingRuntime" and not any(_selects(sel, labels) for sel in policies)]
