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
        "(Search-R1/FlashRAG protocol); OpenAPI schema at /openapi.json, docs at /docs. It binds 127.0.0.1 "
        "unless --host says otherwise; beyond this machine give --api-key-file. Retrieval goes before answers "
        "and between their decoding steps. It checks BANK/manifest.json every --reload-seconds and swaps in a bank "
        "that changed (`clara index add`), without a restart; requests in flight finish on the old one, and a bank "
        "of another model is refused (logged, and shown by /health). SIGTERM or Ctrl-C: requests in flight get "
        "--drain-seconds to finish, then 503, then it exits.",
    )
    p.add_argument("--bank", required=True, type=Path, help="bank directory from `clara index build`")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--backbone", default=None, help="backbone directory, if not the one recorded with the adapters")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default %(default)s: this machine only; 0.0.0.0 is every interface, "
                   "then use --api-key-file)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default %(default)s)")
    p.add_argument("--api-key-file", type=Path, default=None,
                   help="file holding an API key (one line): every request but GET /health must then send "
                   "'Authorization: Bearer <key>', else 401 (default: no key)")
    p.add_argument("--k-max", type=positive_int, default=20, help="largest k a request may ask for, at most 1024 "
                   "(default %(default)s)")
    p.add_argument("--work-budget", type=positive_int, default=4096,
                   help="the most work one /v1/answer may ask for, in token positions: question tokens + k × m "
                   "memory slots + max_new_tokens; over it is 422 (default %(default)s)")
    p.add_argument("--max-batch", type=positive_int, default=16, help="requests per model batch (default %(default)s)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a batch waits for more requests, 0 to 1000 ms (default %(default)s)")
    p.add_argument("--queue-size", type=positive_int, default=256,
                   help="requests waiting per endpoint before 429 (default %(default)s)")
    p.add_argument("--max-body-bytes", type=positive_int, default=1 << 20, help="largest request body; 413 above (default %(default)s)")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a request body may take to arrive whole; 408 and the connection closed after "
                   "(default %(default)s)")
    p.add_argument("--drain-seconds", type=float, default=10.0,
                   help="on SIGTERM or Ctrl-C, how long requests in flight may take to finish before they get 503 "
                   "and the server exits, 0 to 3600 (default %(default)s)")
    p.add_argument("--reload-seconds", type=float, default=5.0,
                   help="how often to check the bank's manifest for a changed bank, 0 = never (default %(default)s)")
    p.add_argument("--max-queries", type=positive_int, default=64, help="queries per request (default %(default)s)")
    p.add_argument("--verify", choices=["sha256", "size"], default="sha256",
                   help="bank check at start-up and at each reload: every sha256 (default) or file sizes only "
                   "(fast, large banks)")
    p.add_argument("--nprobe", type=positive_int, default=None, help="ivf lists searched per query (default: the bank's)")
    p.add_argument("--compile-search", action=argparse.BooleanOptionalAction, default=True,
                   help="compile the CPU bank search's fused one-query product at start (seconds; it reads a bf16 "
                        "bank up to 1.7x faster; needs a C++ compiler, else the search runs without it). Default on")
    add_threads_argument(p)
    add_precision_argument(p, "the query encoder's and generator's forwards")
    p.set_defaults(func=run)


def run(args) -> int:
    from clara.errors import ConfigError
    from clara.serving.bank import MemoryBank
    from clara.serving.guards import read_api_key
    from clara.serving.schema import ServerSettings
    from clara.serving.server import DrainingServer, create_app, load_for_serving

    # every flag is checked before the bank or the model is touched
    settings = ServerSettings(k_max=args.k_max, default_k=min(5, args.k_max), default_topk=min(3, args.k_max),
                              max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, queue_size=args.queue_size,
                              max_body_bytes=args.max_body_bytes, max_queries=args.max_queries,
                              work_budget=args.work_budget, body_timeout_s=args.body_timeout,
                              drain_s=args.drain_seconds, reload_s=args.reload_seconds)
    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a TCP port")
    api_key = read_api_key(args.api_key_file) if args.api_key_file is not None else None
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback and api_key is None:
        log.warning("binding %s without --api-key-file: anyone who can reach it can query it", args.host)
    set_threads(args.threads)
    model, bank = load_for_serving(args.bank, args.model, backbone=args.backbone, verify=args.verify, nprobe=args.nprobe,
                                   precision=args.precision)
    if args.compile_search:
        bank.compile_search()

    def reopen(directory):
        return MemoryBank.open(directory, verify=args.verify, nprobe=args.nprobe)

    app = create_app(settings, model=model, bank=bank, api_key=api_key, reopen_bank=reopen)
    server = DrainingServer(app, host=args.host, port=args.port, log_level="info")
    server.run()
    if not server.started:
        raise ConfigError(f"the server did not start on {args.host}:{args.port} (see the log above)")
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
