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
the order a reader meets the layers. Those modules import their heavy dependencies inside
the commands, so ``signals --help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ingestion import cli as ingestion_cli
from pipeline import data_cli as pipeline_cli
from serve import cli as serve_cli
from train import cli as train_cli

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger("signals")


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        datefmt="[%X]", handlers=[RichHandler(show_path=False)])
    for noisy in ("httpx", "httpx2", "openai", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes warns about optional CPU kernels on every import; QLoRA is not used here.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signals", description="Find investment signals in news with fine-tuned LLMs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pipeline_cli.register(commands)
    train_cli.register(commands)
    serve_cli.register(commands)
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
