"""``python -m recbole_onevision.serve --checkpoint saved/<run>.pth [--checkpoint name=saved/<other>.pth]``

Serves the runs over HTTP (FastAPI on uvicorn): the page at ``/``, ``POST /search``, OpenAPI
docs at ``/docs``. Requests to one run are micro-batched (``--batch-size``, ``--batch-wait-ms``;
``--batch-size 1`` turns it off).
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m recbole_onevision.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, metavar="[NAME=]PATH",
                        help="a run to serve (repeat for several; NAME defaults to the model's)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=16, help="requests per model call (1: no batching)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0,
                        help="how long a request waits for others to share its model call (default 5)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body (default 10)")
    return parser.parse_args(argv)


def named_checkpoints(specs: list[str]) -> list[tuple[str | None, str]]:
    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        out.append((name, path) if sep and not name.endswith((".pth", "/")) else (None, spec))
    return out


def load_searchers(specs: list[str]) -> dict:
    from recbole_onevision.search import Searcher

    searchers = {}
    for name, path in named_checkpoints(specs):
        searcher = Searcher.from_checkpoint(path)
        name = name or searcher.run.config["model"]
        base, n = name, 2
        while name in searchers:
            name, n = f"{base}-{n}", n + 1
        searchers[name] = searcher
    return searchers


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning)  # RecBole's pandas idioms, while loading
    import uvicorn

    from recbole_onevision.search import RunError, SearchError
    from recbole_onevision.serve.app import create_app
    from recbole_onevision.serve.batching import Batching

    try:
        batching = Batching(args.batch_size, args.batch_wait_ms)
        searchers = load_searchers(args.checkpoint)
    except (RunError, SearchError, FileNotFoundError, ValueError) as err:
        sys.exit(f"serve: error: {err}")
    app = create_app(searchers, batching, int(args.max_upload_mb * 2 ** 20))
    print(f"serving {', '.join(searchers)} on http://{args.host}:{args.port}/ (API docs: /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
