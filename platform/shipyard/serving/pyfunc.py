"""The MLflow pyfunc face of a Shipyard model: ``mlflow.pyfunc.load_model(uri).predict(prompts)``.

Logged as "models from code" (``pyfunc_entry.py``), so loading unpickles nothing: the weights are
safetensors in the model's ``artifacts/model`` folder and are read by ``load_causal_lm``.
"""

from __future__ import annotations

import mlflow


class ShipyardCausalLM(mlflow.pyfunc.PythonModel):
    """Greedy or sampled text generation from a list of prompts (or a DataFrame column ``prompt``)."""

    def load_context(self, context) -> None:
        from shipyard.models.causal_lm import load_causal_lm, load_tokenizer

        self.model = load_causal_lm(context.artifacts["model"])
        self.tokenizer = load_tokenizer(context.artifacts["model"])

    def predict(self, context, model_input, params: dict | None = None) -> list[str]:
        from shipyard.models.inference import generate

        if hasattr(model_input, "columns"):  # a DataFrame: the "prompt" column, else the first one
            col = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
            prompts = list(model_input[col])
        else:
            prompts = list(model_input)
        params = params or {}
        return generate(self.model, self.tokenizer, [str(p) for p in prompts],
                        int(params.get("max_new_tokens", 32)))
