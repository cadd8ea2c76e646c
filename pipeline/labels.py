"""Label sources and the rule that combines their votes, with provenance.

A label source looks at an article and votes: signal (1), not signal (0), or abstains
(None). The combination rule turns the votes into the article's final ``signal``, and
the votes are kept beside it so every label says where it came from.

Sources (``LabelVote.source``):

* ``teacher``: an LLM's verdict. Produced by :mod:`pipeline.teacher` as a
  ``LabelVote(source="teacher")`` and passed in or already stored in the article's
  ``labels``; failing that, the original dataset's ``gpt_signal`` field is read as the
  teacher's vote.
* ``trend``: the Google-Trends growth rule on ``growth`` (:func:`trend_vote`).
* ``annotation``: labels an existing collection carries, e.g. Reuters-21578's ``acq``
  topic code (:func:`annotation_vote`).
* ``human``: analysts' feedback records from a JSONL file (:class:`HumanFeedback`).

Where they end up: ``article.signal`` is the decision; the extra field ``labels`` holds
every vote as a dict (``{"source", "label", "detail"}``) and ``label_decision`` says
which rule decided and on whose votes. ``Article.from_record(a.to_record())`` keeps both.
Votes already in ``labels`` from sources not recomputed here (a teacher stage run
earlier) are kept and take part; a recomputed source replaces its stale vote.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.article import Article, TopicGrowth
from pipeline.stage import StageOutput

log = logging.getLogger(__name__)

SourceName = Literal["teacher", "trend", "annotation", "human"]


class LabelVote(BaseModel):
    """One label source's verdict on one article."""

    source: str = Field(description="Which label source voted: teacher, trend, annotation, human.")
    label: Literal[0, 1] | None = Field(description="1 signal, 0 not, None abstains.")
    detail: dict[str, Any] = Field(
        default_factory=dict, description="Why: model and answer, ratios, topic code, annotator."
    )


# --------------------------------------------------------------------------- trend rule


class TrendRuleConfig(BaseModel):
    """The seed's sustained-growth rule on a topic's 3/5/10-year growth numbers."""

    model_config = ConfigDict(extra="forbid")

    five_over_three: float = Field(
        default=1.64, gt=0, description="Signal needs growth over 5 years ≥ this × growth "
        "over 3 years (the seed's 1.64).")
    ten_over_five: float = Field(
        default=1.9, gt=0, description="... and growth over 10 years ≥ this × growth over "
        "5 years (the seed's 1.9).")
    topics: Literal["any", "all"] = Field(
        default="any", description="``any``: one topic with sustained growth makes the "
        "article a signal (the original: an article is labelled when its topics show "
        "growth); ``all``: every measured topic must pass.")
    require_positive_growth: bool = Field(
        default=True, description="A topic passes only if all three numbers are > 0: with "
        "zero or falling interest the ratio inequalities hold trivially (0 ≥ 1.64 × 0, "
        "−5 ≥ 1.64 × −10) without any growth.")


RATIO_TOLERANCE = 1e-9
"""Relative tolerance on the thresholds: numbers recorded exactly at 1.64× or 1.9× meet
them even when floating-point multiplication lands a hair below."""


def _at_least(value: float, factor: float, base: float) -> bool:
    bound = factor * base
    return value >= bound or math.isclose(value, bound, rel_tol=RATIO_TOLERANCE)


def topic_passes(growth: TopicGrowth, rule: TrendRuleConfig) -> bool | None:
    """Whether one topic shows sustained growth; None when a number is missing."""
    three, five, ten = growth.three_years, growth.five_years, growth.ten_years
    if three is None or five is None or ten is None:
        return None
    if rule.require_positive_growth and min(three, five, ten) <= 0:
        return False
    return _at_least(five, rule.five_over_three, three) and _at_least(ten, rule.ten_over_five, five)


def trend_vote(article: Article, rule: TrendRuleConfig | None = None) -> LabelVote:
    """The trend source's vote; abstains when no topic has all three growth numbers."""
    rule = rule or TrendRuleConfig()
    verdicts: dict[str, bool] = {}
    detail: dict[str, Any] = {"rule": f"5y ≥ {rule.five_over_three}×3y and "
                                      f"10y ≥ {rule.ten_over_five}×5y, {rule.topics} topic",
                              "topics": {}}
    for topic, growth in article.growth.items():
        passed = topic_passes(growth, rule)
        if passed is None:
            continue
        verdicts[topic] = passed
        detail["topics"][topic] = {
            "3_years": growth.three_years, "5_years": growth.five_years,
            "10_years": growth.ten_years, "passed": passed,
            "5y_over_3y": round(growth.five_years / growth.three_years, 4) if growth.three_years else None,
            "10y_over_5y": round(growth.ten_years / growth.five_years, 4) if growth.five_years else None,
        }
    if not verdicts:
        return LabelVote(source="trend", label=None, detail={**detail, "reason": "no growth data"})
    combine = any if rule.topics == "any" else all
    return LabelVote(source="trend", label=int(combine(verdicts.values())), detail=detail)


