"""The one place that pins the container images of every Shipyard component.

kfp.local's SubprocessRunner ignores images (it runs in the current environment); on a cluster
each component runs in ``SHIPYARD_IMAGE`` (CPU) or ``SHIPYARD_GPU_IMAGE``, built from
``components/images/Dockerfile*`` with this version of the package installed.
"""

import os

from shipyard import __version__

REGISTRY = os.environ.get("SHIPYARD_IMAGE_REGISTRY", "ghcr.io/shipyard-llmops")
SHIPYARD_IMAGE = f"{REGISTRY}/shipyard:{__version__}"
SHIPYARD_GPU_IMAGE = f"{REGISTRY}/shipyard-cuda:{__version__}"
