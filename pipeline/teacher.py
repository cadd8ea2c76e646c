"""The teacher: a large LLM's verdict on an article, as one label source's vote.

The seed dataset's ``gpt_signal`` came from asking a strong LLM whether an item is an
investment signal. This module asks the same question of any OpenAI-compatible
endpoint (OpenAI, or a local vLLM) with the project's own instruction
(:data:`pipeline.prompt.SIGNAL_INSTRUCTION`) and the same user message the classifier
sees, so teacher and student answer one question.

* **Deterministic**: temperature 0 and a few answer tokens. The answer is parsed to
  1 or 0 by :func:`parse_teacher_answer`; anything else is an abstention (logged,
  counted), never a guess.
* **Cached** in SQLite per (article content hash, model, prompt hash): the same
  article always gets the same vote and a second call makes no request. The content
  hash is :func:`pipeline.dedupe.content_hash` (normalised title + text); the prompt
  hash covers the instruction and the settings that shape the prompt, so changing
  either asks again rather than reusing answers to another question. Only answers
  the model actually gave are cached: a failed request caches nothing.
* **Failures are explicit**: an endpoint that cannot be reached or keeps failing
  (after the openai client's retries) raises :class:`TeacherUnavailable` from
  :meth:`TeacherLabeler.label`; :meth:`TeacherLabeler.label_all` turns those into
  counted abstentions and gives up with the error after ``max_consecutive_failures``
  in a row (a dead endpoint is not asked ten thousand times). A configuration error
  (unknown model, bad key) raises :class:`TeacherError` at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import openai
from pydantic import Field

from pipeline.article import Article
from pipeline.dedupe import content_hash
from pipeline.labels import LabelVote
from pipeline.openai_endpoint import EndpointConfig, openai_client

# The messages must be the classifier's: prompt.signal_messages builds both.
from pipeline.prompt import NOT_SIGNAL_TOKEN, SIGNAL_INSTRUCTION, SIGNAL_TOKEN, signal_messages
from pipeline.settings import Paths

log = logging.getLogger(__name__)

SOURCE = "teacher"
"""``LabelVote.source`` of the teacher's votes."""

# A standalone 0 or 1: not part of a number ("10", "0.5") or a word.
_LABEL_DIGIT = re.compile(r"(?<![\w.])([01])(?![\w]|\.\d)")


def parse_teacher_answer(answer: str) -> int | None:
    """1 or 0 when the answer says exactly one of them, else ``None`` (abstain).

    ``"1"``, ``" 0\\n"``, ``"Answer: 1."``, ``"**0**"`` parse; ``"0 or 1"``, ``"10"``,
    ``"yes"`` and an empty answer do not: the instruction asks for the digit alone,
    and a vote is worth more absent than guessed.
    """
    found = set(_LABEL_DIGIT.findall(answer))
    if len(found) != 1:
        return None
    return 1 if found.pop() == SIGNAL_TOKEN else 0


class TeacherConfig(EndpointConfig):
    """The teacher endpoint (model, key, timeout, retries: :class:`EndpointConfig`) and
    how it is asked."""

    base_url: str = Field(
        default="https://api.openai.com/v1",
        description="OpenAI-compatible endpoint, e.g. 'http://127.0.0.1:8100/v1' for a "
        "local vLLM.")
    max_tokens: int = Field(
        default=3, ge=1, le=32,
        description="Longest answer. The instruction asks for one digit; a little room "
        "lets an answer like '1.' through.")
    cache_path: Path = Field(
        default_factory=lambda: Paths().data_dir / "cache" / "teacher.sqlite",
        description="SQLite file of cached answers (created on first use).")
    max_consecutive_failures: int = Field(
        default=3, ge=1,
        description="label_all gives up (raises TeacherUnavailable) after this many "
        "requests in a row failed.")

    def prompt_hash(self) -> str:
        """sha256 of what shapes the question besides the article: the instruction, the
        label tokens and the text cut. Part of the cache key."""
        shape = {"instruction": SIGNAL_INSTRUCTION, "labels": [SIGNAL_TOKEN, NOT_SIGNAL_TOKEN],
                 "max_text_chars": self.max_text_chars}
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()


class TeacherError(RuntimeError):
    """The teacher cannot be used as configured (unknown model, refused key)."""


class TeacherUnavailable(TeacherError):
    """The endpoint could not be reached or kept failing; nothing was cached."""


@dataclass
class TeacherStats:
    """What a labeler did; every article asked for ends in exactly one of
    ``answered``, ``abstained``, ``rejected`` or ``failed``."""

    requests: int = 0
    """HTTP requests sent (cache misses)."""
    cache_hits: int = 0
    answered: int = 0
    """Votes of 1 or 0."""
    abstained: int = 0
    """Answers that were neither 1 nor 0 (each logged)."""
    rejected: int = 0
    """Articles the endpoint refused (HTTP 400, e.g. too long for its context)."""
    failed: int = 0
    """Requests that failed (endpoint down, timeouts, 5xx) in label_all."""


