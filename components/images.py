"""The components' image pins, where Kubeflow's convention looks for them (one module pins every tag).

The pins themselves live in the library (``shipyard.images``, the lowest layer), so the stages and the
Kubernetes builders read the same values without importing upward into the components.
"""

from shipyard.images import REGISTRY, SHIPYARD_GPU_IMAGE, SHIPYARD_IMAGE

__all__ = ["REGISTRY", "SHIPYARD_GPU_IMAGE", "SHIPYARD_IMAGE"]
