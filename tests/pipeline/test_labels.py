"""Label sources (trend rule, annotations, human feedback, teacher) and their combination."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pipeline.article import Article, TopicGrowth
from pipeline.labels import (
    REUTERS_ACQ,
    AnnotationRule,
    CombineConfig,
    FeedbackRecord,
    HumanFeedback,
    LabelConfig,
    LabelVote,
    TrendRuleConfig,
    annotation_vote,
    combine_votes,
    label_articles,
    topic_passes,
    trend_vote,
    write_feedback,
)
from pipeline.reuters import parse_sgml, to_article
from tests.pipeline.test_article import ORIGINAL_RECORD


def growth(three: float | None, five: float | None, ten: float | None) -> TopicGrowth:
    return TopicGrowth.model_validate({"3_years": three, "5_years": five, "10_years": ten})


def vote(source: str, label: int | None) -> LabelVote:
    return LabelVote(source=source, label=label)


# --------------------------------------------------------------------------- trend rule


def test_trend_rule_on_the_original_record():
    article = Article.from_record(ORIGINAL_RECORD)
    verdict = trend_vote(article)
    assert verdict.label == 1
    topics = verdict.detail["topics"]
    assert topics["solid-state battery"]["passed"] is True  # 30.1/12.5 = 2.41, 61/30.1 = 2.03
    assert topics["electric vehicles"]["passed"] is False  # 55.2/40 = 1.38
    assert topics["solid-state battery"]["5y_over_3y"] == pytest.approx(30.1 / 12.5, abs=1e-4)
    # "all" topics: electric vehicles fails, so no signal.
    assert trend_vote(article, TrendRuleConfig(topics="all")).label == 0


@pytest.mark.parametrize(("three", "five", "ten", "passes"), [
    (12.5, 20.5, 38.95, True),     # exactly 1.64 and exactly 1.9
    (25.0, 41.0, 77.9, True),      # exactly again, other numbers
    (12.5, 20.49, 38.95, False),   # 5y just below 1.64 × 3y
    (12.5, 20.5, 38.94, False),    # 10y just below 1.9 × 5y
    (10.0, 16.3999, 40.0, False),
    (0.0, 0.0, 0.0, False),        # no growth: the ratios hold trivially, the rule does not
    (-10.0, -5.0, -1.0, False),    # falling interest
])
def test_trend_rule_boundaries(three, five, ten, passes):
    assert topic_passes(growth(three, five, ten), TrendRuleConfig()) is passes


def test_trend_rule_thresholds_are_configurable_and_missing_numbers_abstain():
    assert topic_passes(growth(10, 15, 30), TrendRuleConfig(five_over_three=1.5, ten_over_five=2)) is True
    assert topic_passes(growth(10, 15, 30), TrendRuleConfig()) is False
    assert topic_passes(growth(10, None, 30), TrendRuleConfig()) is None
    partial = Article(id=1, topics=["x"], growth={"x": growth(10, None, 30)})
    assert trend_vote(partial).label is None
    assert trend_vote(Article(id=2, topics=["x"])).detail["reason"] == "no growth data"


# --------------------------------------------------------------------------- annotations


REUTERS_SGML = """<REUTERS TOPICS="YES" LEWISSPLIT="TRAIN" NEWID="7">
<DATE>26-FEB-1987 15:01:01.79</DATE><TOPICS><D>acq</D><D>earn</D></TOPICS>
<TEXT><TITLE>ACME TO BUY BETA</TITLE><BODY>Acme said it will buy Beta. Reuter</BODY></TEXT>
</REUTERS><REUTERS TOPICS="YES" LEWISSPLIT="TRAIN" NEWID="8">
<DATE>26-FEB-1987 15:02:01.79</DATE><TOPICS><D>earn</D></TOPICS>
<TEXT><TITLE>GAMMA PROFIT UP</TITLE><BODY>Gamma earned more. Reuter</BODY></TEXT></REUTERS>"""


def test_annotation_reads_what_the_reuters_importer_stores():
    acq, earn = [to_article(doc) for doc in parse_sgml(REUTERS_SGML)]
    acq_vote = annotation_vote(acq, [REUTERS_ACQ])
    assert acq_vote.label == 1 and acq_vote.detail["matched"] == ["acq"]
    assert annotation_vote(earn, [REUTERS_ACQ]).label == 0
    # The vote agrees with the importer's own label.
    assert (acq.signal, earn.signal) == (1, 0)
    newsletter = Article(id="n", topics=["acq"], source="newsletter")
    assert annotation_vote(newsletter, [REUTERS_ACQ]).label is None
    # A topics stage that rewrites `topics` does not erase the annotators' codes.
    acq.topics = ["takeover bids", "mergers"]
    assert annotation_vote(acq, [REUTERS_ACQ]).label == 1


def test_annotation_rule_on_an_extra_field():
    rule = AnnotationRule(article_source="wire", field="desk_codes", signal_codes=["M&A", "IPO"])
    tagged = Article(id=1, source="wire", desk_codes=["IPO"])
    assert annotation_vote(tagged, [rule]).label == 1
    broken = Article(id=2, source="wire", desk_codes="IPO")
    assert annotation_vote(broken, [rule]).label is None


# --------------------------------------------------------------------------- human feedback


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def feedback_line(article_id, label, annotator, created_at, note="") -> str:
    return json.dumps({"article_id": article_id, "label": label, "annotator": annotator,
                       "note": note, "created_at": created_at})


def test_feedback_latest_wins_per_annotator_and_bad_lines_are_skipped(tmp_path, caplog):
    path = write_lines(tmp_path / "feedback.jsonl", [
        feedback_line(1042, 0, "ana", "2024-01-02T10:00:00Z"),
        feedback_line(1042, 1, "ana", "2024-01-05T10:00:00Z", "changed my mind"),
        feedback_line(1042, 0, "ana", "2024-01-03T10:00:00Z"),  # older, arrives later
        feedback_line("1042", 1, "ben", "2024-01-04T10:00:00"),  # id as text, naive time
        "{not json",
        feedback_line(1042, 2, "carl", "2024-01-04T10:00:00Z"),
        json.dumps({"article_id": 1042, "label": 1, "created_at": "2024-01-04T10:00:00Z"}),
        "",
        feedback_line("ghost-7", 1, "ana", "2024-01-04T10:00:00Z"),
    ])
    with caplog.at_level(logging.WARNING, logger="pipeline.labels"):
        feedback = HumanFeedback.read(path)
    assert feedback.lines_read == 8 and feedback.skipped == 3
    assert len([m for m in caplog.messages if "feedback skipped" in m]) == 3
    assert any(":7: feedback skipped: annotator" in p for p in feedback.problems)
    human = feedback.vote(Article(id=1042))
    assert human.label == 1
    assert {v["annotator"]: v["label"] for v in human.detail["verdicts"]} == {"ana": 1, "ben": 1}
    # Feedback for an article that is not there: skipped, logged, counted.
    articles = [Article.from_record(ORIGINAL_RECORD)]
    with caplog.at_level(logging.WARNING, logger="pipeline.labels"):
        [labelled], report = label_articles(
            articles, LabelConfig(sources=["human"], feedback_path=path))
    assert report.feedback_unknown_article == 1 and report.feedback_skipped == 3
    assert any("unknown article 'ghost-7'" in m for m in caplog.messages)
    assert labelled.signal == 1 and labelled.label_decision["decided_by"] == ["human"]


def test_feedback_tie_between_annotators_goes_to_the_latest_verdict(tmp_path):
    feedback = HumanFeedback()
    feedback.add(FeedbackRecord(article_id=5, label=1, annotator="a",
                                created_at=datetime(2024, 1, 1, tzinfo=timezone.utc)))
    feedback.add(FeedbackRecord(article_id=5, label=0, annotator="b",
                                created_at=datetime(2024, 1, 2, tzinfo=timezone.utc)))
    assert feedback.vote(Article(id=5)).label == 0
    path = tmp_path / "written.jsonl"
    write_feedback(path, [r for by in feedback.latest.values() for r in by.values()])
    assert HumanFeedback.read(path).latest == feedback.latest


def test_human_source_without_feedback_file_is_a_clear_error():
    with pytest.raises(ValueError, match="needs feedback_path"):
        label_articles([Article(id=1)], LabelConfig(sources=["human"]))


# --------------------------------------------------------------------------- combination


@pytest.mark.parametrize(("rule", "votes", "signal", "decided_by"), [
    ("any", [("teacher", 0), ("trend", 1)], 1, ("trend",)),
    ("any", [("teacher", 0), ("trend", 0)], 0, ("teacher", "trend")),
    ("any", [("teacher", None), ("trend", None)], None, ()),
    ("all", [("teacher", 1), ("trend", 1), ("human", None)], 1, ("teacher", "trend")),
    ("all", [("teacher", 1), ("trend", 0)], 0, ("trend",)),
    ("majority", [("teacher", 1), ("trend", 0), ("human", 1)], 1, ("teacher", "human")),
    ("majority", [("teacher", 1), ("trend", 0)], None, ("teacher", "trend")),
    ("priority", [("trend", 1), ("teacher", 0), ("human", None)], 0, ("teacher",)),
    ("priority", [("trend", 1), ("teacher", 0), ("human", 1)], 1, ("human",)),
    ("priority", [("custom", 1)], None, ()),
])
def test_combination_rules(rule, votes, signal, decided_by):
    decision = combine_votes([vote(s, v) for s, v in votes], CombineConfig(rule=rule))
    assert (decision.signal, decision.decided_by, decision.rule) == (signal, decided_by, rule)


def test_majority_tie_label_is_configurable():
    votes = [vote("teacher", 1), vote("trend", 0)]
    assert combine_votes(votes, CombineConfig(rule="majority", majority_tie=0)).signal == 0


def test_seed_rule_reproduces_the_original_label_with_provenance_that_round_trips():
    for gpt_signal, decided_by in ((1, ["teacher", "trend"]), (0, ["trend"])):
        original = Article.from_record({**ORIGINAL_RECORD, "gpt_signal": gpt_signal, "signal": None})
        [labelled], report = label_articles([original], LabelConfig())
        assert labelled.signal == 1
        assert labelled.label_decision == {"rule": "any", "decided_by": decided_by, "decided": True}
        record = labelled.to_record()
        assert [(v["source"], v["label"]) for v in record["labels"]] == [
            ("teacher", gpt_signal), ("trend", 1)]
        assert Article.from_record(record) == labelled
        assert Article.from_record(json.loads(json.dumps(record))).to_record() == record
        assert report.votes["trend"] == {"1": 1, "0": 0, "abstain": 0}


def test_teacher_votes_from_elsewhere_take_part_like_any_other():
    original = Article.from_record(ORIGINAL_RECORD)  # gpt_signal 1
    teacher = LabelVote(source="teacher", label=0, detail={"model": "local-vllm", "answer": "no"})
    config = LabelConfig(combine=CombineConfig(rule="priority", priority=["teacher", "trend"]))
    [labelled], _ = label_articles([original], config, votes_by_id={"1042": [teacher]})
    assert labelled.signal == 0 and labelled.label_decision["decided_by"] == ["teacher"]
    assert labelled.labels[0] == teacher.model_dump(mode="json")
    # Relabelled later with another rule: the stored teacher vote is kept, not replaced
    # by the gpt_signal field, and the trend vote is recomputed, not duplicated.
    [again], _ = label_articles([labelled], LabelConfig(combine=CombineConfig(rule="majority",
                                                                             majority_tie=1)))
    assert [(v["source"], v["label"]) for v in again.labels] == [("teacher", 0), ("trend", 1)]
    assert again.signal == 1


def test_annotation_outranks_teacher_under_priority_and_undecided_keeps_or_clears():
    acq, earn = [to_article(doc) for doc in parse_sgml(REUTERS_SGML)]
    acq = acq.model_copy(update={"gpt_signal": 0})
    config = LabelConfig(sources=["teacher", "annotation"],
                         combine=CombineConfig(rule="priority"))
    [labelled], _ = label_articles([acq], config)
    assert labelled.signal == 1 and labelled.label_decision["decided_by"] == ["annotation"]
    # Only the trend source, and no growth: nobody decides.
    [kept], report = label_articles([earn], LabelConfig(sources=["trend"]))
    assert kept.signal == 0 and report.undecided == 1  # the importer's label stands
    [cleared], _ = label_articles([earn], LabelConfig(
        sources=["trend"], combine=CombineConfig(when_undecided="unknown")))
    assert cleared.signal is None and cleared.label_decision["decided"] is False


def test_unreadable_stored_vote_is_dropped_with_a_log_line(caplog):
    article = Article(id=9, labels=[{"source": "teacher", "label": 7}, {"source": "human", "label": 1}])
    with caplog.at_level(logging.WARNING, logger="pipeline.labels"):
        [labelled], _ = label_articles([article], LabelConfig(sources=["trend"]))
    assert [(v["source"], v["label"]) for v in labelled.labels] == [("human", 1), ("trend", None)]
    assert labelled.signal == 1
    assert any("stored vote" in m and "unreadable" in m for m in caplog.messages)


def test_label_stage_for_the_pipeline_build():
    from pipeline.labels import run_stage

    both = Article.from_record(ORIGINAL_RECORD)  # teacher 1, trend 1
    split = Article.from_record({**ORIGINAL_RECORD, "id": 7, "gpt_signal": 0})  # teacher 0
    articles = [both, split, Article(id="plain", title="t")]
    output = run_stage(articles, {"sources": ["teacher", "trend"], "combine": {"rule": "all"}})
    assert [a.signal for a in output.articles] == [1, 0, None]
    assert output.counts["undecided"] == 1 and "all of votes from teacher, trend" in output.description
    with pytest.raises(ValueError, match="combine.rule"):
        run_stage(articles, {"combine": {"rule": "sometimes"}})
