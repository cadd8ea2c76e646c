"""``signals serve``: serving's command, added to ``signals`` by :func:`register`
(``signals/cli.py``).

    signals serve              vLLM + the classification API

Heavy imports happen inside the commands, so ``signals --help`` answers at once.
"""

from __future__ import annotations

import argparse


# --- commands ----------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    from serve.server import run_server

    overrides = {k: v for k, v in {
        "backend": args.backend, "host": args.host, "port": args.port,
        "vllm_url": args.vllm_url, "vllm_port": args.vllm_port,
        "threshold": args.threshold}.items() if v is not None}
    from serve.config import ServeConfig

    return run_server(ServeConfig(**overrides), preload=args.adapter or [])


# --- parser ------------------------------------------------------------------------

def register(commands: argparse._SubParsersAction) -> None:
    """Add ``serve`` to ``signals``."""
    serve = commands.add_parser(
        "serve", help="start vLLM (unless --vllm-url) and the classification API",
        description="Settings also read SIGNALS_SERVE_<FIELD> environment variables "
        "(see serve/config.py).")
    serve.add_argument("--backend", choices=["vllm", "inprocess"])
    serve.add_argument("--host")
    serve.add_argument("--port", type=int, help="API port (default 8000)")
    serve.add_argument("--vllm-url", help="use a running vLLM server instead of starting one")
    serve.add_argument("--vllm-port", type=int, help="port for the vLLM started here (default 8100)")
    serve.add_argument("--threshold", type=float, help="default P(signal) threshold (0.5)")
    serve.add_argument("--adapter", action="append", metavar="NAME",
                       help="registry adapter to load at start (repeatable)")
    serve.set_defaults(func=cmd_serve)
