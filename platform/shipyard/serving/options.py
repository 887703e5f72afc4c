"""The runtime's options, spelled once: ``python -m shipyard.serving`` (the container) and ``shipyard serve``
(one machine) both build a ``ServeOptions``, with these defaults and these help texts.

Nothing heavy is imported here: the CLI reads the defaults while it builds ``--help``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import get_args

from shipyard.schema import Device, Dtype


@dataclass(frozen=True)
class Limits:
    """Batching and back-pressure of the runtime (``--max-batch-size ...``)."""

    max_batch_size: int = 8
    max_queue: int = 64
    request_timeout_s: float = 120.0


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class ServeOptions:
    """Everything the runtime is started with but the model; field names are the flags (``--max-new-tokens``)."""

    host: str = _opt("127.0.0.1", "Bind address (loopback unless told otherwise).")
    port: int = _opt(8080, "HTTP port.")
    name: str | None = _opt(None, "Served model name (default: from the URI).")
    max_new_tokens: int = _opt(64, "Default max_tokens of a request that sets none.")
    max_batch_size: int = _opt(Limits.max_batch_size, "Sequences decoded together (a request joins the running "
                                                      "batch at its next step).")
    max_queue: int = _opt(Limits.max_queue, "Waiting sequences before answering 429 (streams count too).")
    request_timeout_s: float = _opt(Limits.request_timeout_s, "Per-request limit, queueing included (504 after; "
                                                              "a stream past it ends with an error event).")
    max_body_kb: int = _opt(2048, "Largest request body in KiB (413 above it).")
    adapter: tuple[str, ...] = _opt((), "NAME=DIR: a LoRA adapter served as model NAME on the same base (repeatable).",
                                    repeat=True)
    engine: str = _opt("auto", "auto, transformers, llamacpp or vllm (auto: llama.cpp for a model directory with a "
                                "GGUF export on a CPU without adapters, else transformers; vllm: generation by the "
                                "vLLM server at --vllm-url).",
                       choices=("auto", "transformers", "llamacpp", "vllm"))
    vllm_url: str = _opt("http://127.0.0.1:8001/v1", "--engine vllm: the vLLM OpenAI server that generates (its /v1 "
                                                     "base; the chart's vllm container in the same pod).")
    vllm_wait_s: float = _opt(900.0, "--engine vllm: how long to wait at start for that server to list a model.")
    device: Device = _opt("auto", "auto, cpu or cuda (auto: a GPU when one is visible; a quantized model runs "
                                  "where its kernels do).", choices=get_args(Device))
    dtype: Dtype = _opt("auto", "auto, float32, bfloat16 or float16: a float model's weights (auto: bfloat16 on "
                                "a GPU, else float32).", choices=get_args(Dtype))
    rag_url: str | None = _opt(None, "The RAG sidecar (e.g. http://127.0.0.1:8081 in the same pod); RAG on for "
                                     "every request.")
    rag_top_k: int = _opt(4, "Chunks retrieved per request unless it asks.")
    rag_timeout_s: float = _opt(2.0, "Retrieval limit; past it, the request is answered without RAG.")
    rag_context_tokens: int = _opt(512, "Tokens a RAG request may fill (sources, question and max_tokens), as the "
                                        "eval's rag suite measures it (evaluate.context_length): small models "
                                        "answer worse from long contexts.")
    app_prompt: str | None = _opt(None, "The fewshot app's prompt: a PromptSpec YAML file, or a prompt in MLflow's "
                                        "registry (NAME@ALIAS, NAME/VERSION).")
    app_examples: str | None = _opt(None, "A JSONL pool of fewshot examples ({input, output} or {question, "
                                          "rationale}) that app.select similar picks from (default: the prompt's).")
    memory_turns: int = _opt(8, "Exchanges a conversation remembers (the conversation field); 0: no memory.")
    memory_conversations: int = _opt(1000, "Conversations remembered per tenant (the least recently used is "
                                           "forgotten; idle ones after an hour).")
    guardrails: str | None = _opt(None, "Input, output and source rails: a YAML file with a guardrails: section "
                                        "(pipelines/guardrails/default.yaml; a profile will do).")

    def limits(self) -> Limits:
        return Limits(self.max_batch_size, self.max_queue, self.request_timeout_s)


DEFAULTS = ServeOptions()
HELP = {f.name: f.metadata["help"] for f in fields(ServeOptions)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per field of ServeOptions, with its default, help and choices."""
    for f in fields(ServeOptions):
        flag = "--" + f.name.replace("_", "-")
        if f.metadata.get("repeat"):
            parser.add_argument(flag, action="append", default=[], metavar="NAME=DIR", help=f.metadata["help"])
            continue
        kind = type(f.default) if f.default is not None else str
        parser.add_argument(flag, type=kind, default=f.default, choices=f.metadata.get("choices"),
                            help=f.metadata["help"])


def from_namespace(args: argparse.Namespace) -> ServeOptions:
    values = {f.name: getattr(args, f.name) for f in fields(ServeOptions)}
    return ServeOptions(**{**values, "adapter": tuple(values["adapter"])})
