"""The interface between the dataset build and its optional stages.

A stage (relevance filter, topics, trends, teacher, labels) is a function
``run_stage(articles, settings) -> StageOutput``: it gets the articles and its section
of the pipeline config, and hands on the articles (possibly fewer, possibly annotated)
with its counts. Stage modules import this module, never ``pipeline.stage_runner`` or
``pipeline.build``, so the runner can import them without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.article import Article

STAGES = ("relevance", "topics", "trends", "teacher", "labels")
"""Optional stages, in the order they run."""


@dataclass
class StageOutput:
    """What a stage hands on: the articles (possibly fewer) and its counts."""

    articles: list[Article]
    counts: dict[str, Any]
    description: str = ""
    """Human-readable account of the rule applied (the label stage's combination rule)."""


StageRunner = Callable[[list[Article], dict[str, Any]], StageOutput]
"""``run_stage(articles, settings)``: one optional stage of the build."""
