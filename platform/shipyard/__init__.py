"""Shipyard: the generative-AI lifecycle as Kubeflow Pipelines, tracked in MLflow, served on KServe."""

__version__ = "0.1.0"
