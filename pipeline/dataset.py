"""Dataset directories: JSONL splits of the article contract plus a manifest.

A dataset is a directory ``<datasets_dir>/<name>/`` holding one ``<split>.jsonl`` per
split (``train`` and one test window per later month, ``YYYY-MM``) and a
``manifest.json`` with its provenance (source files and their hashes, label rule,
temporal cut-off) and per-split statistics: a :class:`DatasetManifest`. It is written
to a temporary directory and renamed into place, so a reader never sees half a dataset.

Paths inside a manifest (split and view files) are relative to the dataset directory,
so a dataset copied elsewhere keeps working; the provenance of its inputs
(``source_dir``, ``source_files``) names them where they were read, as a record.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Iterable
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, PlainSerializer, ValidationError

from pipeline.article import Article

TRAIN_SPLIT = "train"
MANIFEST = "manifest.json"

IsoTime = Annotated[datetime, PlainSerializer(lambda t: t.isoformat(), return_type=str,
                                              when_used="json")]
"""A timestamp written back exactly as ``isoformat()`` wrote it (``+00:00``, not ``Z``)."""


class InvalidDatasetManifest(ValueError):
    """A dataset manifest that is not JSON, or a field that is present but malformed."""


def malformed_field(error: ValidationError) -> str:
    """A manifest's validation error in one line: the first field, what is wrong with
    it, how many more there are (shared by the dataset and the adapter manifests)."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(the whole manifest)"
    more = error.error_count() - 1
    return f"manifest field {field!r} is malformed: {first['msg']}" + (
        f" (and {more} more)" if more else "")


class SplitInfo(BaseModel):
    """One split's file and statistics."""

    model_config = ConfigDict(extra="allow")

    file: str
    """The split's JSONL file, relative to the dataset directory."""

    sha256: str | None = None
    """sha256 of that file."""

    count: int = 0
    """Articles in the split."""

    labelled: int | None = None
    """Of which labelled (``signal`` is 0 or 1)."""

    signals: int | None = None
    """Of which signals."""

    signal_rate: float | None = None
    """``signals / labelled``; None without labelled articles."""

    date_from: date | None = None
    """First publication day (None for the ``undated`` split)."""

    date_to: date | None = None
    """Last publication day."""


class DatasetManifest(BaseModel):
    """A dataset directory's ``manifest.json``. Writers add their own provenance
    (Reuters import, pipeline build, ingestion export); fields this model does not name
    are kept as written (``extra="allow"``), fields older datasets lack are optional."""

    model_config = ConfigDict(extra="allow")

    name: str
    """The dataset's name (its directory name when it was written; that name when an
    older manifest lacks the field)."""

    created_at: IsoTime | None = None
    """When it was written (UTC)."""

    splits: dict[str, SplitInfo] = {}
    """Split name (``train``, ``YYYY-MM``, ``undated``, a window) -> its file and stats."""

    version: str | None = None
    """Short build key of a pipeline build (identifies the inputs and config)."""

    built_at: str | None = None
    """What the oldest datasets recorded instead of ``version``."""

    build_key: str | None = None
    """Full sha256 of what determines a pipeline build; an equal key skips the rebuild."""

    source: str | None = None
    """Where the articles came from, in words (Reuters import, ingestion export)."""

    source_files: dict[str, str] = {}
    """Input file (path or URL, where it was read) -> its sha256."""

    label_rule: str | None = None
    """How ``signal`` was decided."""

    train_end: date | None = None
    """Last publication day of the ``train`` split (later months are test windows)."""

    importer_version: int | None = None
    """Version of the Reuters importer (bumped when parsing changes)."""

    counts: dict[str, Any] | None = None
    """A pipeline build's counts per step (read, dedupe, empty, undated, written)."""

    sources: dict[str, Any] | None = None
    """A pipeline build's summary per source."""

    stages: dict[str, Any] | None = None
    """A pipeline build's stages: whether each ran, its settings and counts."""

    links: dict[str, Any] | None = None
    """The link stage's counts and each article's provenance by id; None without it."""

    views: dict[str, Any] | None = None
    """SFT/DPO/reward view files per split (relative paths) and how they were made."""

    build_seconds: float | None = None
    """Wall time of the pipeline build."""

    @classmethod
    def read(cls, directory: Path) -> DatasetManifest:
        """The manifest of the dataset at ``directory``; FileNotFoundError when there is
        none, :class:`InvalidDatasetManifest` naming the field when it is malformed."""
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"no dataset at {directory} (missing {MANIFEST})")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise InvalidDatasetManifest(f"dataset {directory}: {path} is not JSON: {error}") from None
        if isinstance(raw, dict):
            raw.setdefault("name", Path(directory).name)  # the name is the directory's
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            raise InvalidDatasetManifest(f"dataset {directory}: {malformed_field(error)}") from None

    def write(self, directory: Path) -> None:
        (Path(directory) / MANIFEST).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def to_json(self) -> dict[str, Any]:
        """The JSON shape: the fields that were given or read, as they were given."""
        return self.model_dump(mode="json", exclude_unset=True)

    def split(self, name: str, directory: Path) -> SplitInfo:
        """The split ``name``; a KeyError names the splits there are."""
        if name not in self.splits:
            raise KeyError(f"dataset {directory} has no split {name!r}; it has "
                           f"{', '.join(self.splits)}")
        return self.splits[name]


