"""Shipyard: the generative-AI lifecycle as Kubeflow Pipelines, tracked in MLflow, served on KServe."""

import logging as _logging

__version__ = "0.1.0"

# torchao (weight-only quantization) tries its optional CUDA kernels at import and warns, in every
# process that imports transformers' quantizers, that a CPU machine cannot load them. Real errors
# still surface: they are raised, not logged.
_logging.getLogger("torchao").setLevel(_logging.ERROR)
