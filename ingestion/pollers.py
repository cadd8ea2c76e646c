"""Pollers: the sources the service reads on a schedule, parsed by the pipeline's readers.

RSS/Atom feeds (``pipeline.feeds.read_feed``), IMAP mailboxes (``pipeline.imap``)
and a drop directory of ``.eml``/``.mbox``/``.jsonl``/``.csv`` files (a CSV/JSONL of
URLs is a link list, one item per link; with the link stage on, an ``.eml`` is a
newsletter read as one item per linked story). Every poll hands
what it read to the intake and counts what went wrong by source and kind; a poller
survives anything a source throws at it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pipeline.article import Article
from pipeline.imap import ImapError, read_imap
from pipeline.link_sources import is_link_list, read_link_list, read_newsletter_links
from pipeline.emails import read_eml, read_mbox
from pipeline.feeds import FeedError, read_feed
from pipeline.records import read_csv, read_jsonl
from pipeline.sources import ReadResult
from ingestion.config import FeedSourceConfig, ImapSourceConfig
from ingestion.intake import Accepted
from ingestion.metrics import IngestMetrics

log = logging.getLogger(__name__)

DROP_SUFFIXES = {".eml": "eml", ".mbox": "mbox", ".jsonl": "jsonl", ".csv": "csv"}
DROP_ATTEMPTS = 3
"""Scans a drop file may fail to be stored in (the store raising) before it moves to
``failed/`` with a ``.reason`` file beside it."""

MAX_FEED_HOLD_S = 24 * 3600.0
"""The longest a feed's ``Retry-After`` holds its polls back (a server asking for more
is polled again after a day)."""

AcceptItems = Callable[[list[Article], str], Awaitable[list[Accepted]]]


class Pollers:
    """Reads feeds, mailboxes and the drop directory; ``accept`` stores what they read."""

    def __init__(self, metrics: IngestMetrics, accept: AcceptItems,
                 drop_dir: Path | None = None, links_on: bool = False):
        self.metrics, self.accept, self.drop_dir = metrics, accept, drop_dir
        self.links_on = links_on
        """With the link stage on, a dropped ``.eml`` is read as a newsletter (one item
        per linked story, ``pipeline.link_sources.read_newsletter_links``)."""
        self._drop_seen: dict[str, tuple[int, int]] = {}
        """Size and mtime of each drop file at the last scan (read once they hold)."""
        self._drop_failures: dict[str, int] = {}
        self._feed_held_until: dict[str, float] = {}
        """Feed name -> ``time.monotonic()`` before which it is not fetched: what its
        server's last ``Retry-After`` asked (at most :data:`MAX_FEED_HOLD_S`)."""

    def _count_read_problems(self, source: str, result: ReadResult) -> None:
        if result.skipped:
            self.metrics.items_skipped.labels(source).inc(result.skipped)

    async def poll_feed(self, feed: FeedSourceConfig) -> int:
        """Fetch and ingest one feed; the number of new items (errors are counted).
        A feed whose server answered 429/503 with ``Retry-After`` is not fetched again
        before that time (the poll counts as ``deferred``)."""
        held = self._feed_held_until.get(feed.name, 0.0) - time.monotonic()
        if held > 0:
            self.metrics.polls.labels(feed.name, "deferred").inc()
            log.debug("feed %s: its server asked to wait; %.0f s left", feed.name, held)
            return 0
        try:
            result = await asyncio.to_thread(read_feed, feed.url, feed.name,
                                             timeout_s=feed.timeout_s,
                                             allow_networks=feed.allow_networks)
        except FeedError as error:
            self.metrics.source_errors.labels(feed.name, error.kind).inc()
            self.metrics.polls.labels(feed.name, "error").inc()
            log.warning("feed %s: %s", feed.name, error)
            if error.retry_after_s:
                self._feed_held_until[feed.name] = time.monotonic() + min(
                    error.retry_after_s, MAX_FEED_HOLD_S)
            return 0
        if not result.feed_format:
            self._count_read_problems(feed.name, result)
            self.metrics.source_errors.labels(feed.name, "not_a_feed").inc()
            self.metrics.polls.labels(feed.name, "error").inc()
            log.warning("feed %s (%s): the answer is not an RSS or Atom feed; nothing read",
                        feed.name, feed.url)
            return 0
        answers = await self.accept(result.articles, feed.name)
        # Problems are counted once what could be read is stored: a scrape that sees
        # the error also sees the items the same poll recovered.
        self._count_read_problems(feed.name, result)
        if result.malformed:
            self.metrics.source_errors.labels(feed.name, "malformed").inc()
            log.warning("feed %s: malformed XML; kept the %d entries a tolerant parse "
                        "recovered", feed.name, len(result.articles))
        self.metrics.polls.labels(feed.name, "ok").inc()
        self.metrics.last_poll.labels(feed.name).set(time.time())
        return sum(a.status == "accepted" for a in answers)

    def _read_drop_file(self, path: Path) -> ReadResult:
        kind = DROP_SUFFIXES[path.suffix.lower()]
        if kind in ("csv", "jsonl") and is_link_list(path):
            # A list of URLs (optionally dated/labelled): one item per link, its text
            # left for the link stage to fetch.
            return read_link_list(path, "drop")
        if kind == "eml" and self.links_on:
            return read_newsletter_links(path, "drop")
        reader: Callable[..., ReadResult] = {"eml": read_eml, "mbox": read_mbox,
                                             "jsonl": read_jsonl, "csv": read_csv}[kind]
        return reader(path, "drop")

    def _complete_drop_files(self, directory: Path) -> list[Path]:
        """The drop files to read now. A file is read only once it is complete: a
        name starting with ``.`` (or not ending in a known suffix, e.g. ``.part``) is
        never read, so a writer can write under such a name and rename; any other file
        is read once its size and modification time are the same at two scans in a row
        (a writer still appending changes them)."""
        seen, ready = {}, []
        for path in sorted(directory.iterdir()):
            if (path.name.startswith(".") or not path.is_file()
                    or path.suffix.lower() not in DROP_SUFFIXES):
                continue
            stat = path.stat()
            seen[path.name] = (stat.st_size, stat.st_mtime_ns)
            if self._drop_seen.get(path.name) == seen[path.name]:
                ready.append(path)
        self._drop_seen = seen
        return ready

    async def scan_drop_dir(self) -> int:
        """Ingest every complete file in the drop directory, then move it to processed/
        (failed/ when unreadable, or when storing it raised at :data:`DROP_ATTEMPTS`
        scans). A file moves only after its items are stored, so a crash in between
        re-reads it and dedupe drops what was already stored; an item no store can hold
        is rejected by the intake (logged, counted) and the rest of the file stored."""
        directory = self.drop_dir
        if directory is None or not directory.is_dir():
            return 0
        accepted = 0
        for path in self._complete_drop_files(directory):
            try:
                result = await asyncio.to_thread(self._read_drop_file, path)
            except Exception as error:  # any reader failure: keep the file for a human
                self.metrics.source_errors.labels("drop", "unreadable").inc()
                log.error("drop file %s unreadable (%s: %s); moved to failed/", path.name,
                          type(error).__name__, error)
                _move(path, directory / "failed")
                continue
            self._count_read_problems("drop", result)
            if not result.articles:
                self.metrics.source_errors.labels("drop", "no_items").inc()
                log.warning("drop file %s has no items (%s)", path.name,
                            "; ".join(result.problems) or "empty")
            try:
                answers = await self.accept(result.articles, "drop")
            except Exception as error:  # the store raised: retry at the next scans
                failures = self._drop_failures.get(path.name, 0) + 1
                self._drop_failures[path.name] = failures
                self.metrics.polls.labels("drop", "error").inc()
                if failures < DROP_ATTEMPTS:
                    log.warning("drop file %s not stored (%s: %s); attempt %d of %d",
                                path.name, type(error).__name__, error, failures,
                                DROP_ATTEMPTS)
                    continue
                self.metrics.source_errors.labels("drop", "not_stored").inc()
                log.error("drop file %s not stored at %d scans (%s: %s); moved to failed/",
                          path.name, failures, type(error).__name__, error)
                target = _move(path, directory / "failed")
                target.with_name(target.name + ".reason").write_text(
                    f"not stored at {failures} scans: {type(error).__name__}: {error}\n")
                self._drop_failures.pop(path.name, None)
                continue
            self._drop_failures.pop(path.name, None)
            accepted += sum(a.status == "accepted" for a in answers)
            self.metrics.polls.labels("drop", "ok").inc()
            _move(path, directory / "processed")
        self.metrics.last_poll.labels("drop").set(time.time())
        return accepted

    async def poll_imap(self, mailbox: ImapSourceConfig) -> int:
        """Ingest the mailbox's matching messages (one item per newsletter story)."""
        config = mailbox
        if mailbox.lookback_days is not None:
            since = (datetime.now(timezone.utc) - timedelta(days=mailbox.lookback_days)).date()
            config = mailbox.model_copy(update={"since": since})
        try:
            result = await asyncio.to_thread(read_imap, config)
        except ImapError as error:
            self.metrics.source_errors.labels(mailbox.source, "connection").inc()
            self.metrics.polls.labels(mailbox.source, "error").inc()
            log.warning("%s", error)
            return 0
        self._count_read_problems(mailbox.source, result)
        answers = await self.accept(result.articles, mailbox.source)
        self.metrics.polls.labels(mailbox.source, "ok").inc()
        self.metrics.last_poll.labels(mailbox.source).set(time.time())
        return sum(a.status == "accepted" for a in answers)


async def every(interval_s: float, poll: Callable[[], Awaitable[Any]], what: str) -> None:
    """Run ``poll`` every ``interval_s`` seconds, forever; a failure is logged."""
    while True:
        try:
            await poll()
        except Exception:  # a poller must survive anything a source throws at it
            log.exception("%s poll failed", what)
        await asyncio.sleep(interval_s)


def _move(path: Path, directory: Path) -> Path:
    directory.mkdir(exist_ok=True)
    target = directory / path.name
    if target.exists():  # the same file name dropped twice: keep both
        target = directory / f"{path.stem}-{time.time_ns()}{path.suffix}"
    shutil.move(str(path), target)
    return target