def labelled_sample(articles: Iterable[Article], limit: int | None = None,
                    seed: int | str = 0) -> list[Article]:
    """The labelled articles, or a seeded random ``limit`` of them. Random, not the
    first ones, so a sample keeps the signal rate of what it is drawn from (a window's
    calibration is fitted to that rate). The one sampling rule of evaluation,
    calibration, ensembles, the benchmarks and the replay sample of a retraining."""
    labelled = [a for a in articles if a.signal is not None]
    if limit is not None and limit < len(labelled):
        labelled = random.Random(seed).sample(labelled, limit)
    return labelled


def publication_day(article: Article) -> date:
    """:meth:`Article.published_day`, for code that cannot place an undated article
    (splits, validation windows): a ValueError names it."""
    day = article.published_day()
    if day is None:
        raise ValueError(f"article {article.id!r} has no date_published; "
                         "cannot place it in time")
    return day


def temporal_splits(articles: Iterable[Article], train_end: date) -> dict[str, list[Article]]:
    """``train`` = published on or before ``train_end``; then one split per later month."""
    splits: dict[str, list[Article]] = {TRAIN_SPLIT: []}
    for article in articles:
        day = publication_day(article)
        key = TRAIN_SPLIT if day <= train_end else f"{day:%Y-%m}"
        splits.setdefault(key, []).append(article)
    return dict(sorted(splits.items(), key=lambda kv: (kv[0] != TRAIN_SPLIT, kv[0])))


def split_stats(articles: list[Article]) -> dict[str, Any]:
    """Counts, signal rate and date range of one split."""
    labelled = [a for a in articles if a.signal is not None]
    signals = sum(a.signal for a in labelled)
    days = [publication_day(a) for a in articles]
    return {
        "count": len(articles),
        "labelled": len(labelled),
        "signals": signals,
        "signal_rate": round(signals / len(labelled), 4) if labelled else None,
        "date_from": min(days) if days else None,
        "date_to": max(days) if days else None,
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
) -> DatasetManifest:
    """Write ``splits`` and a manifest atomically to ``directory``; return the manifest.
    ``provenance``: the writer's own manifest fields (see :class:`DatasetManifest`)."""
    directory = Path(directory)
    staging = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    entries = {}
    for name, articles in splits.items():
        path = staging / f"{name}.jsonl"
        write_jsonl(path, articles)
        entries[name] = SplitInfo(file=path.name, sha256=file_sha256(path),
                                  **split_stats(articles))
    manifest = DatasetManifest.model_validate({
        "name": directory.name,
        "created_at": datetime.now(timezone.utc).replace(microsecond=0),
        **provenance,
        "splits": entries,
    })
    manifest.write(staging)
    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)
    return manifest


def read_manifest(directory: Path) -> DatasetManifest:
    """The manifest of the dataset at ``directory`` (see :meth:`DatasetManifest.read`)."""
    return DatasetManifest.read(directory)


def load_split(directory: Path, split: str) -> list[Article]:
    """The articles of one split; a clear error names the splits that exist."""
    info = read_manifest(directory).split(split, directory)
    return read_jsonl(Path(directory) / info.file)
