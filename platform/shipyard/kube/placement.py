"""Put a pipeline's tasks where the profile's ``cluster:`` section says (kfp-kubernetes), at compile time.

Pipelines stay cluster-agnostic (the same DAG runs on kfp.local); ``place`` rebuilds one with, for
every task: the MLflow and S3 Secrets as env (``use_secret_as_env``); for rag_index and evaluate the
chart's Feast ConfigMap as their repo and the Postgres password; and for the stages
``cluster.placement`` gives a pool: the CUDA image, the accelerator type and count, the pool's node
selector and tolerations, and its CPU/memory limits. ``pipeline_root`` becomes the IR's default root.
"""

from __future__ import annotations

import functools

from shipyard.kube.cluster_config import MLFLOW_SECRET_ENV, POSTGRES_SECRET_ENV, S3_SECRET_ENV

# Feast users: the chart's feature_store.yaml, rows in S3, the Postgres password. rag_index writes an
# index version; evaluate reads it back for its rag suites (the sidecar's own search).
RAG_STAGES = ("rag_index", "evaluate")


def stage_of(task) -> str:
    return task.component_spec.name.replace("-", "_")


def place_task(task, cluster) -> None:
    from kfp import kubernetes

    from shipyard.images import SHIPYARD_GPU_IMAGE

    if cluster.secrets.mlflow:
        kubernetes.use_secret_as_env(task, cluster.secrets.mlflow, dict(MLFLOW_SECRET_ENV))
    if cluster.secrets.s3:
        kubernetes.use_secret_as_env(task, cluster.secrets.s3, dict(S3_SECRET_ENV))
    if stage_of(task) in RAG_STAGES:
        kubernetes.use_config_map_as_volume(task, cluster.feast.configmap, mount_path=cluster.feast.mount_path)
        task.set_env_variable("SHIPYARD_FEAST_REPO", cluster.feast.mount_path)
        task.set_env_variable("SHIPYARD_FEAST_DATA", cluster.feast.data_uri)
        if cluster.secrets.postgres:
            kubernetes.use_secret_as_env(task, cluster.secrets.postgres, dict(POSTGRES_SECRET_ENV))
    pool = cluster.pool_for(stage_of(task))
    if pool is None:
        return
    task.set_container_image(SHIPYARD_GPU_IMAGE)
    task.set_accelerator_type(pool.accelerator).set_accelerator_limit(pool.count)
    if pool.cpu:
        task.set_cpu_limit(pool.cpu)
    if pool.memory:
        task.set_memory_limit(pool.memory)
    for key, value in sorted(pool.node_selector.items()):
        kubernetes.add_node_selector(task, key, value)
    for t in pool.tolerations:
        kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value, effect=t.effect)


def place(pipeline, cluster):
    """The same pipeline, rebuilt with every task placed per ``cluster`` (a ClusterConfig)."""
    from kfp import dsl
    from kfp.dsl import pipeline_context

    func = pipeline.pipeline_func

    @functools.wraps(func)
    def placed(*args, **kwargs):
        out = func(*args, **kwargs)
        for task in pipeline_context.Pipeline.get_default_pipeline().tasks.values():
            place_task(task, cluster)  # a profile places every pipeline: stages this one lacks are unused
        return out

    return dsl.pipeline(name=pipeline.name, description=pipeline.description,
                        pipeline_root=cluster.pipeline_root)(placed)
