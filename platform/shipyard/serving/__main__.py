"""``python -m shipyard.serving MODEL_URI [--host H] [--port P]``: the runtime's container entry point."""

import argparse

from shipyard.models.device import DEVICES, DTYPES
from shipyard.serving.server import serve_model


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m shipyard.serving", description=__doc__)
    ap.add_argument("model_uri", help="models:/NAME@ALIAS or a model directory (e.g. /mnt/models)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--name", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--max-batch-size", type=int, default=8, help="requests per generation batch")
    ap.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a request waits for a batch")
    ap.add_argument("--max-queue", type=int, default=64, help="queued requests before 429")
    ap.add_argument("--request-timeout-s", type=float, default=120.0, help="per-request limit (504 after)")
    ap.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                    help="a LoRA adapter served as model NAME on the same base (repeatable)")
    ap.add_argument("--device", default="auto", choices=DEVICES,
                    help="auto: the pod's GPU when it has one, else the CPU (a quantized model runs where its kernels do)")
    ap.add_argument("--dtype", default="auto", choices=DTYPES,
                    help="weights of a float model; auto: bfloat16 on a GPU that has it, else float32")
    ap.add_argument("--rag-url", default=None,
                    help="the RAG sidecar (e.g. http://127.0.0.1:8081 in the same pod); RAG on for every request")
    ap.add_argument("--rag-top-k", type=int, default=4, help="chunks retrieved per request unless it asks")
    ap.add_argument("--rag-timeout-s", type=float, default=2.0, help="retrieval limit; past it, answer without RAG")
    args = ap.parse_args()
    from shipyard.serving.openai_api import Limits
    from shipyard.serving.server import parse_adapters

    limits = Limits(args.max_batch_size, args.max_wait_ms, args.max_queue, args.request_timeout_s)
    from shipyard.serving.rag import RagSettings

    rag = RagSettings(args.rag_url, top_k=args.rag_top_k, timeout_s=args.rag_timeout_s) if args.rag_url else None
    serve_model(args.model_uri, args.host, args.port, args.name, args.max_new_tokens, limits=limits,
                adapters=parse_adapters(args.adapter), rag=rag, device=args.device, dtype=args.dtype)


if __name__ == "__main__":
    main()
