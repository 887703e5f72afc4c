"""Which engine decodes a model: ``--engine auto|transformers|llamacpp|vllm``.

auto: llama.cpp when the model directory carries a GGUF (``optimize``'s ``gguf`` export), the model runs on
the CPU, no LoRA adapter is attached and libllama loads here; transformers otherwise. vllm is asked for
by name: a vLLM server beside the runtime generates (``serving.vllm_engine``; the chart's GPU values).
The application features (OpenAI routes, RAG, tenancy, limits, metrics) are Shipyard's and the same for
every engine.
"""

from __future__ import annotations

from pathlib import Path

ENGINES = ("auto", "transformers", "llamacpp", "vllm")


def choose_engine(model_dir: Path, requested: str, device: str, adapters: bool) -> tuple[str, Path | None]:
    """(engine, the GGUF it serves or None); a request the model or machine cannot honour fails here."""
    from shipyard.models.gguf import llama_cpp_available, served_gguf

    if requested not in ENGINES:
        raise ValueError(f"engine {requested!r}: one of {ENGINES}")
    if requested == "vllm":  # generation by a vLLM server (serving.vllm_engine); Shipyard keeps everything else
        if adapters:
            raise ValueError("--engine vllm serves the base model: LoRA adapters need --engine transformers")
        return "vllm", None
    gguf = served_gguf(model_dir)
    if requested == "transformers":
        return "transformers", None
    if requested == "llamacpp":
        if gguf is None:
            raise ValueError(f"--engine llamacpp: {model_dir} has no GGUF (export one with optimize's gguf: "
                             "section, or serve it with --engine transformers)")
        if adapters:
            raise ValueError("--engine llamacpp serves one merged model: LoRA adapters need --engine transformers")
        if device == "cuda":
            raise ValueError("--engine llamacpp runs on the CPU (libllama is built without CUDA); use transformers")
        if not llama_cpp_available():
            raise ValueError("--engine llamacpp needs libllama, built by `make install` (scripts/build_llama.py)")
        return "llamacpp", gguf
    on_cpu = device == "cpu" or (device == "auto" and not _cuda())
    if gguf is not None and on_cpu and not adapters and llama_cpp_available():
        return "llamacpp", gguf
    return "transformers", None


def _cuda() -> bool:
    from shipyard.models.device import cuda_available

    return cuda_available()
