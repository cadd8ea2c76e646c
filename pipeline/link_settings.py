"""What the link stage fetches and how politely: :class:`LinkSettings`.

Read by the dataset build's config (``links:``, :mod:`pipeline.build_config`) and the
ingestion service's (``links:``), and used by :class:`pipeline.links.LinkEnricher`;
kept apart from it so loading a config does not import the HTTP client, the cache and
the extractor.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from pipeline.article import Article
from pipeline.settings import Paths


class LinkSettings(BaseModel):
    """How the link stage decides what to fetch and how politely it fetches it."""

    fetch_when: Literal["short_or_teaser", "always", "never"] = Field(
        default="short_or_teaser",
        description="Which items get their link followed: those whose text is shorter than "
        "``min_item_words`` or ends like a teaser (``teaser_patterns``); every item with a "
        "link; or none (the stage then only records provenance).")
    min_item_words: int = Field(
        default=120, ge=0,
        description="An item with fewer words than this is a teaser; a full article has "
        "several hundred.")
    teaser_patterns: list[str] = Field(
        default=[r"(read|see) (more|the full (story|article|report))\W*$",
                 r"continue reading\W*$", r"(\u2026|\.\.\.)\s*$"],
        description="Case-insensitive regular expressions; an item whose text matches any "
        "is a teaser whatever its length.")
    user_agent: str = Field(
        default="newsletter-signals/0.1 (+link enrichment; polite crawler)",
        description="Sent with every request and matched against robots.txt groups.")
    respect_robots: bool = Field(
        default=True, description="Fetch and obey each host's robots.txt (RFC 9309).")
    connect_timeout_s: float = Field(default=5.0, gt=0,
                                     description="Time to open a connection.")
    read_timeout_s: float = Field(default=10.0, gt=0,
                                  description="Longest silence while reading an answer.")
    page_timeout_s: float = Field(
        default=20.0, gt=0,
        description="Longest time for one request from send to last byte (a slow-drip "
        "server that keeps each read under ``read_timeout_s`` is still cut off).")
    max_page_bytes: int = Field(
        default=3_000_000, gt=0,
        description="Largest body read; a bigger page is abandoned as ``too_large``.")
    max_redirects: int = Field(default=5, ge=0,
                               description="Most redirect hops followed for one link.")
    per_host_concurrency: int = Field(
        default=2, ge=1, description="Most requests in flight to one host at a time.")
    per_host_interval_s: float = Field(
        default=1.0, ge=0,
        description="Least time between two request starts to one host (a robots.txt "
        "``Crawl-delay`` raises it for that host).")
    max_concurrency: int = Field(
        default=16, ge=1, description="Most requests in flight overall (worker threads).")
    max_attempts: int = Field(
        default=3, ge=1,
        description="Tries per request for 429, 5xx and connection errors (1 = no retry).")
    backoff_initial_s: float = Field(
        default=1.0, ge=0, description="First back-off; doubles per retry, with jitter.")
    backoff_max_s: float = Field(default=30.0, ge=0,
                                 description="Longest back-off between two tries.")
    max_retry_after_s: float = Field(
        default=60.0, ge=0,
        description="A ``Retry-After`` longer than this is not waited for: the link is "
        "``rate_limited`` at once.")
    cache_path: Path | None = Field(
        default_factory=lambda: Paths().data_dir / "http-cache.sqlite",
        description="SQLite file of the HTTP cache (RFC 9111, validators honoured); None "
        "turns caching off. Default: ``$SIGNALS_DATA_DIR/http-cache.sqlite``.")
    extensive_date_search: bool = Field(
        default=False,
        description="Let htmldate also search the page's free text for dates (through "
        "dateparser over every locale). Off: dates come from markup only (meta tags, "
        "JSON-LD, <time>, the URL). On, one Reuters page took 13.7 s on first use and "
        "pages with date-like text cost tens of ms more each (bench/bench_links.py).")
    allow_networks: list[str] = Field(
        default_factory=list,
        description="Networks (CIDR, e.g. ``10.20.0.0/16``) a link may reach although they "
        "are not global: an intranet ingested on purpose, a test's loopback server. "
        "Default: none; only global addresses are fetched (``pipeline/egress.py``).")
    min_page_chars: int = Field(
        default=200, ge=0,
        description="Extracted text shorter than this is not an article (a cookie wall, "
        "an index page): ``extraction_failed``.")

    @field_validator("allow_networks")
    @classmethod
    def _networks_parse(cls, networks: list[str]) -> list[str]:
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"allow_networks: {network!r} is not a network: {exc}") from exc
        return networks

    @field_validator("teaser_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"teaser pattern {pattern!r} is not a regular expression: "
                                 f"{exc}") from exc
        return patterns

    def wants_page(self, article: Article) -> bool:
        """Whether this item's text is short or a teaser, so its link should be followed."""
        if self.fetch_when == "never":
            return False
        if self.fetch_when == "always":
            return True
        text = article.text.strip()
        if len(text.split()) < self.min_item_words:
            return True
        return any(re.search(p, text, re.IGNORECASE) for p in self.teaser_patterns)
