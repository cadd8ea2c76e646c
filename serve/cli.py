"""``signals serve`` and ``signals demo``: serving's commands, added to ``signals`` by
:func:`register` (``signals/cli.py``).

    signals serve              vLLM + the classification API
    signals demo               model, data, training and serving end to end, then classify
                               April articles over HTTP

Heavy imports happen inside the commands, so ``signals --help`` answers at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path


# --- commands ----------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    from serve.server import run_server

    overrides = {k: v for k, v in {
        "backend": args.backend, "host": args.host, "port": args.port,
        "vllm_url": args.vllm_url, "vllm_port": args.vllm_port,
        "threshold": args.threshold}.items() if v is not None}
    from serve.config import ServeConfig

    return run_server(ServeConfig(**overrides), preload=args.adapter or [])


def cmd_demo(args: argparse.Namespace) -> int:
    from serve.demo import DemoOptions, run_demo

    return run_demo(DemoOptions(
        samples=args.samples, train_examples=args.train_examples, train_config=args.config,
        keep_serving=args.keep_serving, port=args.port, vllm_port=args.vllm_port,
        seed=args.seed))


# --- parser ------------------------------------------------------------------------

def register(commands: argparse._SubParsersAction) -> None:
    """Add ``serve`` and ``demo`` to ``signals``."""
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

    demo = commands.add_parser(
        "demo", help="end to end: model, Reuters data, LoRA training, vLLM serving, "
        "classification of April articles over HTTP, confusion matrix")
    demo.add_argument("--samples", type=int, default=300,
                      help="April articles to classify (default 300)")
    demo.add_argument("--train-examples", type=int,
                      help="training examples (default: from the demo config)")
    demo.add_argument("--config", type=Path, help="training config (default: train/configs/demo.yaml)")
    demo.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    demo.add_argument("--vllm-port", type=int, default=8100, help="vLLM port (default 8100)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the April sample")
    demo.add_argument("--keep-serving", action="store_true",
                      help="leave the API and vLLM running after the report (Ctrl-C stops)")
    demo.set_defaults(func=cmd_demo)
