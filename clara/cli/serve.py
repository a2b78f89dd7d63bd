"""``clara serve``: the latent-space retrieval server over a bank (DESIGN §9)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
from pathlib import Path

from clara.cli.args import add_precision_argument, add_threads_argument, positive_int, set_threads

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    from clara.cli.index import MODEL_HELP

    p = subparsers.add_parser(
        "serve", help="serve retrieval and answers over HTTP",
        description="FastAPI server: GET /health, POST /v1/retrieve, POST /v1/answer, POST /retrieve "
        "(Search-R1/FlashRAG protocol); OpenAPI schema at /openapi.json, docs at /docs.",
    )
    p.add_argument("--bank", required=True, type=Path, help="bank directory from `clara index build`")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--backbone", default=None, help="backbone directory, if not the one recorded with the adapters")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default %(default)s)")
    p.add_argument("--k-max", type=positive_int, default=20, help="largest k a request may ask for (default %(default)s)")
    p.add_argument("--max-batch", type=positive_int, default=16, help="requests per model batch (default %(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a batch waits for more requests, in ms (default %(default)s)")
    p.add_argument("--queue-size", type=positive_int, default=256,
                   help="requests waiting per endpoint before 429 (default %(default)s)")
    p.add_argument("--max-body-bytes", type=positive_int, default=1 << 20, help="largest request body; 413 above (default %(default)s)")
    p.add_argument("--max-queries", type=positive_int, default=64, help="queries per request (default %(default)s)")
    p.add_argument("--verify", choices=["sha256", "size"], default="sha256",
                   help="bank check at start-up: every sha256 (default) or file sizes only (fast, large banks)")
    p.add_argument("--nprobe", type=positive_int, default=None, help="ivf lists searched per query (default: the bank's)")
    add_threads_argument(p)
    add_precision_argument(p, "the query encoder's and generator's forwards")
    p.set_defaults(func=run)


def run(args) -> int:
    import uvicorn

    from clara.errors import ConfigError
    from clara.serving.schema import ServerSettings
    from clara.serving.server import create_app, load_for_serving

    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        log.warning("binding %s: the server has no authentication; anyone who can reach it can query it", args.host)
    settings = ServerSettings(k_max=args.k_max, default_k=min(5, args.k_max), default_topk=min(3, args.k_max),
                              max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue_size=args.queue_size,
                              max_body_bytes=args.max_body_bytes, max_queries=args.max_queries)
    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a TCP port")
    set_threads(args.threads)
    model, bank = load_for_serving(args.bank, args.model, backbone=args.backbone, verify=args.verify, nprobe=args.nprobe,
                                   precision=args.precision)
    app = create_app(settings, model=model, bank=bank)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m clara.cli.serve ...``: the same as ``clara serve ...``."""
    import sys

    from clara.cli.args import VERBOSE_HELP, add_verbose_everywhere
    from clara.cli.console import configure_logging
    from clara.errors import ClaraError

    parser = argparse.ArgumentParser(prog="python -m clara.cli.serve")
    register(parser.add_subparsers(dest="command"))
    add_verbose_everywhere(parser)
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    configure_logging(verbose=args.verbose)
    try:
        return run(args)
    except ClaraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
