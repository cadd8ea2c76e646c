"""Labelled items of the ingestion store written as a pipeline dataset: what the next
training run reads (``signals ingest export``, and the drift rule's retraining window)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

from pipeline.article import Article
from pipeline.dataset import DatasetManifest, temporal_splits, write_dataset
from ingestion.store import Store


def export_dataset(store: Store, directory: Path, train_end: date | None = None,
                   since: datetime | None = None, until: datetime | None = None,
                   split_name: str | None = None,
                   replay: Sequence[Article] = ()) -> DatasetManifest:
    """Write the store's labelled items as a pipeline dataset (``pipeline/dataset.py``).

    Each item's effective label becomes ``signal``; an undated item takes its reception
    time as ``date_published`` (temporal splits need a date). With ``train_end`` the
    splits are the pipeline's temporal ones (``train`` + one per later month); with
    ``split_name`` everything selected is that one split (a retraining window), after
    the ``replay`` articles (older labelled ones, against forgetting) when given.
    Returns the manifest.
    """
    selected = store.labelled_items(since, until)
    articles = []
    for item, label, label_source in selected:
        update_fields: dict[str, Any] = {"signal": label, "label_source": label_source,
                                         "source": item.source}
        if item.article.date_published is None:
            update_fields["date_published"] = item.received_at
        articles.append(item.article.model_copy(update=update_fields))
    if split_name is not None:
        splits = {split_name: [*replay, *articles]}
    elif replay:
        raise ValueError("replay articles go into a retraining window (split_name)")
    elif train_end is not None:
        splits = temporal_splits(articles, train_end)
    else:
        raise ValueError("give train_end (temporal splits) or split_name (one window split)")
    sources: dict[str, int] = {}
    for _, _, label_source in selected:
        sources[label_source] = sources.get(label_source, 0) + 1
    provenance = {
        "source": "ingestion store", "database": store.safe_url,
        "label_rule": "effective label per item: highest-priority feedback source, "
                      "latest among equals", "label_sources": sources,
        "window": {"since": since.isoformat() if since else None,
                   "until": until.isoformat() if until else None},
        "train_end": train_end.isoformat() if train_end else None,
        "replayed_examples": len(replay),
    }
    return write_dataset(Path(directory), splits, provenance)
