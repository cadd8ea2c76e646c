"""Ensemble versions: an adapter and the tuned lexical model, combined on validation.

An SFT adapter and a bag-of-words model err on different articles: the adapter reads a
capped prompt (128-384 tokens) and learns from its labels, the lexical model reads the
whole article and weighs single words. :func:`build_ensemble` takes a calibrated
adapter version and, on the same validation window its calibration was fitted on
(the last ``validation_days`` of its training split, never trained on by either half):

1. chooses the lexical model on that window (:func:`classify.lexical.select_lexical`,
   fitted on the days before it, as the adapter was);
2. scores the window with the adapter (raw P, in this process or on a running vLLM
   server) and with the lexical model (its margin);
3. fits the stacking weights and the F1-optimal threshold there
   (:func:`classify.calibration.fit_ensemble`);
4. publishes a new version: the adapter's files copied, the lexical model beside them
   (``lexical.joblib``), the manifest's ``ensemble`` section naming both parts, the
   weights and the window's metrics of the ensemble and of each part alone.

The serving classifier answers an ensemble version with the combined P at its own
threshold, on either backend (:meth:`classify.classifier.SignalClassifier.decision`);
the adapter alone stays a version of its own. Whether to serve the ensemble is decided
on the validation metrics recorded here (``after`` against ``adapter_alone``), never on
a test window.
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path

from pipeline.article import Article
from pipeline.dataset import labelled_sample, load_split, read_manifest
from classify.backends import VLLMEndpoint
from classify.calibration import fit_ensemble, window_metrics
from classify.lexical import LEXICAL_GRID, LexicalParams, select_lexical
from classify.registry import ADAPTER_FILES, AdapterRegistry, AdapterVersion
from classify.validation import raw_p_signal, split_off_validation

log = logging.getLogger(__name__)


def build_ensemble(registry: AdapterRegistry, name_or_alias: str, dataset: Path,
                   validation_days: int, vllm: VLLMEndpoint | None = None,
                   grid: list[LexicalParams] | None = None, limit: int | None = None,
                   seed: int = 0,
                   scored: tuple[list[Article], list[float]] | None = None) -> AdapterVersion:
    """Combine a calibrated adapter version with the lexical model chosen on its
    validation window; publish the ensemble as a new version (see the module docstring).

    ``limit``: fit the weights on a seeded random sample of the window (tests, a quick
    look); the lexical model is still chosen on the whole window. ``scored``: the
    window's articles with the adapter's raw P already computed (training passes what
    its calibration scored), instead of scoring them again."""
    source = registry.resolve(name_or_alias)
    calibration = source.calibration
    if calibration is None:
        raise ValueError(f"{source.name} has no calibration: an ensemble is fitted on the "
                         "validation window its calibration was fitted on")
    if source.manifest.ensemble is not None:
        raise ValueError(f"{source.name} is already an ensemble version")
    base_model = source.manifest.base_model
    if base_model is None:
        raise ValueError(f"adapter {source.name} records no base_model")
    split = calibration.fitted_on.split
    train = load_split(dataset, split)
    _, window, first, last = split_off_validation(train, validation_days)
    window = labelled_sample(window)
    if (first, last) != (calibration.fitted_on.date_from, calibration.fitted_on.date_to):
        raise ValueError(f"{source.name} was calibrated on {calibration.fitted_on.date_from}.."
                         f"{calibration.fitted_on.date_to}, not on the last {validation_days} "
                         f"days of {split} ({first}..{last}): pass its validation_days")
    name = read_manifest(dataset).name
    lexical = select_lexical(train, validation_days, grid or LEXICAL_GRID, name, split).model
    if scored is not None:
        articles, p_raw = scored
        if len(articles) != len(p_raw) or {a.id for a in articles} - {a.id for a in window}:
            raise ValueError("scored: one raw P per labelled article of the validation "
                             f"window {first}..{last}")
        window = list(articles)
    else:
        window = labelled_sample(window, limit, seed)
        p_raw = raw_p_signal(base_model, source.path, window, source.prompt_cap(),
                             style=source.prompt_style, vllm=vllm)
    labels = [a.signal for a in window]
    adapter_alone = window_metrics(labels, [calibration.apply(p) for p in p_raw],
                                   calibration.threshold)
    lexical_alone = window_metrics(labels, lexical.p_signal(window),
                                   lexical.calibration.threshold)
    spec = fit_ensemble(labels, p_raw, lexical.margin(window),
                        lexical.calibration.fitted_on.model_copy(update={
                            "dataset_path": str(Path(dataset).resolve()), "n": len(labels),
                            "signals": sum(labels),
                            "base_rate": round(sum(labels) / len(labels), 6)}),
                        lexical.params.label, adapter_alone, lexical_alone)
    log.info("ensemble of %s and %s on %s..%s: weights %.3f / %.3f, intercept %.3f, "
             "threshold %.3f; F1 there %.4f (adapter alone %.4f, lexical alone %.4f)",
             source.name, spec.lexical, first, last, spec.adapter_weight,
             spec.lexical_weight, spec.intercept, spec.threshold, spec.after.f1,
             adapter_alone.f1, lexical_alone.f1)
    version_name = registry.new_name("ensemble", f"{name}-{split}")
    staging = registry.staging_dir(version_name)
    for file in ADAPTER_FILES:
        shutil.copy2(source.path / file, staging / file)
    lexical.save(staging / spec.lexical_file)
    return registry.publish(version_name, source.manifest.model_copy(update={
        "ensemble": spec, "ensemble_of": source.name,
        "created_at": datetime.now(timezone.utc).replace(microsecond=0)}))