# --------------------------------------------------------------------------- annotations


class AnnotationRule(BaseModel):
    """An existing collection's annotations read as a vote."""

    model_config = ConfigDict(extra="forbid")

    article_source: str = Field(
        description="Articles whose ``source`` is this carry the annotations (e.g. "
        "``reuters21578``); other articles get no vote from this rule.")
    field: str = Field(
        default="topics", description="The article field (or extra field) holding the "
        "annotation codes, a list of strings. The Reuters importer stores its topic codes "
        "in ``topics``.")
    signal_codes: list[str] = Field(
        min_length=1, description="Codes meaning signal; an annotated article without any "
        "of them is a 0 (the annotators judged its topics).")


REUTERS_ACQ = AnnotationRule(article_source="reuters21578", field="reuters_topics",
                             signal_codes=["acq"])


def annotation_vote(article: Article, rules: Sequence[AnnotationRule]) -> LabelVote:
    """The first rule for the article's source decides; abstains when none applies or
    the field holds no list of codes."""
    for rule in rules:
        if article.source != rule.article_source:
            continue
        codes = getattr(article, rule.field, None)
        if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
            return LabelVote(source="annotation", label=None, detail={
                "rule": rule.article_source, "reason": f"no list of codes in {rule.field!r}"})
        matched = [c for c in codes if c in rule.signal_codes]
        return LabelVote(source="annotation", label=1 if matched else 0, detail={
            "rule": rule.article_source, "field": rule.field, "codes": codes,
            "matched": matched})
    return LabelVote(source="annotation", label=None,
                     detail={"reason": f"no annotation rule for source {article.source!r}"})


# --------------------------------------------------------------------------- human feedback


class FeedbackRecord(BaseModel):
    """One analyst verdict, a line of the feedback JSONL file."""

    model_config = ConfigDict(extra="forbid")

    article_id: str | int = Field(description="The article's ``id`` (compared as text).")
    label: Literal[0, 1] = Field(description="1 signal, 0 not.")
    annotator: str = Field(min_length=1, description="Who judged; one vote each.")
    note: str = Field(default="", description="Free-text reason.")
    created_at: datetime = Field(description="When; naive times are taken as UTC.")

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


@dataclass
class HumanFeedback:
    """Feedback read from JSONL, reduced to each annotator's latest verdict per article.

    **Latest wins per annotator**: an analyst who changes their mind is taken at their
    last word (by ``created_at``; equal times: the later line). Across annotators the
    majority of those latest verdicts is the human vote; a tie goes to the most recent
    verdict.
    """

    latest: dict[str, dict[str, FeedbackRecord]] = field(default_factory=dict)
    """article id (text) -> annotator -> their latest record."""
    lines_read: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> HumanFeedback:
        """Read ``path``; malformed lines are skipped with a log line and counted."""
        feedback = cls()
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                feedback.lines_read += 1
                try:
                    record = FeedbackRecord.model_validate_json(line)
                except ValidationError as exc:
                    error = exc.errors()[0]
                    where = ".".join(str(p) for p in error["loc"]) or "line"
                    feedback._skip(f"{path}:{number}: feedback skipped: {where}: {error['msg']}")
                    continue
                feedback.add(record)
        log.info("feedback %s: %d lines, %d verdicts kept, %d skipped", path,
                 feedback.lines_read, sum(map(len, feedback.latest.values())), feedback.skipped)
        return feedback

    def _skip(self, problem: str) -> None:
        log.warning(problem)
        self.problems.append(problem)
        self.skipped += 1

    def add(self, record: FeedbackRecord) -> None:
        by_annotator = self.latest.setdefault(str(record.article_id), {})
        previous = by_annotator.get(record.annotator)
        if previous is None or record.created_at >= previous.created_at:
            by_annotator[record.annotator] = record

    def vote(self, article: Article) -> LabelVote:
        records = list(self.latest.get(str(article.id), {}).values())
        if not records:
            return LabelVote(source="human", label=None, detail={"reason": "no feedback"})
        ones = sum(r.label for r in records)
        zeros = len(records) - ones
        label = 1 if ones > zeros else 0 if zeros > ones else \
            max(records, key=lambda r: r.created_at).label
        return LabelVote(source="human", label=label, detail={"verdicts": [
            {"annotator": r.annotator, "label": r.label, "note": r.note,
             "created_at": r.created_at.isoformat()} for r in records]})

    def unknown_ids(self, articles: Iterable[Article]) -> list[str]:
        """Article ids with feedback but no article among ``articles``."""
        known = {str(a.id) for a in articles}
        return [article_id for article_id in self.latest if article_id not in known]


