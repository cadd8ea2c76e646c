"""The validation window and fitting an adapter's calibration on a labelled window.

The validation window is the last ``validation_days`` calendar days of the training
split: carved off before the training slice is drawn, so it follows the training data
in time and is never trained on. After training, the staged adapter's raw P(signal)
on that window — computed by the serving backend (transformers + peft in process) from
the same prompts the API renders — gives the :class:`~classify.calibration.Calibration`
that goes into the manifest.

:func:`recalibrate` does the same for an existing registry version on a newer labelled
window, without retraining, and publishes the result as a new version (same adapter
weights, copied) whose manifest names the version it came from; the old one is never
edited.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

from pipeline.article import Article
from pipeline.dataset import labelled_sample, load_split, publication_day, read_manifest
from pipeline.prompt import PromptStyle
from classify.backends import (INPROCESS_DTYPE, AdapterLoadError, BackendTimeout,
                            BackendUnavailable, InProcessBackend, VLLMEndpoint)
from classify.calibration import Calibration, CalibrationWindow, fit_calibration
from classify.registry import ADAPTER_FILES, AdapterRegistry, AdapterVersion

log = logging.getLogger(__name__)


@dataclass
class WindowArticles:
    """Labelled articles of one window of a dataset split, with where they came from."""

    articles: list[Article]
    dataset: str
    dataset_path: Path
    split: str
    date_from: date
    date_to: date

    def describe(self) -> CalibrationWindow:
        signals = sum(a.signal for a in self.articles)
        return CalibrationWindow(
            dataset=self.dataset, dataset_path=str(self.dataset_path), split=self.split,
            date_from=self.date_from, date_to=self.date_to, n=len(self.articles),
            signals=signals, base_rate=round(signals / len(self.articles), 6))


def split_off_validation(articles: Sequence[Article], days: int
                         ) -> tuple[list[Article], list[Article], date, date]:
    """``(before, window, window_from, window_to)``: the last ``days`` calendar days of
    ``articles`` (by publication day, ending on the last day present) and the rest."""
    if not articles:
        raise ValueError("no articles to carve a validation window from")
    last = max(publication_day(a) for a in articles)
    first = last - timedelta(days=days - 1)
    before = [a for a in articles if publication_day(a) < first]
    window = [a for a in articles if publication_day(a) >= first]
    if not before:
        raise ValueError(f"validation_days={days} leaves nothing to train on: the split "
                         f"spans only {first:%Y-%m-%d}..{last:%Y-%m-%d}")
    return before, window, first, last


def raw_p_signal(base_model: Path, adapter_dir: Path, articles: Sequence[Article],
                 max_prompt_tokens: int, batch_size: int | None = None,
                 style: PromptStyle = "full", vllm: VLLMEndpoint | None = None) -> list[float]:
    """Uncalibrated P(signal) of ``articles`` under an adapter directory, computed the
    way the API computes it (same prompt, same two-token softmax): in this process
    (transformers + peft), or on the running vLLM server ``vllm``, which hot-loads the
    directory under a name of its own for the duration and unloads it after."""
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from pipeline.prompt import encode_prompt, label_token_ids

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    labels = label_token_ids(tokenizer)
    if vllm is not None:
        backend = vllm.backend(labels)
        # vLLM answers "already loaded" for a known name: a fresh one per call.
        name = f"calibrating-{uuid.uuid4().hex[:12]}"
    else:
        backend = InProcessBackend(base_model, labels, batch_size=batch_size)
        name = "calibrating"
    # One event loop for every call: a vLLM backend's connections belong to it.
    runner = asyncio.Runner()
    out: list[float] = []
    loaded = False
    try:
        runner.run(backend.load_adapter(name, Path(adapter_dir)))
        loaded = True
        chunk = 32
        with tqdm(total=len(articles), desc=f"scoring the window ({backend.name})",
                  unit="article") as bar:
            for start in range(0, len(articles), chunk):
                batch = articles[start:start + chunk]
                ids = [encode_prompt(a, tokenizer, max_prompt_tokens, style).token_ids
                       for a in batch]
                out.extend(runner.run(
                    backend.signal_probabilities(ids, [name] * len(ids))))
                bar.update(len(batch))
    finally:
        # Also after a failure: a shared server should not keep a one-off adapter.
        if loaded:
            try:
                runner.run(backend.unload_adapter(name))
            except (BackendUnavailable, BackendTimeout, AdapterLoadError) as error:
                log.warning("could not unload %s from the %s backend: %s", name,
                            backend.name, error)
        runner.run(backend.close())
        runner.close()
    return out


def calibrate_on_window(base_model: Path, adapter_dir: Path, window: WindowArticles,
                        max_prompt_tokens: int,
                        method: Literal["platt", "temperature"] = "platt",
                        style: PromptStyle = "full",
                        vllm: VLLMEndpoint | None = None) -> Calibration:
    """Score the window with the adapter (in this process, or on the vLLM server
    ``vllm``) and fit its calibration and threshold there."""
    if not window.articles:
        raise ValueError(f"the window {window.date_from}..{window.date_to} of "
                         f"{window.dataset}/{window.split} has no labelled articles")
    p_raw = raw_p_signal(base_model, adapter_dir, window.articles, max_prompt_tokens,
                         style=style, vllm=vllm)
    return fit_on_window(window, p_raw, method,
                         dtype=vllm.dtype if vllm is not None else INPROCESS_DTYPE)


def fit_on_window(window: WindowArticles, p_raw: list[float],
                  method: Literal["platt", "temperature"] = "platt",
                  dtype: str | None = INPROCESS_DTYPE) -> Calibration:
    """Fit the calibration and threshold on the window's raw P (one per article, in
    the window's order, computed in ``dtype``), logging what it found."""
    calibration = fit_calibration([a.signal for a in window.articles], p_raw,
                                  window.describe(), method, dtype)
    log.info("calibration on %d articles (%s..%s, base rate %.3f): %s a=%.3f b=%.3f, "
             "threshold %.3f, F1 %.3f -> %.3f, ECE %.3f -> %.3f", window.describe().n,
             window.date_from, window.date_to, calibration.fitted_on.base_rate,
             calibration.method, calibration.slope, calibration.intercept,
             calibration.threshold, calibration.before.f1, calibration.after.f1,
             calibration.before.ece, calibration.after.ece)
    return calibration


