"""Dataset directories: JSONL splits of the article contract plus a manifest.

A dataset is a directory ``<datasets_dir>/<name>/`` holding one ``<split>.jsonl`` per
split (``train`` and one test window per later month, ``YYYY-MM``) and a
``manifest.json`` with its provenance (source files and their hashes, label rule,
temporal cut-off) and per-split statistics. It is written to a temporary directory
and renamed into place, so a reader never sees half a dataset.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.article import Article

TRAIN_SPLIT = "train"


def _day(article: Article) -> date:
    published = article.date_published
    if published is None:
        raise ValueError(f"article {article.id!r} has no date_published; cannot split by time")
    return published.date() if isinstance(published, datetime) else published


def temporal_splits(articles: Iterable[Article], train_end: date) -> dict[str, list[Article]]:
    """``train`` = published on or before ``train_end``; then one split per later month."""
    splits: dict[str, list[Article]] = {TRAIN_SPLIT: []}
    for article in articles:
        day = _day(article)
        key = TRAIN_SPLIT if day <= train_end else f"{day:%Y-%m}"
        splits.setdefault(key, []).append(article)
    return dict(sorted(splits.items(), key=lambda kv: (kv[0] != TRAIN_SPLIT, kv[0])))


def split_stats(articles: list[Article]) -> dict[str, Any]:
    """Counts, signal rate and date range of one split."""
    labelled = [a for a in articles if a.signal is not None]
    signals = sum(a.signal for a in labelled)
    days = [_day(a) for a in articles]
    return {
        "count": len(articles),
        "labelled": len(labelled),
        "signals": signals,
        "signal_rate": round(signals / len(labelled), 4) if labelled else None,
        "date_from": min(days).isoformat() if days else None,
        "date_to": max(days).isoformat() if days else None,
    }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_jsonl(path: Path, articles: Iterable[Article]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for article in articles:
            handle.write(json.dumps(article.to_record(), ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[Article]:
    with open(path, encoding="utf-8") as handle:
        return [Article.from_record(json.loads(line)) for line in handle if line.strip()]


def write_dataset(
    directory: Path,
    splits: dict[str, list[Article]],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Write ``splits`` and a manifest atomically to ``directory``; return the manifest."""
    directory = Path(directory)
    staging = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    manifest: dict[str, Any] = {
        "name": directory.name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **provenance,
        "splits": {},
    }
    for name, articles in splits.items():
        path = staging / f"{name}.jsonl"
        write_jsonl(path, articles)
        manifest["splits"][name] = {
            "file": path.name, "sha256": file_sha256(path), **split_stats(articles)}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no dataset at {directory} (missing manifest.json)")
    return json.loads(path.read_text())


def load_split(directory: Path, split: str) -> list[Article]:
    """The articles of one split; a clear error names the splits that exist."""
    manifest = read_manifest(directory)
    if split not in manifest["splits"]:
        raise KeyError(
            f"dataset {directory} has no split {split!r}; it has "
            f"{', '.join(manifest['splits'])}")
    return read_jsonl(Path(directory) / manifest["splits"][split]["file"])
