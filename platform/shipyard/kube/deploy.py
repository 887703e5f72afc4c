"""Deploy a registered model version to KServe, and roll back when it never becomes Ready.

    shipyard deploy models:/shipyard-tiny@champion -c pipelines/configs/gpu-small.yaml

1. Resolve the version, its artifacts' object-store URI and its pinned RAG index (MLflow registry).
2. Build the InferenceService (``shipyard.kube.inference_service``) from the profile's
   ``cluster.deploy`` and pool.
3. Move the registry alias ``cluster.deploy.alias`` (``deployed``) to the version, create or replace
   the InferenceService, and wait until KServe reports the new generation Ready.
4. If it fails to load or is not Ready within ``timeout_s``: the alias goes back to the version it
   named before, and the previous InferenceService spec is put back (or the new one deleted when
   there was none), so the model that served before keeps serving.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from shipyard.kube.cluster_config import ClusterConfig
from shipyard.kube.inference_service import GROUP, PLURAL, VERSION, build_inference_service, isvc_name, state


@dataclass
class Deployment:
    name: str
    namespace: str
    model: str
    version: str
    storage_uri: str
    rag_index: str | None
    url: str


def _label(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:63].strip("-_.") or "x"


def _restore_alias(c, name: str, alias: str, previous: str | None) -> None:
    if previous is None:
        c.delete_registered_model_alias(name, alias)
    else:
        c.set_registered_model_alias(name, alias, previous)


def deploy(model_uri: str, cluster: ClusterConfig, tracking_uri: str, api=None, log=print, poll_s: float = 10.0,
           image: str | None = None) -> Deployment:
    """Serve ``model_uri`` (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) on KServe.

    Raises:
        ValueError: the URI is not a registered version, or its artifacts are not in object storage.
        RuntimeError: the InferenceService did not become Ready (after the rollback), or the API refused it.
    """
    from kubernetes.client.exceptions import ApiException

    from shipyard.kube.client import current_namespace, custom_objects_api
    from shipyard.kube.inference_service import storage_uri
    from shipyard.tracking.registry import current_alias, model_version, pinned_rag_index
    from shipyard.tracking.runs import client

    found = model_version(tracking_uri, model_uri)
    if found is None:
        raise ValueError(f"{model_uri}: deploy takes a registered model (models:/NAME@ALIAS or models:/NAME/VERSION)")
    model, version = found
    d = cluster.deploy
    c = client(tracking_uri)
    storage = storage_uri(c.get_model_version_download_uri(model, version), d.artifacts_destination)
    rag = pinned_rag_index(tracking_uri, f"models:/{model}/{version}")
    ns = d.namespace or current_namespace()
    name = d.name or isvc_name(model)
    obj = build_inference_service(name, storage, d, cluster.pools.get(d.pool) if d.pool else None, rag, image=image,
                                  namespace=ns, model_labels={"shipyard.io/model": _label(model),
                                                              "shipyard.io/model-version": _label(version)},
                                  secrets=cluster.secrets, feast=cluster.feast)
    api = api or custom_objects_api("deploy applies an InferenceService")
    try:
        previous = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    except ApiException as exc:
        if exc.status != 404:
            raise RuntimeError(f"reading InferenceService {ns}/{name} failed: {exc.status} {exc.reason}") from None
        previous = None
    previous_alias = current_alias(tracking_uri, model, d.alias)
    c.set_registered_model_alias(model, d.alias, version)
    log(f"{model} v{version} -> InferenceService {ns}/{name} ({storage}{', RAG ' + rag if rag else ''})")
    try:
        if previous is None:
            applied = api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, obj)
        else:
            obj["metadata"]["resourceVersion"] = previous["metadata"]["resourceVersion"]
            applied = api.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, obj)
    except ApiException as exc:
        _restore_alias(c, model, d.alias, previous_alias)
        raise RuntimeError(f"the API server refused InferenceService {ns}/{name}: {exc.status} {exc.reason}: "
                           f"{exc.body}") from None
    generation = (applied.get("metadata") or {}).get("generation")
    why, deadline = "", time.monotonic() + d.timeout_s
    while time.monotonic() < deadline:
        current = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        outcome, why = state(current, generation)
        if outcome == "ready":
            log(f"InferenceService {ns}/{name} is Ready at {why}; alias {d.alias} -> v{version}")
            return Deployment(name, ns, model, version, storage, rag, why)
        if outcome == "failed":
            break
        time.sleep(poll_s)
    else:
        why = f"not Ready after {d.timeout_s}s ({why})"
    _restore_alias(c, model, d.alias, previous_alias)
    if previous is None:
        api.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        kept = "the new InferenceService was deleted (nothing served before)"
    else:
        back = {k: previous[k] for k in ("apiVersion", "kind", "spec")}
        latest = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        back["metadata"] = {**{k: v for k, v in previous["metadata"].items()
                               if k in ("name", "namespace", "labels", "annotations")},
                            "resourceVersion": latest["metadata"]["resourceVersion"]}
        api.replace_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, back)
        kept = "the previous spec is restored and keeps serving"
    was = f"v{previous_alias}" if previous_alias else "no version"
    raise RuntimeError(f"InferenceService {ns}/{name} for {model} v{version} failed: {why}. Rolled back: alias "
                       f"{d.alias} -> {was}; {kept} (kubectl -n {ns} describe inferenceservice {name})")
