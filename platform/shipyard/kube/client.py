"""The Kubernetes API client for the code that runs in pipeline pods (in-cluster) or at a desk (kubeconfig)."""

from __future__ import annotations

SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def custom_objects_api(why: str):
    """A CustomObjectsApi, or a RuntimeError saying why a cluster was needed."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except Exception as exc:  # any failure means: no cluster to talk to
            raise RuntimeError(f"no Kubernetes API configured (in-cluster or kubeconfig): {why} ({exc})") from None
    return client.CustomObjectsApi()


def current_namespace() -> str:
    """The pod's namespace in a cluster, else the kubeconfig context's, else "default"."""
    try:
        with open(SA_NAMESPACE) as f:
            return f.read().strip()
    except OSError:
        pass
    try:
        from kubernetes import config

        _, ctx = config.list_kube_config_contexts()
        return (ctx or {}).get("context", {}).get("namespace") or "default"
    except Exception:  # no kubeconfig
        return "default"
