"""``python -m shipyard.serving MODEL_URI [--host H] [--port P] ...``: the runtime's container entry point.

The flags are ``shipyard.serving.options.ServeOptions``'s fields, as ``shipyard serve`` has them.
"""

import argparse

from shipyard.serving.options import add_arguments, from_namespace


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m shipyard.serving", description=__doc__)
    ap.add_argument("model_uri", help="models:/NAME@ALIAS or a model directory (e.g. /mnt/models)")
    add_arguments(ap)
    args = ap.parse_args(argv)
    from shipyard.serving.server import serve_model

    serve_model(args.model_uri, from_namespace(args))


if __name__ == "__main__":
    main()
