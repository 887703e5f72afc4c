"""Models-from-code entry point that MLflow executes when it loads a Shipyard pyfunc model."""

import mlflow

from shipyard.serving.pyfunc import ShipyardCausalLM

mlflow.models.set_model(ShipyardCausalLM())
