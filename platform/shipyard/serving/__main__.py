"""``python -m shipyard.serving MODEL_URI [--host H] [--port P]``: the runtime's container entry point."""

import argparse

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
    args = ap.parse_args()
    from shipyard.serving.openai_api import Limits
    from shipyard.serving.server import parse_adapters

    limits = Limits(args.max_batch_size, args.max_wait_ms, args.max_queue, args.request_timeout_s)
    serve_model(args.model_uri, args.host, args.port, args.name, args.max_new_tokens, limits=limits,
                adapters=parse_adapters(args.adapter))


if __name__ == "__main__":
    main()