# --------------------------------------------------------------------------- teacher


def recorded_teacher_vote(article: Article) -> LabelVote:
    """The original dataset's ``gpt_signal`` read as the teacher's vote."""
    if article.gpt_signal is None:
        return LabelVote(source="teacher", label=None, detail={"reason": "no gpt_signal"})
    return LabelVote(source="teacher", label=article.gpt_signal, detail={"from": "gpt_signal"})


# --------------------------------------------------------------------------- combination


class CombineConfig(BaseModel):
    """How votes become the final label. Abstentions never count."""

    model_config = ConfigDict(extra="forbid")

    rule: Literal["any", "all", "majority", "priority"] = Field(
        default="any", description="``any``: signal if any vote says 1 (the seed: teacher OR "
        "trend); ``all``: signal only if every vote says 1; ``majority``: more 1s than 0s; "
        "``priority``: the first source in ``priority`` that voted decides.")
    priority: list[str] = Field(
        default_factory=lambda: ["human", "annotation", "teacher", "trend"],
        description="Source order for ``priority``; unlisted sources never decide (their "
        "votes are still kept).")
    majority_tie: Literal[0, 1] | None = Field(
        default=None, description="Label of a ``majority`` tie; None = undecided.")
    when_undecided: Literal["keep", "unknown"] = Field(
        default="keep", description="No decision (all abstained, or a tie left undecided): "
        "``keep`` the article's existing ``signal`` (e.g. the importer's), or set it "
        "``unknown`` (None).")


@dataclass(frozen=True)
class Decision:
    """The combination's outcome: the label and the sources whose votes made it."""

    signal: Literal[0, 1] | None
    decided_by: tuple[str, ...]
    rule: str


def combine_votes(votes: Sequence[LabelVote], config: CombineConfig) -> Decision:
    cast = [v for v in votes if v.label is not None]
    yes = tuple(v.source for v in cast if v.label == 1)
    no = tuple(v.source for v in cast if v.label == 0)
    if not cast:
        return Decision(None, (), config.rule)
    if config.rule == "any":
        return Decision(1, yes, "any") if yes else Decision(0, no, "any")
    if config.rule == "all":
        return Decision(0, no, "all") if no else Decision(1, yes, "all")
    if config.rule == "majority":
        if len(yes) != len(no):
            return Decision(1, yes, "majority") if len(yes) > len(no) else Decision(0, no, "majority")
        return Decision(config.majority_tie, yes + no, "majority")
    for source in config.priority:
        for vote in cast:
            if vote.source == source:
                return Decision(vote.label, (source,), "priority")
    return Decision(None, (), "priority")


def stored_votes(article: Article) -> list[LabelVote]:
    """Votes already kept in the article's ``labels`` field; unreadable entries are dropped
    with a log line (they cannot take part, and ``labels`` is rewritten without them)."""
    votes = []
    for entry in getattr(article, "labels", None) or []:
        try:
            votes.append(LabelVote.model_validate(entry))
        except ValidationError as exc:
            log.warning("article %r: stored vote %r unreadable (%s), dropped", article.id,
                        entry, exc.errors()[0]["msg"])
    return votes


def label_article(article: Article, votes: Sequence[LabelVote], config: CombineConfig
                  ) -> tuple[Article, Decision]:
    """The article with ``signal`` decided from ``votes``, and ``labels`` /
    ``label_decision`` recording them."""
    decision = combine_votes(votes, config)
    signal = decision.signal
    if signal is None and config.when_undecided == "keep":
        signal = article.signal
    update = {"labels": [v.model_dump(mode="json") for v in votes],
              "label_decision": {"rule": decision.rule, "decided_by": list(decision.decided_by),
                                 "decided": decision.signal is not None}}
    if signal is not None or "signal" in article.model_fields_set:
        update["signal"] = signal
    return article.model_copy(update=update), decision


# --------------------------------------------------------------------------- the stage


