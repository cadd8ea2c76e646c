"""The data a training run reads: the bounded, labelled slice of a dataset split, its
provenance, the validation window carved from the split's end (never trained on), and
the preference rows DPO and the reward model read."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import date, timedelta

from classify.validation import WindowArticles, split_off_validation
from pipeline.article import Article
from pipeline.dataset import DatasetManifest, labelled_sample, load_split, read_manifest
from train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """The slice of a dataset split one run trains on, with its provenance, and the
    validation window carved from the split's end (never trained on)."""

    examples: list[Article]
    manifest: DatasetManifest
    split: str
    window: tuple[str, str]
    """First and last publication day the training slice was drawn from."""
    validation: WindowArticles | None = None
    """Where the calibration is fitted after training; None without a window."""

    @property
    def signals(self) -> int:
        return sum(a.signal for a in self.examples)


def select_examples(articles: list[Article], config: TrainConfig) -> list[Article]:
    """The bounded, labelled slice of the split that this run trains on."""
    labelled = [a for a in articles if a.signal is not None]
    rng = random.Random(config.seed)
    if config.max_examples is None or config.max_examples >= len(labelled):
        chosen = labelled
    elif config.sampling == "balanced":
        signals = [a for a in labelled if a.signal == 1]
        others = [a for a in labelled if a.signal == 0]
        n_signals = min(config.max_examples // 2, len(signals))
        chosen = rng.sample(signals, n_signals) + rng.sample(
            others, min(config.max_examples - n_signals, len(others)))
    else:
        chosen = rng.sample(labelled, config.max_examples)
    chosen = list(chosen)
    rng.shuffle(chosen)
    return chosen


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day else None


def load_training_data(config: TrainConfig) -> TrainingData:
    """The training slice and, with ``validation_days``, the validation window carved
    from the end of the split before the slice is drawn."""
    manifest = read_manifest(config.dataset)
    if config.split not in manifest.splits:
        raise ValueError(f"split: {config.split!r} is not a split of {config.dataset} "
                         f"(splits: {', '.join(manifest.splits)})")
    articles = load_split(config.dataset, config.split)
    split_info = manifest.splits[config.split]
    window = (_iso(split_info.date_from), _iso(split_info.date_to))
    validation = None
    if config.validation_days is not None:
        articles, held_out, first, last = split_off_validation(articles, config.validation_days)
        window = (window[0], (first - timedelta(days=1)).isoformat())
        validation = WindowArticles(
            labelled_sample(held_out, config.validation_max_examples, config.seed),
            manifest.name, config.dataset, config.split, first, last)
    examples = select_examples(articles, config)
    if not examples:
        raise ValueError(f"split {config.split!r} of {config.dataset} has no labelled articles")
    data = TrainingData(examples=examples, manifest=manifest, split=config.split,
                        window=window, validation=validation)
    log.info("training on %d examples (%d signals) from %s/%s %s..%s%s", len(examples),
             data.signals, config.dataset.name, config.split, *window,
             f"; validation window {validation.date_from}..{validation.date_to} "
             f"({len(validation.articles)} articles)" if validation else "")
    return data


def preference_pairs(data: TrainingData, tokenizer, config: TrainConfig) -> list[dict[str, str]]:
    """``{prompt, chosen, rejected}`` rows (TRL's preference format) of the training slice."""
    from pipeline.views import preference_rows

    return [{k: r[k] for k in ("prompt", "chosen", "rejected")}
            for r in preference_rows(data.examples, tokenizer, config.max_prompt_tokens,
                                     config.prompt_style)]


def mean_prompt_tokens(rows: list[dict[str, str]], tokenizer) -> float:
    """Average prompt length in tokens (for the manifest's tokens_seen)."""
    return sum(len(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"])
               for r in rows) / len(rows)
