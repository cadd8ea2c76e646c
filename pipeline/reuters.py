"""Importer for the Reuters-21578 collection (``reut2-*.sgm``), the public benchmark.

Labelling rule (see the data README): an article indexed for topics
(``TOPICS="YES"``) is a **signal** when its topics include ``acq`` (mergers,
acquisitions, stakes, takeovers) and **not a signal** otherwise. Articles with
``TOPICS="NO"`` or ``"BYPASS"`` carry no topic judgement and are skipped, never read as
negatives.

The SGML is regular enough for a tolerant regex reader; a strict SGML parser would
choke on the collection's known defects (control characters, one malformed date).
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from pipeline.article import Article
from pipeline.dataset import (DatasetManifest, file_sha256, read_manifest, temporal_splits,
                              write_dataset)

log = logging.getLogger(__name__)

SIGNAL_TOPIC = "acq"
SOURCE = "reuters21578"

_DOC = re.compile(r"<REUTERS(?P<attrs>[^>]*)>(?P<body>.*?)</REUTERS>", re.S)
_ATTR = re.compile(r'(\w+)="([^"]*)"')
_DATE = re.compile(
    r"(?P<day>\d{1,2})-(?P<mon>[A-Za-z]{3})-(?P<year>\d{4})\s+(?P<h>\d+):(?P<m>\d\d):(?P<s>\d\d)"
)
_MONTHS = {m: i for i, m in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], 1)}
# Control characters the wire left in the text (&#2; &#3; &#5; ... once unescaped).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_TRAILER = re.compile(r"\s*Reuter\s*$")


@dataclass(frozen=True)
class ReutersDocument:
    """One ``<REUTERS>`` element, decoded."""

    new_id: int
    indexed: bool
    """``TOPICS="YES"``: a human judged its topics (an empty list is a judgement)."""
    date: datetime
    title: str
    body: str
    topics: tuple[str, ...]
    doc_type: str


def _field(body: str, tag: str) -> str | None:
    match = re.search(rf"<{tag}(?:\s[^>]*)?>(.*?)</{tag}>", body, re.S)
    return match.group(1) if match else None


def _clean(raw: str | None) -> str:
    if raw is None:
        return ""
    text = _CONTROL.sub("", html.unescape(raw))
    return _TRAILER.sub("", text).strip()


def parse_date(raw: str) -> datetime:
    """Parse ``26-FEB-1987 15:01:01.79``; tolerates the collection's defects.

    One date reads ``31-MAR-1987 605:12:19.12``: the hour keeps its last two digits
    when those make a valid hour, else it becomes 0. The day is never guessed.
    """
    match = _DATE.search(raw)
    if not match:
        raise ValueError(f"unparseable Reuters date {raw!r}")
    hour = int(match["h"])
    if hour > 23:
        hour = hour % 100 if hour % 100 < 24 else 0
    return datetime(
        int(match["year"]), _MONTHS[match["mon"].upper()], int(match["day"]),
        hour, int(match["m"]), int(match["s"]),
    )


def parse_sgml(text: str) -> Iterator[ReutersDocument]:
    """Every ``<REUTERS>`` element of one file's text."""
    for doc in _DOC.finditer(text):
        attrs = dict(_ATTR.findall(doc["attrs"]))
        body = doc["body"]
        topics_raw = _field(body, "TOPICS") or ""
        text_block = _field(body, "TEXT") or ""
        text_attrs = re.search(r"<TEXT([^>]*)>", body)
        type_match = _ATTR.search(text_attrs.group(1)) if text_attrs else None
        title = _clean(_field(text_block, "TITLE"))
        text = _clean(_field(text_block, "BODY"))
        if not title and not text:
            # TYPE="UNPROC" documents keep their raw wire text directly in <TEXT>.
            text = _clean(re.sub(r"<[^>]+>", " ", text_block))
        yield ReutersDocument(
            new_id=int(attrs["NEWID"]),
            indexed=attrs.get("TOPICS") == "YES",
            date=parse_date(_field(body, "DATE") or ""),
            title=title,
            body=text,
            topics=tuple(re.findall(r"<D>(.*?)</D>", topics_raw)),
            doc_type=type_match.group(2) if type_match else "NORM",
        )


def read_collection(directory: Path) -> Iterator[ReutersDocument]:
    """All documents of ``reut2-*.sgm`` under ``directory``, file by file in order."""
    files = sorted(Path(directory).glob("reut2-*.sgm"))
    if not files:
        raise FileNotFoundError(
            f"no reut2-*.sgm files in {directory}: point --reuters-dir (or "
            "SIGNALS_REUTERS_DIR) at the Reuters-21578 collection"
        )
    for path in files:
        # The collection is Latin-1; reading it as such never fails on a byte.
        yield from parse_sgml(path.read_text(encoding="latin-1"))


def to_article(doc: ReutersDocument) -> Article:
    """The contract record of an indexed document, labelled by the ``acq`` rule."""
    return Article(
        id=f"reuters-{doc.new_id}",
        title=doc.title,
        date_published=doc.date,
        text=doc.body,
        topics=list(doc.topics),
        # The annotators' codes again, where a topics stage cannot overwrite them: the
        # annotation label source (pipeline.labels.REUTERS_ACQ) reads this field.
        reuters_topics=list(doc.topics),
        signal=1 if SIGNAL_TOPIC in doc.topics else 0,
        source=SOURCE,
    )


def load_labelled_articles(directory: Path) -> list[Article]:
    """Indexed articles in date order, labelled; unindexed ones are skipped."""
    articles = []
    skipped = 0
    for doc in read_collection(directory):
        if not doc.indexed:
            skipped += 1
            continue
        articles.append(to_article(doc))
    log.info("reuters: %d indexed articles kept, %d without a topic judgement skipped",
             len(articles), skipped)
    articles.sort(key=lambda a: (a.date_published, str(a.id)))
    return articles


TRAIN_END = date(1987, 3, 31)
"""The data README's temporal protocol: train on articles up to 31 March 1987."""

DATASET_NAME = "reuters-acq"
IMPORTER_VERSION = 3
"""Bumped whenever parsing changes, so existing datasets get rebuilt."""


def build_dataset(
    reuters_dir: Path, out_dir: Path, train_end: date = TRAIN_END, force: bool = False
) -> DatasetManifest:
    """Import the collection into a dataset directory with temporal splits.

    Idempotent: when ``out_dir`` already holds a dataset built from the same files with
    the same cut-off, its manifest is returned untouched.
    """
    files = sorted(Path(reuters_dir).glob("reut2-*.sgm"))
    sources = {path.name: file_sha256(path) for path in files}
    if not force and (Path(out_dir) / "manifest.json").is_file():
        existing = read_manifest(out_dir)
        if (existing.source_files == sources and existing.train_end == train_end
                and existing.importer_version == IMPORTER_VERSION):
            log.info("dataset %s is up to date", out_dir)
            return existing
    articles = load_labelled_articles(reuters_dir)
    provenance = {
        "source": SOURCE,
        "source_dir": str(Path(reuters_dir).resolve()),
        "source_files": sources,
        "label_rule": f"signal = indexed under '{SIGNAL_TOPIC}'; other indexed articles = "
        "not signal; unindexed articles skipped",
        "train_end": str(train_end),
        "importer_version": IMPORTER_VERSION,
    }
    return write_dataset(out_dir, temporal_splits(articles, train_end), provenance)