class TeacherCache:
    """Answers by (content hash, model, prompt hash), in one SQLite table."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.connection = sqlite3.connect(path)
        # WAL: several pipeline processes can read while one writes.
        self.connection.execute("PRAGMA journal_mode=WAL")
        with self.connection:
            self.connection.execute(
                "CREATE TABLE IF NOT EXISTS teacher_answers ("
                " content_hash TEXT NOT NULL, model TEXT NOT NULL,"
                " prompt_hash TEXT NOT NULL, answer TEXT NOT NULL,"
                " base_url TEXT NOT NULL, created_at TEXT NOT NULL,"
                " PRIMARY KEY (content_hash, model, prompt_hash))")

    def get(self, content: str, model: str, prompt: str) -> str | None:
        row = self.connection.execute(
            "SELECT answer FROM teacher_answers WHERE content_hash=? AND model=? AND "
            "prompt_hash=?", (content, model, prompt)).fetchone()
        return row[0] if row else None

    def put(self, content: str, model: str, prompt: str, answer: str, base_url: str) -> None:
        # INSERT OR IGNORE: the first answer stored wins, so a vote never changes.
        with self.connection:
            self.connection.execute(
                "INSERT OR IGNORE INTO teacher_answers VALUES (?, ?, ?, ?, ?, ?)",
                (content, model, prompt, answer, base_url,
                 datetime.now(timezone.utc).isoformat()))

    def __len__(self) -> int:
        return self.connection.execute("SELECT COUNT(*) FROM teacher_answers").fetchone()[0]

    def close(self) -> None:
        self.connection.close()


def _messages(article: Article, max_text_chars: int) -> list[dict[str, str]]:
    return signal_messages(article, article.text[:max_text_chars])


class TeacherLabeler:
    """Votes of a teacher LLM, cached; a context manager that closes its cache."""

    def __init__(self, config: TeacherConfig, client: openai.OpenAI | None = None) -> None:
        """``client``: an ``openai.OpenAI`` to use instead of one built from ``config``
        (e.g. with an ``httpx`` client that counts requests)."""
        self.config = config
        self._owns_client = client is None
        self.client = client or openai_client(config.base_url, config.api_key_env,
                                              config.timeout_s, config.max_retries)
        self.cache = TeacherCache(config.cache_path)
        self.prompt_hash = config.prompt_hash()
        self.stats = TeacherStats()

    def _ask(self, article: Article) -> str:
        self.stats.requests += 1
        try:
            response = self.client.chat.completions.create(
                model=self.config.model, messages=_messages(article, self.config.max_text_chars),
                temperature=0.0, max_tokens=self.config.max_tokens)
        except (openai.APIConnectionError, openai.InternalServerError,
                openai.RateLimitError) as exc:  # APITimeoutError is an APIConnectionError
            raise TeacherUnavailable(
                f"teacher {self.config.base_url} ({self.config.model}) unavailable: "
                f"{type(exc).__name__}: {exc}") from exc
        except (openai.AuthenticationError, openai.PermissionDeniedError,
                openai.NotFoundError) as exc:
            raise TeacherError(
                f"teacher {self.config.base_url} refused model {self.config.model!r}: "
                f"{type(exc).__name__}: {exc}") from exc
        return response.choices[0].message.content or ""

    def label(self, article: Article) -> LabelVote:
        """The teacher's vote on ``article``: from the cache, else from the endpoint.

        Raises :class:`TeacherUnavailable` when the endpoint cannot answer and
        :class:`TeacherError` when it refuses the configuration; an article the endpoint
        rejects (HTTP 400) gets an abstention with the error in ``detail``.
        """
        key = (content_hash(article), self.config.model, self.prompt_hash)
        answer = self.cache.get(*key)
        cached = answer is not None
        if cached:
            self.stats.cache_hits += 1
        else:
            try:
                answer = self._ask(article)
            except openai.BadRequestError as exc:
                self.stats.rejected += 1
                log.warning("teacher: article %r rejected by the endpoint (%s); abstaining",
                            article.id, exc)
                return LabelVote(source=SOURCE, label=None, detail={
                    "model": self.config.model, "answer": None, "cached": False,
                    "error": f"{type(exc).__name__}: {exc}"})
            self.cache.put(*key, answer, self.config.base_url)
        label = parse_teacher_answer(answer)
        if label is None:
            self.stats.abstained += 1
            log.warning("teacher: answer %r for article %r is neither %s nor %s; abstaining",
                        answer, article.id, SIGNAL_TOKEN, NOT_SIGNAL_TOKEN)
        else:
            self.stats.answered += 1
        return LabelVote(source=SOURCE, label=label,
                         detail={"model": self.config.model, "answer": answer, "cached": cached})

    def label_all(self, articles: Sequence[Article]) -> list[LabelVote]:
        """One vote per article, in order. A failed request is an abstention with the
        error in ``detail`` (counted in ``stats.failed``, nothing cached); after
        ``max_consecutive_failures`` failures in a row :class:`TeacherUnavailable` is
        raised, as the endpoint is evidently down."""
        votes = []
        consecutive_failures = 0
        for article in articles:
            try:
                votes.append(self.label(article))
                consecutive_failures = 0
            except TeacherUnavailable as exc:
                self.stats.failed += 1
                consecutive_failures += 1
                log.warning("teacher: no vote for article %r: %s", article.id, exc)
                if consecutive_failures >= self.config.max_consecutive_failures:
                    raise TeacherUnavailable(
                        f"{exc} ({consecutive_failures} failures in a row; "
                        f"{len(votes)} articles labelled before)") from exc
                votes.append(LabelVote(source=SOURCE, label=None, detail={
                    "model": self.config.model, "answer": None, "cached": False,
                    "error": str(exc)}))
        log.info("teacher: %d articles, %d votes, %d abstained, %d rejected, %d failed "
                 "(%d requests, %d cache hits)", len(articles), self.stats.answered,
                 self.stats.abstained, self.stats.rejected, self.stats.failed,
                 self.stats.requests, self.stats.cache_hits)
        return votes

    def close(self) -> None:
        self.cache.close()
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> TeacherLabeler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