class LabelConfig(BaseModel):
    """The label stage: which sources vote and how their votes combine."""

    model_config = ConfigDict(extra="forbid")

    sources: list[SourceName] = Field(
        default_factory=lambda: ["teacher", "trend"], description="Sources that vote here; "
        "the default is the seed's (teacher OR trend). Votes of other sources already "
        "stored in ``labels`` are kept and take part too.")
    combine: CombineConfig = Field(default_factory=CombineConfig, description="The rule.")
    trend: TrendRuleConfig = Field(default_factory=TrendRuleConfig, description="Trend rule.")
    annotations: list[AnnotationRule] = Field(
        default_factory=lambda: [REUTERS_ACQ], description="Annotation rules, first match "
        "per article source.")
    feedback_path: Path | None = Field(
        default=None, description="Human feedback JSONL (``article_id, label, annotator, "
        "note, created_at``); needed when ``human`` is a source.")

    def describe(self) -> str:
        rule = self.combine.rule + (f" ({' > '.join(self.combine.priority)})"
                                    if self.combine.rule == "priority" else "")
        return (f"signal = {rule} of votes from {', '.join(self.sources)}; trend: growth 5y ≥ "
                f"{self.trend.five_over_three}×3y and 10y ≥ {self.trend.ten_over_five}×5y "
                f"({self.trend.topics} topic); abstentions ignored; undecided: "
                f"{self.combine.when_undecided}")


@dataclass
class LabelReport:
    """Counts of a label run."""

    articles: int = 0
    signals: int = 0
    undecided: int = 0
    votes: dict[str, dict[str, int]] = field(default_factory=dict)
    """source -> {"1": n, "0": n, "abstain": n}."""
    feedback_skipped: int = 0
    feedback_unknown_article: int = 0
    problems: list[str] = field(default_factory=list)

    def count_vote(self, vote: LabelVote) -> None:
        key = "abstain" if vote.label is None else str(vote.label)
        counts = self.votes.setdefault(vote.source, {"1": 0, "0": 0, "abstain": 0})
        counts[key] += 1

    def note(self, problem: str) -> None:
        log.warning(problem)
        self.problems.append(problem)


def label_articles(articles: Sequence[Article], config: LabelConfig, *,
                   votes_by_id: Mapping[str, Sequence[LabelVote]] | None = None,
                   feedback: HumanFeedback | None = None) -> tuple[list[Article], LabelReport]:
    """Every article labelled by the configured sources and rule.

    ``votes_by_id`` (article id as text -> votes) passes votes made elsewhere, such as
    :mod:`pipeline.teacher`'s; they replace stored votes of the same source.
    """
    report = LabelReport()
    if "human" in config.sources and feedback is None:
        if config.feedback_path is None:
            raise ValueError("label source 'human' needs feedback_path (a JSONL of "
                             "article_id, label, annotator, note, created_at)")
        feedback = HumanFeedback.read(config.feedback_path)
    if feedback is not None:
        report.feedback_skipped = feedback.skipped
        report.problems.extend(feedback.problems)
        for article_id in feedback.unknown_ids(articles):
            report.feedback_unknown_article += 1
            report.note(f"feedback for unknown article {article_id!r} skipped")
    labelled = []
    for article in articles:
        given = list((votes_by_id or {}).get(str(article.id), []))
        stored = stored_votes(article)
        fresh = []
        for source in config.sources:
            if any(v.source == source for v in given):
                continue
            if source == "teacher" and any(v.source == "teacher" for v in stored):
                continue  # a teacher stage's vote outranks the gpt_signal field
            fresh.append(_vote(source, article, config, feedback))
        replaced = {v.source for v in given + fresh}
        votes = [v for v in stored if v.source not in replaced] + given + fresh
        article, decision = label_article(article, votes, config.combine)
        report.articles += 1
        report.signals += article.signal == 1
        report.undecided += decision.signal is None
        for vote in votes:
            report.count_vote(vote)
        labelled.append(article)
    log.info("labels: %d articles, %d signals, %d undecided (%s)", report.articles,
             report.signals, report.undecided, config.combine.rule)
    return labelled, report


def _vote(source: str, article: Article, config: LabelConfig,
          feedback: HumanFeedback | None) -> LabelVote:
    if source == "teacher":
        return recorded_teacher_vote(article)
    if source == "trend":
        return trend_vote(article, config.trend)
    if source == "annotation":
        return annotation_vote(article, config.annotations)
    return feedback.vote(article)


def run_stage(articles: list[Article], settings: dict[str, Any]):
    """The label stage of the build, run by :mod:`pipeline.stage_runner` (``labels:``
    section = a LabelConfig)."""
    config = LabelConfig.model_validate(settings)
    labelled, report = label_articles(articles, config)
    counts = {"articles": report.articles, "signals": report.signals,
              "undecided": report.undecided, "votes": report.votes,
              "feedback_skipped": report.feedback_skipped,
              "feedback_unknown_article": report.feedback_unknown_article}
    return StageOutput(articles=labelled, counts=counts, description=config.describe())


def write_feedback(path: Path, records: Iterable[FeedbackRecord]) -> None:
    """Append feedback records to a JSONL file (the serve side's analyst verdicts)."""
    with open(path, "a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record.model_dump(mode="json"), ensure_ascii=False) + "\n")
