"""The classification API's request and response bodies, and the adapter-name and alias
rules its OpenAPI document states (``serve/app.py`` serves them)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.article import Article
from serve.errors import ErrorBody
from classify.registry import ALIAS_PATTERN

# The registry's name rule (``classify/registry.py``: a letter or digit, then letters,
# digits, '.', '_', '-', never '..', at most 128 characters) written without a lookahead,
# so that the OpenAPI document states it and schema-driven clients generate valid names.
ADAPTER_NAME_REGEX = r"^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.[A-Za-z0-9_-])*\.?$"
ADAPTER_NAME_MAX = 128
ALIAS_REGEX = ALIAS_PATTERN.pattern
ALIAS_MAX = 64


def adapter_field(description: str):
    return Field(default=None, pattern=ADAPTER_NAME_REGEX, max_length=ADAPTER_NAME_MAX,
                 description=description)


class ClassifyItem(BaseModel):
    """One article of a mixed batch, with the adapter it should be classified by."""

    article: Article
    adapter: str | None = adapter_field(
        "Adapter name or alias for this article; default: the request's 'adapter'.")


class ClassifyRequest(BaseModel):
    """Exactly one of ``article`` (one), ``articles`` (several) or ``items`` (a mixed
    batch of article + adapter)."""

    # Each form names its field with a non-null value ({"article": null} is no article).
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["article"], "properties": {"article": {"type": "object"}}},
        {"required": ["articles"], "properties": {"articles": {"type": "array"}}},
        {"required": ["items"], "properties": {"items": {"type": "array"}}}]})

    article: Article | None = None
    articles: list[Article] | None = Field(default=None, min_length=1)
    items: list[ClassifyItem] | None = Field(default=None, min_length=1)
    adapter: str | None = adapter_field(
        "Adapter version name or alias ('production', 'candidate'); omitted or 'base' = "
        "the base model.")
    threshold: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="P(signal) at or above which the label is 1; default: the adapter "
        "version's own threshold, else the server's.")
    signal_rate: Annotated[float, Field(gt=0.0, lt=1.0)] | Literal["estimate"] | None = Field(
        default=None, description="Label shift: the signal rate of the window these "
        "articles come from. Each calibrated version's P(signal) is prior-shifted from the "
        "rate of its validation window to this one (Saerens et al. 2002) and cut at the "
        "version's threshold on the shifted P. 'estimate': estimate the rate per version "
        "from this request's articles (EM on their calibrated P; at least 30 articles of "
        "the version, else 422). Default: no shift. The base model and uncalibrated "
        "versions are never shifted.")
    strict: bool = Field(
        default=False, description="False (default): an empty article (no title, no text) "
        "gets an 'error' entry in its place in 'results' and the others are classified. "
        "True: any empty article fails the whole request with 422.")

    @model_validator(mode="after")
    def _exactly_one_form(self) -> ClassifyRequest:
        given = [f for f in ("article", "articles", "items") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'article', 'articles' or 'items'")
        if self.strict:
            for article, _ in self.pairs:
                problem = article.content_problem()  # the rule importers skip by too
                if problem is not None:
                    raise ValueError(problem)
        return self

    @property
    def pairs(self) -> list[tuple[Article, str | None]]:
        """(article, adapter) for every article of the request."""
        if self.items is not None:
            return [(i.article, i.adapter or self.adapter) for i in self.items]
        articles = [self.article] if self.article is not None else list(self.articles or [])
        return [(a, self.adapter) for a in articles]


class AliasRequest(BaseModel):
    adapter: str = Field(pattern=ADAPTER_NAME_REGEX, max_length=ADAPTER_NAME_MAX,
                         description="Adapter version name (or alias) the alias should "
                         "point at; not 'base'.")


class ArticleResult(BaseModel):
    id: str | int
    label: int = Field(description="1 investment signal, 0 not.")
    p_signal: float = Field(description=(
        "P(signal): the softmax over the two label tokens' logits, passed through the "
        "adapter version's calibration when it has one (see 'calibrated')."))
    adapter: str = Field(description="Adapter version used ('base' for the un-tuned model).")
    requested: str = Field(description="The adapter or alias the request named.")
    threshold: float = Field(description=(
        "Threshold applied to p_signal: the request's, else the adapter version's own "
        "(F1-optimal on its validation window), else the server's."))
    calibrated: bool = Field(description=(
        "True when p_signal is calibrated by the adapter version; false for the base "
        "model and for versions without a calibration (served at the server threshold)."))
    p_raw: float = Field(description="The uncalibrated two-token softmax.")
    signal_rate: float | None = Field(default=None, description=(
        "The signal rate p_signal was prior-shifted to (the request's, or estimated from "
        "its articles); null when not shifted."))
    fitted_rate: float | None = Field(default=None, description=(
        "The signal rate the version's calibration was fitted at (its validation "
        "window's), i.e. the prior p_signal holds when not shifted: what a client needs "
        "to estimate or apply label shift itself; null when not calibrated."))
    truncated: bool = Field(description="True when the text was cut to fit the model.")


class ArticleError(BaseModel):
    """An article of the request that could not be classified, in its place in ``results``."""

    id: str | int
    error: ErrorBody


class ClassifyResponse(BaseModel):
    results: list[ArticleResult | ArticleError] = Field(
        description="One entry per article, in request order: a result, or an error for "
        "an article that could not be classified (empty: type 'empty_article').")


class AdapterState(BaseModel):
    name: str = Field(description="Adapter version name.")
    loaded: bool


class AliasState(BaseModel):
    alias: str
    adapter: str = Field(description="Version the alias now points at.")


def adapter_path(description: str):
    return Path(pattern=ADAPTER_NAME_REGEX, max_length=ADAPTER_NAME_MAX, description=description)
