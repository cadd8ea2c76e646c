"""Records of the original dataset's format as articles: JSONL, CSV, or one JSON array
(read streamed with ``ijson``). A bad record is skipped, logged and counted."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any, Iterator

import ijson
from pydantic import ValidationError

from pipeline.article import Article
from pipeline.sources import ReadResult

log = logging.getLogger(__name__)


def _record_article(record: Any, source: str) -> Article:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "source" not in record:
        record = {**record, "source": source}
    return Article.from_record(record)


def drop_unclassifiable(result: ReadResult, label: str) -> ReadResult:
    """Skip (count and explain) the articles the HTTP APIs would refuse, by the one
    rule they share (:meth:`Article.content_problem`): an importer's output then holds
    only articles the product can classify. ``label`` names the input in the problems.
    (A dataset build applies the same rule in its normalise stage, counted there as
    ``empty_skipped``.)"""
    kept = []
    for article in result.articles:
        problem = article.content_problem()
        if problem is None:
            kept.append(article)
        else:
            result.note(f"{label}: skipped ({problem})", skipped=True)
    result.articles = kept
    return result


def read_jsonl(path: str | Path, source: str) -> ReadResult:
    """Articles from a JSONL file of records in the original dataset's format.

    ``source`` is set on records that do not name one. A line that is not valid UTF-8,
    not JSON, or not a valid record is skipped with its line number.
    """
    result = ReadResult()
    with open(path, "rb") as handle:
        for line_number, raw_line in enumerate(handle, 1):
            if not raw_line.strip():
                continue
            try:
                record = json.loads(raw_line.decode("utf-8"))
                result.articles.append(_record_article(record, source))
            # Bad UTF-8, bad JSON and an invalid record are all ValueErrors.
            except ValueError as exc:
                result.note(f"{path}:{line_number}: skipped ({_short_error(exc)})",
                            skipped=True)
    log.info("%s: %d articles, %d skipped", path, len(result.articles), result.skipped)
    return result


def iter_json_array(path: str | Path, source: str, result: ReadResult) -> Iterator[Article]:
    """Articles from a file holding one JSON array of records, yielded one at a time.

    The file is parsed incrementally (``ijson``), so only the current record is in
    memory. An element that is not a valid record is skipped and noted in ``result``
    with its position (``[index]``, 0-based). JSON that breaks off (truncated or
    malformed) ends the read with a noted problem; the records before the break are kept.
    A file whose top level is not an array yields nothing and says so.
    """
    with open(path, "rb") as handle:
        first = handle.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
        if not first.startswith(b"["):
            result.note(f"{path}: not a JSON array of records (it starts with "
                        f"{first[:16]!r}); nothing read")
            return
        handle.seek(0)
        index = -1
        # use_float: numbers as float, not Decimal (pydantic accepts both; floats are
        # what json.loads gives the JSONL reader, so both readers build equal articles).
        elements = ijson.items(handle, "item", use_float=True)
        while True:
            try:
                record = next(elements)
            except StopIteration:
                return
            except (ijson.JSONError, UnicodeDecodeError) as exc:
                result.note(f"{path}: JSON breaks off after element [{index}] "
                            f"({_short_error(exc)}); the rest of the file is not read",
                            skipped=True)
                return
            index += 1
            try:
                yield _record_article(record, source)
            except ValueError as exc:
                result.note(f"{path}[{index}]: skipped ({_short_error(exc)})", skipped=True)


def read_json_array(path: str | Path, source: str) -> ReadResult:
    """Articles from a JSON array file of records in the original dataset's format
    (see :func:`iter_json_array`); ``source`` is set on records that do not name one."""
    result = ReadResult()
    result.articles.extend(iter_json_array(path, source, result))
    log.info("%s: %d articles, %d skipped", path, len(result.articles), result.skipped)
    return result


_CSV_LABELS = ("gpt_signal", "signal")


def _csv_record(row: dict[str, str | None]) -> dict[str, Any]:
    """A CSV row as a record: empty cells left out, labels as ints, ``topics`` as a JSON
    list or ``;``-separated, ``growth`` as a JSON object."""
    if None in row:
        raise ValueError("more cells than header columns")
    record: dict[str, Any] = {}
    for name, cell in row.items():
        if cell is None or cell.strip() == "":
            continue
        if name in _CSV_LABELS:
            record[name] = int(cell)
        elif name == "topics":
            record[name] = (json.loads(cell) if cell.lstrip().startswith("[")
                            else [t.strip() for t in cell.split(";") if t.strip()])
        elif name == "growth":
            record[name] = json.loads(cell)
        else:
            record[name] = cell
    return record


def read_csv(path: str | Path, source: str) -> ReadResult:
    """Articles from a CSV file whose header names record fields (``id``, ``title``,
    ``date_published``, ``text``, ...). A row that is not a valid record is skipped with
    its line number."""
    result = ReadResult()
    data = Path(path).read_bytes()
    # utf-8-sig: spreadsheet exports start with a byte-order mark.
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        content = data.decode("utf-8-sig", errors="replace")
        result.note(f"{path}: not valid UTF-8 ({exc}); undecodable bytes replaced")
    reader = csv.DictReader(io.StringIO(content, newline=""))
    for row in reader:
        try:
            result.articles.append(_record_article(_csv_record(row), source))
        except ValueError as exc:  # includes bad JSON cells and invalid records
            result.note(f"{path}:{reader.line_num}: skipped ({_short_error(exc)})",
                        skipped=True)
    log.info("%s: %d articles, %d skipped", path, len(result.articles), result.skipped)
    return result


def _short_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        return f"invalid {where}: {first['msg']}"
    return f"{type(exc).__name__}: {exc}"
