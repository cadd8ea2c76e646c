"""``signals``: the product's command line, composed of every package's commands.

    signals model prepare      materialise the default base model (SmolLM2-135M-Instruct)
    signals data reuters       build the Reuters-21578 dataset with its temporal split
    signals data build|stats|show|import   the data pipeline (pipeline/build.py)
    signals train              train an adapter (lora/loraplus/qlora/dpo/rlhf) as a Ray job
    signals eval               evaluate base/adapters on a split (+ TF-IDF baseline)
    signals experiment         the whole method comparison, with the temporal update
    signals adapters list|show|promote|calibrate   the adapter registry and its aliases
    signals serve              vLLM + the classification API
    signals demo               all of the above end to end, then classify April articles
    signals ingest run|replay|feedback-import|export   the ingestion service (port 8200)
    signals backtest           update policies (frozen, scheduled, drift) replayed over time

Each package registers its own commands (``pipeline/data_cli.py``, ``train/cli.py``,
``serve/cli.py``, ``ingestion/cli.py``); this module only puts them under one parser, in
the order a reader meets the layers. The demo trains, evaluates and serves, so it sits
here, above the packages it composes (``signals/demo.py``). Those modules import their heavy dependencies inside
the commands, so ``signals --help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ingestion import cli as ingestion_cli
from pipeline import data_cli as pipeline_cli
from pipeline.settings import OFFLINE_ENV
from serve import cli as serve_cli
from train import cli as train_cli

for _name, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_name, _value)

log = logging.getLogger("signals")


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        datefmt="[%X]", handlers=[RichHandler(show_path=False)])
    for noisy in ("httpx", "httpx2", "openai", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes warns about optional CPU kernels on every import; QLoRA is not used here.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def cmd_demo(args: argparse.Namespace) -> int:
    from signals.demo import DemoOptions, run_demo

    return run_demo(DemoOptions(
        samples=args.samples, train_examples=args.train_examples, train_config=args.config,
        keep_serving=args.keep_serving, port=args.port, vllm_port=args.vllm_port,
        seed=args.seed))


def register_demo(commands: argparse._SubParsersAction) -> None:
    """Add ``demo`` (``signals/demo.py``): it trains, evaluates and serves, so it is
    composed here, above the packages it uses, not in any one of them."""
    demo = commands.add_parser(
        "demo", help="end to end: model, Reuters data, LoRA training, vLLM serving, "
        "classification of April articles over HTTP, confusion matrix")
    demo.add_argument("--samples", type=int, default=300,
                      help="April articles to classify (default 300)")
    demo.add_argument("--train-examples", type=int,
                      help="training examples (default: from the demo config)")
    demo.add_argument("--config", type=Path,
                      help="training config (default: train/configs/demo.yaml)")
    demo.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    demo.add_argument("--vllm-port", type=int, default=8100, help="vLLM port (default 8100)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the April sample")
    demo.add_argument("--keep-serving", action="store_true",
                      help="leave the API and vLLM running after the report (Ctrl-C stops)")
    demo.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signals", description="Find investment signals in news with fine-tuned LLMs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pipeline_cli.register(commands)
    train_cli.register(commands)
    serve_cli.register(commands)
    register_demo(commands)
    ingestion_cli.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError, TimeoutError) as error:
        log.debug("failed", exc_info=True)
        print(f"signals {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