def load_window(dataset: Path, split: str, date_from: date | None = None,
                date_to: date | None = None, limit: int | None = None,
                seed: int = 0) -> WindowArticles:
    """The labelled articles of ``split`` published in ``[date_from, date_to]``."""
    dataset = Path(dataset)
    manifest = read_manifest(dataset)
    articles = [a for a in load_split(dataset, split)
                if (date_from is None or publication_day(a) >= date_from)
                and (date_to is None or publication_day(a) <= date_to)]
    chosen = labelled_sample(articles, limit, seed)
    if not chosen:
        raise ValueError(f"no labelled articles in {dataset.name}/{split} between "
                         f"{date_from or 'its start'} and {date_to or 'its end'}")
    days = [publication_day(a) for a in articles]
    return WindowArticles(chosen, manifest.name, dataset.resolve(), split,
                          date_from or min(days), date_to or max(days))


def recalibrate(registry: AdapterRegistry, name_or_alias: str, window: WindowArticles,
                base_model: Path | None = None,
                method: Literal["platt", "temperature"] | None = None,
                vllm: VLLMEndpoint | None = None) -> AdapterVersion:
    """Fit ``name_or_alias``'s calibration on ``window`` (scored in this process, or on
    the vLLM server ``vllm``: the faster path for a whole window on a CPU); publish it as
    a new version."""
    source = registry.resolve(name_or_alias)
    base_model = base_model or source.manifest.base_model
    if base_model is None:
        raise ValueError(f"adapter {source.name} records no base_model; pass one")
    previous = source.calibration
    method = method or (previous.method if previous else "platt")
    calibration = calibrate_on_window(base_model, source.path, window,
                                      source.prompt_cap(), method, source.prompt_style,
                                      vllm)
    name = registry.new_name(source.manifest.method or "adapter",
                             f"recal-{window.dataset}-{window.split}")
    staging = registry.staging_dir(name)
    for file in ADAPTER_FILES:
        shutil.copy2(source.path / file, staging / file)
    return registry.publish(name, source.manifest.model_copy(update={
        "calibration": calibration, "recalibrated_from": source.name,
        "created_at": datetime.now(timezone.utc).replace(microsecond=0)}))
