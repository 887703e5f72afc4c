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
    args = ap.parse_args()
    serve_model(args.model_uri, args.host, args.port, args.name, args.max_new_tokens)


if __name__ == "__main__":
    main()
