"""Step 1 of the build: read every configured source into articles, hashing each raw input.

Each raw input (a file, a feed's HTTP body) is hashed with sha256 before it is parsed:
the hashes go into the build key, so a changed input rebuilds the dataset. A source that
cannot be read at all (missing file, HTTP error, timeout) is skipped with a log line and
counted in its :class:`SourceReport`, unless the build is strict.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import dataset as dataset_files
from pipeline.article import Article
from pipeline.emails import read_eml, read_mbox
from pipeline.feeds import FeedError, fetch_feed, parse_feed
from pipeline.records import read_csv, read_jsonl
from pipeline.sources import ReadResult
from pipeline.build_config import FeedSource, FileSource, ImapSource, PipelineConfig, ReutersSource
from pipeline.link_sources import read_link_list, read_newsletter_links
from pipeline.settings import Paths

log = logging.getLogger(__name__)


@dataclass
class SourceReport:
    """What one configured source gave: its raw inputs with their hashes, articles,
    skipped items and failures."""

    name: str
    kind: str
    inputs: list[dict[str, Any]] = field(default_factory=list)
    articles: list[Article] = field(default_factory=list)
    skipped: int = 0
    problems: int = 0
    failed_inputs: list[dict[str, str]] = field(default_factory=list)

    def add(self, result: ReadResult) -> None:
        self.articles.extend(result.articles)
        self.skipped += result.skipped
        self.problems += len(result.problems)

    def fail(self, where: str, reason: str, strict: bool) -> None:
        message = f"source {self.name!r}: {where}: {reason}"
        if strict:
            raise RuntimeError(f"{message} (strict build: stopped)")
        log.warning("%s; input skipped", message)
        self.failed_inputs.append({"input": where, "reason": reason})

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "inputs": self.inputs, "articles": len(self.articles),
                "skipped": self.skipped, "problems": self.problems,
                "failed_inputs": self.failed_inputs}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _expand(patterns: list[str]) -> list[tuple[str, list[Path]]]:
    """Each pattern with the files it names, sorted; a plain path names itself."""
    expanded = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            expanded.append((pattern, sorted(Path(p) for p in glob.glob(pattern, recursive=True)
                                             if Path(p).is_file())))
        else:
            expanded.append((pattern, [Path(pattern)]))
    return expanded


_FILE_READERS: dict[str, Callable[[Path, str], ReadResult]] = {
    "eml": read_eml, "mbox": read_mbox,
    "jsonl": read_jsonl, "csv": read_csv,
    "links": read_link_list, "newsletter-links": read_newsletter_links,
}


def _read_files(source: FileSource, report: SourceReport, strict: bool) -> None:
    read = _FILE_READERS[source.kind]
    for pattern, paths in _expand(source.paths):
        if not paths:
            report.fail(pattern, "pattern matches no file", strict)
        for path in paths:
            if not path.is_file():
                report.fail(str(path), "no such file", strict)
                continue
            report.inputs.append({"path": str(path), "sha256": dataset_files.file_sha256(path),
                                  "bytes": path.stat().st_size})
            try:
                report.add(read(path, source.name))
            # Readers skip bad items themselves; what escapes is a file that cannot be
            # opened or is not of the kind at all (an mbox that is a directory, …).
            except (OSError, ValueError, UnicodeError) as exc:
                report.inputs.pop()
                report.fail(str(path), f"unreadable ({type(exc).__name__}: {exc})", strict)


def _read_feed(source: FeedSource, report: SourceReport, strict: bool) -> None:
    try:
        response = fetch_feed(source.url, source.timeout_s,
                              allow_networks=source.allow_networks)
    except FeedError as exc:
        report.fail(source.url, exc.reason, strict)
        return
    report.inputs.append({"url": source.url, "sha256": _sha256(response.content),
                          "bytes": len(response.content)})
    report.add(parse_feed(response.content, source.name, url=str(response.url),
                                  http_charset=response.charset_encoding))


def read_reuters(directory: Path, source: str = "reuters21578", indexed_only: bool = True,
                 annotate_acq: bool = True, limit: int | None = None,
                 progress: bool = False) -> ReadResult:
    """Reuters-21578 documents as articles: every ``<REUTERS>`` element of every
    ``reut2-*.sgm``; unindexed ones are left out (``indexed_only``, counted as skipped)
    or kept unlabelled. Indexed ones carry their topics and, with ``annotate_acq``, the
    ``acq`` label (:func:`pipeline.reuters.to_article`). ``limit`` stops after that many
    articles; ``progress`` shows a bar over the files."""
    from tqdm import tqdm

    from pipeline import reuters

    files = sorted(Path(directory).glob("reut2-*.sgm"))
    if not files:
        raise FileNotFoundError(f"no reut2-*.sgm files in {directory}")
    result = ReadResult()
    unindexed = 0
    for path in tqdm(files, desc="parse reut2-*.sgm", unit="file", disable=not progress):
        # The collection is Latin-1; reading it as such never fails on a byte.
        for doc in reuters.parse_sgml(path.read_text(encoding="latin-1")):
            if doc.indexed:
                article = reuters.to_article(doc)
                if not annotate_acq:
                    article = article.model_copy(update={"signal": None})
            elif indexed_only:
                unindexed += 1
                continue
            else:
                article = Article(id=f"reuters-{doc.new_id}", title=doc.title,
                                  date_published=doc.date, text=doc.body, source=source)
            if source != reuters.SOURCE:
                article = article.model_copy(update={"source": source})
            result.articles.append(article)
            if limit is not None and len(result.articles) >= limit:
                break
        if limit is not None and len(result.articles) >= limit:
            break
    if unindexed:
        # Not a defect of the data, so not a "problem": these are left out by design.
        result.skipped += unindexed
        log.info("reuters: %d documents without a topic judgement left out", unindexed)
    return result


def _read_reuters(source: ReutersSource, report: SourceReport, strict: bool) -> None:
    directory = source.directory or Paths().reuters_dir
    files = sorted(Path(directory).glob("reut2-*.sgm"))
    if not files:
        report.fail(str(directory), "no reut2-*.sgm files", strict)
        return
    report.inputs.extend({"path": str(p), "sha256": dataset_files.file_sha256(p),
                          "bytes": p.stat().st_size} for p in files)
    report.add(read_reuters(directory, source.name, source.indexed_only, source.annotate_acq,
                            progress=True))


def _read_imap(source: ImapSource, report: SourceReport, strict: bool) -> None:
    from pipeline.imap import ImapConfig, ImapError, read_imap

    imap = ImapConfig.model_validate({**source.imap, "source": source.name})
    where = f"imap://{imap.username}@{imap.host}/{imap.mailbox}"
    try:
        result = read_imap(imap)
    except ImapError as exc:
        report.fail(where, exc.reason, strict)
        return
    # No raw bytes come back from a mailbox: the articles read stand for the input.
    records = json.dumps([a.to_record() for a in result.articles], sort_keys=True,
                         ensure_ascii=False, default=str).encode("utf-8")
    report.inputs.append({"url": where, "sha256": _sha256(records), "bytes": len(records)})
    report.add(result)


def collect_sources(config: PipelineConfig) -> list[SourceReport]:
    """Read every configured source; see the module docstring for failure handling."""
    reports = []
    for source in config.sources:
        report = SourceReport(source.name, source.kind)
        if isinstance(source, FeedSource):
            _read_feed(source, report, config.strict)
        elif isinstance(source, ReutersSource):
            _read_reuters(source, report, config.strict)
        elif isinstance(source, ImapSource):
            _read_imap(source, report, config.strict)
        else:
            _read_files(source, report, config.strict)
        log.info("source %s (%s): %d articles, %d items skipped, %d inputs failed",
                 source.name, source.kind, len(report.articles), report.skipped,
                 len(report.failed_inputs))
        reports.append(report)
    return reports
